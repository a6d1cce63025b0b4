"""The S3 gateway's pure rules, without a server: signatures checked against botocore's own
signer, bucket and key mapping, listing against a model of S3's semantics, ranges and
conditions, aws-chunked framing, batching of change sets, XML bodies and config."""

from __future__ import annotations

import hashlib
import time

import pytest
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from hypothesis import given, settings
from hypothesis import strategies as st

from cowfs.changes import ChangeSet
from cowfs.entries import Entry, EntryType, dir_entry
from cowfs.names import ancestors
from cowfs.s3gateway import listing, sigv4
from cowfs.s3gateway.app import header_map, operation, parse_query
from cowfs.s3gateway.awschunked import AwsChunkedDecoder
from cowfs.s3gateway.batch import merge
from cowfs.s3gateway.buckets import Bucket, locate, new_bucket, parse_bucket
from cowfs.s3gateway.config import parse_gateway_config
from cowfs.s3gateway.errors import S3Error
from cowfs.s3gateway.httpsemantics import check_conditions, parse_range
from cowfs.s3gateway.xmlbody import parse_complete, parse_delete

CREDS = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
ENDPOINT = "http://127.0.0.1:9000"


def _secret(ak: str) -> str | None:
    return CREDS.secret_key if ak == CREDS.access_key else None


def _signed(method: str, url: str, body: bytes = b"", presign: int | None = None) -> AWSRequest:
    req = AWSRequest(method=method, url=url, data=body)
    if presign is None:
        req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
        S3SigV4Auth(CREDS, "s3", "us-east-1").add_auth(req)
    else:
        S3SigV4QueryAuth(CREDS, "s3", "us-east-1", expires=presign).add_auth(req)
    return req


def _as_server_sees(req: AWSRequest) -> sigv4.SignedRequest:
    from urllib.parse import urlsplit

    prepared = req.prepare()
    parts = urlsplit(prepared.url)
    headers = [
        (k.encode(), v.encode() if isinstance(v, str) else v) for k, v in prepared.headers.items()
    ]
    headers.append((b"host", parts.netloc.encode()))
    return sigv4.SignedRequest(
        prepared.method, parts.path, parse_query(parts.query.encode()), header_map(headers)
    )


@pytest.mark.parametrize(
    "url",
    [
        f"{ENDPOINT}/images/main/cats/1.jpg",
        f"{ENDPOINT}/images/main/a%20b%2Bc%E2%82%AC~x.txt",
        f"{ENDPOINT}/images?list-type=2&prefix=main%2Fa%20b&delimiter=%2F&max-keys=7",
        f"{ENDPOINT}/",
    ],
)
def test_botocore_signatures_verify(url: str) -> None:
    got = sigv4.verify(_as_server_sees(_signed("GET", url)), _secret)
    assert got.access_key == CREDS.access_key
    got = sigv4.verify(_as_server_sees(_signed("GET", url, presign=60)), _secret)
    assert got.payload_hash == sigv4.UNSIGNED


def test_tampered_or_wrong_secret_is_refused() -> None:
    req = _as_server_sees(_signed("PUT", f"{ENDPOINT}/images/main/x", b"data"))
    other = sigv4.SignedRequest(req.method, req.raw_path + "y", req.query, req.headers)
    with pytest.raises(S3Error) as e:
        sigv4.verify(other, _secret)
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as e:
        sigv4.verify(req, lambda ak: "not-the-secret")
    assert e.value.code == "SignatureDoesNotMatch"
    with pytest.raises(S3Error) as e:
        sigv4.verify(req, lambda ak: None)
    assert e.value.code == "InvalidAccessKeyId"


def test_expired_presigned_url_and_skewed_clock() -> None:
    req = _as_server_sees(_signed("GET", f"{ENDPOINT}/images/main/x", presign=30))
    sigv4.verify(req, _secret, now=time.time() + 20)
    with pytest.raises(S3Error) as e:
        sigv4.verify(req, _secret, now=time.time() + 40)
    assert e.value.code == "AccessDenied" and "expired" in e.value.message
    req = _as_server_sees(_signed("GET", f"{ENDPOINT}/images/main/x"))
    with pytest.raises(S3Error) as e:
        sigv4.verify(req, _secret, now=time.time() + 3600)
    assert e.value.code == "RequestTimeTooSkewed"


