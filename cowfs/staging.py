"""Uncommitted writes to a branch: a durable, copy-on-write layer over the commit it was opened on.

The mount writes here; `cowfs commit` seals it into one commit. Only differences are kept:
a record per path that was created, changed or deleted (a "whiteout"), and for a changed file
its base chunk references plus a sparse local overlay file holding just the bytes written. A
directory made again over one that was deleted is "opaque": nothing of the base shows beneath it.

The parts, each in its own module: the records (`staging_records`), their durable store and the
area on disk (`staging_store`), the union of base and records (`staging_union`), the POSIX
operations, each applied whole or not at all (`staging_posix`), and the re-chunking at commit
(`staging_seal`). This module opens, syncs, empties and removes an area.

Every operation is one checksummed record appended to the area's journal (no fsync), folded into
an LMDB env opened with `sync=True, metasync=False` in one transaction every few thousand records
(`staging_store.RecStore`). Overlay bytes are `pwrite`n to ordinary sparse files. So an answered
operation survives the daemon being killed (kill -9), and `sync(path)` (fsync(2) on a staged
file) makes that file's overlay, its directory entry and every record before it survive power
loss as well; power loss can at worst drop operations nobody fsynced, never corrupt the area.
A seal needs no sync: until the ref moves, losing staged writes to power loss is what losing
un-fsynced writes always is.

One process at a time holds an area (an flock on its `lock` file): two would each keep their own
index of the records and lose each other's writes. A seal holds `Staging.lock` from its snapshot
until the area is emptied (see `cowfs.staging_commit.seal`), so no answered write is dropped. A
file unlinked while open lives on, in memory only, under an `ORPHAN` key for its handles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import msgpack
import xxhash

from cowfs import gcstate
from cowfs.changes import ChangeSet
from cowfs.chunking import Chunker
from cowfs.errors import CowfsError, NotFound
from cowfs.reader import ChunkReader
from cowfs.staging_posix import PosixOps
from cowfs.staging_records import (
    DIR,
    FILE,
    LINK,
    ORPHAN,
    WHITEOUT,
    Rec,
    StagingError,
    add_range,
    clip_ranges,
    clip_refs,
    rec_from_entry,
)
from cowfs.staging_seal import changeset
from cowfs.staging_store import (
    RecStore,
    area_dir,
    complete,
    fsync_dir,
    hold,
    list_areas,
    remove_area,
    sweep,
    write_durably,
)
from cowfs.store import Store

__all__ = [
    "DIR",
    "FILE",
    "LINK",
    "ORPHAN",
    "WHITEOUT",
    "Rec",
    "Staging",
    "StagingError",
    "add_range",
    "area_dir",
    "clip_ranges",
    "clip_refs",
    "list_areas",
    "rec_from_entry",
]


class Staging(PosixOps):
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
        super().__init__(store, base_tree, path / "data")
        self.url = url
        self.repo = repo
        self.branch = branch
        #: The commit the writes were opened on (None for a branch with no commit yet).
        self.base = base
        self.path = path
        self.lock = threading.RLock()
        self._lock_fd = hold(path) if lock_fd is None else lock_fd
        self.closed = False
        self._batch = None
        self._next_orphan = 1
        self.db = RecStore(path / "recs")
        recs, self._next_overlay = self.db.load()
        for p, rec in recs.items():
            self.index(p, rec)

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def start(
        cls, store: Store, url: str, repo: str, branch: str, base: str | None, base_tree: str
    ) -> Staging:
        path = area_dir(url, repo, branch)
        if complete(path):
            return cls.open(store, url, repo, branch)
        sweep(path.parent)
        path.mkdir(parents=True, exist_ok=True)
        lock = hold(path)
        try:
            if complete(path):  # another process made it meanwhile
                meta = msgpack.unpackb((path / "meta.json").read_bytes())
                base, base_tree = meta["base"], meta["tree"]
            else:
                cls._lay_out(path, url, repo, branch, base, base_tree)
            area = cls(store, url, repo, branch, base, base_tree, path, lock)
            area.hold_base()
            return area
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
        (path / "journal").unlink(missing_ok=True)
        (path / "data").mkdir()
        meta = {
            "url": url,
            "repo": repo,
            "branch": branch,
            "base": base,
            "tree": base_tree,
            "opened": time.time(),
        }
        write_durably(path / "meta.json", msgpack.packb(meta))
        (path / "recs").mkdir()
        fsync_dir(path)

    def _holder(self) -> str:
        """This area's name among the collector's holds: one per node and area."""
        return xxhash.xxh3_128_hexdigest(f"{socket.gethostname()}:{self.path}".encode())

    def hold_base(self) -> None:
        """Keep the base commit from a collector on any machine while writes sit on it
        (docs/architecture.md, "Garbage collection": roots include `gc/holds/`)."""
        if self.base is not None:
            gcstate.put_hold(self.store.objects, self._holder(), self.repo, self.base)

    def release_base(self) -> None:
        # A hold left behind (store unreachable now) only keeps a commit alive for longer.
        with contextlib.suppress(CowfsError, OSError):
            gcstate.release_hold(self.store.objects, self._holder())

    @classmethod
    def exists(cls, url: str, repo: str, branch: str) -> bool:
        return complete(area_dir(url, repo, branch))

    @classmethod
    def open(cls, store: Store, url: str, repo: str, branch: str) -> Staging:
        path = area_dir(url, repo, branch)
        if not complete(path):
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
            self.close_fds()
            self.db.close()
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
                remove_area(self.path)
            finally:
                os.close(self._lock_fd)
            self.release_base()

    def sync(self, path: str | None = None) -> None:
        """Make the staged state of `path` (every staged file when None) survive power loss:
        its overlay's bytes, the overlay's directory entry, and the records."""
        with self._guard():
            if path is None:
                recs = [*self.recs.values(), *self.orphans.values()]
            else:
                rec = self.rec(path)
                recs = [rec] if rec is not None else []
            for rec in recs:
                if rec.kind == FILE and rec.overlay is not None:
                    os.fdatasync(self.fd(rec.overlay))
            fsync_dir(self.data_dir)
            self.db.sync()

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
            write_durably(self.path / "meta.json", msgpack.packb(meta))
            self.db.clear()
            keep = {r.overlay for r in self.orphans.values()}
            for n in self.overlays_on_disk():
                if n not in keep:
                    self.unlink_overlay(n)
            self.clear_index(self.store, base_tree)
            self.base = base
        self.hold_base()

    def changeset(self, reader: ChunkReader, chunker: Chunker) -> ChangeSet:
        """The staged writes as a change, with every changed byte chunked and stored."""
        with self._guard():
            return changeset(self, reader, chunker)
