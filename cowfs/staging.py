"""Uncommitted writes to a branch: a durable, copy-on-write layer over the commit it was opened on.

The mount writes here; `cowfs commit` seals it into one commit. Only differences are kept:
a record per path that was created, changed or deleted (a "whiteout"), and for a changed file
its base chunk references plus a sparse local overlay file holding just the bytes written. A
directory made again over one that was deleted is "opaque": nothing of the base shows beneath it.

Records live in an LMDB env opened with `sync=True, metasync=False`: every change is one
transaction whose data pages are flushed, so a crash or power loss can at worst undo the last
transaction, never corrupt the database (LMDB without `sync` promises no such thing). Overlay
bytes are `pwrite`n to ordinary sparse files: an answered write survives the daemon being
killed (kill -9), and `sync(path)` (fsync(2) on a staged file) makes that file's overlay, its
directory entry and the records survive power loss as well. A seal needs no sync: until the
ref moves, losing staged writes to power loss is what losing un-fsynced writes always is.

At commit, a changed file is re-chunked only around what changed: each dirty byte range is
widened to the base chunk references it touches, that span is cut again, and every other
reference is spliced in unchanged. Editing 1 MiB of a 1 GiB file stores about 1 MiB.

One process at a time holds an area (an flock on its `lock` file): two would each keep their own
index of the records and lose each other's writes. A seal holds `Staging.lock` from its snapshot
until the area is emptied (see `cowfs.staging_commit.seal`), so no answered write is dropped. A
file unlinked while open lives on, in memory only, under an `ORPHAN` key for its handles.
"""

from __future__ import annotations

import contextlib
import errno as _errno
import fcntl
import os
import shutil
import threading
import time
import uuid
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3
import lmdb
import msgpack
import xxhash

from cowfs.changes import ChangeSet
from cowfs.chunking import SMALL_FILE, Chunker, FileData, Pending
from cowfs.config import state_dir
from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.errors import CowfsError, NotFound
from cowfs.names import ancestors, parent_of
from cowfs.reader import ChunkReader
from cowfs.store import Store
from cowfs.tree import TreeView

_DIGEST_PIECE = 8 << 20

