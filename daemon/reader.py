"""The mount's chunk reader: the library's, counted, and able to answer without a thread.

A read whose chunks are all in memory, or verified on local disk, is served on the FUSE loop
itself; only reads that must fetch go to a worker thread. Handing every read to a thread would
cost more than the copy or the block read it does.
"""

from __future__ import annotations

from cowfs.chunkfiles import ChunkFiles
from cowfs.entries import Entry
from cowfs.reader import ChunkReader
from cowfs.store import Store
from daemon.metrics_fuse import CHUNK_HITS, CHUNK_MISSES, STORE_READ_BYTES

#: Reads up to this size of chunks located on local disk are served on the loop.
INLINE_DISK_MAX = 256 << 10


class MountReader(ChunkReader):
    """With sub-chunk reads on (`ChunkFiles`): a 4 KiB read of a chunk that is not in memory
    costs a block read, not a chunk."""

    def __init__(self, store: Store, workers: int = 16) -> None:
        super().__init__(store, workers=workers, files=ChunkFiles(store))

    def _fetch(self, oid: str) -> bytes:
        CHUNK_MISSES.inc()
        data = super()._fetch(oid)
        STORE_READ_BYTES.inc(len(data))
        return data

    def chunk(self, oid: str) -> bytes:
        with self._lock:
            hit = oid in self._lru
        if hit:
            CHUNK_HITS.inc()
        return super().chunk(oid)

    def cached_read(self, entry: Entry, offset: int, size: int) -> bytes | memoryview | None:
        """The bytes if every chunk they need is in memory, or lies verified on local disk and
        the read is small enough to do on the loop, else None (the caller goes to a thread).

        A located block `pread` blocks the loop for about one disk read (~100 us for 16 KiB);
        a thread handoff costs more than that on a small VM (~140 us measured round trip through
        `trio.to_thread`), and reads through one loop do not overlap either way. Part of a chunk
        in memory is answered as a view of it (FUSE copies the reply out of any buffer)."""
        parts = entry.refs_for(offset, size)
        out = []
        hits = 0
        inline_disk = size <= INLINE_DISK_MAX
        for ref, lo, ln in parts:
            with self._lock:
                data = self._lru.get(ref.id)
                if data is not None:
                    self._lru.move_to_end(ref.id)
            if data is not None:
                start = ref.offset + lo
                whole = start == 0 and ln == len(data)
                out.append(data if whole else memoryview(data)[start : start + ln])
                hits += 1
                continue
            if not inline_disk or self.files is None:
                return None
            part = self.files.read(ref.id, ref.offset + lo, ln)
            if part is None:
                return None
            out.append(part)
        if hits:
            CHUNK_HITS.inc(hits)
        return out[0] if len(out) == 1 else b"".join(out)

    def has(self, oid: str) -> bool:
        with self._lock:
            return oid in self._lru or oid in self._inflight
