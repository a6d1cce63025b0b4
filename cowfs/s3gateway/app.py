"""The ASGI app: take a request apart, check its signature, route it to an S3 operation, and
turn every failure into S3's XML error (never a traceback). `/metrics` answers unsigned GETs.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from urllib.parse import quote, unquote

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.s3gateway import ops_multipart as mp
from cowfs.s3gateway import ops_read as rd
from cowfs.s3gateway import ops_write as wr
from cowfs.s3gateway.config import ANONYMOUS_READER, GatewayConfig
from cowfs.s3gateway.core import Call, Gateway
from cowfs.s3gateway.errors import S3Error, from_cowfs
from cowfs.s3gateway.metrics import REQUESTS, SECONDS, exposition
from cowfs.s3gateway.sigv4 import SignedRequest, is_signed, verify
from cowfs.s3gateway.xmlbody import error_body

log = logging.getLogger("cowfs.s3")

Handler = Callable[[Gateway, Call], Awaitable[Response]]

HANDLERS: dict[str, Handler] = {
    "ListBuckets": rd.list_buckets,
    "HeadBucket": rd.head_bucket,
    "GetBucketLocation": rd.bucket_location,
    "GetBucketVersioning": rd.bucket_versioning,
    "ListObjects": rd.list_objects,
    "ListObjectsV2": rd.list_objects,
    "HeadObject": rd.head_object,
    "GetObject": rd.get_object,
    "PutObject": wr.put_object,
    "CopyObject": wr.copy_object,
    "DeleteObject": wr.delete_object,
    "DeleteObjects": wr.delete_objects,
    "CreateBucket": wr.create_bucket,
    "DeleteBucket": wr.delete_bucket,
    "CreateMultipartUpload": mp.create_upload,
    "UploadPart": mp.upload_part,
    "UploadPartCopy": mp.upload_part_copy,
    "CompleteMultipartUpload": mp.complete_upload,
    "AbortMultipartUpload": mp.abort_upload,
    "ListParts": mp.list_parts,
    "ListMultipartUploads": mp.list_uploads,
}

#: Sub-resources of S3 the gateway does not implement (ACLs, policies, tagging, versions...).
UNSUPPORTED = frozenset(
    [
        "accelerate",
        "acl",
        "analytics",
        "attributes",
        "cors",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "legal-hold",
        "lifecycle",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "policyStatus",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "restore",
        "retention",
        "select",
        "tagging",
        "torrent",
        "versions",
        "website",
    ]
)


def operation(method: str, bucket: str, key: str, q: Mapping[str, str], copy: bool) -> str:
    """Which S3 operation a request is, from its method, path and query alone."""
    unsupported = UNSUPPORTED & set(q)
    if unsupported:
        raise S3Error("NotImplemented", f"?{sorted(unsupported)[0]} is not supported by cowfs")
    if not bucket:
        if method in ("GET", "HEAD"):
            return "ListBuckets"
    elif not key:
        ops = {
            "HEAD": "HeadBucket",
            "PUT": "CreateBucket",
            "DELETE": "DeleteBucket",
            "POST": "DeleteObjects" if "delete" in q else "",
        }
        if method == "GET":
            for sub, op in (
                ("location", "GetBucketLocation"),
                ("versioning", "GetBucketVersioning"),
                ("uploads", "ListMultipartUploads"),
            ):
                if sub in q:
                    return op
            return "ListObjectsV2" if q.get("list-type") == "2" else "ListObjects"
        if ops.get(method):
            return ops[method]
    else:
        if method == "GET":
            return "ListParts" if "uploadId" in q else "GetObject"
        if method == "HEAD":
            return "HeadObject"
        if method == "PUT":
            if "partNumber" in q and "uploadId" in q:
                return "UploadPartCopy" if copy else "UploadPart"
            return "CopyObject" if copy else "PutObject"
        if method == "POST":
            if "uploads" in q:
                return "CreateMultipartUpload"
            if "uploadId" in q:
                return "CompleteMultipartUpload"
        if method == "DELETE":
            return "AbortMultipartUpload" if "uploadId" in q else "DeleteObject"
    raise S3Error("MethodNotAllowed", f"{method} is not allowed on this resource")


def parse_query(raw: bytes) -> tuple[tuple[str, str], ...]:
    pairs = []
    for part in raw.decode("latin-1").split("&"):
        if part:
            k, _, v = part.partition("=")
            pairs.append((unquote(k), unquote(v)))
    return tuple(pairs)


def header_map(raw: list[tuple[bytes, bytes]]) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in raw:
        name = k.decode("latin-1").lower()
        value = v.decode("latin-1")
        out[name] = f"{out[name]},{value}" if name in out else value
    return out


class S3App:
    """The gateway as an ASGI application (what hypercorn serves)."""

    def __init__(self, lake: Lake, cfg: GatewayConfig) -> None:
        self.gw = Gateway(lake, cfg)
        self.cfg = cfg
        methods = ["GET", "HEAD", "PUT", "POST", "DELETE"]
        self.app = Starlette(routes=[Route("/{path:path}", self.handle, methods=methods)])

    async def __call__(self, scope, receive, send) -> None:  # noqa: ANN001 - ASGI
        await self.app(scope, receive, send)

    def close(self) -> None:
        self.gw.close()

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        scope = request.scope
        path = scope["path"]
        bucket, _, key = path[1:].partition("/")
        pairs = parse_query(scope.get("query_string", b""))
        headers = header_map(scope["headers"])
        call = Call(request, request.method, bucket, key, dict(pairs), headers)
        try:
            if bucket == "metrics" and not key and not is_signed(self._signed(call, pairs)):
                body, ctype = exposition()
                call.op = "Metrics"
                response = Response(body, media_type=ctype)
            else:
                call.op = operation(call.method, bucket, key, call.query, _copy(headers))
                self._authenticate(call, pairs)
                response = await HANDLERS[call.op](self.gw, call)
        except S3Error as e:
            response = self._error(call, e)
        except CowfsError as e:
            response = self._error(call, from_cowfs(e))
        except ClientDisconnect:
            response = self._error(call, S3Error("IncompleteBody", "the client went away mid-body"))
        except Exception as e:  # a bug: answer like S3 does and keep the traceback in the log
            log.exception("%s %s failed", call.op, call.resource)
            response = self._error(call, S3Error("InternalError", f"{type(e).__name__}: {e}"))
        SECONDS.labels(call.op).observe(time.perf_counter() - started)
        REQUESTS.labels(call.op, str(response.status_code)).inc()
        return response

    def _signed(self, call: Call, pairs: tuple[tuple[str, str], ...]) -> SignedRequest:
        scope = call.request.scope
        raw = scope.get("raw_path")
        raw_path = raw.decode("latin-1") if raw else quote(scope["path"])
        return SignedRequest(call.method, raw_path, pairs, call.headers)

    def _authenticate(self, call: Call, pairs: tuple[tuple[str, str], ...]) -> None:
        req = self._signed(call, pairs)
        if is_signed(req):
            call.verified = verify(req, self.cfg.secret_for)
            call.access = self.cfg.keys[call.verified.access_key]
        elif self.cfg.allow_anonymous:
            call.access = ANONYMOUS_READER
        else:
            raise S3Error(
                "AccessDenied",
                "anonymous access is off: sign requests with a key from [s3] in the config "
                "(or start the gateway with --allow-anonymous for read-only access)",
            )

    def _error(self, call: Call, e: S3Error) -> Response:
        if e.status >= 500:
            log.warning("%s %s: %s %s", call.op, call.resource, e.code, e.message)
        rid = uuid.uuid4().hex[:16].upper()
        if call.method == "HEAD":
            return Response(b"", e.status, headers={"x-amz-request-id": rid})
        body = error_body(e.code, e.message, call.resource, rid)
        return Response(body, e.status, media_type="application/xml")


def _copy(headers: Mapping[str, str]) -> bool:
    return "x-amz-copy-source" in headers
