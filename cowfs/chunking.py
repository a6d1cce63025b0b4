"""Turning bytes into stored chunks: content-defined cuts, hashing and uploads in parallel.

A large file is cut on its own, so identical large files share every chunk wherever they sit.
Files smaller than the average chunk are read back to back as one stream and cut together, so
100,000 tiny files become a few hundred chunks instead of 100,000 objects; each small file then
refers to a slice of one chunk (or of two, where a cut falls inside it).

A put is a pipeline of stages joined by bounded queues, each stage in a library call that
releases the GIL, so that both cores work: a large file is mapped window by window under a read
lease (`cowfs.mapped`, for a local store) or read a few blocks ahead on a thread of its own
(`readahead.BlockReader`), small files by a pool of readers in order; the calling thread
cuts (FastCDC) each block where it lies, without copying it; one thread hashes the file's digest,
block after block; a pool hashes each chunk for its address, compresses it if that pays, and
uploads it. Blocks read ahead and chunks in flight are bounded, so memory stays flat whatever is
being put.

Cuts are those of `FastCDC.cut_stream` over the whole file (and so of `cut_buf`): FastCDC
decides each cut from at most `MAX_CHUNK` bytes after the previous one, so a cut found in a block
is final once `MAX_CHUNK` bytes of the block follow its start, or the block is the last one.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass

import blake3
from pyfastcdc.cy import FastCDC

from cowfs.entries import ChunkRef, Entry, EntryType
from cowfs.mapped import SUPPORTED as _CAN_MAP
from cowfs.mapped import LeasedFile
from cowfs.objects import object_id
from cowfs.readahead import Block, BlockReader, Readable, read_blocks
from cowfs.store import Store

MIN_CHUNK = 256 * 1024
AVG_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
#: Files below this size go into the shared pack stream.
SMALL_FILE = AVG_CHUNK
_IN_FLIGHT = 32
_KEEP_FUTURES = 4096
#: A large file is read in blocks of this size, `_BLOCKS_AHEAD` of them ahead of the cutter.
BLOCK = 16 * 1024 * 1024
_BLOCKS_AHEAD = 2
#: A stream read on the calling thread (a request body) is read in smaller blocks: many may
#: be cut at once, and nothing is read ahead.
_STREAM_BLOCK = 4 * 1024 * 1024
#: A pack stream tries to cut after this many files even if they add up to few bytes.
_PACK_TRY_FILES = 4096

__all__ = ["Readable", "Chunker", "FileData", "Pending"]


@dataclass(frozen=True)
class FileData:
    size: int
    digest: bytes
    chunks: tuple[ChunkRef, ...]

    def entry(self, path: str, mode: int, mtime_ns: int) -> Entry:
        """The file entry these bytes make at `path` (every writer lands files through here)."""
        return Entry(
            path, EntryType.FILE, mode & 0o7777, self.size, mtime_ns, self.digest, self.chunks
        )


class Pending:
    """A file whose chunks are still uploading: slices of chunk futures, resolved later.

    Public so a caller can assemble a file from new chunks and references it already holds
    (staging re-chunks only the edited spans of a file and keeps every other reference).
    """

    def __init__(self) -> None:
        self.parts: list[tuple[Future[str], int, int]] = []
        self.size = 0
        self.digest = b""

    def add_ref(self, ref: ChunkRef) -> None:
        """Append a slice of a chunk that is stored already (nothing to upload)."""
        done: Future[str] = Future()
        done.set_result(ref.id)
        self.parts.append((done, ref.offset, ref.length))

    def result(self) -> FileData:
        refs = tuple(ChunkRef(f.result(), off, ln) for f, off, ln in self.parts)
        return FileData(self.size, self.digest, refs)


class Chunker:
    def __init__(
        self,
        store: Store,
        progress: Callable[[int], None] | None = None,
        workers: int | None = None,
        slots: threading.Semaphore | None = None,
    ) -> None:
        """`slots` bounds the chunks in flight; pass one semaphore to many chunkers to share
        one budget between them (a gateway's concurrent uploads)."""
        self.store = store
        self.progress = progress or (lambda n: None)
        self.cdc = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        if workers is None:
            # A remote store is latency-bound: keep many uploads in flight. A local one is
            # bound by the disk and the CPU: more threads would only contend.
            cores = os.cpu_count() or 2
            workers = 16 if not store.objects.is_local else min(8, cores * 2)
        self.pool = ThreadPoolExecutor(workers)
        #: Large files are cut through a map only for a local store, whose writes end soon
        #: after a chunk is handed out: the lease holds writers back until then.
        self.map_files = _CAN_MAP and store.objects.is_local
        self.slots = slots or threading.BoundedSemaphore(_IN_FLIGHT)
        self.futures: list[Future[str]] = []
        #: The first upload failure: later submits raise it at once, so a dead store stops a
        #: put after one request's timeout rather than after every chunk's.
        self._failed: BaseException | None = None

    def __enter__(self) -> Chunker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def _upload(self, data: bytes) -> str:
        try:
            return self.store.put_chunk(data, object_id(data))
        except BaseException as e:
            self._failed = self._failed or e
            raise
        finally:
            self.slots.release()

    def _submit(self, data: bytes) -> Future[str]:
        if self._failed is not None:
            raise self._failed
        self.slots.acquire()
        fut = self.pool.submit(self._upload, data)
        if len(self.futures) >= _KEEP_FUTURES:
            # A long put keeps only the uploads still running (a failure is in `_failed`).
            self.futures = [f for f in self.futures if not f.done()]
        self.futures.append(fut)
        return fut

    def wait(self) -> None:
        """Block until every chunk submitted so far is stored; re-raise the first failure."""
        for f in self.futures:
            f.result()
        self.futures.clear()
        if self._failed is not None:
            raise self._failed

    # --- producers -------------------------------------------------------------------------

    def add_file(self, path: str | os.PathLike[str]) -> Pending:
        """Cut one large file into chunks of its own: through a map of it under a read lease
        where it can have one and the store is local (`cowfs.mapped`), else read ahead on a
        thread."""
        if self.map_files:
            leased = LeasedFile.open(path)
            if leased is not None:
                pending = self._cut_mapped(leased)
                if pending is not None:
                    return pending
        with open(path, "rb") as f, BlockReader(f, BLOCK, MAX_CHUNK, _BLOCKS_AHEAD) as blocks:
            return self._cut_blocks(blocks)

    def _cut_mapped(self, leased: LeasedFile, window: int = BLOCK) -> Pending | None:
        """Cut a leased file window by window, its chunks slices of the map; None if a writer
        came to wait for the file meanwhile, or a map failed (the lease is then given up once
        nothing reads the map, and the file is to be read again the ordinary way)."""
        pending = Pending()
        pos = 0  # file offset of the first byte not yet in a final chunk
        gave_way = False
        try:
            with _Digest() as digest:
                while pos < leased.size:
                    if leased.writer_waits():
                        gave_way = True
                        break
                    stop = min(leased.size, pos + MAX_CHUNK + window)
                    try:
                        view = leased.view(pos, stop)
                    except OSError:  # no map to be had (address space, memory): read it
                        gave_way = True
                        break
                    leased.prefetch_to(stop + 2 * window)
                    end = self._take(pending, view, final_cuts(self.cdc, view, stop == leased.size))
                    digest.add(view[:end])
                    pos += end
                pending.digest = digest.result()
        finally:
            leased.release_after(f for f, _, _ in pending.parts)
        if gave_way:
            wait_all([f for f, _, _ in pending.parts])  # the map is read no more
            self.progress(-pending.size)
            return None
        return pending

    def _take(self, pending: Pending, window: memoryview, cuts: list[tuple[int, int]]) -> int:
        """Upload each final chunk (offset, length) of `window` as part of `pending`; the end
        of the last one, where the next window starts."""
        end = 0
        for off, n in cuts:
            end = off + n
            pending.parts.append((self._submit(window[off:end]), 0, n))
            pending.size += n
            self.progress(n)
        return end

    def add_stream(self, readable: Readable) -> Pending:
        """Cut everything `readable` yields until it is exhausted into chunks of its own.

        For bytes that are not a file on disk (a span of a staged file, a request body): the
        caller need not hold them all in memory, as `add_bytes` would. `readable` is read on
        the calling thread (a gateway's body pipe works only there). Uploads run in the
        background; `wait()` or the result's `result()` waits for them. Progress is reported
        per chunk.
        """
        return self._cut_blocks(read_blocks(readable, _STREAM_BLOCK, MAX_CHUNK))

    def add_bytes(self, data: bytes | bytearray | memoryview) -> Pending:
        """Cut bytes already in memory. Chunks are slices of `data` when it is `bytes` (it
        cannot change under the uploads); anything else is copied once first."""
        if not isinstance(data, bytes):
            data = bytes(data)
        view = memoryview(data)
        pending = Pending()
        for off, n in final_cuts(self.cdc, view, last=True):
            pending.parts.append((self._submit(view[off : off + n]), 0, n))
            pending.size += n
        pending.digest = blake3.blake3(data).digest()
        return pending

    def _cut_blocks(self, blocks: Iterable[Block]) -> Pending:
        pending = Pending()
        with _Digest() as digest:
            for window, cuts in _windows(self.cdc, blocks):
                digest.add(window[: self._take(pending, window, cuts)])
            pending.digest = digest.result()
        return pending

    def add_small_files(self, contents: Iterable[bytes]) -> list[Pending]:
        """Cut many small files as one stream; each gets the slices of the chunks it fell into.

        `contents` is consumed lazily, so a caller can read files as the cutter needs them.
        """
        packer = self.packer()
        spans = []
        for data in contents:
            spans.append((packer.add(data), blake3.blake3(data).digest()))
        packer.finish()
        out = []
        for (start, end), digest in spans:
            p = Pending()
            p.parts = packer.refs(start, end)
            p.size = end - start
            p.digest = digest
            packer.release(end)
            out.append(p)
        return out

    def packer(self) -> Packer:
        """A stream of small files to add one at a time (`Packer.add`), cut as it fills."""
        return Packer(self)


class _Digest:
    """The whole file's BLAKE3, hashed on a thread of its own one window behind the cutter:
    one window hashing while the next is cut, so at most two are held."""

    def __init__(self) -> None:
        self._hasher = blake3.blake3()
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="cowfs-digest")
        self._busy: Future[object] | None = None

    def __enter__(self) -> _Digest:
        return self

    def __exit__(self, *exc: object) -> None:
        self._pool.shutdown(wait=True)

    def add(self, data: memoryview) -> None:
        self._wait()
        self._busy = self._pool.submit(self._hasher.update, data)

    def result(self) -> bytes:
        self._wait()
        return self._hasher.digest()

    def _wait(self) -> None:
        if self._busy is not None:
            busy, self._busy = self._busy, None
            busy.result()


