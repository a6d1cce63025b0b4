"""The ObjectStore contract, run over every backend, plus what only the S3 backend can get wrong.

The rest of cowfs assumes nothing about a store beyond `base.ObjectStore`, so each backend must
behave identically here, down to listing order and what a lost `swap` leaves behind.
"""

from __future__ import annotations

import io
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import botocore.response
import pytest
from botocore.awsrequest import AWSPreparedRequest
from botocore.stub import Stubber
from hypothesis import given, settings
from hypothesis import strategies as st

from cowfs.config import StoreSettings
from cowfs.errors import ObjectMissing, StoreUnavailable, UsageError
from cowfs.objectstore import LocalStore, ObjectStore, open_objectstore
from cowfs.objectstore.s3 import S3Store, _in_key_order, parse_s3_url
from cowfs.objectstore.s3get import Got
from cowfs.testing.seaweed import SeaweedServer

# -- basic reads and writes -----------------------------------------------------------------------


def test_put_get_exists_delete(objectstore: ObjectStore) -> None:
    assert not objectstore.exists("chunks/ab/abc")
    objectstore.put("chunks/ab/abc", b"hello")
    assert objectstore.exists("chunks/ab/abc")
    assert objectstore.get("chunks/ab/abc") == b"hello"

    objectstore.put("chunks/ab/abc", b"replaced")
    assert objectstore.get("chunks/ab/abc") == b"replaced"

    objectstore.delete("chunks/ab/abc")
    assert not objectstore.exists("chunks/ab/abc")
    objectstore.delete("chunks/ab/abc")  # absent: not an error


def test_get_missing_raises_object_missing(objectstore: ObjectStore) -> None:
    with pytest.raises(ObjectMissing, match="nope/key"):
        objectstore.get("nope/key")
    assert objectstore.get_versioned("nope/key") is None
    assert not objectstore.exists("nope/key")


def test_binary_empty_and_large_objects(objectstore: ObjectStore) -> None:
    blobs = {
        "bin": bytes(range(256)) * 4,
        "empty": b"",
        "large": os.urandom(10 * 1024 * 1024 + 17),
    }
    for key, data in blobs.items():
        objectstore.put(key, data)
    for key, data in blobs.items():
        assert objectstore.get(key) == data
    assert dict(objectstore.list("")) == {k: len(v) for k, v in blobs.items()}


def test_get_parts_splits_what_get_reads(objectstore: ObjectStore) -> None:
    """A framed object read as header and payload (the chunk fetch path), whatever its size;
    a missing one is ObjectMissing as for `get`."""
    for key, data in {"a": os.urandom(1 << 20), "b": b"short", "c": b"", "d": b"x" * 16}.items():
        objectstore.put(key, data)
        head, rest = objectstore.get_parts(key, 16)
        assert (head, bytes(rest)) == (data[:16], data[16:]), key
    with pytest.raises(ObjectMissing):
        objectstore.get_parts("nope", 16)


def test_parallel_puts_and_gets(objectstore: ObjectStore) -> None:
    items = {f"p/{i:03d}": os.urandom(1000 + i) for i in range(64)}
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda kv: objectstore.put(*kv), items.items()))
        got = dict(zip(items, pool.map(objectstore.get, items)))
    assert got == items


# -- listing -------------------------------------------------------------------------------------

# Chosen to expose listing by directory tree instead of by key: '-' and '.' sort below '/'.
TRICKY_KEYS = [
    "A",
    "a-b",
    "a.b",
    "a/a",
    "a/b-c",
    "a/b/c",
    "a/b/d/e",
    "a0",
    "ab",
    "b/x",
    "chunks/00/0001",
    "chunks/00/00ff",
    "chunks/0a/0a11",
    "chunks/ff/ffee",
    "refs/heads/main-2",
    "refs/heads/main/sub",
]


@pytest.fixture
def listed_store(objectstore: ObjectStore) -> ObjectStore:
    for i, key in enumerate(reversed(TRICKY_KEYS)):
        objectstore.put(key, b"x" * i)
    return objectstore


def _expected(prefix: str) -> list[tuple[str, int]]:
    sizes = {key: i for i, key in enumerate(reversed(TRICKY_KEYS))}
    return sorted((k, sizes[k]) for k in TRICKY_KEYS if k.startswith(prefix))


@pytest.mark.parametrize(
    "prefix",
    [
        "",
        "a",
        "a/",
        "a/b",
        "a/b/",
        "a-",
        "chunks/",
        "chunks/0",
        "chunks/00/00",
        "refs/heads/main",
        "zzz",
        "b",
    ],
)
def test_list_prefixes_order_and_sizes(listed_store: ObjectStore, prefix: str) -> None:
    assert list(listed_store.list(prefix)) == _expected(prefix)


