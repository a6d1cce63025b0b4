"""Turning bytes into stored chunks: content-defined cuts, hashing and uploads in parallel.

A large file is cut on its own, so identical large files share every chunk wherever they sit.
Files smaller than the average chunk are read back to back as one stream and cut together, so
100,000 tiny files become a few hundred chunks instead of 100,000 objects; each small file then
refers to a slice of one chunk (or of two, where a cut falls inside it).

The calling thread reads and cuts (FastCDC) and computes each file's digest; a thread pool
hashes each chunk for its address, compresses it if that pays, and uploads it. In-flight chunks
are bounded, so memory stays flat whatever is being put.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import blake3
from pyfastcdc.cy import FastCDC

from cowfs.entries import ChunkRef
from cowfs.objects import object_id
from cowfs.store import Store

MIN_CHUNK = 256 * 1024
AVG_CHUNK = 1024 * 1024
MAX_CHUNK = 4 * 1024 * 1024
#: Files below this size go into the shared pack stream.
SMALL_FILE = AVG_CHUNK
_IN_FLIGHT = 32


class Readable(Protocol):
    """What the cutter reads from: an open binary file, or anything with `readinto`."""

    def readinto(self, buffer: memoryview, /) -> int: ...


@dataclass(frozen=True)
class FileData:
    size: int
    digest: bytes
    chunks: tuple[ChunkRef, ...]


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
    ) -> None:
        self.store = store
        self.progress = progress or (lambda n: None)
        self.cdc = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
        if workers is None:
            # A remote store is latency-bound: keep many uploads in flight. A local one is
            # bound by the disk and the CPU: more threads would only contend.
            cores = os.cpu_count() or 2
            workers = 16 if not store.objects.is_local else min(8, cores * 2)
        self.pool = ThreadPoolExecutor(workers)
        self.slots = threading.BoundedSemaphore(_IN_FLIGHT)
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
        self.futures.append(fut)
        return fut

    def wait(self) -> None:
        """Block until every chunk submitted so far is stored; re-raise the first failure."""
        for f in self.futures:
            f.result()
        self.futures.clear()

    # --- producers -------------------------------------------------------------------------

    def add_file(self, path: str | os.PathLike[str]) -> Pending:
        """Cut one large file into chunks of its own."""
        with open(path, "rb") as f:
            return self.add_stream(f)

    def add_stream(self, readable: Readable) -> Pending:
        """Cut everything `readable` yields until it is exhausted into chunks of its own.

        For bytes that are not a file on disk (a span of a staged file, say): the caller need
        not hold them all in memory, as `add_bytes` would. Uploads run in the background;
        `wait()` or the result's `result()` waits for them. Progress is reported per chunk.
        """
        pending = Pending()
        hasher = blake3.blake3()
        for c in self.cdc.cut_stream(readable):
            data = bytes(c.data)
            hasher.update(data)
            pending.parts.append((self._submit(data), 0, c.length))
            pending.size += c.length
            self.progress(c.length)
        pending.digest = hasher.digest()
        return pending

    def add_bytes(self, data: bytes | memoryview) -> Pending:
        pending = Pending()
        for c in self.cdc.cut_buf(data):
            chunk = bytes(c.data)
            pending.parts.append((self._submit(chunk), 0, c.length))
            pending.size += c.length
        pending.digest = blake3.blake3(data).digest()
        return pending

    def add_small_files(self, contents: Iterable[bytes]) -> list[Pending]:
        """Cut many small files as one stream; each gets the slices of the chunks it fell into.

        `contents` is consumed lazily, so a caller can read files as the cutter needs them.
        """
        stream = _Concat(contents, self.progress)
        spans: list[tuple[Future[str], int, int]] = []  # (chunk, stream start, length)
        for c in self.cdc.cut_stream(stream):
            spans.append((self._submit(bytes(c.data)), c.offset, c.length))
        out: list[Pending] = []
        ci = 0
        for (start, end), digest in zip(stream.bounds, stream.digests, strict=True):
            p = Pending()
            p.size = end - start
            p.digest = digest
            while ci < len(spans) and spans[ci][1] + spans[ci][2] <= start:
                ci += 1
            j = ci
            while j < len(spans) and spans[j][1] < end:
                fut, cstart, clen = spans[j]
                lo = max(start, cstart)
                hi = min(end, cstart + clen)
                p.parts.append((fut, lo - cstart, hi - lo))
                j += 1
            out.append(p)
        return out


class _Concat:
    """A readable stream that is the concatenation of many byte strings, hashing each one."""

    def __init__(self, contents: Iterable[bytes], progress: Callable[[int], None]) -> None:
        self.contents = iter(contents)
        self.progress = progress
        self.bounds: list[tuple[int, int]] = []
        self.digests: list[bytes] = []
        self.pos = 0
        self.buf = memoryview(b"")

    def _next_file(self) -> bool:
        data = next(self.contents, None)
        if data is None:
            return False
        self.bounds.append((self.pos, self.pos + len(data)))
        self.digests.append(blake3.blake3(data).digest())
        self.buf = memoryview(data)
        return True

    def readinto(self, out: memoryview) -> int:
        n = 0
        want = len(out)
        while n < want:
            if not self.buf and not self._next_file():
                break
            k = min(want - n, len(self.buf))
            out[n : n + k] = self.buf[:k]
            self.buf = self.buf[k:]
            n += k
            self.pos += k
        self.progress(n)
        return n
