"""Multipart uploads: create, upload part (and part copy), complete, abort, list parts/uploads.

Each part goes straight into chunks as it arrives; completing concatenates the parts' chunk
slices (no data copied) and reads them back once for the file's digest.
"""

from __future__ import annotations

import json
import time

import anyio.to_thread
import blake3
from starlette.responses import Response

from cowfs.chunking import FileData
from cowfs.entries import ChunkRef, Entry
from cowfs.s3gateway.buckets import Location
from cowfs.s3gateway.core import Call, Gateway
from cowfs.s3gateway.errors import S3Error
from cowfs.s3gateway.httpsemantics import etag_of, iso_date, parse_range
from cowfs.s3gateway.ingest import concat_digest, file_entry, ingest, put_change, slice_refs
from cowfs.s3gateway.multipart import Part, Upload
from cowfs.s3gateway.ops_read import find_object, xml
from cowfs.s3gateway.ops_write import _target, body_of, commit, copy_source, read_small_body
from cowfs.s3gateway.ops_write import size_hint as _size_hint
from cowfs.s3gateway.xmlbody import document, el, parse_complete


def _upload(gw: Gateway, call: Call) -> Upload:
    _target(gw, call)
    return gw.uploads.get(call.query["uploadId"], call.bucket, call.key)


def _part_number(call: Call) -> int:
    try:
        return int(call.query["partNumber"])
    except ValueError:
        raise S3Error("InvalidArgument", "partNumber must be a number from 1 to 10000") from None


async def create_upload(gw: Gateway, call: Call) -> Response:
    def work() -> Upload:
        loc, _ = _target(gw, call)
        if loc.is_folder:
            raise S3Error("InvalidArgument", "a key ending in '/' is a folder: it holds no bytes")
        return gw.uploads.create(call.bucket, call.key, call.access.access_key)

    up = await anyio.to_thread.run_sync(work)
    body = el("Bucket", call.bucket) + el("Key", call.key) + el("UploadId", up.id)
    return xml(document("InitiateMultipartUploadResult", body))


async def upload_part(gw: Gateway, call: Call) -> Response:
    number = _part_number(call)
    up = await anyio.to_thread.run_sync(_upload, gw, call)
    data = await ingest(gw.store, body_of(call), _size_hint(call), gw.limits)
    part = Part(number, data.size, f'"{data.digest.hex()}"', data.chunks, time.time())
    await anyio.to_thread.run_sync(gw.uploads.put_part, up, part)
    return Response(b"", 200, headers={"ETag": part.etag})


async def upload_part_copy(gw: Gateway, call: Call) -> Response:
    number = _part_number(call)
    src_call = copy_source(call)

    def work() -> Part:
        up = _upload(gw, call)
        src = find_object(gw, src_call)
        rng = parse_range(call.headers.get("x-amz-copy-source-range"), src.size)
        start, end = rng if rng is not None else (0, src.size)
        refs = slice_refs(src, start, end)
        # The part's ETag names its chunk slices (reading the bytes just to hash them would
        # turn a copy that moves no data into one that reads it all).
        described = json.dumps([[r.id, r.offset, r.length] for r in refs]).encode()
        etag = f'"{blake3.blake3(described).hexdigest()}"'
        part = Part(number, end - start, etag, refs, time.time())
        gw.uploads.put_part(up, part)
        return part

    part = await anyio.to_thread.run_sync(work)
    body = el("ETag", part.etag) + el("LastModified", iso_date(part.modified))
    return xml(document("CopyPartResult", body))


async def complete_upload(gw: Gateway, call: Call) -> Response:
    wanted = parse_complete(await read_small_body(call))
    numbers = [p.number for p in wanted]
    if numbers != sorted(set(numbers)):
        raise S3Error("InvalidPartOrder", "parts must be listed in ascending order, once each")

    def work() -> tuple[Location, Upload, Entry]:
        loc, _ = _target(gw, call)
        up = gw.uploads.get(call.query["uploadId"], call.bucket, call.key)
        have = {p.number: p for p in gw.uploads.parts(up)}
        refs: list[ChunkRef] = []
        size = 0
        for w in wanted:
            part = have.get(w.number)
            if part is None or part.etag.strip('"') != w.etag.strip('"'):
                raise S3Error(
                    "InvalidPart", f"part {w.number} was not uploaded or its ETag differs"
                )
            refs.extend(part.refs)
            size += part.size
        refs_t = tuple(refs)
        data = FileData(size, concat_digest(gw.store.get_chunk, refs_t), refs_t)
        return loc, up, file_entry(loc.path, data)

    loc, up, entry = await anyio.to_thread.run_sync(work)
    await commit(gw, loc, put_change(entry), f"s3: CompleteMultipartUpload {call.key}")
    await anyio.to_thread.run_sync(gw.uploads.remove, up)
    body = (
        el("Location", call.resource)
        + el("Bucket", call.bucket)
        + el("Key", call.key)
        + el("ETag", etag_of(entry))
    )
    return xml(document("CompleteMultipartUploadResult", body))


async def abort_upload(gw: Gateway, call: Call) -> Response:
    up = await anyio.to_thread.run_sync(_upload, gw, call)
    await anyio.to_thread.run_sync(gw.uploads.remove, up)
    return Response(b"", 204)


async def list_parts(gw: Gateway, call: Call) -> Response:
    def work() -> tuple[Upload, list[Part]]:
        gw.can_read(call.access, gw.bucket(call.bucket).repo)
        up = gw.uploads.get(call.query["uploadId"], call.bucket, call.key)
        return up, gw.uploads.parts(up)

    up, parts = await anyio.to_thread.run_sync(work)
    items = [
        "<Part>"
        + el("PartNumber", p.number)
        + el("LastModified", iso_date(p.modified))
        + el("ETag", p.etag)
        + el("Size", p.size)
        + "</Part>"
        for p in parts
    ]
    head = el("Bucket", call.bucket) + el("Key", call.key) + el("UploadId", up.id)
    return xml(document("ListPartsResult", head, el("IsTruncated", False), *items))


async def list_uploads(gw: Gateway, call: Call) -> Response:
    def work() -> list[Upload]:
        gw.can_read(call.access, gw.bucket(call.bucket).repo)
        return gw.uploads.list(call.bucket)

    ups = await anyio.to_thread.run_sync(work)
    items = [
        "<Upload>"
        + el("Key", u.key)
        + el("UploadId", u.id)
        + el("Initiated", iso_date(u.created))
        + "</Upload>"
        for u in ups
    ]
    return xml(
        document(
            "ListMultipartUploadsResult",
            el("Bucket", call.bucket),
            el("IsTruncated", False),
            *items,
        )
    )