def test_list_is_lazy_and_restartable(listed_store: ObjectStore) -> None:
    it = listed_store.list("")
    first = next(it)
    assert first == _expected("")[0]
    assert list(listed_store.list("")) == _expected("")


def test_list_many_keys_across_pages(objectstore: ObjectStore) -> None:
    # More than one S3 page (1000 keys), in directories and with '-' siblings.
    keys = [f"d/{i:02d}/{j:02d}" for i in range(30) for j in range(35)]
    keys += [f"d/{i:02d}-x" for i in range(30)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda k: objectstore.put(k, k.encode()), keys))
    assert list(objectstore.list("d/")) == sorted((k, len(k)) for k in keys)


def test_list_after_delete(objectstore: ObjectStore) -> None:
    objectstore.put("x/y/z", b"1")
    objectstore.put("x/w", b"22")
    objectstore.delete("x/y/z")
    assert list(objectstore.list("x")) == [("x/w", 2)]


# -- swap ----------------------------------------------------------------------------------------


def test_swap_create_only(objectstore: ObjectStore) -> None:
    assert objectstore.swap("refs/main", b"v1", None)
    assert objectstore.get("refs/main") == b"v1"
    assert not objectstore.swap("refs/main", b"v2", None)
    assert objectstore.get("refs/main") == b"v1"


def test_swap_match_and_mismatch(objectstore: ObjectStore) -> None:
    objectstore.put("refs/main", b"v1")
    v1 = objectstore.get_versioned("refs/main")
    assert v1 is not None and v1.data == b"v1"

    assert objectstore.swap("refs/main", b"v2", v1.token)
    v2 = objectstore.get_versioned("refs/main")
    assert v2 is not None and v2.data == b"v2" and v2.token != v1.token

    # A stale token loses and leaves the winner's bytes intact.
    assert not objectstore.swap("refs/main", b"v3", v1.token)
    assert objectstore.get("refs/main") == b"v2"
    assert not objectstore.swap("refs/main", b"v3", "not-a-real-token")
    assert objectstore.get("refs/main") == b"v2"

    assert objectstore.swap("refs/main", b"v3", v2.token)
    assert objectstore.get("refs/main") == b"v3"


def test_swap_with_token_on_missing_key_fails(objectstore: ObjectStore) -> None:
    objectstore.put("refs/gone", b"v1")
    token = objectstore.get_versioned("refs/gone").token  # type: ignore[union-attr]
    objectstore.delete("refs/gone")
    assert not objectstore.swap("refs/gone", b"v2", token)
    assert not objectstore.exists("refs/gone")


def test_token_is_stable_between_reads(objectstore: ObjectStore) -> None:
    objectstore.put("refs/main", b"same")
    a = objectstore.get_versioned("refs/main")
    b = objectstore.get_versioned("refs/main")
    assert a == b


@pytest.mark.parametrize("racers", [8, 24])
def test_concurrent_swaps_exactly_one_winner(objectstore: ObjectStore, racers: int) -> None:
    key = "refs/heads/main"
    rounds = 5
    for rnd in range(rounds):
        current = objectstore.get_versioned(key)
        expected = current.token if current else None
        barrier = threading.Barrier(racers)

        def race(i: int, rnd: int = rnd, expected: str | None = expected, barrier=barrier) -> bool:
            barrier.wait()
            return objectstore.swap(key, f"round {rnd} racer {i}".encode(), expected)

        with ThreadPoolExecutor(racers) as pool:
            results = list(pool.map(race, range(racers)))
        winners = [i for i, won in enumerate(results) if won]
        assert len(winners) == 1, f"round {rnd}: winners {winners}"
        assert objectstore.get(key) == f"round {rnd} racer {winners[0]}".encode()


# -- S3 specifics --------------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_endpoint_fails_fast_with_clear_message(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    began = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        S3Store("s3://some-bucket/lake")
    assert time.monotonic() - began < 10
    message = str(info.value)
    assert "\n" not in message
    assert f"cannot reach S3 endpoint {endpoint}" in message
    assert "AWS_ENDPOINT_URL" in message


