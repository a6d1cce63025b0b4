"""Write operations: PutObject, CopyObject, DeleteObject(s), CreateBucket, DeleteBucket.

Each lands as one commit on a branch (or shares one, under a batch window) through
`Committer`; nothing is committed until the whole body is in and checked.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import anyio.to_thread
from starlette.responses import Response

from cowfs import tree
from cowfs.changes import ChangeSet
from cowfs.chunking import FileData
from cowfs.entries import Entry
from cowfs.errors import CowfsError
from cowfs.s3gateway.awschunked import AwsChunkedDecoder
from cowfs.s3gateway.buckets import Location, locate, new_bucket, parse_bucket
from cowfs.s3gateway.core import Call, Gateway
from cowfs.s3gateway.errors import S3Error, from_cowfs
from cowfs.s3gateway.httpsemantics import etag_of, iso_date, mtime_of
from cowfs.s3gateway.ingest import BodyCheck, file_entry, folder_entry, ingest, put_change
from cowfs.s3gateway.metrics import BYTES
from cowfs.s3gateway.ops_read import find_object, xml
from cowfs.s3gateway.sigv4 import STREAMING_PREFIX, STREAMING_SIGNED, chunk_signature
from cowfs.s3gateway.xmlbody import document, el, parse_delete

#: Largest XML body (DeleteObjects, CompleteMultipartUpload) read into memory.
MAX_XML_BODY = 4 << 20


def body_of(call: Call) -> AsyncIterator[bytes]:
    """The request's payload, decoded from aws-chunked and held to its declared checksums."""
    v = call.verified
    declared = v.payload_hash if v else call.headers.get("x-amz-content-sha256", "")
    streaming = declared.startswith(STREAMING_PREFIX) or "aws-chunked" in call.headers.get(
        "content-encoding", ""
    )
    decoder = None
    if streaming:
        check = None
        if v is not None and declared == STREAMING_SIGNED:

            def check(prev: str, digest: str) -> str:
                return chunk_signature(v, prev, digest)

        decoder = AwsChunkedDecoder(check, seed=v.signature if v else "")
    full = declared if len(declared) == 64 and not streaming else None
    body = BodyCheck(full, call.headers.get("content-md5"))

    async def gen() -> AsyncIterator[bytes]:
        async for piece in call.request.stream():
            if decoder is not None:
                piece = decoder.feed(piece)
            if piece:
                body.update(piece)
                call.bytes_in += len(piece)
                yield piece
        if decoder is not None:
            decoder.finish()
        body.finish()
        BYTES.labels(call.op, "in").inc(body.size)

    return gen()


def size_hint(call: Call) -> int | None:
    raw = call.headers.get("x-amz-decoded-content-length") or call.headers.get("content-length")
    return int(raw) if raw and raw.isdigit() else None


async def read_small_body(call: Call) -> bytes:
    out = bytearray()
    async for piece in body_of(call):
        out += piece
        if len(out) > MAX_XML_BODY:
            raise S3Error("MalformedXML", f"the XML body is over {MAX_XML_BODY} bytes")
    return bytes(out)


def _target(gw: Gateway, call: Call) -> tuple[Location, str | None]:
    b = gw.bucket(call.bucket)
    loc = locate(b, call.key)
    missing = "NoSuchBucket" if b.ref is not None else "NoSuchKey"
    root = gw.check_writable(call.access, loc.repo, loc.ref, missing)
    gw.check_clash(root, loc)
    return loc, root


async def commit(gw: Gateway, loc: Location, changes: ChangeSet, message: str) -> None:
    try:
        await gw.committer.commit(loc.repo, loc.ref, changes, message)
    except CowfsError as e:
        raise from_cowfs(e, "NoSuchBucket") from None
    gw.note_head(loc.repo, loc.ref)


async def put_object(gw: Gateway, call: Call) -> Response:
    loc, _ = await anyio.to_thread.run_sync(_target, gw, call)
    if loc.is_folder:
        data = await read_small_body(call)
        if data:
            raise S3Error("InvalidArgument", "a key ending in '/' is a folder: it holds no bytes")
        if loc.path:
            await commit(gw, loc, put_change(folder_entry(loc.path)), f"s3: PutObject {call.key}")
        return Response(b"", 200, headers={"ETag": '"0"'})
    data: FileData = await ingest(gw.store, body_of(call), size_hint(call), gw.limits)
    entry = file_entry(loc.path, data)
    await commit(gw, loc, put_change(entry), f"s3: PutObject {call.key}")
    return Response(b"", 200, headers={"ETag": etag_of(entry)})


def copy_source(call: Call) -> Call:
    """The source of a copy, as a read of its own (same access key, same checks)."""
    raw = unquote(call.headers["x-amz-copy-source"]).lstrip("/")
    raw = raw.partition("?versionId=")[0]
    bucket, slash, key = raw.partition("/")
    if not slash or not key:
        raise S3Error("InvalidArgument", "x-amz-copy-source must be <bucket>/<key>")
    return Call(call.request, "GET", bucket, key, {}, {}, "CopyObject", call.access)


