"""The POSIX operations on a staging area, each applied whole or not at all: each runs as one
batch (`_change`, `cowfs.staging_batch`), so a failure half-way (a name over the lake's limits
found in the middle of a rename, the store refusing the transaction) leaves nothing staged.
Overlay bytes are `pwrite`n before the batch commits: a failed write leaves bytes no record
points at, which nothing reads.

Creating, removing or renaming an entry sets its directory's mtime (ctime follows, as the mount
shows ctime = mtime); for a directory of the base this stages a record of it, so the commit
carries the new mtime. The view root's mtime lives in memory only (a commit has no entry for it).
"""

from __future__ import annotations

import errno as _errno
import os
import time
from collections.abc import Iterator

from cowfs.entries import Entry
from cowfs.errors import NameTooLong
from cowfs.names import MAX_PATH_BYTES, check_path_limits, parent_of
from cowfs.reader import ChunkReader
from cowfs.staging_batch import BatchedTree
from cowfs.staging_records import (
    DIR,
    FILE,
    INLINE_AREA_MAX,
    INLINE_MAX,
    LINK,
    ORPHAN,
    WHITEOUT,
    Rec,
    StagingError,
    add_range,
    clip_ranges,
    rec_from_entry,
)


class PosixOps(BatchedTree):
    """Reads and changes of the branch as staged. Thread-safe through `lock`."""

    repo: str
    branch: str
    _next_orphan: int

    def _touch_dir(self, path: str, now: int) -> None:
        """An entry was made or removed in directory `path`: its mtime moves."""
        if not path:
            self.root_mtime_ns = now
            return
        rec = self.recs.get(path)
        if rec is None:
            e = self.base_lookup(path)
            if e is None or not e.is_dir:
                return
            rec = rec_from_entry(e)
        elif rec.kind != DIR:
            return
        else:
            rec = rec.copy()
        rec.mtime_ns = now
        self._put(path, rec)

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, path: str) -> Entry | None:
        """What the branch shows at `path` with the staged writes applied."""
        with self._guard():
            return self.entry_at(path)

    def list_dir(self, path: str) -> list[Entry]:
        with self._guard():
            return self.children_of(path)

    def read(self, path: str, offset: int, size: int, reader: ChunkReader) -> bytes | None:
        """The bytes of a staged file, or None where `path` is not staged (read the base)."""
        with self._guard():
            rec = self.rec(path)
            if rec is None or rec.kind != FILE:
                return None
            return self.read_rec(rec, offset, size, reader)

    # --- making ----------------------------------------------------------------------------

    def _existing(self, path: str) -> Entry:
        e = self.entry_at(path)
        if e is None:
            raise StagingError(f"/{path} does not exist", _errno.ENOENT)
        return e

    def _need_parent_dir(self, path: str) -> None:
        parent = parent_of(path)
        if parent:
            p = self._existing(parent)
            if not p.is_dir:
                raise StagingError(f"/{parent} is not a directory", _errno.ENOTDIR)

    def _new_rec(self, path: str, rec: Rec) -> None:
        """Place a new path, hiding whatever the base had there."""
        if rec.kind == DIR and self.view.lookup(path) is not None:
            rec.opaque = True
        old = self.recs.get(path)
        if old is not None and old.kind == FILE and old.overlay is not None:
            self._later(lambda ov=old.overlay: self.unlink_overlay(ov))
        self._put(path, rec)
        self._touch_dir(parent_of(path), rec.mtime_ns)

    def create(self, path: str, mode: int, exclusive: bool = False) -> Entry:
        with self._change():
            check_path_limits(path)
            self._need_parent_dir(path)
            cur = self.entry_at(path)
            if cur is not None:
                if exclusive:
                    raise StagingError(f"/{path} exists", _errno.EEXIST)
                if cur.is_dir:
                    raise StagingError(f"/{path} is a directory", _errno.EISDIR)
                self.truncate(path, 0)
                return self._existing(path)
            self._new_rec(path, Rec(FILE, mode & 0o7777, time.time_ns()))
            return self.recs[path].entry(path)

    def mkdir(self, path: str, mode: int) -> Entry:
        return self._make(path, Rec(DIR, mode & 0o7777, time.time_ns()))

    def symlink(self, path: str, target: str) -> Entry:
        size = len(target.encode("utf-8", "surrogateescape"))
        if size >= MAX_PATH_BYTES:
            raise NameTooLong(f"symlink target too long ({size} bytes, under {MAX_PATH_BYTES})")
        return self._make(path, Rec(LINK, 0o777, time.time_ns(), target=target))

    def _make(self, path: str, rec: Rec) -> Entry:
        """Place a directory or link where nothing is (neither replaces, unlike a file)."""
        with self._change():
            check_path_limits(path)
            self._need_parent_dir(path)
            if self.entry_at(path) is not None:
                raise StagingError(f"/{path} exists", _errno.EEXIST)
            self._new_rec(path, rec)
            return rec.entry(path)

    # --- file contents ---------------------------------------------------------------------

    def _file_rec(self, path: str) -> Rec:
        """A copy of the staged record of a file to change, made from the base entry on first
        change (chunk references only, no bytes)."""
        rec = self.rec(path)
        if rec is not None:
            if rec.kind != FILE:
                raise StagingError(f"/{path} is not a file", _errno.EISDIR)
            return rec.copy()
        e = self.base_lookup(path)
        if e is None:
            raise StagingError(f"/{path} does not exist", _errno.ENOENT)
        if not e.is_file:
            raise StagingError(f"/{path} is not a file", _errno.EISDIR)
        return rec_from_entry(e)

    def write(self, path: str, offset: int, data: bytes) -> int:
        with self._change():
            rec = self._file_rec(path)
            end = offset + len(data)
            if rec.overlay is None and end <= INLINE_MAX and self._inline_room(rec, end):
                cur = rec.data or b""
                if len(cur) < offset:
                    cur += bytes(offset - len(cur))
                rec.data = cur[:offset] + data + cur[end:]
                n = len(data)
            else:
                n = self._write_overlay(rec, offset, data)
            rec.ranges = add_range(rec.ranges, offset, offset + n)
            rec.size = max(rec.size, offset + n)
            rec.mtime_ns = time.time_ns()
            self._store(path, rec)
            return n

    def _inline_room(self, rec: Rec, end: int) -> bool:
        """Whether a write ending at `end` may stay in the record: always for a file already
        inline (it is at most `INLINE_MAX`), for others while the area's budget allows."""
        return rec.data is not None or self.inline_bytes + end <= INLINE_AREA_MAX

    def _write_overlay(self, rec: Rec, offset: int, data: bytes) -> int:
        fresh = rec.overlay is None
        if fresh:
            rec.overlay = self._next_overlay
            self._next_overlay += 1
        fd = self.fd(rec.overlay, fresh=fresh)
        if rec.data is not None:
            # Outgrew the record: its inline bytes move into the new overlay file first.
            if os.pwrite(fd, rec.data, 0) != len(rec.data):
                raise OSError(_errno.ENOSPC, "short write to a staged file")
            rec.data = None
        return os.pwrite(fd, data, offset)

    def truncate(self, path: str, size: int) -> None:
        with self._change():
            rec = self._file_rec(path)
            if size < rec.size:
                rec.ranges = clip_ranges(rec.ranges, size)
                rec.base_len = min(rec.base_len, size)
                if rec.data is not None:
                    rec.data = rec.data[:size]
                if rec.overlay is not None:
                    # Bytes past `ranges` are never read: freeing them can wait for the commit.
                    self._later(lambda ov=rec.overlay: os.ftruncate(self.fd(ov), size))
            rec.size = size
            rec.mtime_ns = time.time_ns()
            self._store(path, rec)

    def setattr(
        self, path: str, mode: int | None = None, mtime_ns: int | None = None
    ) -> Entry | None:
        """The entry as changed (None for the view root, whose entry is not the area's)."""
        with self._change():
            if not path:
                # A commit has no entry for its root: mode is not recorded, mtime only here.
                if mtime_ns is not None:
                    self.root_mtime_ns = mtime_ns
                return None
            rec = self.rec(path)
            if rec is None:
                e = self.base_lookup(path)
                if e is None:
                    raise StagingError(f"/{path} does not exist", _errno.ENOENT)
                rec = rec_from_entry(e)
            elif rec.kind == WHITEOUT:
                raise StagingError(f"/{path} does not exist", _errno.ENOENT)
            else:
                rec = rec.copy()
            if mode is not None and rec.kind != LINK:
                rec.mode = mode & 0o7777
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
            self._store(path, rec)
            return rec.entry(path)

    # --- removing and moving ---------------------------------------------------------------

    def _remove(self, path: str, keep_overlays: bool = False) -> None:
        """Take `path` and all staged beneath it away, whiting out what the base had there."""
        prefix = path + "/"
        for p in [p for p in self.recs if p == path or p.startswith(prefix)]:
            rec = self.recs[p]
            if rec.kind == FILE and rec.overlay is not None and not keep_overlays:
                self._later(lambda ov=rec.overlay: self.unlink_overlay(ov))
            self._drop(p)
        if self.base_lookup(path) is not None:
            self._put(path, Rec(WHITEOUT))

    def unlink(self, path: str, keep_open: bool = False) -> str | None:
        """Remove a file; with `keep_open` (a handle has it open) return the key under which
        those handles go on using it."""
        with self._change():
            e = self._existing(path)
            if e.is_dir:
                raise StagingError(f"/{path} is a directory", _errno.EISDIR)
            key = self._orphan(path) if keep_open else None
            self._remove(path)
            self._touch_dir(parent_of(path), time.time_ns())
            return key

    def rmdir(self, path: str) -> None:
        with self._change():
            e = self._existing(path)
            if not e.is_dir:
                raise StagingError(f"/{path} is not a directory", _errno.ENOTDIR)
            if self.children_of(path):
                raise StagingError(f"/{path} is not empty", _errno.ENOTEMPTY)
            self._remove(path)
            self._touch_dir(parent_of(path), time.time_ns())

    def rename(
        self, old: str, new: str, noreplace: bool = False, keep_open: bool = False
    ) -> str | None:
        """Move `old` to `new`; with `keep_open` (a handle has the replaced file open) return
        the key under which those handles go on using the file that was at `new`.

        Everything is checked, and every moved path's new name measured against the lake's
        limits, before anything is staged."""
        with self._change():
            if old == new:
                return None
            src = self._existing(old)
            if new.startswith(old + "/"):
                raise StagingError(f"cannot move /{old} into itself", _errno.EINVAL)
            check_path_limits(new)
            self._need_parent_dir(new)
            dst = self.entry_at(new)
            if dst is not None:
                if noreplace:
                    raise StagingError(f"/{new} exists", _errno.EEXIST)
                if src.is_dir and not dst.is_dir:
                    raise StagingError(f"/{new} is not a directory", _errno.ENOTDIR)
                if dst.is_dir and not src.is_dir:
                    raise StagingError(f"/{new} is a directory", _errno.EISDIR)
                if dst.is_dir and self.children_of(new):
                    raise StagingError(f"/{new} is not empty", _errno.ENOTEMPTY)
            moved = [(old, src)]
            if src.is_dir:
                moved.extend((e.path, e) for e in self._walk_visible(old))
            copies = []
            for p, e in moved:
                to = new + p[len(old) :]
                check_path_limits(to)
                rec = self.recs.get(p)
                rec = rec.copy() if rec is not None else rec_from_entry(e)
                rec.opaque = False
                copies.append((to, rec))
            key = None
            if dst is not None:
                if keep_open and dst.is_file:
                    key = self._orphan(new)
                self._remove(new)
            self._remove(old, keep_overlays=True)
            for p, rec in copies:
                if rec.kind == DIR and self.view.lookup(p) is not None:
                    rec.opaque = True
                self._put(p, rec)
            now = time.time_ns()
            self._touch_dir(parent_of(old), now)
            self._touch_dir(parent_of(new), now)
            return key

    def _walk_visible(self, path: str) -> Iterator[Entry]:
        for e in self.children_of(path):
            yield e
            if e.is_dir:
                yield from self._walk_visible(e.path)

    # --- files unlinked while open ---------------------------------------------------------

    def _orphan(self, path: str) -> str:
        """Keep the file at `path` (about to be removed) alive for the handles open on it."""
        rec = self.recs.get(path)
        if rec is None:
            e = self.base_lookup(path)
            assert e is not None and e.is_file
            rec = rec_from_entry(e)
        else:
            rec = rec.copy()
        key = f"{ORPHAN}{self._next_orphan}"
        self._next_orphan += 1
        assert self._batch is not None
        self._batch.orphans_undo[key] = None
        self.orphans[key] = rec
        return key

    def drop_orphan(self, key: str) -> None:
        """The last handle on an unlinked file closed: its bytes can go."""
        with self.lock:
            rec = self.orphans.pop(key, None)
            if rec is not None and rec.overlay is not None and not self.closed:
                self.unlink_overlay(rec.overlay)
