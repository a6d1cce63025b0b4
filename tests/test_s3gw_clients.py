"""The S3 gateway through real clients: boto3, the AWS CLI, rclone and s3fs each list, read,
range-read, write (single and multipart), copy and delete, and every byte read back equals what
`cowfs cat` gives. Bad requests each get a clear S3 error and change nothing."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from tests.lakeenv import LakeEnv, make_env
from tests.s3gwutil import CONFIG, RO_KEY, RO_SECRET, Gateway, awscli_venv, client_env, start

MiB = 1 << 20


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    env = make_env(tmp_path_factory.mktemp("s3gw"), None)
    env.run("init")
    g = start(env)
    yield g
    assert g.stop() == 0, "".join(g.lines)
    assert "Traceback" not in "".join(g.lines), "".join(g.lines)


def _repo(gw: Gateway, tag: str) -> str:
    name = f"{tag}-{uuid.uuid4().hex[:6]}"
    gw.env.run("repo", "create", name)
    seed = gw.env.root / f"seed-{name}"
    (seed / "cats").mkdir(parents=True)
    (seed / "cats" / "1.jpg").write_bytes(os.urandom(3000))
    (seed / "cats" / "2.jpg").write_bytes(os.urandom(5000))
    (seed / "labels.csv").write_bytes(b"id,label\n1,cat\n2,cat\n")
    gw.env.run("put", f"{name}@main", str(seed), "-m", "seed")
    return name


def _cat(env: LakeEnv, ref: str) -> bytes:
    return env.run("cat", ref).stdout


def _head(env: LakeEnv, repo: str, branch: str = "main") -> str:
    return env.json("log", f"{repo}@{branch}")[0]["id"]


def _error(e: pytest.ExceptionInfo[ClientError]) -> tuple[str, str]:
    return e.value.response["Error"]["Code"], e.value.response["Error"].get("Message", "")


def test_boto3_everything(gw: Gateway) -> None:
    from boto3.s3.transfer import TransferConfig

    repo = _repo(gw, "boto")
    s3 = gw.client()
    env = gw.env
    names = [b["Name"] for b in s3.list_buckets()["Buckets"]]
    assert repo in names and f"main.{repo}" in names

    # list: both bucket forms, delimiter, pagination
    r = s3.list_objects_v2(Bucket=repo, Prefix="main/", Delimiter="/")
    assert [c["Key"] for c in r["Contents"]] == ["main/labels.csv"]
    assert [p["Prefix"] for p in r["CommonPrefixes"]] == ["main/cats/"]
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=f"main.{repo}", MaxKeys=1)
    assert [c["Key"] for p in pages for c in p.get("Contents", [])] == [
        "cats/1.jpg",
        "cats/2.jpg",
        "labels.csv",
    ]
    v1 = s3.list_objects(Bucket=repo, Prefix="main/cats/", MaxKeys=1)
    assert v1["IsTruncated"] and [c["Key"] for c in v1["Contents"]] == ["main/cats/1.jpg"]

    # read, range-read, conditional reads, a commit by id
    want = _cat(env, f"{repo}@main:/cats/2.jpg")
    obj = s3.get_object(Bucket=repo, Key="main/cats/2.jpg")
    assert obj["Body"].read() == want
    etag = obj["ETag"]
    part = s3.get_object(Bucket=f"main.{repo}", Key="cats/2.jpg", Range="bytes=100-199")
    assert part["Body"].read() == want[100:200] and part["ContentRange"] == "bytes 100-199/5000"
    assert (
        s3.get_object(Bucket=repo, Key="main/cats/2.jpg", Range="bytes=-7")["Body"].read()
        == want[-7:]
    )
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=repo, Key="main/cats/2.jpg", IfNoneMatch=etag)
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 304
    with pytest.raises(ClientError) as e:
        s3.get_object(Bucket=repo, Key="main/cats/2.jpg", IfMatch='"nope"')
    assert _error(e)[0] == "PreconditionFailed"
    seed = _head(env, repo)
    assert s3.get_object(Bucket=repo, Key=f"{seed}/labels.csv")["Body"].read() == _cat(
        env, f"{repo}@main:/labels.csv"
    )

    # concurrent writers to one branch all land (compare-and-swap, change re-applied)
    from concurrent.futures import ThreadPoolExecutor

    many = gw.client(max_pool_connections=8)
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda i: many.put_object(Bucket=repo, Key=f"main/c/{i}", Body=b"%d" % i), range(8)
            )
        )
    assert sorted(e["name"] for e in env.json("ls", f"{repo}@main:/c")) == [
        str(i) for i in range(8)
    ]

    # write: single, multipart (5 MiB parts), a folder marker
    small = os.urandom(70_000)
    s3.put_object(Bucket=repo, Key="main/new/small.bin", Body=small)
    big = env.root / "big.bin"
    big.write_bytes(os.urandom(13 * MiB))
    cfg = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
    s3.upload_file(str(big), f"main.{repo}", "new/big.bin", Config=cfg)
    s3.put_object(Bucket=repo, Key="main/empty/", Body=b"")
    assert [e["type"] for e in env.json("ls", f"{repo}@main:/") if e["name"] == "empty"] == ["dir"]
    assert _cat(env, f"{repo}@main:/new/small.bin") == small
    assert _cat(env, f"{repo}@main:/new/big.bin") == big.read_bytes()
    head = s3.head_object(Bucket=repo, Key="main/new/big.bin")
    assert head["ContentLength"] == 13 * MiB
    messages = [c["message"] for c in env.json("log", f"{repo}@main")]
    assert "s3: CompleteMultipartUpload new/big.bin" in messages
    assert "s3: PutObject main/new/small.bin" in messages

    # copy within a ref, across refs (CreateBucket dev.<repo> branches from main), multipart copy
    s3.copy_object(Bucket=repo, Key="main/copy.csv", CopySource=f"{repo}/main/labels.csv")
    s3.create_bucket(Bucket=f"dev.{repo}")
    assert env.json("log", f"{repo}@dev")[0]["id"] == _head(env, repo)
    s3.copy_object(
        Bucket=f"dev.{repo}", Key="from-main.bin", CopySource=f"{repo}/main/new/small.bin"
    )
    s3.copy({"Bucket": repo, "Key": "main/new/big.bin"}, f"dev.{repo}", "big2.bin", Config=cfg)
    assert _cat(env, f"{repo}@main:/copy.csv") == _cat(env, f"{repo}@main:/labels.csv")
    assert _cat(env, f"{repo}@dev:/from-main.bin") == small
    assert _cat(env, f"{repo}@dev:/big2.bin") == big.read_bytes()

    # delete one, delete many
    s3.delete_object(Bucket=repo, Key="main/copy.csv")
    r = s3.delete_objects(
        Bucket=repo, Delete={"Objects": [{"Key": "main/cats/1.jpg"}, {"Key": "main/cats/2.jpg"}]}
    )
    assert len(r["Deleted"]) == 2
    left = s3.list_objects_v2(Bucket=repo, Prefix="main/")["Contents"]
    assert [c["Key"] for c in left if "/c/" not in c["Key"]] == [
        "main/labels.csv",
        "main/new/big.bin",
        "main/new/small.bin",
    ]
    assert env.run("cat", f"{repo}@main:/cats/1.jpg", ok=False).returncode != 0

    # DeleteBucket refuses a repo with files; an empty branch goes
    with pytest.raises(ClientError) as e:
        s3.delete_bucket(Bucket=repo)
    assert _error(e)[0] == "BucketNotEmpty"
    s3.create_bucket(Bucket=f"empty-{repo}")
    s3.put_object(Bucket=f"empty-{repo}", Key="main/x", Body=b"x")
    s3.delete_object(Bucket=f"empty-{repo}", Key="main/x")
    s3.delete_bucket(Bucket=f"empty-{repo}")
    assert f"empty-{repo}" not in env.out("repo", "list")

    # metrics count requests and bytes by operation
    text = urllib.request.urlopen(f"{gw.endpoint}/metrics").read().decode()
    assert re.search(r'cowfs_s3_requests_total\{op="PutObject",status="200"\} [1-9]', text)
    assert 'cowfs_s3_bytes_total{direction="in",op="UploadPart"}' in text


def test_bad_requests_are_clear_errors_and_change_nothing(
    gw: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datetime

    import botocore.auth
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from botocore.httpsession import URLLib3Session

    repo = _repo(gw, "bad")
    s3 = gw.client()
    before = _head(gw.env, repo)
    stats_before = gw.env.json("ls", f"{repo}@main:/")

    def code(fn, *a, **kw) -> tuple[str, str]:  # noqa: ANN001
        with pytest.raises(ClientError) as e:
            fn(*a, **kw)
        return _error(e)

    wrong = gw.client(secret="not-the-secret")
    assert (
        code(wrong.put_object, Bucket=repo, Key="main/x", Body=b"x")[0] == "SignatureDoesNotMatch"
    )
    assert code(s3.put_object, Bucket=repo, Key="main/a/../b", Body=b"x")[0] == "InvalidArgument"
    assert (
        code(s3.put_object, Bucket=repo, Key="main/" + "n" * 256, Body=b"x")[0] == "KeyTooLongError"
    )
    c, msg = code(s3.put_object, Bucket=repo, Key=f"{before}/x", Body=b"x")
    assert c == "AccessDenied" and "commits are read-only" in msg
    c, msg = code(s3.put_object, Bucket=f"{before}.{repo}", Key="x", Body=b"x")
    assert c == "AccessDenied" and "commits are read-only" in msg
    assert (
        code(s3.get_object, Bucket=repo, Key="main/labels.csv", Range="bytes=9999-")[0]
        == "InvalidRange"
    )
    assert code(s3.get_object, Bucket=repo, Key="main/nope")[0] == "NoSuchKey"
    assert code(s3.get_object, Bucket="no-such-repo", Key="main/x")[0] == "NoSuchBucket"
    assert (
        code(s3.put_object, Bucket=repo, Key="main/labels.csv/x", Body=b"x")[0] == "InvalidArgument"
    )
    reader = gw.client(RO_KEY, RO_SECRET)
    assert reader.get_object(Bucket=repo, Key="main/labels.csv")["Body"].read()
    c, msg = code(reader.put_object, Bucket=repo, Key="main/x", Body=b"x")
    assert c == "AccessDenied" and "read-only" in msg
    import boto3
    from botocore import UNSIGNED
    from botocore.config import Config

    anon = boto3.client(
        "s3",
        endpoint_url=gw.endpoint,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED),
    )
    assert code(anon.list_buckets)[0] == "AccessDenied"

    # 10,000 keys in one DeleteObjects: S3's limit is 1,000
    many = [{"Key": f"main/cats/{i}.jpg"} for i in range(10_000)]
    c, msg = code(s3.delete_objects, Bucket=repo, Delete={"Objects": many})
    assert c == "MalformedXML" and "at most 1000" in msg

    # a malformed DeleteObjects body, signed by botocore and sent as is
    creds = Credentials(
        gw.client()._request_signer._credentials.access_key,
        gw.client()._request_signer._credentials.secret_key,
    )
    body = b"<Delete><Object><Key>main/labels.csv</Key></Object>"
    req = AWSRequest(
        "POST",
        f"{gw.endpoint}/{repo}?delete",
        data=body,
        headers={"x-amz-content-sha256": hashlib.sha256(body).hexdigest()},
    )
    S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    resp = URLLib3Session().send(req.prepare())
    assert resp.status_code == 400 and b"<Code>MalformedXML</Code>" in resp.content

    # bodies that are not what their signed SHA-256 says (changed after signing), small and
    # streamed
    for size in (100, 3 * MiB):
        signed = os.urandom(size)
        req = AWSRequest("PUT", f"{gw.endpoint}/{repo}/main/tampered.bin", data=signed)
        S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
        prepared = req.prepare()
        prepared.body = signed[:-1] + bytes([signed[-1] ^ 1])
        resp = URLLib3Session().send(prepared)
        assert resp.status_code == 400, resp.content
        assert b"<Code>XAmzContentSHA256Mismatch</Code>" in resp.content

    # a presigned URL signed two hours ago for one hour
    url_ok = s3.generate_presigned_url(
        "get_object", Params={"Bucket": repo, "Key": "main/labels.csv"}
    )
    assert urllib.request.urlopen(url_ok).read() == _cat(gw.env, f"{repo}@main:/labels.csv")
    past = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - datetime.timedelta(
        hours=2
    )
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda *a, **k: past)
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": repo, "Key": "main/labels.csv"}, ExpiresIn=3600
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url)
    assert e.value.code == 403 and b"expired" in e.value.read()

    assert _head(gw.env, repo) == before
    assert gw.env.json("ls", f"{repo}@main:/") == stats_before


def test_awscli(gw: Gateway, tmp_path: Path) -> None:
    aws = awscli_venv()
    repo = _repo(gw, "awscli")
    env = client_env(gw, tmp_path)

    def run(*args: str, data: bytes | None = None) -> bytes:
        proc = subprocess.run(
            [str(aws), "--endpoint-url", gw.endpoint, *args],
            env=env,
            input=data,
            capture_output=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    listing = run("s3", "ls", f"s3://{repo}/main/cats/").decode()
    assert "1.jpg" in listing and "2.jpg" in listing
    assert run("s3", "cp", f"s3://{repo}/main/labels.csv", "-") == _cat(
        gw.env, f"{repo}@main:/labels.csv"
    )
    seed = _head(gw.env, repo)
    assert run("s3", "cp", f"s3://{repo}/{seed}/cats/1.jpg", "-") == _cat(
        gw.env, f"{repo}@main:/cats/1.jpg"
    )
    out = tmp_path / "range.bin"
    run(
        "s3api",
        "get-object",
        "--bucket",
        repo,
        "--key",
        "main/cats/2.jpg",
        "--range",
        "bytes=10-19",
        str(out),
    )
    assert out.read_bytes() == _cat(gw.env, f"{repo}@main:/cats/2.jpg")[10:20]
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.txt").write_bytes(b"a" * 100)
    (photos / "sub" / "b.bin").write_bytes(os.urandom(200_000))
    (photos / "big.bin").write_bytes(os.urandom(10 * MiB))  # above 8 MiB: multipart
    run("s3", "sync", str(photos), f"s3://{repo}/main/photos/")
    for rel in ("a.txt", "sub/b.bin", "big.bin"):
        assert _cat(gw.env, f"{repo}@main:/photos/{rel}") == (photos / rel).read_bytes()
    run("s3", "cp", f"s3://{repo}/main/photos/big.bin", f"s3://main.{repo}/copied/big.bin")
    assert _cat(gw.env, f"{repo}@main:/copied/big.bin") == (photos / "big.bin").read_bytes()
    run("s3", "rm", f"s3://{repo}/main/photos/a.txt")
    run("s3", "rm", "--recursive", f"s3://main.{repo}/copied/")
    after = run("s3", "ls", "--recursive", f"s3://main.{repo}/").decode()
    assert "photos/big.bin" in after and "a.txt" not in after and "copied" not in after
    assert any(m["message"].startswith("s3: ") for m in gw.env.json("log", f"{repo}@main"))


def test_rclone(gw: Gateway, tmp_path: Path) -> None:
    assert shutil.which("rclone"), "rclone is installed by scripts/setup.sh (Debian's package)"
    repo = _repo(gw, "rclone")
    env = client_env(gw, tmp_path)

    def rc(*args: str) -> bytes:
        proc = subprocess.run(
            ["rclone", "--config", "/dev/null", *args], env=env, capture_output=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout

    assert rc("lsf", f"gw:{repo}/main/").decode().split() == ["cats/", "labels.csv"]
    local = tmp_path / "local"
    rc("sync", f"gw:{repo}/main/", str(local))
    assert (local / "cats" / "2.jpg").read_bytes() == _cat(gw.env, f"{repo}@main:/cats/2.jpg")
    assert (
        rc("cat", f"gw:main.{repo}/cats/2.jpg", "--offset", "5", "--count", "10")
        == _cat(gw.env, f"{repo}@main:/cats/2.jpg")[5:15]
    )
    up = tmp_path / "up"
    up.mkdir()
    (up / "r.bin").write_bytes(os.urandom(12 * MiB))
    (up / "s.txt").write_bytes(b"small\n")
    rc("copy", str(up), f"gw:{repo}/main/rc/", "--s3-chunk-size", "5M", "--s3-upload-cutoff", "5M")
    assert _cat(gw.env, f"{repo}@main:/rc/r.bin") == (up / "r.bin").read_bytes()
    rc("copyto", f"gw:{repo}/main/rc/s.txt", f"gw:{repo}/main/rc/s2.txt")
    rc("deletefile", f"gw:{repo}/main/rc/s.txt")
    assert rc("lsf", f"gw:{repo}/main/rc/").decode().split() == ["r.bin", "s2.txt"]
    assert _cat(gw.env, f"{repo}@main:/rc/s2.txt") == b"small\n"


def test_s3fs(gw: Gateway) -> None:
    import s3fs

    from tests.s3gwutil import KEY, SECRET

    repo = _repo(gw, "s3fs")
    fs = s3fs.S3FileSystem(
        key=KEY,
        secret=SECRET,
        client_kwargs={"endpoint_url": gw.endpoint, "region_name": "us-east-1"},
    )
    assert sorted(fs.ls(f"{repo}/main/")) == [f"{repo}/main/cats", f"{repo}/main/labels.csv"]
    want = _cat(gw.env, f"{repo}@main:/cats/1.jpg")
    assert fs.cat(f"main.{repo}/cats/1.jpg") == want
    assert fs.cat_file(f"{repo}/main/cats/1.jpg", start=10, end=30) == want[10:30]
    data = os.urandom(11 * MiB)
    with fs.open(f"main.{repo}/s3fs/big.bin", "wb", block_size=5 * MiB) as f:
        f.write(data)
    fs.pipe(f"main.{repo}/s3fs/small.txt", b"small")
    fs.copy(f"main.{repo}/s3fs/small.txt", f"{repo}/main/s3fs/small2.txt")
    fs.rm(f"main.{repo}/s3fs/small.txt")
    assert _cat(gw.env, f"{repo}@main:/s3fs/big.bin") == data
    assert _cat(gw.env, f"{repo}@main:/s3fs/small2.txt") == b"small"
    fs.invalidate_cache()
    assert fs.find(f"main.{repo}/s3fs") == [
        f"main.{repo}/s3fs/big.bin",
        f"main.{repo}/s3fs/small2.txt",
    ]


@pytest.mark.mount
def test_batch_window_and_anonymous_reads_in_the_daemon(tmp_path: Path) -> None:
    """`cowfs daemon --s3` serves beside the mount, on the daemon's trio loop; a burst of PUTs
    under a batch window lands as fewer commits, every one of them there."""
    from concurrent.futures import ThreadPoolExecutor

    env = make_env(tmp_path, None)
    env.run("init")
    env.run("repo", "create", "burst")
    config = CONFIG.replace("[s3]\n", "[s3]\nbatch_window = 1.0\nallow_anonymous = true\n", 1)
    mnt = tmp_path / "pfs"
    g = start(
        env, "daemon", "--no-watch", "--mount", str(mnt), "--s3", "127.0.0.1:0", config=config
    )
    try:
        s3 = g.client(max_pool_connections=20)
        with ThreadPoolExecutor(20) as pool:
            list(
                pool.map(
                    lambda i: s3.put_object(Bucket="main.burst", Key=f"f{i:02d}", Body=b"%d" % i),
                    range(20),
                )
            )
        log = env.json("log", "burst@main")
        assert len(log) < 20
        assert sorted(e["name"] for e in env.json("ls", "burst@main:/")) == [
            f"f{i:02d}" for i in range(20)
        ]
        import boto3
        from botocore import UNSIGNED
        from botocore.config import Config

        anon = boto3.client(
            "s3",
            endpoint_url=g.endpoint,
            region_name="us-east-1",
            config=Config(signature_version=UNSIGNED),
        )
        assert anon.get_object(Bucket="burst", Key="main/f07")["Body"].read() == b"7"
        assert (mnt / "burst" / "main" / "f07").read_bytes() == b"7"  # the mount, same loop
        with pytest.raises(ClientError) as e:
            anon.put_object(Bucket="burst", Key="main/x", Body=b"x")
        assert _error(e)[0] == "AccessDenied"
    finally:
        assert g.stop() == 0, "".join(g.lines)


def test_serve_refuses_bad_settings_in_one_line(local_env: LakeEnv) -> None:
    cfg = local_env.root / "c.toml"
    cfg.write_text("[s3]\n")
    code, err = local_env.fail("s3", "serve", "--config", str(cfg))
    assert code == 2 and "no S3 keys" in err
    code, err = local_env.fail("s3", "serve", "--allow-anonymous", "--listen", "nowhere")
    assert code == 2 and "HOST:PORT" in err
    cfg.write_text('[s3]\nbatch_windw = 1\n[[s3.keys]]\naccess_key = "a"\n')
    code, err = local_env.fail("s3", "serve", "--config", str(cfg))
    assert code == 2 and "unknown key s3.batch_windw" in err and "non-empty" in err
    code, err = local_env.fail("s3", "serve", "--config", str(local_env.root / "missing.toml"))
    assert code == 2 and "no config file" in err