async def copy_object(gw: Gateway, call: Call) -> Response:
    src_call = copy_source(call)

    def work() -> tuple[Location, Entry]:
        src = find_object(gw, src_call)
        loc, _ = _target(gw, call)
        if loc.is_folder:
            raise S3Error("InvalidArgument", "cannot copy an object onto a folder key")
        e = src.with_path(loc.path)
        now = Entry(e.path, e.type, e.mode, e.size, time.time_ns(), e.digest, e.chunks)
        return loc, now

    loc, entry = await anyio.to_thread.run_sync(work)
    await commit(gw, loc, put_change(entry), f"s3: CopyObject {src_call.resource} -> {call.key}")
    body = el("LastModified", iso_date(mtime_of(entry))) + el("ETag", etag_of(entry))
    return xml(document("CopyObjectResult", body))


def _delete_paths(gw: Gateway, root: str | None, loc: Location) -> list[str]:
    """What deleting `loc` removes: a file, or a folder marker with nothing under it."""
    e = gw.lookup(root, loc.path)
    if e is None:
        return []
    if loc.is_folder:
        if e.is_dir and all(x.path == loc.path for x in tree.iter_under(gw.store, root, loc.path)):
            return [loc.path]
        return []
    return [] if e.is_dir else [loc.path]


async def delete_object(gw: Gateway, call: Call) -> Response:
    def work() -> tuple[Location, list[str]]:
        loc, root = _target(gw, call)
        return loc, _delete_paths(gw, root, loc)

    loc, paths = await anyio.to_thread.run_sync(work)
    if paths:
        await commit(gw, loc, ChangeSet(deletes=paths), f"s3: DeleteObject {call.key}")
    return Response(b"", 204)


async def delete_objects(gw: Gateway, call: Call) -> Response:
    req = parse_delete(await read_small_body(call))

    def plan() -> tuple[dict[tuple[str, str], tuple[Location, list[str]]], list[str], list[str]]:
        b = gw.bucket(call.bucket)
        errors: list[str] = []
        deleted: list[str] = []
        groups: dict[tuple[str, str], tuple[Location, list[str]]] = {}
        roots: dict[tuple[str, str], str | None] = {}
        for key in req.keys:
            try:
                loc = locate(b, key)
                ref = (loc.repo, loc.ref)
                if ref not in roots:
                    missing = "NoSuchBucket" if b.ref is not None else "NoSuchKey"
                    roots[ref] = gw.check_writable(call.access, loc.repo, loc.ref, missing)
                paths = _delete_paths(gw, roots[ref], loc)
            except S3Error as e:
                errors.append(
                    f"<Error>{el('Key', key)}{el('Code', e.code)}{el('Message', e.message)}</Error>"
                )
                continue
            groups.setdefault(ref, (loc, []))[1].extend(paths)
            deleted.append(key)
        return groups, deleted, errors

    groups, deleted, errors = await anyio.to_thread.run_sync(plan)
    for loc, paths in groups.values():
        if paths:
            await commit(gw, loc, ChangeSet(deletes=paths), f"s3: DeleteObjects ({len(paths)})")
    parts = [] if req.quiet else [f"<Deleted>{el('Key', k)}</Deleted>" for k in deleted]
    return xml(document("DeleteResult", *parts, *errors))


async def create_bucket(gw: Gateway, call: Call) -> Response:
    def work() -> None:
        existing = parse_bucket(call.bucket, gw.is_repo)
        if existing is not None and (
            existing.ref is None or gw.lake.head_id(existing.repo, existing.ref) is not None
        ):
            raise S3Error("BucketAlreadyOwnedByYou", f"bucket {call.bucket} exists already")
        b = existing or new_bucket(call.bucket)
        if not call.access.can_write(b.repo):
            raise S3Error("AccessDenied", f"this key may not create or change repo {b.repo}")
        if not gw.is_repo(b.repo):
            gw.lake.create_repo(b.repo)
        if b.ref is not None:
            heads = dict(gw.lake.branches(b.repo))
            start = heads.get("main") or (next(iter(heads.values())) if heads else None)
            if start is not None:
                gw.lake.create_branch(b.repo, b.ref, gw.lake.get_commit(b.repo, start))

    try:
        await anyio.to_thread.run_sync(work)
    except CowfsError as e:
        raise from_cowfs(e, "NoSuchBucket") from None
    gw.cache.clear()
    return Response(b"", 200, headers={"Location": "/" + call.bucket})


async def delete_bucket(gw: Gateway, call: Call) -> Response:
    def work() -> None:
        b = gw.bucket(call.bucket)
        if not call.access.can_write(b.repo):
            raise S3Error("AccessDenied", f"this key may not delete from repo {b.repo}")
        branches = dict(gw.lake.branches(b.repo))
        if b.ref is not None:
            if b.ref not in branches:
                gw.check_writable(call.access, b.repo, b.ref, "NoSuchBucket")
                return
            if gw.lake.get_commit(b.repo, branches[b.ref]).files:
                raise S3Error("BucketNotEmpty", f"branch {b.repo}@{b.ref} still holds files")
            gw.lake.delete_branch(b.repo, b.ref)
            return
        for name, cid in branches.items():
            if gw.lake.get_commit(b.repo, cid).files:
                raise S3Error(
                    "BucketNotEmpty", f"repo {b.repo} is not empty (branch {name} holds files)"
                )
        gw.lake.delete_repo(b.repo)

    await anyio.to_thread.run_sync(work)
    gw.cache.clear()
    return Response(b"", 204)
