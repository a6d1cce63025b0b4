"""Sub-chunk reads: where a chunk's verified plain bytes lie on this node, read by block.

A chunk is verified whole (BLAKE3 of its plain bytes, by `Store.get_chunk`) once, when it
enters the node: fetched into the chunk cache, or first read from a local store. Its plain
bytes are then on local disk: in the local store's own file when stored raw (after the object
header), else in a pack file of the chunk cache (`cowfs.packcache`; a local store's compressed
chunks are cached plain, like a remote store's). The xxh3-64 of each `BLOCK` (16 KiB) is kept
beside it, in memory, so a later read of a few KiB `pread`s only the blocks it touches and
checks those: damage done after the chunk was verified is still found, at the cost of one
block, not of the whole chunk. A block that fails its check (or a pack the cache dropped)
drops the location; the caller then fetches the chunk whole again, which verifies it.

Locations live in memory (about 600 bytes per 1 MiB chunk, `MAX_CHUNKS` of them: 64 GiB of
chunks in about 40 MB). A chunk in the cache's packs keeps its block sums in its cache entry
too, so after a restart it is located again from the index, and its first read still costs
only the blocks it touches; a raw chunk of a local store is verified whole again on its first
read after a restart. The
local store's files most recently read stay open (`OpenFiles`), and the cache's packs (one
descriptor per pack, `PackCache.pread`), with `POSIX_FADV_RANDOM`, so the local file system
does not read ahead of a block read (the kernel reads ahead of the mount's own files where
that pays).
"""

from __future__ import annotations

import resource
import threading
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from cowfs.objects import HEADER_SIZE, Codec, Kind, object_key
from cowfs.openfiles import OpenFiles, open_for_blocks
from cowfs.packformat import BLOCK, block_sums, blocks_match
from cowfs.store import Store

__all__ = ["BLOCK", "ChunkFiles", "Located", "block_sums"]

MAX_CHUNKS = 1 << 16
#: Chunk files kept open (each pins at most one ~1 MiB file the cache may have evicted), at
#: most a quarter of the process's descriptor limit: 1,024 covers random reads over 1 GiB.
OPEN_FILES = 1024


def _open_files_limit() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return OPEN_FILES
    return max(16, min(OPEN_FILES, soft // 4))


@dataclass(frozen=True)
class Located:
    #: A raw object of the local store, or None for a chunk in the cache's pack `pack`.
    path: Path | None
    pack: int
    #: Where the plain bytes start in `path` (the object header's size in a raw local object)
    #: or in the pack.
    offset: int
    length: int
    sums: array


class ChunkFiles:
    """Verified chunks on local disk. Thread-safe; reads take no lock while they read."""

    def __init__(self, store: Store, max_chunks: int = MAX_CHUNKS) -> None:
        self.store = store
        self.max_chunks = max_chunks
        self._locs: OrderedDict[str, Located] = OrderedDict()
        self._lock = threading.Lock()
        self._fds: OpenFiles[Path] = OpenFiles(_open_files_limit(), open_for_blocks)
        self._local_root: Path | None = getattr(store.objects, "root", None)
        if not store.objects.is_local:
            self._local_root = None

    def has(self, oid: str) -> bool:
        with self._lock:
            return oid in self._locs

    def fetch(self, oid: str) -> bytes:
        """A chunk's plain bytes, whole: read back by blocks where it is located, else fetched
        and verified (`Store.get_chunk`), and then located."""
        data = self.read(oid, 0, None)
        if data is not None:
            return data
        plain = self.store.get_chunk(oid)
        self._place(oid, plain)
        return plain

    def read(self, oid: str, offset: int, size: int | None) -> bytes | None:
        """Bytes [offset, offset+size) of the chunk (to its end when size is None), or None when
        it is not located here (or no longer is: evicted, or found damaged)."""
        with self._lock:
            loc = self._locs.get(oid)
            if loc is not None:
                self._locs.move_to_end(oid)
        if loc is None:
            loc = self._from_cache(oid)
            if loc is None:
                return None
        end = loc.length if size is None else min(offset + size, loc.length)
        if offset >= end:
            return b""
        b0, b1 = offset // BLOCK, (end - 1) // BLOCK
        start, stop = b0 * BLOCK, min((b1 + 1) * BLOCK, loc.length)
        try:
            if loc.path is None:
                buf = self.store.index.packs.pread(loc.pack, stop - start, loc.offset + start)
            else:
                buf = self._fds.pread(loc.path, stop - start, loc.offset + start)
        except FileNotFoundError:
            self._forget(oid)
            return None
        if len(buf) != stop - start or not blocks_match(buf, start, loc.sums):
            self._damaged(oid, loc)
            return None
        if start == offset and stop == end:
            return buf
        return bytes(memoryview(buf)[offset - start : end - start])

    def _place(self, oid: str, plain: bytes) -> None:
        key = object_key(Kind.CHUNK, oid)
        loc = None
        if self._local_root is not None:
            path = self._local_root / key
            try:
                with open(path, "rb") as f:
                    header = f.read(HEADER_SIZE)
            except OSError:
                header = b""
            if len(header) == HEADER_SIZE and header[6] == Codec.RAW:
                loc = Located(path, -1, HEADER_SIZE, len(plain), block_sums(plain))
            else:
                self.store.index.put_blob(key, plain)
        if loc is None:
            self._from_cache(oid)  # not there if the cache is off or full: reads go by memory
            return
        self._remember(oid, loc)

    def _from_cache(self, oid: str) -> Located | None:
        """The chunk's place in the cache's packs, with the block sums its entry keeps."""
        at = self.store.index.chunk_location(object_key(Kind.CHUNK, oid))
        if at is None:
            return None
        loc = Located(None, at.pack, at.offset, at.length, at.sums)
        self._remember(oid, loc)
        return loc

    def _remember(self, oid: str, loc: Located) -> None:
        with self._lock:
            self._locs[oid] = loc
            while len(self._locs) > self.max_chunks:
                self._locs.popitem(last=False)

    def _forget(self, oid: str) -> None:
        with self._lock:
            loc = self._locs.pop(oid, None)
        if loc is not None and loc.path is not None:
            self._fds.drop(loc.path)

    def close(self) -> None:
        self._fds.close()

    def _damaged(self, oid: str, loc: Located) -> None:
        self._forget(oid)
        if loc.path is None:  # in the cache: drop it, the store's copy is fetched again
            self.store.index.forget_blob(object_key(Kind.CHUNK, oid))