def store_stream(
    store: Store,
    source: Readable | bytes,
    slots: threading.Semaphore | None = None,
) -> FileData:
    """Chunk and store one file's bytes (a stream read to its end, or bytes in memory) and
    return once every chunk is stored: the one way a single stream becomes a stored file, for
    the S3 gateway's bodies as for the Python API's writer."""
    with Chunker(store, slots=slots) as chunker:
        if isinstance(source, bytes):
            pending = chunker.add_bytes(source)
        else:
            pending = chunker.add_stream(source)
        chunker.wait()
        return pending.result()


def final_cuts(cdc: FastCDC, window: memoryview, last: bool) -> list[tuple[int, int]]:
    """The (offset, length) of each chunk of `window` that more bytes after it cannot move.

    FastCDC scans from a chunk's start for the first position whose gear hash matches, up to
    `MAX_CHUNK` bytes; its threshold changes at `AVG_CHUNK`. So a chunk whose cut is a match
    (shorter than what the window holds after its start, with at least `AVG_CHUNK` there) or
    that had a whole `MAX_CHUNK` to look at is final; only the uncut tail of a window waits
    for the next block. With `last`, the window ends the stream and every chunk is final.
    """
    out: list[tuple[int, int]] = []
    size = len(window)
    for c in cdc.cut_buf(window):
        room = size - c.offset
        if not (last or room >= MAX_CHUNK or (room >= AVG_CHUNK and c.length < room)):
            break
        out.append((c.offset, c.length))
    return out