def test_signed_streaming_chunks() -> None:
    v = sigv4.Verified(
        "AK",
        sigv4.STREAMING_SIGNED,
        "seed" * 16,
        "20260101T000000Z",
        sigv4.Credential("AK", "20260101", "us-east-1", "s3"),
        b"k" * 32,
    )

    def frame(chunks: list[bytes]) -> bytes:
        out, prev = b"", v.signature
        for c in [*chunks, b""]:
            sig = sigv4.chunk_signature(v, prev, hashlib.sha256(c).hexdigest())
            out += f"{len(c):x};chunk-signature={sig}\r\n".encode() + c + b"\r\n"
            prev = sig
        return out

    body = frame([b"a" * 70000, b"bc"])

    def check(prev: str, digest: str) -> str:
        return sigv4.chunk_signature(v, prev, digest)

    d = AwsChunkedDecoder(check, seed=v.signature)
    got = b"".join(d.feed(body[i : i + 1000]) for i in range(0, len(body), 1000))
    d.finish()
    assert got == b"a" * 70000 + b"bc"
    bad = body.replace(b"bc", b"bd")
    with pytest.raises(S3Error) as e:
        AwsChunkedDecoder(check, seed=v.signature).feed(bad)
    assert e.value.code == "SignatureDoesNotMatch"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.binary(max_size=300), max_size=5), st.lists(st.integers(1, 50), max_size=20))
def test_unsigned_aws_chunked_any_split(chunks: list[bytes], cuts: list[int]) -> None:
    body = b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks if c)
    body += b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n"
    d = AwsChunkedDecoder()
    out, pos = b"", 0
    for n in cuts:
        out += d.feed(body[pos : pos + n])
        pos += n
    out += d.feed(body[pos:])
    d.finish()
    assert out == b"".join(chunks)


def test_bucket_forms() -> None:
    repos = {"images", "data.v2"}
    assert parse_bucket("images", repos.__contains__) == Bucket("images", "images")
    assert parse_bucket("dev.images", repos.__contains__) == Bucket("dev.images", "images", "dev")
    assert parse_bucket("data.v2", repos.__contains__) == Bucket("data.v2", "data.v2")
    assert parse_bucket("x.data.v2", repos.__contains__) == Bucket("x.data.v2", "data.v2", "x")
    assert parse_bucket("nope", repos.__contains__) is None
    assert new_bucket("dev.fresh") == Bucket("dev.fresh", "fresh", "dev")
    loc = locate(Bucket("images", "images"), "main/cats/1.jpg")
    assert (loc.repo, loc.ref, loc.path, loc.key_of("x")) == (
        "images",
        "main",
        "cats/1.jpg",
        "main/x",
    )
    loc = locate(Bucket("dev.images", "images", "dev"), "cats/")
    assert (loc.ref, loc.path, loc.is_folder) == ("dev", "cats", True)
    for bad, code in [
        ("main/a/../b", "InvalidArgument"),
        ("main/a//b", "InvalidArgument"),
        ("main/" + "x" * 256, "KeyTooLongError"),
        ("main/" + "/".join(["d" * 200] * 21), "KeyTooLongError"),
    ]:
        with pytest.raises(S3Error) as e:
            locate(Bucket("images", "images"), bad)
        assert e.value.code == code, bad


# --- listing against a model -------------------------------------------------------------------


def _tree(paths: set[str]) -> list[Entry]:
    files = {p: Entry(p, EntryType.FILE, size=len(p)) for p in paths}
    dirs = {a: dir_entry(a) for p in paths for a in ancestors(p) if a not in files}
    return sorted([*files.values(), *dirs.values()], key=lambda e: e.path)


def _model(paths: set[str], prefix: str, delim: str, after: str) -> list[str]:
    out: list[str] = []
    for key in sorted(paths):
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix) :]
        if delim and delim in rest:
            key = prefix + rest[: rest.index(delim) + len(delim)]
        if key > after and (not out or out[-1] != key):
            out.append(key)
    return out


