"""Read operations: ListBuckets, ListObjects (V1, V2), HeadBucket, HeadObject, GetObject."""

from __future__ import annotations

import mimetypes
from collections.abc import Iterator

import anyio.to_thread
from starlette.responses import Response, StreamingResponse

from cowfs.entries import Entry
from cowfs.s3gateway import listing
from cowfs.s3gateway.buckets import locate
from cowfs.s3gateway.core import Call, Gateway
from cowfs.s3gateway.errors import S3Error
from cowfs.s3gateway.httpsemantics import (
    check_conditions,
    etag_of,
    http_date,
    iso_date,
    mtime_of,
    parse_range,
)
from cowfs.s3gateway.metrics import BYTES
from cowfs.s3gateway.xmlbody import document, el, url_key

XML = "application/xml"
#: Bodies up to this size are read in one go; larger ones are streamed chunk by chunk.
INLINE_BYTES = 4 << 20


def xml(body: bytes, status: int = 200) -> Response:
    return Response(body, status, media_type=XML)


async def list_buckets(gw: Gateway, call: Call) -> Response:
    def work() -> bytes:
        parts = []
        for r in sorted(gw.lake.list_repos(), key=lambda r: r["name"]):
            name = r["name"]
            if not call.access.can_read(name):
                continue
            created = iso_date(r.get("created", 0))
            names = [name] + sorted(f"{b}.{name}" for b, _ in gw.lake.branches(name))
            for n in names:
                parts.append(f"<Bucket>{el('Name', n)}{el('CreationDate', created)}</Bucket>")
        owner = f"<Owner>{el('ID', 'cowfs')}{el('DisplayName', 'cowfs')}</Owner>"
        return document("ListAllMyBucketsResult", owner, "<Buckets>", *parts, "</Buckets>")

    return xml(await anyio.to_thread.run_sync(work))


async def head_bucket(gw: Gateway, call: Call) -> Response:
    def work() -> None:
        b = gw.bucket(call.bucket)
        gw.can_read(call.access, b.repo)
        if b.ref is not None:
            gw.root_of(b.repo, b.ref, missing="NoSuchBucket")

    await anyio.to_thread.run_sync(work)
    return Response(b"", 200)


async def bucket_location(gw: Gateway, call: Call) -> Response:
    def work() -> None:
        gw.can_read(call.access, gw.bucket(call.bucket).repo)

    await anyio.to_thread.run_sync(work)
    region = "" if gw.cfg.region == "us-east-1" else gw.cfg.region
    return xml(document("LocationConstraint").replace(b"></", f">{region}</".encode()))


async def bucket_versioning(gw: Gateway, call: Call) -> Response:
    await anyio.to_thread.run_sync(lambda: gw.bucket(call.bucket))
    return xml(document("VersioningConfiguration"))


def _max_keys(call: Call) -> int:
    raw = call.query.get("max-keys", str(listing.MAX_KEYS))
    try:
        n = int(raw)
    except ValueError:
        raise S3Error("InvalidArgument", f"max-keys must be a number, not {raw!r}") from None
    if n < 0:
        raise S3Error("InvalidArgument", "max-keys must not be negative")
    return min(n, listing.MAX_KEYS)


def _page(gw: Gateway, call: Call, req: listing.ListRequest) -> listing.ListPage:
    b = gw.bucket(call.bucket)
    gw.can_read(call.access, b.repo)
    if b.ref is not None:
        root = gw.root_of(b.repo, b.ref, missing="NoSuchBucket")
        items = listing.tree_items(gw.iter_from(root), "", req)
    elif "/" in req.prefix:
        ref = req.prefix.partition("/")[0]
        try:
            root = gw.root_of(b.repo, ref)
        except S3Error:
            return listing.ListPage()
        items = listing.tree_items(gw.iter_from(root), f"{ref}/", req)
    else:

        def tree_of(ref: str, sub: listing.ListRequest) -> Iterator[listing.Item]:
            return listing.tree_items(gw.iter_from(gw.root_of(b.repo, ref)), f"{ref}/", sub)

        refs = [name for name, _ in gw.lake.branches(b.repo)]
        items = listing.ref_items(refs, req, tree_of)
    return listing.paginate(items, req.max_keys)


def _contents(page: listing.ListPage, encode: bool) -> list[str]:
    out = []
    for item in page.objects:
        e = item.entry
        out.append(
            "<Contents>"
            + el("Key", url_key(item.key, encode))
            + el("LastModified", iso_date(mtime_of(e)))
            + el("ETag", etag_of(e))
            + el("Size", e.size)
            + el("StorageClass", "STANDARD")
            + "</Contents>"
        )
    for p in page.prefixes:
        out.append(f"<CommonPrefixes>{el('Prefix', url_key(p, encode))}</CommonPrefixes>")
    return out