def test_server_gone_after_open_raises_store_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    # Error mapping is under test here, not botocore's backoff (which the test above times).
    with SeaweedServer() as private:
        for name, value in private.env().items():
            monkeypatch.setenv(name, value)
        store = S3Store("s3://going-away/lake", create=True, settings=StoreSettings(s3_attempts=1))
        store.put("k", b"v")
    calls = {
        "get": lambda: store.get("k"),
        "get_versioned": lambda: store.get_versioned("k"),
        "put": lambda: store.put("k", b"w"),
        "exists": lambda: store.exists("k"),
        "delete": lambda: store.delete("k"),
        "list": lambda: list(store.list("")),
        "swap": lambda: store.swap("k", b"w", None),
    }
    for name, call in calls.items():
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot reach S3 endpoint"):
            call()
        assert time.monotonic() - began < 5, name
    store.close()


def test_missing_bucket(s3_env: dict[str, str]) -> None:
    with pytest.raises(StoreUnavailable, match="bucket no-such-bucket-here does not exist"):
        S3Store("s3://no-such-bucket-here/x")


def test_create_makes_bucket(seaweed: SeaweedServer, s3_env: dict[str, str]) -> None:
    name = f"created-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    store = S3Store(f"s3://{name}/lake", create=True)
    store.put("k", b"v")
    assert S3Store(f"s3://{name}/lake").get("k") == b"v"
    assert S3Store(f"s3://{name}/lake", create=True).get("k") == b"v"  # already there: fine
    store.close()


def test_bad_credentials(s3_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    with pytest.raises(StoreUnavailable, match="AWS_SECRET_ACCESS_KEY") as info:
        S3Store(s3_url)
    assert "\n" not in str(info.value)


def test_directory_part_of_a_key_is_not_an_object(objectstore: ObjectStore) -> None:
    # SeaweedFS and a local folder keep keys as a directory tree; the directories must not leak
    # out as objects.
    store = objectstore
    store.put("a/b/c", b"x")
    assert not store.exists("a/b")
    assert store.get_versioned("a/b") is None
    with pytest.raises(ObjectMissing):
        store.get("a/b")


def test_prefixes_isolate_stores(s3_url: str) -> None:
    a = S3Store(s3_url + "/a", create=True)
    ab = S3Store(s3_url + "/a-b", create=True)
    a.put("k", b"in a")
    ab.put("k", b"in a-b")
    assert a.get("k") == b"in a"
    assert list(a.list("")) == [("k", 4)]
    assert list(ab.list("")) == [("k", 6)]
    whole = S3Store(s3_url)
    assert list(whole.list("")) == [("a-b/k", 6), ("a/k", 4)]


def test_close_is_idempotent(s3_url: str) -> None:
    store = S3Store(s3_url, create=True)
    store.close()
    store.close()


def _stubbed(s3_url: str) -> tuple[S3Store, Stubber]:
    """A store whose every request goes through the stubbed boto3 client (GETs included, which
    otherwise take `FastGet`'s urllib3 path)."""
    store = S3Store(s3_url, create=True, settings=StoreSettings(s3_fast_get=False))
    return store, Stubber(store._client)  # noqa: SLF001


def test_swap_retries_conditional_request_conflict(s3_url: str) -> None:
    store, stub = _stubbed(s3_url)
    for _ in range(2):
        stub.add_client_error(
            "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
        )
    stub.add_response("put_object", {"ETag": '"abc"'})
    with stub:
        assert store.swap("ref", b"v", None)
    stub.assert_no_pending_responses()


def test_swap_gives_up_after_persistent_conflicts(s3_url: str) -> None:
    store, stub = _stubbed(s3_url)
    for _ in range(20):
        stub.add_client_error(
            "put_object", service_error_code="ConditionalRequestConflict", http_status_code=409
        )
    with stub:
        assert not store.swap("ref", b"v", '"etag"')


def test_swap_412_after_retry_of_own_write_counts_as_won(s3_url: str) -> None:
    """botocore retried a PUT whose first attempt landed: the 412 is against our own bytes."""
    store, stub = _stubbed(s3_url)
    stub.add_client_error(
        "put_object",
        service_error_code="PreconditionFailed",
        http_status_code=412,
        response_meta={"RetryAttempts": 1},
    )
    body = botocore.response.StreamingBody(io.BytesIO(b"ours"), 4)
    stub.add_response("get_object", {"Body": body, "ETag": '"x"'})
    with stub:
        assert store.swap("ref", b"ours", None)


class _Captured(Exception):
    pass


@pytest.mark.parametrize("op", ["put", "swap"])
def test_writer_dying_before_the_body_leaves_no_object(s3_url: str, op: str) -> None:
    """Replay a PUT's exact signed headers, then hang up before the body, as a killed writer would.

    SeaweedFS stores an empty object for such a request unless Content-MD5 guards it.
    """
    store = S3Store(s3_url, create=True)
    captured: dict[str, AWSPreparedRequest] = {}

    def grab(request: AWSPreparedRequest, **_: object) -> None:
        captured["request"] = request
        raise _Captured

    store._client.meta.events.register_first("before-send.s3.PutObject", grab)  # noqa: SLF001
    with pytest.raises(_Captured):
        if op == "put":
            store.put("victim", os.urandom(1 << 20))
        else:
            store.swap("victim", os.urandom(1 << 20), None)
    request = captured["request"]
    url = urlsplit(request.url)
    headers = "".join(
        f"{k}: {v.decode() if isinstance(v, bytes) else v}\r\n" for k, v in request.headers.items()
    )
    assert url.hostname and url.port
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall(f"PUT {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\n{headers}\r\n".encode())
        time.sleep(0.2)
    time.sleep(0.5)
    fresh = S3Store(s3_url)
    assert not fresh.exists("victim")
    assert list(fresh.list("")) == []


def test_seaweed_env_and_endpoint(seaweed: SeaweedServer) -> None:
    env = seaweed.env()
    assert env["AWS_ENDPOINT_URL"] == seaweed.endpoint_url
    assert seaweed.endpoint_url.startswith("http://127.0.0.1:")
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"} <= env.keys()
    assert seaweed.running


# -- key order -----------------------------------------------------------------------------------


def _tree_order(key: str) -> str:
    return key.replace("/", "\0")


@settings(max_examples=300, deadline=None)
@given(
    keys=st.sets(
        st.text(alphabet="ab-./0", min_size=1, max_size=8).filter(
            lambda k: not k.startswith("/") and not k.endswith("/") and "//" not in k
        ),
        max_size=40,
    ),
    prefix=st.text(alphabet="ab-./", max_size=3),
)
def test_in_key_order_repairs_tree_order(keys: set[str], prefix: str) -> None:
    # A file and a directory of the same name cannot coexist in a directory-tree server.
    keys = {k for k in keys if not any(o.startswith(k + "/") for o in keys)}
    listed = [(k, len(k)) for k in keys if k.startswith(prefix)]
    dir_len = prefix.rfind("/") + 1
    for server_order in (sorted(listed), sorted(listed, key=lambda kv: _tree_order(kv[0]))):
        assert list(_in_key_order(iter(server_order), dir_len)) == sorted(listed)


# -- URLs ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://bkt", "bkt", ""),
        ("s3://bkt/", "bkt", ""),
        ("s3://bkt/lake", "bkt", "lake/"),
        ("s3://bkt/team/lake/", "bkt", "team/lake/"),
    ],
)
def test_parse_s3_url(url: str, bucket: str, prefix: str) -> None:
    assert parse_s3_url(url) == (bucket, prefix)


