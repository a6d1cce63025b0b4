"""GET of whole objects straight through urllib3, signed by botocore's own SigV4 signer.

A 1 MiB GetObject through boto3 costs about 3 ms of CPU on this kind of machine (events,
user-agent assembly, response parsing, date parsing) against under 1 ms for the same request
signed by botocore and sent with urllib3 (docs/benchmarks.md, *Cold reads from S3*). Chunks are
read by the thousand on a cold mount or a DataLoader epoch, on the same cores that verify them,
so the mount's cold read rate follows this cost.

Only the common case is handled here: 200 (the body, its ETag) and 404 NoSuchKey (absent).
A body broken off mid-stream is asked for again within the configured attempts (urllib3's
retry covers the whole response, read in full). A server that does not answer within the
timeouts and attempts is reported as such (so a stalled store fails a read as fast as through
boto3). Any other answer (another status,
a server error, a short body) is left to the caller, which asks boto3 again: its error
messages stay the one account of what the server said.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest

_CODE = re.compile(rb"<Code>([^<]{1,64})</Code>")


class Got(NamedTuple):
    data: bytes
    etag: str


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
        self._credentials = credentials
        self._region = region
        probe = client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": "cowfs-probe"}, ExpiresIn=60
        )
        parts = urlsplit(probe)
        path = parts.path
        if not path.endswith("/cowfs-probe"):
            raise ValueError(f"unexpected object URL shape {probe!r}")
        self.base = f"{parts.scheme}://{parts.netloc}{path[: -len('cowfs-probe')]}"
        self._pool = urllib3.PoolManager(
            maxsize=pool_size,
            block=False,
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            retries=urllib3.Retry(
                total=max(0, attempts - 1), connect=None, read=None, status=0, redirect=0
            ),
        )

    def _headers(self, url: str) -> dict[str, str]:
        req = AWSRequest(method="GET", url=url)
        S3SigV4Auth(self._credentials.get_frozen_credentials(), "s3", self._region).add_auth(req)
        return dict(req.headers.items())

    def get(self, full_key: str) -> Got | Absent | Unreachable | None:
        """The object, Absent, Unreachable, or None when this path cannot tell (the caller then
        asks boto3)."""
        url = self.base + quote(full_key, safe="/~")
        try:
            resp = self._pool.request(
                "GET", url, headers=self._headers(url), preload_content=True, decode_content=False
            )
        except (urllib3.exceptions.MaxRetryError, urllib3.exceptions.TimeoutError, OSError) as e:
            cause = getattr(e, "reason", None) or e
            return Unreachable(type(cause).__name__)
        except urllib3.exceptions.HTTPError:
            return None  # e.g. a body broken off mid-stream: boto3's path retries the read
        if resp.status == 200:
            length = resp.headers.get("Content-Length")
            if length is not None and int(length) != len(resp.data):
                return None
            return Got(resp.data, resp.headers.get("ETag", ""))
        if resp.status == 404:
            m = _CODE.search(resp.data or b"")
            if m is not None and m.group(1) == b"NoSuchKey":
                return Absent()
        return None

    def close(self) -> None:
        self._pool.clear()
