"""The mount's chunk reader: the library's, counted, and able to answer without a thread.

A read whose chunks are all in memory is served on the FUSE loop itself; only reads that must
fetch go to a worker thread. Handing every 128 KiB read to a thread would cost more than the
copy it does.
"""

from __future__ import annotations

from cowfs.chunkfiles import ChunkFiles
from cowfs.entries import Entry
from cowfs.reader import ChunkReader
from cowfs.store import Store
from daemon.metrics_fuse import CHUNK_HITS, CHUNK_MISSES, STORE_READ_BYTES


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

    def cached_read(self, entry: Entry, offset: int, size: int) -> bytes | None:
        """The bytes if every chunk they need is in memory already, else None."""
        parts = entry.refs_for(offset, size)
        out = []
        with self._lock:
            for ref, lo, ln in parts:
                data = self._lru.get(ref.id)
                if data is None:
                    return None
                self._lru.move_to_end(ref.id)
                start = ref.offset + lo
                out.append(data if start == 0 and ln == len(data) else data[start : start + ln])
        CHUNK_HITS.inc(len(parts))
        return out[0] if len(out) == 1 else b"".join(out)

    def has(self, oid: str) -> bool:
        with self._lock:
            return oid in self._lru or oid in self._inflight