def _windows(
    cdc: FastCDC, blocks: Iterable[Block]
) -> Iterator[tuple[memoryview, list[tuple[int, int]]]]:
    """Each block with the uncut tail of the one before in its headroom, and the final cuts
    in it as (offset, length). The tail is the only byte copied."""
    carry = memoryview(b"")
    for b in blocks:
        start = MAX_CHUNK - len(carry)
        b.buf[start:MAX_CHUNK] = carry
        window = memoryview(b.buf)[start : MAX_CHUNK + b.size]
        cuts = final_cuts(cdc, window, b.last)
        end = cuts[-1][0] + cuts[-1][1] if cuts else 0
        yield window, cuts
        carry = window[end:]


class Packer:
    """Small files pushed one by one into one stream, cut now and then as it fills.

    `add` answers where a file lies in the stream; once `done` has passed its end, `refs` gives
    its chunk slices (the chunks may still be uploading). Callers take files in the order
    they added them and `release` each, so the packer holds only the chunks of files not yet
    taken. The cuts and slices are those of cutting the whole concatenation at once, so a
    file's references never depend on when cuts were tried.
    """

    def __init__(self, chunker: Chunker) -> None:
        self.chunker = chunker
        self._new_block(memoryview(b""))
        self.pos = 0  # stream offset of the next byte added
        self.done = 0  # stream offset up to which chunks are final
        #: Final chunks not yet released: (upload, stream start, length), in stream order.
        self.chunks: deque[tuple[Future[str], int, int]] = deque()

    def _new_block(self, carry: memoryview) -> None:
        self.buf = bytearray(MAX_CHUNK + BLOCK)
        self.start = MAX_CHUNK - len(carry)
        self.buf[self.start : MAX_CHUNK] = carry
        self.fill = self.tried = MAX_CHUNK
        self.added = 0

    def add(self, data: bytes | memoryview) -> tuple[int, int]:
        """Append one file's bytes; its (start, end) in the stream."""
        start = self.pos
        view = memoryview(data)
        while view:
            k = min(len(view), len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + k] = view[:k]
            self.fill += k
            self.pos += k
            view = view[k:]
            if self.fill == len(self.buf):
                self._cut(last=False)
                self._new_block(memoryview(self.buf)[self.start : self.fill])
        self.added += 1
        if self.fill - self.tried >= AVG_CHUNK or self.added >= _PACK_TRY_FILES:
            # Cut now and then before the block is full, so that a file's chunks (and with
            # them its entry) are known soon after it is added, however small the files are.
            self._cut(last=False)
        self.chunker.progress(len(data))
        return start, self.pos

    def finish(self) -> None:
        self._cut(last=True)

    def refs(self, start: int, end: int) -> list[tuple[Future[str], int, int]]:
        """The slices of `[start, end)` (needs `end <= done`): every chunk that overlaps it,
        and for an empty file strictly inside a chunk a 0-byte slice of that chunk."""
        out = []
        for fut, cstart, clen in self.chunks:
            if cstart >= end:
                break
            if cstart + clen > start:
                lo, hi = max(start, cstart), min(end, cstart + clen)
                out.append((fut, lo - cstart, hi - lo))
        return out

    def release(self, end: int) -> None:
        """Forget the chunks that lie wholly before `end` (the files there were taken)."""
        while self.chunks and self.chunks[0][1] + self.chunks[0][2] <= end:
            self.chunks.popleft()

    def _cut(self, last: bool) -> None:
        """Submit the final chunks of what is buffered and not yet cut."""
        self.tried = self.fill
        self.added = 0
        window = memoryview(self.buf)[self.start : self.fill]
        for off, n in final_cuts(self.chunker.cdc, window, last):
            self.chunks.append((self.chunker._submit(window[off : off + n]), self.done, n))
            self.done += n
            self.start += n
