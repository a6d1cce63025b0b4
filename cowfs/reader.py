"""Reading file bytes back out of chunks, with a small in-memory cache and read-ahead.

Packed small files share chunks, so the reader keeps the most recent chunks in memory: reading a
directory of small files in order fetches each shared chunk once. Sequential readers get the next
chunks fetched in the background while they consume the current one. With `files` (the mount),
a read of part of a chunk that is not in memory but lies verified on local disk reads only the
blocks it needs (`cowfs.chunkfiles`), and does not pull the whole chunk into memory.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

from cowfs.chunkfiles import ChunkFiles
from cowfs.entries import ChunkRef, Entry
from cowfs.store import Store

DEFAULT_MEMORY = 256 << 20


class ChunkReader:
    def __init__(
        self,
        store: Store,
        memory: int = DEFAULT_MEMORY,
        workers: int = 8,
        files: ChunkFiles | None = None,
    ) -> None:
        self.store = store
        self.files = files
        self.memory = memory
        self._lru: OrderedDict[str, bytes] = OrderedDict()
        self._used = 0
        self._inflight: dict[str, Future[bytes]] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="cowfs-read")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.files is not None:
            self.files.close()

    def _fetch(self, oid: str) -> bytes:
        """Fetch a chunk and keep it in memory. The in-flight slot is cleared whatever happens,
        so a chunk whose fetch failed (a transient store error) is fetched again next time."""
        try:
            data = self.files.fetch(oid) if self.files is not None else self.store.get_chunk(oid)
        except BaseException:
            with self._lock:
                self._inflight.pop(oid, None)
            raise
        with self._lock:
            self._inflight.pop(oid, None)
            if oid not in self._lru:
                self._lru[oid] = data
                self._used += len(data)
                while self._used > self.memory and len(self._lru) > 1:
                    _, old = self._lru.popitem(last=False)
                    self._used -= len(old)
        return data

    def prefetch(self, oids: list[str]) -> None:
        with self._lock:
            for oid in oids:
                if oid not in self._lru and oid not in self._inflight:
                    self._inflight[oid] = self._pool.submit(self._fetch, oid)

    def chunk(self, oid: str) -> bytes:
        """One chunk's bytes. Concurrent readers of one missing chunk share a single fetch."""
        with self._lock:
            data = self._lru.get(oid)
            if data is not None:
                self._lru.move_to_end(oid)
                return data
            fut = self._inflight.get(oid)
            if fut is None:
                mine: Future[bytes] = Future()
                self._inflight[oid] = mine
        if fut is not None:
            return fut.result()
        try:
            data = self._fetch(oid)
        except BaseException as e:
            mine.set_exception(e)
            raise
        mine.set_result(data)
        return data

    def read(self, entry: Entry, offset: int, size: int, readahead: int = 0) -> bytes:
        parts = entry.refs_for(offset, size)
        if readahead and parts:
            last = bisect_right(entry.chunk_starts(), offset + size - 1) - 1
            self.prefetch([c.id for c in entry.chunks[last + 1 : last + 1 + readahead]])
        if len(parts) > 1:
            self.prefetch([ref.id for ref, _, _ in parts])
        out = [self._slice(ref, lo, ln) for ref, lo, ln in parts]
        return out[0] if len(out) == 1 else b"".join(out)

    def _slice(self, ref: ChunkRef, lo: int, length: int) -> bytes:
        if self.files is not None and length < ref.length:
            with self._lock:
                data = self._lru.get(ref.id)
                if data is not None:
                    self._lru.move_to_end(ref.id)
            if data is None:
                part = self.files.read(ref.id, ref.offset + lo, length)
                if part is not None:
                    return part
        data = self.chunk(ref.id)
        start = ref.offset + lo
        if start == 0 and length == len(data):
            return data
        return data[start : start + length]

    def iter_file(self, entry: Entry, window: int = 8) -> Iterator[bytes]:
        """The whole file, chunk by chunk, keeping `window` chunks in flight ahead."""
        refs = entry.chunks
        for i, ref in enumerate(refs):
            if i % max(1, window // 2) == 0:
                self.prefetch([r.id for r in refs[i : i + window]])
            yield self._slice(ref, 0, ref.length)