async def list_objects(gw: Gateway, call: Call) -> Response:
    q = call.query
    v2 = q.get("list-type") == "2"
    encode = q.get("encoding-type") == "url"
    token = q.get("continuation-token")
    if v2:
        after = listing.decode_token(token) if token else q.get("start-after", "")
    else:
        after = q.get("marker", "")
    req = listing.ListRequest(q.get("prefix", ""), q.get("delimiter", ""), _max_keys(call), after)
    page = await anyio.to_thread.run_sync(_page, gw, call, req)
    head = [
        el("Name", call.bucket),
        el("Prefix", url_key(req.prefix, encode)),
        el("MaxKeys", req.max_keys),
        el("IsTruncated", page.truncated),
    ]
    if req.delimiter:
        head.append(el("Delimiter", url_key(req.delimiter, encode)))
    if encode:
        head.append(el("EncodingType", "url"))
    if v2:
        head.append(el("KeyCount", len(page.objects) + len(page.prefixes)))
        if token:
            head.append(el("ContinuationToken", token))
        if "start-after" in q:
            head.append(el("StartAfter", url_key(q["start-after"], encode)))
        if page.truncated and page.last is not None:
            head.append(el("NextContinuationToken", listing.encode_token(page.last)))
    else:
        head.append(el("Marker", url_key(after, encode)))
        if page.truncated and page.last is not None:
            head.append(el("NextMarker", url_key(page.last, encode)))
    return xml(document("ListBucketResult", *head, *_contents(page, encode)))


def object_headers(e: Entry) -> dict[str, str]:
    ctype = mimetypes.guess_type(e.path)[0] or "application/octet-stream"
    return {
        "ETag": etag_of(e),
        "Last-Modified": http_date(mtime_of(e)),
        "Accept-Ranges": "bytes",
        "Content-Type": ctype,
    }


def find_object(gw: Gateway, call: Call) -> Entry:
    b = gw.bucket(call.bucket)
    gw.can_read(call.access, b.repo)
    loc = locate(b, call.key)
    missing = "NoSuchBucket" if b.ref is not None else "NoSuchKey"
    root = gw.root_of(loc.repo, loc.ref, missing=missing)
    e = gw.lookup(root, loc.path)
    if e is None or not e.is_file or loc.is_folder:
        raise S3Error("NoSuchKey", f"no object {call.key} in {call.bucket} ({loc.repo}@{loc.ref})")
    return e


def _conditional(call: Call, e: Entry, headers: dict[str, str]) -> Response | None:
    verdict = check_conditions(call.headers, etag_of(e), mtime_of(e))
    if verdict == 304:
        keep = {k: v for k, v in headers.items() if k in ("ETag", "Last-Modified")}
        return Response(b"", 304, headers=keep)
    if verdict == 412:
        raise S3Error("PreconditionFailed", "an If-Match or If-Unmodified-Since did not hold")
    return None


async def head_object(gw: Gateway, call: Call) -> Response:
    e = await anyio.to_thread.run_sync(find_object, gw, call)
    headers = object_headers(e)
    early = _conditional(call, e, headers)
    if early is not None:
        return early
    status = 200
    rng = parse_range(call.headers.get("range"), e.size)
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {rng[0]}-{rng[1] - 1}/{e.size}"
    length = e.size if rng is None else rng[1] - rng[0]
    headers["Content-Length"] = str(length)
    return Response(b"", status, headers=headers)


async def get_object(gw: Gateway, call: Call) -> Response:
    range_header = call.headers.get("range")

    def work() -> tuple[Entry, tuple[int, int] | None, bytes | None]:
        e = find_object(gw, call)
        rng = parse_range(range_header, e.size)
        start, end = rng if rng is not None else (0, e.size)
        if (
            end - start <= INLINE_BYTES
            and check_conditions(call.headers, etag_of(e), mtime_of(e)) is None
        ):
            return e, rng, gw.reader.read(e, start, end - start)
        return e, rng, None

    e, rng, data = await anyio.to_thread.run_sync(work)
    headers = object_headers(e)
    early = _conditional(call, e, headers)
    if early is not None:
        return early
    status = 200
    start, end = rng if rng is not None else (0, e.size)
    if rng is not None:
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{e.size}"
    headers["Content-Length"] = str(end - start)
    if data is not None:
        BYTES.labels("GetObject", "out").inc(len(data))
        return Response(data, status, headers=headers)
    return StreamingResponse(_stream(gw, e, start, end), status, headers=headers)


def _stream(gw: Gateway, e: Entry, start: int, end: int) -> Iterator[bytes]:
    """The bytes of `[start, end)`, one chunk slice at a time, next chunks fetched ahead."""
    offset = start
    for _, _, n in e.refs_for(start, end - start):
        piece = gw.reader.read(e, offset, n, readahead=8)
        offset += n
        BYTES.labels("GetObject", "out").inc(len(piece))
        yield piece
