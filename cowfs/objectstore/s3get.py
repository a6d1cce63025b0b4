"""GET of whole objects over a lean HTTP/1.1 client, signed by a SigV4 signer of their own
(`cowfs.objectstore.sigv4`, checked against botocore's).

A 1 MiB GetObject through boto3 costs about 3 ms of CPU on this kind of machine (events,
user-agent assembly, response parsing, date parsing), through urllib3 about 1.5 ms, and
through `cowfs.objectstore.http1` about 0.5 ms (docs/benchmarks.md, *Cold S3 reads, third
pass*). Chunks are read by the thousand on a cold mount or a DataLoader epoch, on the same
cores that verify them, so the mount's cold read rate follows this cost.

Only the common case is handled here: 200 (the body, its ETag) and 404 NoSuchKey (absent).
A body broken off mid-stream, a refused or timed-out connection, is asked for again within
the configured attempts. A server that does not answer within the timeouts and attempts is
reported as such (so a stalled store fails a read as fast as through boto3). Any other answer
(another status, a server error, a body this client does not read, a body still broken after
the attempts) is left to the caller, which asks boto3 again: its error messages stay the one
account of what the server said.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from cowfs.objectstore.http1 import BodyBroken, Pool, Unsupported
from cowfs.objectstore.sigv4 import GetSigner

_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


class Got(NamedTuple):
    #: The body after its first `split` bytes (`head`), as asked of `FastGet.get`.
    data: bytes
    etag: str
    head: bytes = b""


class Absent(NamedTuple):
    """The server answered 404 NoSuchKey."""


class Unreachable(NamedTuple):
    """No answer after the configured attempts (refused, timed out, broken off)."""

    error: str


class FastGet:
    """Signed GETs on a pool of its own. `base` is the object URL up to the key, as botocore
    builds it (path or virtual-host style), so addressing follows the client's own choice."""

    def __init__(
        self,
        client: Any,
        credentials: Any,
        bucket: str,
        region: str,
        connect_timeout: float,
        read_timeout: float,
        attempts: int,
        pool_size: int,
    ) -> None:
        self._signer = GetSigner(credentials, region)
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "cowfs-probe"}, ExpiresIn=60
        )
        parts = urlsplit(probe)
        path = parts.path
        if not path.endswith("/cowfs-probe"):
            raise ValueError(f"unexpected object URL shape {probe!r}")
        self._attempts = max(1, attempts)
        self._timeouts = (connect_timeout, read_timeout)
        self._pool_size = pool_size
        self._pool: Pool | None = None
        self.point_at(f"{parts.scheme}://{parts.netloc}{path[: -len('cowfs-probe')]}")

    def point_at(self, base: str) -> None:
        """Send GETs to `base` (the URL an object's key is appended to), on connections of
        their own; the tests point it at servers that misbehave."""
        old = self._pool
        self._pool = Pool(base, *self._timeouts, self._pool_size)
        self._base_path = urlsplit(base).path
        if old is not None:
            old.close()

    def get(self, full_key: str, split: int = 0) -> Got | Absent | Unreachable | None:
        """The object (its first `split` bytes apart), Absent, Unreachable, or None when this
        path cannot tell (the caller then asks boto3)."""
        pool, base_path = self._pool, self._base_path
        assert pool is not None
        path = base_path + quote(full_key, safe="/~")
        headers = self._signer.headers(pool.host, path)
        failure: Unreachable | None = None
        for _ in range(self._attempts):
            try:
                resp = pool.get(path, headers, split)
            except Unsupported:
                return None
            except BodyBroken:
                failure = None
                continue
            except OSError as e:
                failure = Unreachable(type(e).__name__)
                continue
            if resp.status == 200:
                return Got(resp.body, resp.headers.get("etag", ""), resp.head)
            if resp.status == 404:
                m = _CODE.search(resp.head + resp.body)
                if m is not None and m.group(1) == b"NoSuchKey":
                    return Absent()
            return None
        return failure

    def close(self) -> None:
        if self._pool is not None:
            self._pool.close()
