"""The lean HTTP/1.1 GET client under the S3 fast path (cowfs.objectstore.http1)."""

from __future__ import annotations

import io
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from cowfs.objectstore.http1 import BodyBroken, Pool, Unsupported, read_head, request_bytes


def test_read_head_parses_status_and_headers() -> None:
    fp = io.BytesIO(b'HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nETag:  "x" \r\n\r\nabc')
    assert read_head(fp) == (404, True, {"content-length": "3", "etag": '"x"'})
    assert fp.read() == b"abc"


@pytest.mark.parametrize(
    "raw", [b"SPDY/3 200 OK\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"]
)
def test_read_head_refuses_what_it_does_not_read(raw: bytes) -> None:
    with pytest.raises(Unsupported):
        read_head(io.BytesIO(raw))


def test_read_head_of_a_cut_response_is_broken() -> None:
    with pytest.raises(BodyBroken):
        read_head(io.BytesIO(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n"))


def test_request_bytes_sends_its_own_host() -> None:
    req = request_bytes("/b/k%20x", "h:1", {"Host": "other", "Authorization": "a"})
    assert req == (
        b"GET /b/k%20x HTTP/1.1\r\nHost: h:1\r\nAccept-Encoding: identity\r\n"
        b"Authorization: a\r\n\r\n"
    )


@contextmanager
def server(handle: Callable[[socket.socket, int], bool]) -> Iterator[str]:
    """A server calling `handle(conn, n)` for the n-th request on any connection, until it
    returns False (then the connection is closed)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    count = [0]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while conn.recv(65536):
                    count[0] += 1
                    if not handle(conn, count[0]):
                        break

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/"
    finally:
        srv.close()


def ok(body: bytes, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def test_connection_is_kept_alive_and_a_stale_one_is_replaced() -> None:
    """Two GETs share one connection; when the server closed it meanwhile, the next GET goes
    out on a fresh one instead of failing."""

    def handle(conn: socket.socket, n: int) -> bool:
        conn.sendall(ok(b"r%d" % n))
        return n != 2  # the second answer closes the connection afterwards

    with server(handle) as url:
        pool = Pool(url, 2.0, 2.0, 4)
        assert pool.get("/a", {}).body == b"r1"
        assert pool.get("/a", {}).body == b"r2"
        assert pool.get("/a", {}).body == b"r3"  # the kept one was closed: asked again
        pool.close()


def test_a_forked_child_does_not_share_the_parents_connections(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peers: set[tuple[str, int]] = set()

    def handle(conn: socket.socket, n: int) -> bool:
        peers.add(conn.getpeername())
        conn.sendall(ok(b"x"))
        return True

    with server(handle) as url:
        pool = Pool(url, 2.0, 2.0, 4)
        pool.get("/a", {})
        pool.get("/a", {})
        assert len(peers) == 1
        monkeypatch.setattr(os, "getpid", lambda: -1)
        pool.get("/a", {})
        assert len(peers) == 2
        pool.close()


def test_chunked_and_short_bodies() -> None:
    def handle(conn: socket.socket, n: int) -> bool:
        if n == 1:
            conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        else:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    with server(handle) as url:
        pool = Pool(url, 2.0, 2.0, 4)
        with pytest.raises(Unsupported):
            pool.get("/a", {})
        with pytest.raises(BodyBroken):
            pool.get("/a", {})
