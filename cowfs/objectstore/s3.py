"""An object store in an S3 bucket (AWS, SeaweedFS, MinIO, anything speaking the S3 API).

Configuration comes only from the standard AWS environment (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, profiles…), so the same lake URL works
unchanged wherever boto3 does.

`swap` is a conditional PUT (`If-None-Match: *` to create, `If-Match: <ETag>` to replace), which
AWS has supported since 2024 and SeaweedFS and MinIO honour too: the server does the
compare-and-swap atomically, so no lock service is needed.

Timeouts are short on purpose and configurable (`cowfs.config.StoreSettings`: connect 2 s, read 5 s
per socket operation, 2 attempts): a wrong endpoint, a dead network or a stopped server fails a
request within seconds with a message naming the endpoint, not after minutes of botocore retries.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn, TypeVar
from urllib.parse import urlsplit

import boto3
import botocore.exceptions
import botocore.handlers
from botocore.config import Config

from cowfs.config import StoreSettings
from cowfs.errors import ObjectMissing, StoreUnavailable, UsageError
from cowfs.objectstore.base import ObjectStore, Versioned
from cowfs.objectstore.s3get import Absent, FastGet, Got, Unreachable

T = TypeVar("T")

#: Concurrent connections per store: ingest and prefetch run this many requests at once.
MAX_POOL_CONNECTIONS = 32
#: Attempts for a swap the server answered 409 ConditionalRequestConflict (a concurrent
#: conditional write to the same key was in flight); after these we report losing the race.
SWAP_CONFLICT_ATTEMPTS = 5
#: Attempts for a GET whose body broke off mid-stream, which botocore does not retry by itself.
BODY_READ_ATTEMPTS = 3

_MISSING_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_PRECONDITION_CODES = frozenset({"PreconditionFailed", "412"})
_CONFLICT_CODES = frozenset({"ConditionalRequestConflict", "409", "OperationAborted"})
_AUTH_CODES = frozenset(
    {
        "AccessDenied",
        "403",
        "Forbidden",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "ExpiredToken",
        "InvalidToken",
        "TokenRefreshRequired",
    }
)
#: Errors raised while a response body streams in; the request itself already succeeded.
_BODY_ERRORS = (
    botocore.exceptions.IncompleteReadError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.ReadTimeoutError,
    botocore.exceptions.ConnectionClosedError,
)


#: What botocore accepts; AWS itself is stricter (3-63 lowercase), other servers may not be.
_BUCKET_RE = re.compile(r"[A-Za-z0-9._-]{1,255}")


def parse_s3_url(url: str) -> tuple[str, str]:
    """Split `s3://bucket/a/prefix` into `("bucket", "a/prefix/")`; the prefix may be empty."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UsageError(f"bad S3 URL {url!r}: expected s3://bucket or s3://bucket/prefix")
    if parts.query or parts.fragment:
        raise UsageError(f"bad S3 URL {url!r}: no ?query or #fragment allowed")
    if not _BUCKET_RE.fullmatch(parts.netloc):
        raise UsageError(
            f"bad S3 bucket name {parts.netloc!r} in {url!r}: use letters, digits, '.', '-', '_'"
        )
    prefix = parts.path.strip("/")
    if "//" in prefix:
        raise UsageError(f"bad S3 URL {url!r}: empty path segment in prefix")
    return parts.netloc, f"{prefix}/" if prefix else ""


def _content_md5(data: bytes) -> str:
    """The Content-MD5 header that makes the server reject a body that did not fully arrive.

    Without it SeaweedFS (4.x) stores an *empty* object when a writer dies after sending the
    request headers but before the first body byte, even though Content-Length and the signed
    payload hash say otherwise; a killed `put` would leave a 0-byte chunk that dedup then trusts.
    MD5 (not a CRC trailer) because every S3 implementation checks it as a plain header.
    """
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


def _client_error_parts(e: botocore.exceptions.ClientError) -> tuple[str, int, str]:
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return str(err.get("Code", status)), int(status or 0), str(err.get("Message", "")).strip()


