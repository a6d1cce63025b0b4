"""The staged state of one path (`Rec`), and the pure arithmetic on its byte ranges.

Plain data with no I/O: the durable store packs these, the union view reads them, the POSIX
operations make them, and the seal turns them into entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgpack

from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.errors import CowfsError

FILE, DIR, LINK, WHITEOUT = "f", "d", "l", "x"
#: A file whose written bytes all lie below this offset keeps them in its record (`Rec.data`)
#: rather than in an overlay file of its own: creating a file costs more than the journal
#: append that carries the bytes (docs/mount.md, *Inline data*).
INLINE_MAX = 32 << 10
#: At most this many inline bytes per staging area (records are held in memory); past it new
#: files get overlay files again.
INLINE_AREA_MAX = 64 << 20
#: Prefix of the keys of files unlinked while open; no real path starts with a NUL.
ORPHAN = "\x00orphan/"


class StagingError(CowfsError):
    """A staged change the filesystem must refuse (the errno says which)."""

    def __init__(self, message: str, err: int) -> None:
        super().__init__(message)
        self.errno = err


@dataclass
class Rec:
    """One staged path. Files keep their base chunks and the ranges written since."""

    kind: str
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    #: Bytes of the base file still visible (a shrinking truncate cuts them off).
    base_len: int = 0
    base_chunks: tuple[ChunkRef, ...] = ()
    base_digest: bytes | None = None
    overlay: int | None = None
    #: Sorted, disjoint [start, end) ranges of the file that live in the overlay.
    ranges: list[list[int]] = field(default_factory=list)
    target: str = ""
    opaque: bool = False
    #: The overlay's bytes [0, len(data)) held in the record itself, for a small file (no
    #: overlay file then); as with an overlay file, only `ranges` of it are ever read.
    data: bytes | None = None

    def copy(self) -> Rec:
        """A copy to change: records in the index are never changed in place, so an operation
        that fails half-way can put the old ones back."""
        return Rec(
            self.kind,
            self.mode,
            self.mtime_ns,
            self.size,
            self.base_len,
            self.base_chunks,
            self.base_digest,
            self.overlay,
            [list(r) for r in self.ranges],
            self.target,
            self.opaque,
            self.data,
        )

    def pack(self, path: str | None = None) -> bytes:
        """msgpack array of 11; 12 with the path when the key does not hold it; 13 with the
        inline data (the twelfth is then the path or nil)."""
        chunks = [[bytes.fromhex(c.id), c.offset, c.length] for c in self.base_chunks]
        row = [
            self.kind,
            self.mode,
            self.mtime_ns,
            self.size,
            self.base_len,
            chunks,
            self.base_digest,
            self.overlay,
            self.ranges,
            self.target,
            self.opaque,
        ]
        if path is not None or self.data is not None:
            row.append(path)
        if self.data is not None:
            row.append(self.data)
        return msgpack.packb(row, use_bin_type=True)

    @classmethod
    def unpack(cls, raw: bytes) -> tuple[Rec, str | None]:
        """The record and, when it was packed with one, its path."""
        row = msgpack.unpackb(raw, raw=False)
        k, mode, mt, size, blen, chunks, dig, ov, ranges, target, opaque = row[:11]
        refs = tuple(ChunkRef(c.hex(), o, n) for c, o, n in chunks)
        data = row[12] if len(row) > 12 else None
        rec = cls(k, mode, mt, size, blen, refs, dig, ov, ranges, target, opaque, data)
        return rec, (row[11] if len(row) > 11 else None)

    def entry(self, path: str) -> Entry:
        if self.kind == DIR:
            return dir_entry(path, self.mode, self.mtime_ns)
        if self.kind == LINK:
            return Entry(
                path,
                EntryType.SYMLINK,
                0o777,
                len(self.target.encode()),
                self.mtime_ns,
                target=self.target,
            )
        return Entry(path, EntryType.FILE, self.mode, self.size, self.mtime_ns)

    def base_entry(self) -> Entry:
        """The still-visible base bytes as an Entry a ChunkReader can read."""
        return Entry(
            "",
            EntryType.FILE,
            self.mode,
            self.base_len,
            0,
            None,
            clip_refs(self.base_chunks, self.base_len),
        )


def rec_from_entry(e: Entry) -> Rec:
    if e.type is EntryType.DIR:
        return Rec(DIR, e.mode, e.mtime_ns)
    if e.type is EntryType.SYMLINK:
        return Rec(LINK, 0o777, e.mtime_ns, target=e.target or "")
    return Rec(FILE, e.mode, e.mtime_ns, e.size, e.size, e.chunks, e.digest)


def clip_refs(refs: tuple[ChunkRef, ...], length: int) -> tuple[ChunkRef, ...]:
    out = []
    pos = 0
    for r in refs:
        if pos >= length:
            break
        n = min(r.length, length - pos)
        out.append(r if n == r.length else ChunkRef(r.id, r.offset, n))
        pos += n
    return tuple(out)


def add_range(ranges: list[list[int]], start: int, end: int) -> list[list[int]]:
    """Merge [start, end) into sorted disjoint ranges (touching ranges join)."""
    if start >= end:
        return ranges
    out: list[list[int]] = []
    placed = False
    for s, e in ranges:
        if e < start:
            out.append([s, e])
        elif s > end:
            if not placed:
                out.append([start, end])
                placed = True
            out.append([s, e])
        else:
            start, end = min(s, start), max(e, end)
    if not placed:
        out.append([start, end])
    return out


def clip_ranges(ranges: list[list[int]], length: int) -> list[list[int]]:
    return [[s, min(e, length)] for s, e in ranges if s < length]
