"""Where a staging area lives on disk, who holds it, and its durable records.

An area is a folder per store and branch (`area_dir`) holding `meta.json`, the `lock` one process
holds (an flock), the records (`RecStore`: an LMDB env and its journal) and the overlay files
under `data/`. Every change to the records is applied as one batch: an operation that stages
several paths (a rename of a tree, a create that touches its parent directory) lands whole or
not at all.

Grouped writes: a batch is appended to `journal` as one framed record (length, xxh3-64, msgpack)
with a plain write(2), no fsync: it survives kill -9 of the mount (the kernel has it) at the cost
of a system call, where an LMDB transaction with `sync=True` cost an fdatasync per operation
(`tar x` of 2,000 files: about 10,000 of them). Batches are folded into LMDB in one synced
transaction (a checkpoint) every `CHECKPOINT_RECORDS` records or `CHECKPOINT_BYTES` of journal,
on `sync` (fsync(2) of a staged file) and on close; the journal is truncated after the
transaction committed. Opening replays the journal over LMDB up to its first record that fails
its check (the torn tail power loss may leave of writes nobody fsynced) and checkpoints.
Replaying twice is harmless: records are whole states of paths, applied in order. Each record
carries the journal's generation, which every checkpoint raises in the same transaction: a
record of an older generation (bytes of a journal whose truncation power loss undid) is never
replayed over the newer state LMDB holds.

LMDB keys are at most 511 bytes, paths up to 4,096: a path of more than `_INLINE_KEY` bytes is
stored under NUL + its BLAKE3 digest, with the path itself as the record's twelfth field. No
path contains a NUL, so the two kinds of key never meet.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import shutil
import struct
import uuid
from collections.abc import Mapping
from pathlib import Path

import blake3
import lmdb
import msgpack
import xxhash

from cowfs.config import state_dir
from cowfs.staging_records import Rec, StagingError

#: Paths up to this many bytes of UTF-8 are their own key (LMDB allows 511).
_INLINE_KEY = 400
_ASIDE = ".removing-"
CHECKPOINT_RECORDS = 16384
CHECKPOINT_BYTES = 32 << 20
_FRAME = struct.Struct("<IQ")


def record_key(path: str) -> tuple[bytes, bool]:
    """The LMDB key of `path`, and whether the record must carry the path (a hashed key)."""
    raw = path.encode("utf-8", "surrogateescape")
    if len(raw) <= _INLINE_KEY:
        return raw, False
    return b"\x00" + blake3.blake3(raw).digest(), True


class RecStore:
    """The records of one area, durable. Not thread-safe: `Staging.lock` serialises callers."""

    def __init__(self, path: Path) -> None:
        self.env = lmdb.open(
            str(path), map_size=1 << 34, max_dbs=4, sync=True, metasync=False, subdir=True
        )
        self._recs = self.env.open_db(b"recs")
        self._meta = self.env.open_db(b"meta")
        self._journal_path = path.parent / "journal"
        self._journal = os.open(self._journal_path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        #: What the journal holds beyond LMDB, merged: path -> record or None (deleted).
        self._pending: dict[str, Rec | None] = {}
        self._pending_overlay: int | None = None
        self._records = 0
        self._bytes = 0
        with self.env.begin() as txn:
            self._gen = int(txn.get(b"journal_gen", db=self._meta) or b"0")

    def load(self) -> tuple[dict[str, Rec], int]:
        """Every record, and the next overlay number (the journal replayed and folded in)."""
        self._replay()
        out: dict[str, Rec] = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._recs):
                rec, path = Rec.unpack(v)
                out[path if path is not None else bytes(k).decode("utf-8", "surrogateescape")] = rec
            raw = txn.get(b"next_overlay", db=self._meta)
        return out, int(raw or b"1")

    def apply(self, changes: Mapping[str, Rec | None], next_overlay: int | None = None) -> None:
        """Put (a `Rec`) or delete (None) every path in `changes`, as one journal record."""
        if self._records >= CHECKPOINT_RECORDS or self._bytes >= CHECKPOINT_BYTES:
            self.checkpoint()  # first: if it fails, this batch has not been written either
        rows = [[p, None if r is None else r.pack()] for p, r in changes.items()]
        payload = msgpack.packb([self._gen, next_overlay, rows], use_bin_type=True)
        frame = _FRAME.pack(len(payload), xxhash.xxh3_64_intdigest(payload)) + payload
        n = os.write(self._journal, frame)
        if n != len(frame):  # a short write (disk full): cut it off, the batch did not happen
            os.ftruncate(self._journal, self._bytes)
            raise OSError(_errno.ENOSPC, "short write to the staging journal")
        self._pending.update(changes)
        if next_overlay is not None:
            self._pending_overlay = next_overlay
        self._records += 1
        self._bytes += n

    def checkpoint(self) -> None:
        """Fold the journal into LMDB (one synced transaction), then empty it."""
        if self._records:
            with self.env.begin(write=True) as txn:
                for path, rec in self._pending.items():
                    key, hashed = record_key(path)
                    if rec is None:
                        txn.delete(key, db=self._recs)
                    else:
                        txn.put(key, rec.pack(path if hashed else None), db=self._recs)
                if self._pending_overlay is not None:
                    txn.put(b"next_overlay", str(self._pending_overlay).encode(), db=self._meta)
                txn.put(b"journal_gen", str(self._gen + 1).encode(), db=self._meta)
            self._gen += 1
        self._emptied()

    def _emptied(self) -> None:
        os.ftruncate(self._journal, 0)
        self._pending.clear()
        self._pending_overlay = None
        self._records = self._bytes = 0

    def _replay(self) -> None:
        data = os.pread(self._journal, os.fstat(self._journal).st_size, 0)
        pos = 0
        while pos + _FRAME.size <= len(data):
            size, digest = _FRAME.unpack_from(data, pos)
            payload = data[pos + _FRAME.size : pos + _FRAME.size + size]
            if len(payload) != size or xxhash.xxh3_64_intdigest(payload) != digest:
                break  # a torn tail: what follows was never fsynced
            gen, next_overlay, rows = msgpack.unpackb(payload, raw=False)
            if gen != self._gen:
                break  # left from before a checkpoint: LMDB already holds it, or newer
            for path, raw in rows:
                self._pending[path] = None if raw is None else Rec.unpack(raw)[0]
            if next_overlay is not None:
                self._pending_overlay = next_overlay
            self._records += 1
            pos += _FRAME.size + size
        self.checkpoint()

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            txn.drop(self._recs, delete=False)
            if self._pending_overlay is not None:
                txn.put(b"next_overlay", str(self._pending_overlay).encode(), db=self._meta)
            txn.put(b"journal_gen", str(self._gen + 1).encode(), db=self._meta)
        self._gen += 1
        self.env.sync(True)
        self._emptied()

    def sync(self) -> None:
        self.checkpoint()
        self.env.sync(True)

    def close(self) -> None:
        try:
            self.checkpoint()
        finally:
            os.close(self._journal)
            self.env.close()


# --- the area on disk ----------------------------------------------------------------------


def area_dir(url: str, repo: str, branch: str) -> Path:
    """Each store and branch gets its own staging folder, so two stores never mix writes."""
    return state_dir() / "staging" / xxhash.xxh3_64_hexdigest(url.encode()) / f"{repo}@{branch}"


def complete(path: Path) -> bool:
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
        if at and not repo.startswith(".") and complete(d):
            out.append((repo, branch))
    return out


def write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def hold(path: Path) -> int:
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


def remove_area(path: Path) -> None:
    """Rename the area aside (atomic, then durable), then remove it at leisure."""
    aside = path.with_name(f"{_ASIDE}{os.getpid()}-{uuid.uuid4().hex[:12]}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    fsync_dir(path.parent)
    shutil.rmtree(aside, ignore_errors=True)


def sweep(root: Path) -> None:
    """Remove what a crash in the middle of `remove_area` left aside."""
    if root.is_dir():
        for d in root.iterdir():
            if d.name.startswith(_ASIDE):
                shutil.rmtree(d, ignore_errors=True)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