names = st.sampled_from(["a", "b", "a-b", "ab", "a.b", "é", "z"])
paths_st = st.sets(st.lists(names, min_size=1, max_size=4).map("/".join), max_size=40).filter(
    lambda ps: not any(a in ps for p in ps for a in ancestors(p))
)


@settings(max_examples=200, deadline=None)
@given(
    paths_st,
    st.sampled_from(["", "a", "a/", "a-", "b/a"]),
    st.sampled_from(["", "/", "-"]),
    st.integers(1, 6),
)
def test_listing_pages_match_s3_model(paths: set[str], prefix: str, delim: str, page: int) -> None:
    entries = _tree(paths)

    def iter_from(start: str):  # noqa: ANN202
        return iter([e for e in entries if e.path >= start])

    got: list[str] = []
    after = ""
    for _ in range(100):
        req = listing.ListRequest(prefix, delim, page, after)
        result = listing.paginate(listing.tree_items(iter_from, "", req), page)
        keys = [i.key for i in result.objects] + result.prefixes
        got.extend(sorted(keys))
        if not result.truncated:
            break
        after = listing.decode_token(listing.encode_token(result.last))
    assert got == _model(paths, prefix, delim, "")


def test_listing_in_repo_form_lists_refs_as_folders() -> None:
    trees = {"main": _tree({"x/1", "y"}), "dev": _tree({"z"})}

    def tree_of(ref: str, req: listing.ListRequest):  # noqa: ANN202
        def it(start: str):  # noqa: ANN202
            return iter([e for e in trees[ref] if e.path >= start])

        return listing.tree_items(it, f"{ref}/", req)

    def keys(prefix: str, delim: str) -> list[str]:
        req = listing.ListRequest(prefix, delim)
        return [i.key for i in listing.ref_items(sorted(trees), req, tree_of)]

    assert keys("", "/") == ["dev/", "main/"]
    assert keys("", "") == ["dev/z", "main/x/1", "main/y"]
    assert keys("m", "") == ["main/x/1", "main/y"]


def test_tree_listing_walks_only_the_range() -> None:
    from cowfs import tree
    from tests.memnodes import MemNodes  # an in-memory NodeStore that counts loads

    nodes = MemNodes()
    root = tree.build(nodes, _tree({f"d{i:03d}/f{j:03d}" for i in range(100) for j in range(100)}))
    nodes.loads = 0
    req = listing.ListRequest("d050/", "/", 10)
    page = listing.paginate(
        listing.tree_items(lambda s: tree.iter_from(nodes, root, s), "", req), 10
    )
    assert [i.key for i in page.objects][:2] == ["d050/f000", "d050/f001"] and page.truncated
    assert nodes.loads < 10


# --- HTTP rules ---------------------------------------------------------------------------


def test_ranges() -> None:
    assert parse_range("bytes=0-9", 100) == (0, 10)
    assert parse_range("bytes=90-", 100) == (90, 100)
    assert parse_range("bytes=-10", 100) == (90, 100)
    assert parse_range("bytes=50-500", 100) == (50, 100)
    assert parse_range("bytes=5-2", 100) is None
    assert parse_range("items=0-1", 100) is None
    for bad in ("bytes=100-", "bytes=200-300"):
        with pytest.raises(S3Error) as e:
            parse_range(bad, 100)
        assert e.value.code == "InvalidRange"


def test_conditions() -> None:
    tag = '"abc"'
    assert check_conditions({"if-none-match": tag}, tag, 1000) == 304
    assert check_conditions({"if-none-match": '"x"'}, tag, 1000) is None
    assert check_conditions({"if-match": '"x"'}, tag, 1000) == 412
    assert check_conditions({"if-match": tag}, tag, 1000) is None
    assert (
        check_conditions({"if-modified-since": "Thu, 01 Jan 1970 00:20:00 GMT"}, tag, 1000) == 304
    )
    assert (
        check_conditions({"if-modified-since": "Thu, 01 Jan 1970 00:00:01 GMT"}, tag, 1000) is None
    )
    assert (
        check_conditions({"if-unmodified-since": "Thu, 01 Jan 1970 00:00:01 GMT"}, tag, 1000) == 412
    )


