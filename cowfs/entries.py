"""What a commit's tree maps each path to.

An entry describes one file, directory or symlink. A file's bytes are a list of chunk references
`(chunk id, offset in the chunk, length)`: a large file owns its chunks, while small files are
packed back to back into shared chunks, so one reference may point into the middle of a chunk and
a file may span two.
"""

from __future__ import annotations

import stat
from bisect import bisect_right
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import accumulate


class EntryType(IntEnum):
    FILE = 0
    DIR = 1
    SYMLINK = 2


@dataclass(frozen=True, slots=True)
class ChunkRef:
    id: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    type: EntryType
    mode: int = 0o644
    size: int = 0
    mtime_ns: int = 0
    #: BLAKE3-256 of the whole file's bytes: equal files have equal digests wherever they live.
    digest: bytes | None = None
    chunks: tuple[ChunkRef, ...] = ()
    target: str | None = None
    _starts: tuple[int, ...] = field(default=(), compare=False, repr=False)

    @property
    def is_dir(self) -> bool:
        return self.type is EntryType.DIR

    @property
    def is_file(self) -> bool:
        return self.type is EntryType.FILE

    @property
    def st_mode(self) -> int:
        kind = {EntryType.FILE: stat.S_IFREG, EntryType.DIR: stat.S_IFDIR}.get(
            self.type, stat.S_IFLNK
        )
        return kind | (self.mode & 0o7777)

    def chunk_starts(self) -> tuple[int, ...]:
        """File offset where each chunk reference begins, for bisecting a read."""
        if len(self._starts) != len(self.chunks):
            starts = (0, *accumulate(c.length for c in self.chunks[:-1]))
            object.__setattr__(self, "_starts", starts)
        return self._starts

    def refs_for(self, offset: int, size: int) -> list[tuple[ChunkRef, int, int]]:
        """The chunk references a read of `size` bytes at `offset` touches, with the slice of
        each one (start within the reference, length) that it needs."""
        end = min(offset + size, self.size)
        if offset >= end:
            return []
        starts = self.chunk_starts()
        i = bisect_right(starts, offset) - 1
        ref = self.chunks[i]
        lo = offset - starts[i]
        if end - starts[i] <= ref.length:  # the common case: inside one chunk
            return [(ref, lo, end - offset)]
        out = []
        while i < len(self.chunks) and starts[i] < end:
            ref = self.chunks[i]
            lo = max(offset, starts[i]) - starts[i]
            hi = min(end, starts[i] + ref.length) - starts[i]
            out.append((ref, lo, hi - lo))
            i += 1
        return out

    def same_content(self, other: Entry) -> bool:
        """Equal as data: where the bytes are stored and when they were touched do not count."""
        return (self.type, self.size, self.digest, self.mode, self.target) == (
            other.type,
            other.size,
            other.digest,
            other.mode,
            other.target,
        )

    def with_path(self, path: str) -> Entry:
        return Entry(
            path,
            self.type,
            self.mode,
            self.size,
            self.mtime_ns,
            self.digest,
            self.chunks,
            self.target,
        )


#: What one decoded `Entry` holds in memory beyond its path (the slotted object, digest, ints,
#: tuples), and per chunk reference (the `ChunkRef` and its hex id): tracemalloc over entries
#: decoded from tree nodes, a 27-character path and one chunk reference costing 541 bytes.
ENTRY_BASE_BYTES = 340
CHUNK_REF_BYTES = 170


def approx_bytes(e: Entry) -> int:
    """An estimate of the memory one decoded entry holds, for caches capped in bytes."""
    return ENTRY_BASE_BYTES + len(e.path) + CHUNK_REF_BYTES * len(e.chunks)


def dir_entry(path: str, mode: int = 0o755, mtime_ns: int = 0) -> Entry:
    return Entry(path, EntryType.DIR, mode & 0o7777, 0, mtime_ns)


def pack_entry(e: Entry) -> list:
    return [
        e.path,
        int(e.type),
        e.mode,
        e.size,
        e.mtime_ns,
        e.digest,
        [[bytes.fromhex(c.id), c.offset, c.length] for c in e.chunks],
        e.target,
    ]


def unpack_entry(raw: list) -> Entry:
    path, typ, mode, size, mtime_ns, digest, chunks, target = raw
    return Entry(
        path,
        EntryType(typ),
        mode,
        size,
        mtime_ns,
        digest,
        tuple(ChunkRef(cid.hex(), off, ln) for cid, off, ln in chunks),
        target,
    )
