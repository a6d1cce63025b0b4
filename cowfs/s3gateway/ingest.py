"""Request bodies straight into chunks, and the entries and change sets they become.

The gateway's side of turning bytes into a file of the lake: the cutting, hashing and uploading
are `chunking.store_stream`'s, shared with the Python API's writer. A body is read on the event
loop and handed, a megabyte at a time, to a worker thread that `store_stream` reads it from; at
most a few pieces wait between the two, so a 1 GiB upload is never whole in memory.
"""

from __future__ import annotations

import base64
import hashlib
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor

import anyio
import anyio.from_thread
import anyio.to_thread
import blake3
from anyio.streams.memory import MemoryObjectReceiveStream

from cowfs.changes import ChangeSet
from cowfs.chunking import FileData, store_stream
from cowfs.entries import ChunkRef, Entry, dir_entry
from cowfs.s3gateway.errors import S3Error
from cowfs.store import Store

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

PIECE = 1 << 20
_QUEUED_PIECES = 4
#: Bodies up to this size are read whole and cut in one go (fewer thread hops).
SMALL_BODY = 1 << 20
#: Streamed bodies being cut at once, and chunks waiting to upload across all of them: what
#: bounds a gateway's memory when a client sends 16 parts of a 1 GiB upload together.
MAX_STREAMS = 4
MAX_CHUNKS_IN_FLIGHT = 24


class Limits:
    """Shared by every upload of one gateway (made on its event loop)."""

    def __init__(self) -> None:
        self.streams = anyio.CapacityLimiter(MAX_STREAMS)
        self.chunks = threading.BoundedSemaphore(MAX_CHUNKS_IN_FLIGHT)


class _Pipe:
    """A `Readable` for the chunker, fed from the event loop's memory stream."""

    def __init__(self, rx: MemoryObjectReceiveStream[bytes]) -> None:
        self.rx = rx
        self.buf = memoryview(b"")
        self.eof = False

    def readinto(self, out: memoryview) -> int:
        n = 0
        while n < len(out):
            if not self.buf:
                if self.eof:
                    break
                try:
                    self.buf = memoryview(anyio.from_thread.run(self.rx.receive))
                except anyio.EndOfStream:
                    self.eof = True
                    break
            k = min(len(out) - n, len(self.buf))
            out[n : n + k] = self.buf[:k]
            self.buf = self.buf[k:]
            n += k
        return n


def _cut(
    store: Store, readable: _Pipe | None, data: bytes | None, slots: threading.Semaphore | None
) -> FileData:
    source = data if data is not None else readable
    assert source is not None
    return store_stream(store, source, slots)


async def ingest(
    store: Store,
    body: AsyncIterator[bytes],
    size_hint: int | None,
    limits: Limits | None = None,
) -> FileData:
    """Chunk and store a body; returns once every chunk is stored. Raises what `body` raises
    (a bad checksum, a client gone) before anything refers to the chunks. With `limits`, a
    streamed body waits for a free stream slot before it is read at all."""
    slots = limits.chunks if limits else None
    if size_hint is not None and size_hint <= SMALL_BODY:
        data = b"".join([piece async for piece in body])
        return await anyio.to_thread.run_sync(_cut, store, None, data, slots)
    if limits is None:
        return await _stream(store, body, None)
    async with limits.streams:
        return await _stream(store, body, slots)


async def _stream(
    store: Store, body: AsyncIterator[bytes], slots: threading.Semaphore | None
) -> FileData:
    tx, rx = anyio.create_memory_object_stream[bytes](_QUEUED_PIECES)
    result: list[FileData] = []

    async def produce() -> None:
        async with tx:
            pending = bytearray()
            async for piece in body:
                pending += piece
                if len(pending) >= PIECE:
                    await tx.send(bytes(pending))
                    pending.clear()
            if pending:
                await tx.send(bytes(pending))

    async def consume() -> None:
        async with rx:
            result.append(await anyio.to_thread.run_sync(_cut, store, _Pipe(rx), None, slots))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(produce)
            tg.start_soon(consume)
    except BaseExceptionGroup as group:
        raise _cause(group) from None
    return result[0]


def _cause(group: BaseExceptionGroup) -> BaseException:
    """What went wrong first (a bad checksum, a client gone), not the cancellations it caused."""
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _cause(e)
        if not isinstance(e, anyio.get_cancelled_exc_class()):
            return e
    return group.exceptions[0]


class BodyCheck:
    """Hashes a body on its way in, to hold it to the SHA-256 or Content-MD5 it was sent with."""

    def __init__(self, sha256_hex: str | None, md5_b64: str | None) -> None:
        self.sha = hashlib.sha256() if sha256_hex else None
        self.sha_want = sha256_hex
        self.md5 = hashlib.md5() if md5_b64 else None
        self.md5_want = md5_b64
        self.size = 0

    def update(self, data: bytes) -> None:
        self.size += len(data)
        if self.sha:
            self.sha.update(data)
        if self.md5:
            self.md5.update(data)

    def finish(self) -> None:
        if self.sha and self.sha.hexdigest() != self.sha_want:
            raise S3Error(
                "XAmzContentSHA256Mismatch", "the body's SHA-256 is not x-amz-content-sha256"
            )
        if self.md5 and (base64.b64encode(self.md5.digest()).decode() != self.md5_want):
            raise S3Error("BadDigest", "the body's MD5 is not the Content-MD5 it was sent with")


def file_entry(path: str, data: FileData, mtime_ns: int | None = None) -> Entry:
    return data.entry(path, 0o644, time.time_ns() if mtime_ns is None else mtime_ns)


def folder_entry(path: str) -> Entry:
    return dir_entry(path, mtime_ns=time.time_ns())


def put_change(entry: Entry) -> ChangeSet:
    return ChangeSet(puts={entry.path: entry})


def concat_digest(fetch: Callable[[str], bytes], refs: tuple[ChunkRef, ...]) -> bytes:
    """BLAKE3 of a file made of already stored chunk slices, read back a few chunks ahead.

    Reads go around the gateway's chunk memory (a 1 GiB completion would flush it)."""
    h = blake3.blake3()
    ahead = 4
    with ThreadPoolExecutor(ahead, thread_name_prefix="cowfs-s3-digest") as pool:
        window: deque[Future[bytes]] = deque()
        queued = iter(refs)
        for ref in refs:
            while len(window) < ahead:
                nxt = next(queued, None)
                if nxt is None:
                    break
                window.append(pool.submit(fetch, nxt.id))
            data = window.popleft().result()
            h.update(memoryview(data)[ref.offset : ref.offset + ref.length])
    return h.digest()


def slice_refs(entry: Entry, start: int, end: int) -> tuple[ChunkRef, ...]:
    """The chunk references of bytes `[start, end)` of a stored file (a part copied from it)."""
    return tuple(
        ChunkRef(ref.id, ref.offset + lo, n) for ref, lo, n in entry.refs_for(start, end - start)
    )