def test_merge_keeps_the_order_of_writes() -> None:
    a = Entry("a/x", EntryType.FILE, size=1)
    b = Entry("a/x", EntryType.FILE, size=2)
    merged = merge(
        [ChangeSet(puts={"a/x": a}), ChangeSet(deletes=["a"]), ChangeSet(puts={"a/x": b})]
    )
    assert merged.puts == {"a/x": b} and merged.deletes == ["a"]
    merged = merge([ChangeSet(puts={"a/x": a}), ChangeSet(deletes=["a/x"])])
    assert merged.puts == {} and merged.deletes == ["a/x"]


def test_operations_and_bodies() -> None:
    assert operation("GET", "", "", {}, False) == "ListBuckets"
    assert operation("GET", "b", "", {"list-type": "2"}, False) == "ListObjectsV2"
    assert (
        operation("PUT", "b", "k", {"partNumber": "1", "uploadId": "u"}, True) == "UploadPartCopy"
    )
    assert operation("POST", "b", "", {"delete": ""}, False) == "DeleteObjects"
    with pytest.raises(S3Error) as e:
        operation("GET", "b", "k", {"acl": ""}, False)
    assert e.value.code == "NotImplemented"
    for body in (b"<Delete><Object><Key>a", b"<Nope/>", b"<Delete></Delete>"):
        with pytest.raises(S3Error) as e:
            parse_delete(body)
        assert e.value.code == "MalformedXML"
    many = "".join(f"<Object><Key>k{i}</Key></Object>" for i in range(1001))
    with pytest.raises(S3Error) as e:
        parse_delete(f"<Delete>{many}</Delete>".encode())
    assert "at most 1000" in e.value.message
    parts = parse_complete(
        b'<CompleteMultipartUpload xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        b'<Part><PartNumber>1</PartNumber><ETag>"e"</ETag></Part></CompleteMultipartUpload>'
    )
    assert parts[0].number == 1 and parts[0].etag == '"e"'


def test_config() -> None:
    cfg = parse_gateway_config(
        {
            "batch_window": 1,
            "keys": [
                {"access_key": "w", "secret_key": "s1", "read_write": ["images"]},
                {"access_key": "r", "secret_key": "s2", "read_only": ["*"]},
            ],
        }
    )
    assert cfg.batch_window == 1.0
    assert cfg.keys["w"].can_write("images") and not cfg.keys["w"].can_read("other")
    assert cfg.keys["r"].can_read("x") and not cfg.keys["r"].can_write("x")
    assert "s1" not in repr(cfg) and "s1" not in repr(cfg.keys["w"])
    single = parse_gateway_config({"access_key": "a", "secret_key": "b"})
    assert single.keys["a"].can_write("anything")
    from cowfs.errors import UsageError

    with pytest.raises(UsageError, match="unknown key s3.nope"):
        parse_gateway_config({"nope": 1})
    with pytest.raises(UsageError, match="non-empty"):
        parse_gateway_config({"keys": [{"access_key": "a"}]})


def test_a_large_body_is_never_whole_in_memory(tmp_path) -> None:  # noqa: ANN001
    """128 MiB streamed through `ingest` (as a PUT's body is) with Python's peak allocation
    far below the body's size; the file read back is the body."""
    import os
    import tracemalloc

    import blake3
    import trio

    from cowfs.lake import Lake
    from cowfs.reader import ChunkReader
    from cowfs.s3gateway.ingest import ingest

    os.environ.setdefault("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    lake = Lake.open(str(tmp_path / "store"), create=True)
    block = os.urandom(1 << 20)
    n = 128

    async def body():  # noqa: ANN202
        for i in range(n * 16):
            yield block[(i % 16) << 16 : ((i % 16) + 1) << 16]

    tracemalloc.start()
    try:
        data = trio.run(ingest, lake.store, body(), None)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert data.size == n << 20
    assert peak < 64 << 20, f"peak {peak >> 20} MiB for a {n} MiB body"
    assert data.digest == blake3.blake3(block * n).digest()
    reader = ChunkReader(lake.store)
    assert b"".join(reader.read(_entry(data), i << 20, 1 << 20) for i in (0, 100, 127)) == block * 3
    reader.close()
    lake.close()


def _entry(data):  # noqa: ANN001, ANN202
    from cowfs.s3gateway.ingest import file_entry

    return file_entry("x", data)
