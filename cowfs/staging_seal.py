"""Turning staged records into a change set: which bytes are cut again, which chunks are kept.

A changed file is re-chunked only around what changed: each dirty byte range (written ranges,
plus what a file grew by) is widened to the base chunk references holding its first and last
byte, spans that then meet are merged, each span is cut again as a stream of its own, and every
base reference outside the spans is kept as it is. Editing 1 MiB of a 1 GiB file stores about
1 MiB. `rechunk_plan` is that arithmetic alone, over plain data.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable
from typing import NamedTuple

import blake3

from cowfs.changes import ChangeSet
from cowfs.chunking import SMALL_FILE, Chunker, FileData, Pending
from cowfs.entries import ChunkRef, Entry, EntryType
from cowfs.reader import ChunkReader
from cowfs.staging_records import DIR, FILE, WHITEOUT, Rec, add_range, clip_refs
from cowfs.staging_union import StagedTree

_DIGEST_PIECE = 8 << 20


class Span(NamedTuple):
    """Bytes [start, end) of the new file, to be cut into new chunks."""

    start: int
    end: int


def rechunk_plan(
    base: tuple[ChunkRef, ...], ranges: list[list[int]], base_len: int, size: int
) -> list[ChunkRef | Span]:
    """The new file, in order, as base references kept whole and spans cut again.

    `base` is the visible base (already clipped to `base_len`)."""
    dirty = add_range([list(r) for r in ranges], base_len, size)
    starts = []
    pos = 0
    for r in base:
        starts.append(pos)
        pos += r.length
    spans: list[list[int]] = []
    for s, e in dirty:
        i = _ref_index(starts, base, s)
        a = starts[i] if i is not None else s
        j = _ref_index(starts, base, e - 1)
        b = max(starts[j] + base[j].length if j is not None else e, e)
        if spans and spans[-1][1] >= a:
            spans[-1][1] = max(spans[-1][1], b)
        else:
            spans.append([a, b])
    out: list[ChunkRef | Span] = []
    ri = 0
    for a, b in spans:
        # Spans start and end on reference boundaries inside the base, so every reference
        # lies wholly before, inside or after each span.
        while ri < len(base) and starts[ri] < a:
            out.append(base[ri])
            ri += 1
        out.append(Span(a, b))
        while ri < len(base) and starts[ri] < b:
            ri += 1
    out.extend(base[ri:])
    return out


def _ref_index(starts: list[int], refs: tuple[ChunkRef, ...], offset: int) -> int | None:
    """Index of the base reference holding byte `offset`, or None past the base's end."""
    i = bisect_right(starts, offset) - 1
    return i if i >= 0 and offset < starts[i] + refs[i].length else None


def changeset(tree: StagedTree, reader: ChunkReader, chunker: Chunker) -> ChangeSet:
    """The staged writes as a change, with every changed byte chunked and stored."""
    changes = ChangeSet()
    for path, rec in sorted(tree.recs.items()):
        if rec.kind == WHITEOUT or (rec.kind == DIR and rec.opaque):
            changes.deletes.append(path)
    new_small: list[tuple[str, Rec]] = []
    pending: list[tuple[str, Rec, Pending | FileData]] = []
    for path, rec in sorted(tree.recs.items()):
        if rec.kind == WHITEOUT:
            continue
        if rec.kind != FILE:
            changes.puts[path] = rec.entry(path)
        elif rec.base_len == 0 and rec.size < SMALL_FILE:
            new_small.append((path, rec))
        else:
            read = _reader_of(tree, rec, reader)
            pending.append((path, rec, file_data(rec, read, chunker)))
    packed = chunker.add_small_files(tree.read_rec(r, 0, r.size, reader) for _, r in new_small)
    pending.extend((p, r, d) for (p, r), d in zip(new_small, packed, strict=True))
    chunker.wait()
    for path, rec, data in pending:
        fd = data if isinstance(data, FileData) else data.result()
        changes.puts[path] = Entry(
            path, EntryType.FILE, rec.mode, fd.size, rec.mtime_ns, fd.digest, fd.chunks
        )
    return changes


def _reader_of(tree: StagedTree, rec: Rec, reader: ChunkReader) -> Callable[[int, int], bytes]:
    return lambda off, n: tree.read_rec(rec, off, n, reader)


def file_data(rec: Rec, read: Callable[[int, int], bytes], chunker: Chunker) -> Pending | FileData:
    """One staged file's data: the base's references where nothing changed, new chunks for the
    spans `rechunk_plan` picks; `read(offset, n)` gives the staged file's bytes."""
    base = clip_refs(rec.base_chunks, rec.base_len)
    whole = rec.base_len == sum(c.length for c in rec.base_chunks)
    unchanged = rec.overlay is None and rec.data is None
    if unchanged and rec.size == rec.base_len and whole and rec.base_digest:
        return FileData(rec.size, rec.base_digest, base)
    pend = Pending()
    pend.size = rec.size
    for part in rechunk_plan(base, rec.ranges, rec.base_len, rec.size):
        if isinstance(part, Span):
            pend.parts.extend(chunker.add_stream(_RecStream(read, part.start, part.end)).parts)
        else:
            pend.add_ref(part)
    hasher = blake3.blake3()
    for off in range(0, rec.size, _DIGEST_PIECE):
        hasher.update(read(off, min(_DIGEST_PIECE, rec.size - off)))
    pend.digest = hasher.digest()
    return pend


class _RecStream:
    """A readable stream over [start, end) of a staged file, for the cutter."""

    def __init__(self, read: Callable[[int, int], bytes], start: int, end: int) -> None:
        self.read_at = read
        self.pos = start
        self.end = end

    def readinto(self, out: memoryview) -> int:
        n = min(len(out), self.end - self.pos)
        if n <= 0:
            return 0
        data = self.read_at(self.pos, n)
        out[: len(data)] = data
        self.pos += len(data)
        return len(data)