@pytest.mark.parametrize(
    "url", ["s3://", "s3:///lake", "s3://bkt/a//b", "s3://bkt/x?y=1", "s3://Bad_Bucket!/x"]
)
def test_parse_s3_url_rejects(url: str) -> None:
    with pytest.raises(UsageError):
        parse_s3_url(url)


def test_open_objectstore_local(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    with pytest.raises(StoreUnavailable):
        open_objectstore(str(root))
    store = open_objectstore(str(root), create=True)
    assert isinstance(store, LocalStore) and store.root == root
    store.put("k", b"v")
    via_url = open_objectstore(f"file://{root}")
    assert isinstance(via_url, LocalStore) and via_url.get("k") == b"v"


def test_open_objectstore_s3(s3_url: str) -> None:
    with pytest.raises(StoreUnavailable):
        open_objectstore("s3://bucket-that-is-absent/x")
    store = open_objectstore(s3_url + "/", create=True)
    assert isinstance(store, S3Store)
    assert store.url == s3_url
    store.put("k", b"v")
    assert open_objectstore(s3_url).get("k") == b"v"
    store.close()


@pytest.mark.parametrize("url", ["gs://bucket/x", "http://example.com/lake", "s3://"])
def test_open_objectstore_rejects(url: str) -> None:
    with pytest.raises(UsageError):
        open_objectstore(url)


# --- GETs through urllib3 (cowfs.objectstore.s3get) ----------------------------------------


def test_fast_get_reads_what_boto3_reads(s3_url: str) -> None:
    """Same bytes and ETag as boto3 for keys that need quoting, answered by the fast path
    itself (a signature the server refused would fall back to boto3 unseen); absent keys are
    absent."""
    fast = S3Store(s3_url, create=True)
    slow = S3Store(s3_url, settings=StoreSettings(s3_fast_get=False))
    assert fast._fast is not None and slow._fast is None  # noqa: SLF001
    keys = ["chunks/ab/cd", "a b/c+d", "ünï/cödé", "x%20y", "t~i=l&d;e", "q?r#s"]
    for i, key in enumerate(keys):
        fast.put(key, os.urandom(1000 + i))
    for key in keys:
        assert fast._get(key) == slow._get(key), key  # noqa: SLF001
        assert fast._get(key) is not None  # noqa: SLF001
        assert fast.get_parts(key, 16) == slow.get_parts(key, 16), key
        assert isinstance(fast._fast.get(fast._key(key)), Got), key  # signed right: no fallback
    with pytest.raises(ObjectMissing):
        fast.get("no/such/key")


def test_fast_get_on_a_silent_endpoint_fails_in_its_timeout(s3_url: str) -> None:
    """A server that stops answering fails a read after the configured timeout and attempts,
    not twice that (the fast path does not hand a dead endpoint on to boto3)."""
    store = S3Store(
        s3_url,
        create=True,
        settings=StoreSettings(s3_read_timeout=0.5, s3_attempts=1),
    )
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(16)
        assert store._fast is not None  # noqa: SLF001
        store._fast.point_at(f"http://127.0.0.1:{srv.getsockname()[1]}/bucket/")  # noqa: SLF001
        began = time.monotonic()
        with pytest.raises(StoreUnavailable, match="cannot reach S3 endpoint"):
            store.get("k")
        assert time.monotonic() - began < 5


def test_fast_get_leaves_refusals_to_boto3(s3_url: str) -> None:
    """A 403 (wrong secret) is not guessed at: boto3 asks again and words the error."""
    S3Store(s3_url, create=True).put("k", b"v")
    store = S3Store(s3_url)
    from botocore.credentials import Credentials

    store._fast._signer._credentials = Credentials("wrong-key", "wrong")  # noqa: SLF001
    store._client._request_signer._credentials = Credentials("wrong-key", "wrong")  # noqa: SLF001
    with pytest.raises(StoreUnavailable, match="refused to read"):
        store.get("k")


def test_fast_get_reads_again_a_body_broken_off(s3_url: str) -> None:
    """A body that breaks off mid-stream is asked for again (within the store's attempts), not
    returned short and not reported as an outage."""
    store = S3Store(s3_url, create=True)

    def serve(srv: socket.socket) -> None:
        for body in (b"v" * 10, b"v" * 1000):  # broken off, then whole
            conn, _ = srv.accept()
            with conn:
                conn.recv(65536)
                head = b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nETag: "e"\r\n\r\n'
                conn.sendall(head + body)

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(2)
        server = threading.Thread(target=serve, args=(srv,), daemon=True)
        server.start()
        fast = store._fast  # noqa: SLF001
        assert fast is not None
        fast.point_at(f"http://127.0.0.1:{srv.getsockname()[1]}/bucket/")
        got = fast.get("k")
        server.join(timeout=10)
    assert isinstance(got, Got) and got.data == b"v" * 1000 and got.etag == '"e"'


@settings(max_examples=60, deadline=None)
@given(
    parts=st.lists(st.binary(max_size=3000), max_size=6),
    most=st.one_of(st.none(), st.integers(min_value=1, max_value=700)),
)
def test_parts_are_written_in_order_whatever_each_writev_takes(
    tmp_path_factory: pytest.TempPathFactory, parts: list[bytes], most: int | None
) -> None:
    """A local put of parts (header and payload, unjoined) stores exactly their concatenation,
    and so does the writing loop when the kernel takes only some bytes per `writev` (`most`:
    a short write, made by handing the real `writev` only a prefix of the buffers)."""
    from cowfs.objectstore.local import _write_all

    root = tmp_path_factory.mktemp("parts")
    store = LocalStore(str(root / "s"), create=True)
    store.put_parts("chunks/ab/x", parts)
    assert store.get("chunks/ab/x") == b"".join(parts)

    def short(fd: int, bufs: list[memoryview]) -> int:
        out, room = [], most or 1 << 30
        for b in bufs:
            if room <= 0:
                break
            out.append(b[:room])
            room -= len(out[-1])
        return os.writev(fd, out)

    with open(root / "short", "wb") as f:
        _write_all(f.fileno(), [parts[0], memoryview(b"".join(parts[1:]))] if parts else [], short)
    assert (root / "short").read_bytes() == b"".join(parts)