FILE, DIR, LINK, WHITEOUT = "f", "d", "l", "x"
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

    def pack(self) -> bytes:
        chunks = [[bytes.fromhex(c.id), c.offset, c.length] for c in self.base_chunks]
        return msgpack.packb(
            [
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
            ],
            use_bin_type=True,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Rec:
        k, mode, mt, size, blen, chunks, dig, ov, ranges, target, opaque = msgpack.unpackb(
            raw, raw=False
        )
        refs = tuple(ChunkRef(c.hex(), o, n) for c, o, n in chunks)
        return cls(k, mode, mt, size, blen, refs, dig, ov, ranges, target, opaque)

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


def area_dir(url: str, repo: str, branch: str) -> Path:
    """Each store and branch gets its own staging folder, so two stores never mix writes."""
    return state_dir() / "staging" / xxhash.xxh3_64_hexdigest(url.encode()) / f"{repo}@{branch}"


def _complete(path: Path) -> bool:
    """Whether `path` holds a whole area: `start` writes `meta.json` before it makes `recs/`, so
    `recs/` without `meta.json` is a remnant of an interrupted removal (older versions removed
    an area in place), and counts as no area at all."""
    return (path / "recs").is_dir() and (path / "meta.json").is_file()


def list_areas(url: str) -> list[tuple[str, str]]:
    """(repo, branch) of every staging area open on the store at `url`."""
    root = state_dir() / "staging" / xxhash.xxh3_64_hexdigest(url.encode())
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        repo, at, branch = d.name.partition("@")
        if at and not repo.startswith(".") and _complete(d):
            out.append((repo, branch))
    return out


class Staging:
    """One branch's uncommitted writes. Thread-safe: the mount calls it from worker threads."""

    def __init__(
        self,
        store: Store,
        url: str,
        repo: str,
        branch: str,
        base: str | None,
        base_tree: str,
        path: Path,
        lock_fd: int | None = None,
    ) -> None:
        self.store = store
        self.url = url
        self.repo = repo
        self.branch = branch
        #: The commit the writes were opened on (None for a branch with no commit yet).
        self.base = base
        self.view = TreeView(store, base_tree)
        self.path = path
        self.lock = threading.RLock()
        self._lock_fd = _hold(path) if lock_fd is None else lock_fd
        self.closed = False
        self.env = lmdb.open(
            str(path / "recs"), map_size=1 << 34, max_dbs=4, sync=True, metasync=False, subdir=True
        )
        self._recs_db = self.env.open_db(b"recs")
        self._meta_db = self.env.open_db(b"meta")
        self.recs: dict[str, Rec] = {}
        self.children: dict[str, set[str]] = {}
        self.hidden: set[str] = set()
        self._fds: dict[int, int] = {}
        #: Files unlinked (or replaced) while open, keyed by `orphan_key`: their handles go on
        #: reading and writing them, but no lookup, listing or commit sees them.
        self.orphans: dict[str, Rec] = {}
        self._next_orphan = 1
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._recs_db):
                self._index(k.decode(), Rec.unpack(v))
            raw = txn.get(b"next_overlay", db=self._meta_db)
        self._next_overlay = int(raw or b"1")

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, store: Store, url: str, repo: str, branch: str, base: str | None, base_tree: str
    ) -> Staging:
        path = area_dir(url, repo, branch)
        if _complete(path):
            return cls.open(store, url, repo, branch)
        _sweep(path.parent)
        path.mkdir(parents=True, exist_ok=True)
        lock = _hold(path)
        try:
            if _complete(path):  # another process made it meanwhile
                meta = msgpack.unpackb((path / "meta.json").read_bytes())
                base, base_tree = meta["base"], meta["tree"]
            else:
                cls._lay_out(path, url, repo, branch, base, base_tree)
            return cls(store, url, repo, branch, base, base_tree, path, lock)
        except BaseException:
            os.close(lock)
            raise

    @staticmethod
    def _lay_out(
        path: Path, url: str, repo: str, branch: str, base: str | None, base_tree: str
    ) -> None:
        """Lay out a new area, under its lock. Whatever an interrupted `start`, or a removal in
        place by an older version, left goes first; `recs/` comes last, so until it is made
        the area is incomplete and counts as absent."""
        shutil.rmtree(path / "recs", ignore_errors=True)
        shutil.rmtree(path / "data", ignore_errors=True)
        (path / "data").mkdir()
        meta = {
            "url": url,
            "repo": repo,
            "branch": branch,
            "base": base,
            "tree": base_tree,
            "opened": time.time(),
        }
        _write_durably(path / "meta.json", msgpack.packb(meta))
        (path / "recs").mkdir()
        _fsync_dir(path)

    @classmethod
    def exists(cls, url: str, repo: str, branch: str) -> bool:
        return _complete(area_dir(url, repo, branch))

    @classmethod
    def open(cls, store: Store, url: str, repo: str, branch: str) -> Staging:
        path = area_dir(url, repo, branch)
        if not _complete(path):
            raise NotFound(
                f"{repo}@{branch} is not open for writing: run `cowfs write {repo}@{branch}`"
            )
        meta = msgpack.unpackb((path / "meta.json").read_bytes())
        return cls(store, url, repo, branch, meta["base"], meta["tree"], path)

    def close(self, release: bool = True) -> None:
        """Let go of the area (kept on disk) and of its lock, so another process may open it.

        A handle still holding this object gets EROFS from then on, never a write into an area
        it no longer owns."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()
            self.env.close()
            if release:
                os.close(self._lock_fd)

    def destroy(self) -> None:
        """Forget every staged write (after a commit sealed them, or on discard).

        Crash-safe: the area is renamed aside in one step (and the rename made durable) before
        anything in it is removed, so a crash leaves either the whole area or none; a remnant
        aside is swept by the next `start`. The lock is let go only once the area is gone."""
        with self.lock:
            if self.closed:
                return
            self.close(release=False)
            try:
                _remove_area(self.path)
            finally:
                os.close(self._lock_fd)

    def sync(self, path: str | None = None) -> None:
        """Make the staged state of `path` (every staged file when None) survive power loss:
        its overlay's bytes, the overlay's directory entry, and the records."""
        with self._guard():
            if path is None:
                recs = [*self.recs.values(), *self.orphans.values()]
            else:
                rec = self._rec(path)
                recs = [rec] if rec is not None else []
            for rec in recs:
                if rec.kind == FILE and rec.overlay is not None:
                    os.fdatasync(self._fd(rec.overlay))
            _fsync_dir(self.path / "data")
            self.env.sync(True)

    @contextlib.contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the lock of an area that is still open: once closed it takes no more writes."""
        with self.lock:
            if self.closed:
                raise StagingError(
                    f"{self.repo}@{self.branch} is no longer open for writing here", _errno.EROFS
                )
            yield

    def reset(self, base: str | None, base_tree: str) -> None:
        """Start over, empty, on `base` (the commit just sealed from these writes).

        The caller holds `lock` from before the seal took its snapshot until this returns, so
        no write can land between the snapshot and the clearing and be lost. The same object
        (and the handles that hold it) carries on, so a writer that waited for the seal writes
        into the new session. Files unlinked while open stay readable and writable.
        """
        with self._guard():
            meta = msgpack.unpackb((self.path / "meta.json").read_bytes())
            meta.update(base=base, tree=base_tree, opened=time.time())
            # The new base goes on disk first: a crash before the records are cleared leaves
            # them to be applied again over the commit that already holds them, which is a no-op.
            _write_durably(self.path / "meta.json", msgpack.packb(meta))
            with self.env.begin(write=True) as txn:
                txn.drop(self._recs_db, delete=False)
            self.env.sync(True)
            keep = {r.overlay for r in self.orphans.values()}
            for f in (self.path / "data").iterdir():
                if f.name.isdigit() and int(f.name) not in keep:
                    self._unlink_overlay(int(f.name))
            self.recs.clear()
            self.children.clear()
            self.hidden.clear()
            self.base = base
            self.view = TreeView(self.store, base_tree)

    # --- files unlinked while open ---------------------------------------------------------

    def _orphan(self, path: str) -> str:
        """Keep the file at `path` (about to be removed) alive for the handles open on it."""
        rec = self.recs.get(path)
        if rec is None:
            e = self._base_lookup(path)
            assert e is not None and e.is_file
            rec = rec_from_entry(e)
        else:
            rec = replace(rec, ranges=[list(r) for r in rec.ranges])
        key = f"{ORPHAN}{self._next_orphan}"
        self._next_orphan += 1
        self.orphans[key] = rec
        return key

    def drop_orphan(self, key: str) -> None:
        """The last handle on an unlinked file closed: its bytes can go."""
        with self.lock:
            rec = self.orphans.pop(key, None)
            if rec is not None and rec.overlay is not None and not self.closed:
                self._unlink_overlay(rec.overlay)

    def _rec(self, path: str) -> Rec | None:
        return self.orphans.get(path) if path.startswith(ORPHAN) else self.recs.get(path)

    def _store(self, path: str, rec: Rec) -> None:
        """Record a change to a file; an unlinked one lives only in memory, as on any fs."""
        if path.startswith(ORPHAN):
            self.orphans[path] = rec
        else:
            self._put(path, rec)

    # --- bookkeeping -----------------------------------------------------------------------

    def _index(self, path: str, rec: Rec) -> None:
        self.recs[path] = rec
        self.children.setdefault(parent_of(path), set()).add(path.rpartition("/")[2])
        if rec.kind == WHITEOUT or (rec.kind == DIR and rec.opaque):
            self.hidden.add(path)
        else:
            self.hidden.discard(path)

    def _put(self, path: str, rec: Rec) -> None:
        self._index(path, rec)
        with self.env.begin(write=True) as txn:
            txn.put(path.encode(), rec.pack(), db=self._recs_db)

    def _drop(self, path: str) -> None:
        if self.recs.pop(path, None) is None:
            return
        self.hidden.discard(path)
        kids = self.children.get(parent_of(path))
        if kids is not None:
            kids.discard(path.rpartition("/")[2])
            if not kids:
                del self.children[parent_of(path)]
        with self.env.begin(write=True) as txn:
            txn.delete(path.encode(), db=self._recs_db)

    def _hidden_above(self, path: str) -> bool:
        return any(a in self.hidden for a in ancestors(path)) if self.hidden else False

    def _base_lookup(self, path: str) -> Entry | None:
        if self._hidden_above(path):
            return None
        return self.view.lookup(path)

    def _base_shows_under(self, path: str) -> bool:
        """Whether the base's contents of directory `path` show through."""
        if not path:
            return True
        rec = self.recs.get(path)
        if rec is not None and (rec.kind != DIR or rec.opaque):
            return False
        if self._hidden_above(path):
            return False
        e = self.view.lookup(path)
        return e is not None and e.is_dir

    # --- reading ---------------------------------------------------------------------------

    def lookup(self, path: str) -> Entry | None:
        """What the branch shows at `path` with the staged writes applied."""
        with self._guard():
            if not path:
                return dir_entry("", 0o755)
            rec = self._rec(path)
            if rec is not None:
                return None if rec.kind == WHITEOUT else rec.entry(path)
            return self._base_lookup(path)

    def list_dir(self, path: str) -> list[Entry]:
        with self._guard():
            out: dict[str, Entry] = {}
            if self._base_shows_under(path):
                for e in self.view.list_dir(path):
                    out[e.path.rpartition("/")[2]] = e
            prefix = path + "/" if path else ""
            for name in self.children.get(path, ()):
                r = self.recs[prefix + name]
                if r.kind == WHITEOUT:
                    out.pop(name, None)
                else:
                    out[name] = r.entry(prefix + name)
            return [out[k] for k in sorted(out)]

    def read(self, path: str, offset: int, size: int, reader: ChunkReader) -> bytes | None:
        """The bytes of a staged file, or None where `path` is not staged (read the base)."""
        with self._guard():
            rec = self._rec(path)
            if rec is None or rec.kind != FILE:
                return None
            return self._read_rec(rec, offset, size, reader)

    def _read_rec(self, rec: Rec, offset: int, size: int, reader: ChunkReader) -> bytes:
        end = min(offset + size, rec.size)
        if offset >= end:
            return b""
        parts: list[bytes] = []
        pos = offset
        for s, e in rec.ranges:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                parts.append(self._read_base(rec, pos, s - pos, reader))
                pos = s
            take = min(e, end) - pos
            parts.append(self._read_overlay(rec, pos, take))
            pos += take
        if pos < end:
            parts.append(self._read_base(rec, pos, end - pos, reader))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_base(self, rec: Rec, offset: int, size: int, reader: ChunkReader) -> bytes:
        data = b""
        if offset < rec.base_len:
            data = reader.read(rec.base_entry(), offset, min(size, rec.base_len - offset))
        return data + bytes(size - len(data))

    def _read_overlay(self, rec: Rec, offset: int, size: int) -> bytes:
        data = os.pread(self._fd(rec.overlay), size, offset)
        return data + bytes(size - len(data))

    def _fd(self, overlay: int | None) -> int:
        assert overlay is not None
        fd = self._fds.get(overlay)
        if fd is None:
            fd = os.open(self.path / "data" / str(overlay), os.O_RDWR | os.O_CREAT, 0o600)
            if len(self._fds) > 256:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[overlay] = fd
        return fd

    # --- writing ---------------------------------------------------------------------------

    def _existing(self, path: str) -> Entry:
        e = self.lookup(path)
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
            self._unlink_overlay(old.overlay)
        self._put(path, rec)

    def create(self, path: str, mode: int, exclusive: bool = False) -> Entry:
        with self._guard():
            self._need_parent_dir(path)
            cur = self.lookup(path)
            if cur is not None:
                if exclusive:
                    raise StagingError(f"/{path} exists", _errno.EEXIST)
                if cur.is_dir:
                    raise StagingError(f"/{path} is a directory", _errno.EISDIR)
                self.truncate(path, 0)
                return self.lookup(path)  # type: ignore[return-value]
            self._new_rec(path, Rec(FILE, mode & 0o7777, time.time_ns()))
            return self.recs[path].entry(path)

    def mkdir(self, path: str, mode: int) -> Entry:
        return self._make(path, Rec(DIR, mode & 0o7777, time.time_ns()))

    def symlink(self, path: str, target: str) -> Entry:
        return self._make(path, Rec(LINK, 0o777, time.time_ns(), target=target))

    def _make(self, path: str, rec: Rec) -> Entry:
        """Place a directory or link where nothing is (neither replaces, unlike a file)."""
        with self._guard():
            self._need_parent_dir(path)
            if self.lookup(path) is not None:
                raise StagingError(f"/{path} exists", _errno.EEXIST)
            self._new_rec(path, rec)
            return rec.entry(path)

    def _file_rec(self, path: str) -> Rec:
        """The staged record of a file, made from the base entry on first change (no copy)."""
        rec = self._rec(path)
        if rec is not None:
            if rec.kind != FILE:
                raise StagingError(f"/{path} is not a file", _errno.EISDIR)
            return rec
        e = self._base_lookup(path)
        if e is None:
            raise StagingError(f"/{path} does not exist", _errno.ENOENT)
        if not e.is_file:
            raise StagingError(f"/{path} is not a file", _errno.EISDIR)
        rec = rec_from_entry(e)
        self._put(path, rec)
        return rec

    def write(self, path: str, offset: int, data: bytes) -> int:
        with self._guard():
            rec = self._file_rec(path)
            if rec.overlay is None:
                rec.overlay = self._new_overlay()
            n = os.pwrite(self._fd(rec.overlay), data, offset)
            rec.ranges = add_range(rec.ranges, offset, offset + n)
            rec.size = max(rec.size, offset + n)
            rec.mtime_ns = time.time_ns()
            self._store(path, rec)
            return n

    def _new_overlay(self) -> int:
        n = self._next_overlay
        self._next_overlay += 1
        with self.env.begin(write=True) as txn:
            txn.put(b"next_overlay", str(self._next_overlay).encode(), db=self._meta_db)
        return n

    def _unlink_overlay(self, overlay: int) -> None:
        if any(r.overlay == overlay for r in self.orphans.values()):
            return  # an open handle still reads and writes it
        fd = self._fds.pop(overlay, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.path / "data" / str(overlay))
        except FileNotFoundError:
            pass

    def truncate(self, path: str, size: int) -> None:
        with self._guard():
            rec = self._file_rec(path)
            if size < rec.size:
                rec.ranges = clip_ranges(rec.ranges, size)
                rec.base_len = min(rec.base_len, size)
                if rec.overlay is not None:
                    os.ftruncate(self._fd(rec.overlay), size)
            rec.size = size
            rec.mtime_ns = time.time_ns()
            self._store(path, rec)

    def setattr(self, path: str, mode: int | None = None, mtime_ns: int | None = None) -> None:
        with self._guard():
            if not path:
                # A commit has no entry for its root, so there is nothing to record: accepted
                # and ignored, as the owner's chmod and touch of a directory must succeed.
                return
            rec = self._rec(path)
            if rec is None:
                e = self._base_lookup(path)
                if e is None:
                    raise StagingError(f"/{path} does not exist", _errno.ENOENT)
                rec = rec_from_entry(e)
            elif rec.kind == WHITEOUT:
                raise StagingError(f"/{path} does not exist", _errno.ENOENT)
            if mode is not None and rec.kind != LINK:
                rec.mode = mode & 0o7777
            if mtime_ns is not None:
                rec.mtime_ns = mtime_ns
            self._store(path, rec)

    def _remove(self, path: str, keep_overlays: bool = False) -> None:
        """Take `path` and all staged beneath it away, whiting out what the base had there."""
        prefix = path + "/"
        for p in [p for p in self.recs if p == path or p.startswith(prefix)]:
            rec = self.recs[p]
            if rec.kind == FILE and rec.overlay is not None and not keep_overlays:
                self._unlink_overlay(rec.overlay)
            self._drop(p)
        if self._base_lookup(path) is not None:
            self._put(path, Rec(WHITEOUT))

    def unlink(self, path: str, keep_open: bool = False) -> str | None:
        """Remove a file; with `keep_open` (a handle has it open) return the key under which
        those handles go on using it."""
        with self._guard():
            e = self._existing(path)
            if e.is_dir:
                raise StagingError(f"/{path} is a directory", _errno.EISDIR)
            key = self._orphan(path) if keep_open else None
            self._remove(path)
            return key

    def rmdir(self, path: str) -> None:
        with self._guard():
            e = self._existing(path)
            if not e.is_dir:
                raise StagingError(f"/{path} is not a directory", _errno.ENOTDIR)
            if self.list_dir(path):
                raise StagingError(f"/{path} is not empty", _errno.ENOTEMPTY)
            self._remove(path)

    def rename(
        self, old: str, new: str, noreplace: bool = False, keep_open: bool = False
    ) -> str | None:
        """Move `old` to `new`; with `keep_open` (a handle has the replaced file open) return
        the key under which those handles go on using the file that was at `new`."""
        key = None
        with self._guard():
            if old == new:
                return None
            src = self._existing(old)
            if new.startswith(old + "/"):
                raise StagingError(f"cannot move /{old} into itself", _errno.EINVAL)
            self._need_parent_dir(new)
            dst = self.lookup(new)
            if dst is not None:
                if noreplace:
                    raise StagingError(f"/{new} exists", _errno.EEXIST)
                if src.is_dir and not dst.is_dir:
                    raise StagingError(f"/{new} is not a directory", _errno.ENOTDIR)
                if dst.is_dir and not src.is_dir:
                    raise StagingError(f"/{new} is a directory", _errno.EISDIR)
                if dst.is_dir and self.list_dir(new):
                    raise StagingError(f"/{new} is not empty", _errno.ENOTEMPTY)
                if keep_open and dst.is_file:
                    key = self._orphan(new)
                self._remove(new)
            moved = [(old, src)]
            if src.is_dir:
                moved.extend((e.path, e) for e in self._walk_visible(old))
            copies = []
            for p, e in moved:
                rec = self.recs.get(p)
                rec = (
                    replace(rec, ranges=list(rec.ranges)) if rec is not None else rec_from_entry(e)
                )
                rec.opaque = False
                copies.append((new + p[len(old) :], rec))
            self._remove(old, keep_overlays=True)
            for p, rec in copies:
                if rec.kind == DIR and self.view.lookup(p) is not None:
                    rec.opaque = True
                self._put(p, rec)
        return key

    def _walk_visible(self, path: str) -> Iterator[Entry]:
        for e in self.list_dir(path):
            yield e
            if e.is_dir:
                yield from self._walk_visible(e.path)

    # --- sealing ---------------------------------------------------------------------------

    def changeset(self, reader: ChunkReader, chunker: Chunker) -> ChangeSet:
        """The staged writes as a change, with every changed byte chunked and stored."""
        with self._guard():
            changes = ChangeSet()
            for path, rec in sorted(self.recs.items()):
                if rec.kind == WHITEOUT or (rec.kind == DIR and rec.opaque):
                    changes.deletes.append(path)
            new_small: list[tuple[str, Rec]] = []
            pending: list[tuple[str, Rec, Pending | FileData]] = []
            for path, rec in sorted(self.recs.items()):
                if rec.kind == WHITEOUT:
                    continue
                if rec.kind != FILE:
                    changes.puts[path] = rec.entry(path)
                elif rec.base_len == 0 and rec.size < SMALL_FILE:
                    new_small.append((path, rec))
                else:
                    pending.append((path, rec, self._file_data(rec, reader, chunker)))
            packed = chunker.add_small_files(
                self._read_rec(r, 0, r.size, reader) for _, r in new_small
            )
            pending.extend((p, r, d) for (p, r), d in zip(new_small, packed, strict=True))
            chunker.wait()
            for path, rec, data in pending:
                fd = data if isinstance(data, FileData) else data.result()
                changes.puts[path] = Entry(
                    path, EntryType.FILE, rec.mode, fd.size, rec.mtime_ns, fd.digest, fd.chunks
                )
            return changes

    def _file_data(self, rec: Rec, reader: ChunkReader, chunker: Chunker) -> Pending | FileData:
        base = clip_refs(rec.base_chunks, rec.base_len)
        whole = rec.base_len == sum(c.length for c in rec.base_chunks)
        if rec.overlay is None and rec.size == rec.base_len and whole and rec.base_digest:
            return FileData(rec.size, rec.base_digest, base)
        dirty = add_range([list(r) for r in rec.ranges], rec.base_len, rec.size)
        starts = []
        pos = 0
        for r in base:
            starts.append(pos)
            pos += r.length
        # Widen each dirty range to the base references it touches, merging what then meets.
        spans: list[list[int]] = []
        for s, e in dirty:
            i = _ref_index(starts, base, s)
            a = starts[i] if i is not None else s
            j = _ref_index(starts, base, e - 1)
            b = starts[j] + base[j].length if j is not None else e
            b = max(b, e)
            if spans and spans[-1][1] >= a:
                spans[-1][1] = max(spans[-1][1], b)
            else:
                spans.append([a, b])
        pend = Pending()
        pend.size = rec.size
        ri = 0
        for a, b in spans:
            # Spans start and end on reference boundaries inside the base, so every reference
            # lies wholly before, inside or after each span.
            while ri < len(base) and starts[ri] < a:
                pend.add_ref(base[ri])
                ri += 1
            stream = _RecStream(lambda off, n: self._read_rec(rec, off, n, reader), a, b)
            pend.parts.extend(chunker.add_stream(stream).parts)
            while ri < len(base) and starts[ri] < b:
                ri += 1
        while ri < len(base):
            pend.add_ref(base[ri])
            ri += 1
        hasher = blake3.blake3()
        for off in range(0, rec.size, _DIGEST_PIECE):
            hasher.update(self._read_rec(rec, off, min(_DIGEST_PIECE, rec.size - off), reader))
        pend.digest = hasher.digest()
        return pend


