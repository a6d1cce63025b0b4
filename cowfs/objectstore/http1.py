"""A minimal HTTP/1.1 client for one request shape: a GET whose answer has a Content-Length,
on kept-alive connections.

A cold mount fetches chunks by the thousand, on the cores that also verify them and serve the
reads. Through urllib3 and `http.client` a 1 MiB GET costs about 1,800 Python calls (URL
re-parsing, `email` header parsing, response wrappers): about 1 ms of CPU, as much as hashing
and caching the chunk together. Here it is a request line, a few header lines and one
`BufferedReader.read(n)`, which reads the body straight into the `bytes` it returns (no copy
after the socket's).

Whatever is not that shape (chunked or unsized bodies, a status line that is not HTTP/1.x)
raises `Unsupported`, and the caller asks a complete client. Transport failures are `OSError`s
(`TimeoutError` among them); a body cut short is `BodyBroken`.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
from collections import deque
from collections.abc import Mapping
from typing import BinaryIO, NamedTuple
from urllib.parse import urlsplit

_MAX_LINE = 65536
_MAX_HEADERS = 100
_BUFFER = 64 << 10


class Response(NamedTuple):
    status: int
    #: Header names lower-cased; a repeated header keeps its last value.
    headers: dict[str, str]
    #: The body's first `split` bytes (as asked of `Pool.get`), then the rest, each a `bytes` of
    #: its own: a framed object's payload is read apart from its header, not sliced out.
    head: bytes
    body: bytes


class Unsupported(Exception):
    """An answer this client does not read; a complete client should ask again."""


class BodyBroken(Exception):
    """The connection ended before the body's Content-Length was read."""


class _StaleConnection(Exception):
    """A kept-alive connection the server had closed: nothing was answered on it."""


class _Conn:
    __slots__ = ("sock", "fp", "reused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fp: BinaryIO = sock.makefile("rb", buffering=_BUFFER)
        self.reused = False

    def close(self) -> None:
        self.fp.close()
        self.sock.close()


def host_header(scheme: str, hostname: str, port: int | None) -> str:
    """The Host header for a URL's parts (as botocore signs it): the port only when it is not
    the scheme's default."""
    host = f"[{hostname}]" if ":" in hostname else hostname
    if port is not None and port != {"http": 80, "https": 443}.get(scheme):
        host = f"{host}:{port}"
    return host


def request_bytes(path: str, host: str, headers: Mapping[str, str]) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    lines += [f"{k}: {v}" for k, v in headers.items() if k.lower() != "host"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def read_head(fp: BinaryIO) -> tuple[int, bool, dict[str, str]]:
    """The status, whether HTTP/1.1 (keep-alive by default), and the headers of a response."""
    line = fp.readline(_MAX_LINE)
    if not line:
        raise _StaleConnection
    parts = line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
        raise Unsupported(f"status line {line[:80]!r}")
    headers: dict[str, str] = {}
    for _ in range(_MAX_HEADERS):
        h = fp.readline(_MAX_LINE)
        if h in (b"\r\n", b"\n"):
            return int(parts[1]), parts[0] == b"HTTP/1.1", headers
        if not h:
            raise BodyBroken("connection closed in the headers")
        name, sep, value = h.partition(b":")
        if not sep:
            raise Unsupported(f"header line {h[:80]!r}")
        headers[name.strip().lower().decode("latin-1")] = value.strip().decode("latin-1")
    raise Unsupported("too many header lines")


class Pool:
    """Kept-alive connections to the server of `url` (http or https), at most `size` idle."""

    def __init__(self, url: str, connect_timeout: float, read_timeout: float, size: int) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported URL {url!r}")
        scheme = parts.scheme
        #: What is sent as the Host header (and signed).
        self.host = host_header(scheme, parts.hostname, parts.port)
        self._host = parts.hostname
        self._port = parts.port or (443 if scheme == "https" else 80)
        self._tls = ssl.create_default_context() if scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._size = size
        self._idle: deque[_Conn] = deque()
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self) -> _Conn:
        sock = socket.create_connection((self._host, self._port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self._host)
            sock.settimeout(self._read_timeout)
        except BaseException:
            sock.close()
            raise
        return _Conn(sock)

    def _take(self) -> _Conn:
        with self._lock:
            if self._pid != os.getpid():
                # A forked child: the idle connections are the parent's too. Forget them
                # (closing them here would not hurt the parent, but using them would).
                self._idle, self._pid = deque(), os.getpid()
            if self._idle:
                conn = self._idle.pop()
                conn.reused = True
                return conn
        return self._connect()

    def _give(self, conn: _Conn) -> None:
        with self._lock:
            if len(self._idle) < self._size:
                self._idle.append(conn)
                return
        conn.close()

    def get(self, path: str, headers: Mapping[str, str], split: int = 0) -> Response:
        """One GET, on a kept-alive connection if one is idle (asked again on a fresh one
        when the server had closed it meanwhile); the body's first `split` bytes apart."""
        req = request_bytes(path, self.host, headers)
        while True:
            conn = self._take()
            try:
                return self._exchange(conn, req, split)
            except _StaleConnection:
                conn.close()
                if not conn.reused:
                    raise BodyBroken("connection closed before the status line") from None
            except (ConnectionResetError, BrokenPipeError):
                conn.close()
                if not conn.reused:
                    raise
            except BaseException:
                conn.close()
                raise

    def _exchange(self, conn: _Conn, req: bytes, split: int) -> Response:
        conn.sock.sendall(req)
        status, keep, headers = read_head(conn.fp)
        if "transfer-encoding" in headers:
            raise Unsupported("transfer-encoding " + headers["transfer-encoding"])
        length = headers.get("content-length")
        if length is None or not length.isdigit():
            raise Unsupported("no content-length")
        n = int(length)
        k = min(split, n)
        head = conn.fp.read(k) if k else b""
        body = conn.fp.read(n - k) if n > k else b""
        if len(head) + len(body) != n:
            raise BodyBroken(f"body broken off at {len(head) + len(body)} of {n} bytes")
        if keep and headers.get("connection", "").lower() != "close":
            self._give(conn)
        else:
            conn.close()
        return Response(status, headers, head, body)

    def close(self) -> None:
        with self._lock:
            idle, self._idle = list(self._idle), deque()
        for conn in idle:
            conn.close()