def _in_key_order(items: Iterator[tuple[str, int]], dir_len: int) -> Iterator[tuple[str, int]]:
    """Re-order a listing into plain key order, streaming, whatever order the server chose.

    AWS lists in UTF-8 key order. SeaweedFS walks its directory tree instead, so `a/b/c` comes
    before `a-b` and `a.b` (both sort below `a/` since '-' and '.' sort below '/'). Both orders
    share one property: once a key whose first path component below the listed directory is `c`
    has arrived, every later key is greater than `dir + c`. So buffered keys up to that bound are
    final and can go out; the buffer holds at most one first-level subtree, and nothing at all for
    a flat listing. `dir_len` is the length of the listed prefix's directory part.
    """
    heap: list[tuple[str, int]] = []
    for key, size in items:
        slash = key.find("/", dir_len)
        bound = key if slash < 0 else key[:slash]
        if not heap and key <= bound:
            yield key, size
            continue
        heapq.heappush(heap, (key, size))
        while heap and heap[0][0] <= bound:
            yield heapq.heappop(heap)
    while heap:
        yield heapq.heappop(heap)


class S3Store(ObjectStore):
    is_local = False

    def __init__(
        self, url: str, create: bool = False, settings: StoreSettings | None = None
    ) -> None:
        settings = settings or StoreSettings()
        self.bucket, self.prefix = parse_s3_url(url)
        self.url = f"s3://{self.bucket}/{self.prefix}".rstrip("/")
        self.region = (
            os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        )
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        config = Config(
            region_name=self.region,
            max_pool_connections=MAX_POOL_CONNECTIONS,
            connect_timeout=settings.s3_connect_timeout,
            read_timeout=settings.s3_read_timeout,
            retries={"mode": "standard", "total_max_attempts": settings.s3_attempts},
            tcp_keepalive=True,
            # Custom endpoints (SeaweedFS, MinIO) rarely have wildcard DNS for bucket subdomains.
            s3={"addressing_style": "path" if endpoint else "auto"},
            # The default CRC trailers (aws-chunked uploads) trip some S3-compatible servers;
            # every content-addressed object is verified against its hash on read anyway.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A private session: boto3's default session is shared global state and not
        # thread-safe to create clients from; the client itself is safe across threads.
        try:
            session = boto3.session.Session()
            self._client = session.client("s3", endpoint_url=endpoint or None, config=config)
        except ValueError as e:  # a malformed AWS_ENDPOINT_URL
            raise StoreUnavailable(
                f"invalid S3 endpoint {endpoint!r}: {e} (check AWS_ENDPOINT_URL)"
            ) from None
        # botocore sends `Expect: 100-continue` on every PUT. Go servers (SeaweedFS, MinIO) rightly
        # send no interim 100 for an empty body, which desynchronises botocore's pooled
        # connection: the next PUT on it stalls for the full read timeout and is then silently
        # sent again (boto/botocore#3755). Objects are small, so the handshake buys nothing.
        self._client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        self.endpoint_url: str = self._client.meta.endpoint_url
        self._closed = threading.Event()
        self._open_bucket(create)
        self._fast: FastGet | None = None
        credentials = session.get_credentials()
        if credentials is not None and settings.s3_fast_get:
            self._fast = FastGet(
                self._client,
                credentials,
                self.bucket,
                self.region,
                settings.s3_connect_timeout,
                settings.s3_read_timeout,
                settings.s3_attempts,
                MAX_POOL_CONNECTIONS,
            )

    # -- helpers ---------------------------------------------------------------------------------

    def _key(self, key: str) -> str:
        return self.prefix + key

    def _where(self, key: str | None = None) -> str:
        return f"s3://{self.bucket}/{self._key(key)}" if key is not None else self.url

    def _raise(self, e: Exception, action: str, key: str | None = None) -> NoReturn:
        """Turn any botocore failure into one actionable StoreUnavailable line."""
        where = self._where(key)
        if isinstance(
            e, botocore.exceptions.NoCredentialsError | botocore.exceptions.PartialCredentialsError
        ):
            raise StoreUnavailable(
                f"no AWS credentials for {where}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                "(or AWS_PROFILE)"
            ) from e
        if isinstance(
            e,
            botocore.exceptions.EndpointConnectionError
            | botocore.exceptions.ConnectTimeoutError
            | botocore.exceptions.ConnectionClosedError
            | botocore.exceptions.ReadTimeoutError
            | botocore.exceptions.HTTPClientError
            | botocore.exceptions.ConnectionError,
        ):
            raise StoreUnavailable(
                f"cannot reach S3 endpoint {self.endpoint_url} to {action} {where} "
                f"(check AWS_ENDPOINT_URL and credentials): {type(e).__name__}"
            ) from e
        if isinstance(e, botocore.exceptions.ClientError):
            code, status, message = _client_error_parts(e)
            detail = f"{code}" + (f": {message}" if message and message != code else "")
            if code in _AUTH_CODES or status == 403:
                raise StoreUnavailable(
                    f"S3 endpoint {self.endpoint_url} refused to {action} {where} ({detail}): "
                    "check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's permissions"
                ) from e
            if code == "NoSuchBucket":
                raise StoreUnavailable(
                    f"S3 bucket {self.bucket} does not exist at {self.endpoint_url}: "
                    "create it or run `cowfs init`"
                ) from e
            raise StoreUnavailable(
                f"S3 could not {action} {where} (HTTP {status} {detail}); "
                f"endpoint {self.endpoint_url}"
            ) from e
        if isinstance(e, botocore.exceptions.ParamValidationError):
            detail = " ".join(str(e).split())
            raise UsageError(f"invalid S3 request to {action} {where}: {detail}") from e
        if isinstance(e, botocore.exceptions.BotoCoreError):
            raise StoreUnavailable(
                f"S3 could not {action} {where} at {self.endpoint_url}: {e}"
            ) from e
        raise e

    def _call(self, action: str, key: str | None, fn: Callable[..., T], **kwargs: Any) -> T:
        try:
            return fn(**kwargs)
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            self._raise(e, action, key)

    def _open_bucket(self, create: bool) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except botocore.exceptions.ClientError as e:
            code, status, _ = _client_error_parts(e)
            if status != 404 and code not in ("NoSuchBucket", "NotFound"):
                self._raise(e, "open bucket")
        except botocore.exceptions.BotoCoreError as e:
            self._raise(e, "open bucket")
        if not create:
            raise StoreUnavailable(
                f"S3 bucket {self.bucket} does not exist at {self.endpoint_url}: "
                "create it or run `cowfs init`"
            )
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except self._client.exceptions.BucketAlreadyOwnedByYou:
            pass  # created concurrently by another process of ours: fine
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            self._raise(e, "create bucket")

    def _get(self, key: str) -> tuple[bytes, str] | None:
        """GET with the body fully read; None when the key is absent."""
        got = self._fetch(key, 0)
        return None if got is None else (got[1], got[2])

    def _fetch(self, key: str, split: int) -> tuple[bytes, bytes, str] | None:
        """The body's first `split` bytes, the rest, and the ETag; None when the key is absent.
        The common answers come through `FastGet`; boto3 answers whatever that cannot tell."""
        if self._fast is not None:
            got = self._fast.get(self._key(key), split)
            if isinstance(got, Got):
                return got.head, got.data, got.etag
            if isinstance(got, Absent):
                return None
            if isinstance(got, Unreachable):
                raise StoreUnavailable(
                    f"cannot reach S3 endpoint {self.endpoint_url} to read {self._where(key)} "
                    f"(check AWS_ENDPOINT_URL and credentials): {got.error}"
                )
        for attempt in range(BODY_READ_ATTEMPTS):
            try:
                resp = self._client.get_object(Bucket=self.bucket, Key=self._key(key))
            except botocore.exceptions.ClientError as e:
                code, status, _ = _client_error_parts(e)
                if code in _MISSING_CODES or (status == 404 and code != "NoSuchBucket"):
                    return None
                self._raise(e, "read", key)
            except botocore.exceptions.BotoCoreError as e:
                self._raise(e, "read", key)
            try:
                with resp["Body"] as body:
                    data = body.read()
            except _BODY_ERRORS as e:
                if attempt + 1 == BODY_READ_ATTEMPTS:
                    self._raise(e, "read", key)
                time.sleep(0.05 * 2**attempt)
                continue
            head, rest = (data[:split], data[split:]) if split else (b"", data)
            return head, rest, resp["ETag"]
        raise AssertionError("unreachable")

    # -- the ObjectStore interface ---------------------------------------------------------------

    def get(self, key: str) -> bytes:
        got = self._get(key)
        if got is None:
            raise ObjectMissing(f"object {key} is missing from {self.url}")
        return got[0]

    def get_parts(self, key: str, head: int) -> tuple[bytes, bytes | memoryview]:
        got = self._fetch(key, head)
        if got is None:
            raise ObjectMissing(f"object {key} is missing from {self.url}")
        return got[0], got[1]

    def get_versioned(self, key: str) -> Versioned | None:
        got = self._get(key)
        return None if got is None else Versioned(got[0], got[1])

    def put(self, key: str, data: bytes) -> None:
        self._call(
            "write",
            key,
            self._client.put_object,
            Bucket=self.bucket,
            Key=self._key(key),
            Body=data,
            ContentMD5=_content_md5(data),
        )

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except botocore.exceptions.ClientError as e:
            code, status, _ = _client_error_parts(e)
            if status == 404 or code in _MISSING_CODES:
                return False
            self._raise(e, "check", key)
        except botocore.exceptions.BotoCoreError as e:
            self._raise(e, "check", key)

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except botocore.exceptions.ClientError as e:
            code, _, _ = _client_error_parts(e)
            if code not in _MISSING_CODES:
                self._raise(e, "delete", key)
        except botocore.exceptions.BotoCoreError as e:
            self._raise(e, "delete", key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        yield from _in_key_order(self._list_raw(prefix), prefix.rfind("/") + 1)

    def _list_raw(self, prefix: str) -> Iterator[tuple[str, int]]:
        strip = len(self.prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self._key(prefix)):
                for obj in page.get("Contents", ()):
                    yield obj["Key"][strip:], int(obj["Size"])
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
            self._raise(e, "list", prefix + "*")

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        condition = {"IfNoneMatch": "*"} if expected is None else {"IfMatch": expected}
        md5 = _content_md5(data)
        for attempt in range(SWAP_CONFLICT_ATTEMPTS):
            try:
                self._client.put_object(
                    Bucket=self.bucket,
                    Key=self._key(key),
                    Body=data,
                    ContentMD5=md5,
                    **condition,
                )
                return True
            except botocore.exceptions.ClientError as e:
                code, status, _ = _client_error_parts(e)
                if code in _PRECONDITION_CODES or status == 412:
                    return self._won_despite_412(e, key, data)
                if expected is not None and (code in _MISSING_CODES or status == 404):
                    return False  # AWS answers If-Match on a deleted key with 404
                if code in _CONFLICT_CODES or status == 409:
                    # Another conditional write to this key was in flight; AWS asks us to retry.
                    time.sleep(random.uniform(0.01, 0.05) * 2**attempt)
                    continue
                self._raise(e, "swap", key)
            except botocore.exceptions.BotoCoreError as e:
                self._raise(e, "swap", key)
        return False

    def _won_despite_412(self, e: botocore.exceptions.ClientError, key: str, data: bytes) -> bool:
        """Tell a real lost race from botocore retrying our own write that had already landed.

        If the first attempt reached the server but its response was lost, botocore's retry sees
        the precondition fail against our own write. When the object now holds exactly our bytes,
        the swap took effect (if a rival wrote identical bytes, the outcome is the same).
        """
        if not e.response.get("ResponseMetadata", {}).get("RetryAttempts"):
            return False
        got = self._get(key)
        return got is not None and got[0] == data

    def close(self) -> None:
        if not self._closed.is_set():
            self._closed.set()
            self._client.close()
            if self._fast is not None:
                self._fast.close()