def _ref_index(starts: list[int], refs: tuple[ChunkRef, ...], offset: int) -> int | None:
    """Index of the base reference holding byte `offset`, or None past the base's end."""
    i = bisect_right(starts, offset) - 1
    return i if i >= 0 and offset < starts[i] + refs[i].length else None


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


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _hold(path: Path) -> int:
    """Take the area's lock: one process (one mount, or the CLI) writes a branch at a time.

    Two processes over one area would each index the records in memory and hand out the same
    overlay numbers, so one's writes would be lost or overwritten; refusing is the only safe
    answer. The lock is an flock, so a killed holder (kill -9) releases it at once.
    """
    fd = os.open(path / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise StagingError(
            f"{path.name} is open for writing in {holder}: write and commit through it",
            _errno.EBUSY,
        ) from None
    try:
        held, now = os.fstat(fd), os.stat(path / "lock")
    except FileNotFoundError:
        now = None
    if now is None or (held.st_dev, held.st_ino) != (now.st_dev, now.st_ino):
        # The holder was removing the area (`destroy`) and has just let go of it.
        os.close(fd)
        raise StagingError(f"{path.name} was being removed: try again", _errno.EBUSY)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
    return fd


_ASIDE = ".removing-"


def _remove_area(path: Path) -> None:
    """Rename the area aside (atomic, then durable), then remove it at leisure."""
    aside = path.with_name(f"{_ASIDE}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    _fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _sweep(root: Path) -> None:
    """Remove what a crash in the middle of `_remove_area` left aside."""
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(_ASIDE):
                shutil.rmtree(d, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
