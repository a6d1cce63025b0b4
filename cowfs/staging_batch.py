"""Each operation on a staging area applied whole or not at all: a batch of the records it
stages, written to the durable store as one journal record at its end, and on any failure
first the in-memory index put back as it was (nothing reaches the disk). Effects that cannot be
undone (removing an overlay file, shrinking one) wait for the commit of the batch (`_later`).
"""

from __future__ import annotations

import contextlib
import errno as _errno
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from cowfs.staging_records import ORPHAN, Rec, StagingError
from cowfs.staging_store import RecStore
from cowfs.staging_union import StagedTree


@dataclass
class _Batch:
    #: path -> the record to store, or None to delete it: what the transaction writes.
    changes: dict[str, Rec | None] = field(default_factory=dict)
    #: path -> the record the index had before this batch first touched it (None: no record).
    undo: dict[str, Rec | None] = field(default_factory=dict)
    orphans_undo: dict[str, Rec | None] = field(default_factory=dict)
    #: Run once the transaction has committed.
    after: list[Callable[[], None]] = field(default_factory=list)
    next_overlay: int = 0
    root_mtime_ns: int = 0


class _Held:
    """`with ops._guard():` the area's lock, held only while the area is open. A class, not a
    generator context manager: every FUSE request on a writable view enters one or two, and
    `contextlib.contextmanager` costs several microseconds each."""

    __slots__ = ("ops",)

    def __init__(self, ops: BatchedTree) -> None:
        self.ops = ops

    def __enter__(self) -> None:
        ops = self.ops
        ops.lock.acquire()
        if ops.closed:
            ops.lock.release()
            raise StagingError(
                f"{ops.repo}@{ops.branch} is no longer open for writing here", _errno.EROFS
            )

    def __exit__(self, *exc: object) -> None:
        self.ops.lock.release()


class _Changing(_Held):
    """`with ops._change():` one operation as one batch. An operation made of others (a
    create over a file truncates it) joins the batch already open; the outermost one writes
    the batch at its end, or on any failure puts the index back (`BatchedTree._finish`)."""

    __slots__ = ("batch",)

    def __enter__(self) -> None:
        super().__enter__()
        ops = self.ops
        if ops._batch is not None:
            self.batch = None
            return
        b = self.batch = ops._batch = _Batch(next_overlay=ops._next_overlay)
        b.root_mtime_ns = ops.root_mtime_ns

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if self.batch is not None:
                self.ops._finish(self.batch, exc_type is not None)
        finally:
            self.ops.lock.release()


class BatchedTree(StagedTree):
    """The staged tree with batches: `_change` opens one, `_put`, `_drop` and `_store` stage
    into it, `_later` defers what cannot be undone. Thread-safe through `lock`."""

    lock: threading.RLock
    closed: bool
    db: RecStore
    repo: str
    branch: str
    _next_overlay: int
    _batch: _Batch | None

    def _guard(self) -> _Held:
        """Hold the lock of an area that is still open: once closed it takes no more writes."""
        return _Held(self)

    def _change(self) -> _Changing:
        """One operation: applied whole (one transaction) or, on any failure, not at all."""
        return _Changing(self)

    def _finish(self, b: _Batch, failed: bool) -> None:
        """The end of the outermost operation of a batch: write it, or put the index back."""
        try:
            if failed:
                self._rollback(b)
                return
            grew = self._next_overlay != b.next_overlay
            if b.changes or grew:
                self.db.apply(b.changes, self._next_overlay if grew else None)
        except BaseException:
            self._rollback(b)
            raise
        finally:
            self._batch = None
        for fn in b.after:
            with contextlib.suppress(OSError):
                fn()

    def _rollback(self, b: _Batch) -> None:
        for path, prev in b.undo.items():
            self.unindex(path)
            if prev is not None:
                self.index(path, prev)
        for key, prev in b.orphans_undo.items():
            if prev is None:
                self.orphans.pop(key, None)
            else:
                self.orphans[key] = prev
        self.root_mtime_ns = b.root_mtime_ns

    def _put(self, path: str, rec: Rec) -> None:
        """Stage `rec` (a fresh object: indexed records are never changed in place)."""
        b = self._batch
        assert b is not None
        b.undo.setdefault(path, self.recs.get(path))
        self.index(path, rec)
        b.changes[path] = rec

    def _drop(self, path: str) -> None:
        b = self._batch
        assert b is not None
        if path not in self.recs:
            return
        b.undo.setdefault(path, self.recs.get(path))
        self.unindex(path)
        b.changes[path] = None

    def _store(self, path: str, rec: Rec) -> None:
        """Record a change to a file; an unlinked one lives only in memory, as on any fs."""
        if path.startswith(ORPHAN):
            assert self._batch is not None
            self._batch.orphans_undo.setdefault(path, self.orphans.get(path))
            self.orphans[path] = rec
        else:
            self._put(path, rec)

    def _later(self, fn: Callable[[], None]) -> None:
        assert self._batch is not None
        self._batch.after.append(fn)
