"""Where a staging area lives on disk, who holds it, and its durable records.

An area is a folder per store and branch (`area_dir`) holding `meta.json`, the `lock` one process
holds (an flock), the records (`RecStore`, an LMDB env) and the overlay files under `data/`.
Every change to the records is applied as one batch in one transaction: an operation that
stages several paths (a rename of a tree, a create that touches its parent directory) lands
whole or not at all.

LMDB keys are at most 511 bytes, paths up to 4,096: a path of more than `_INLINE_KEY` bytes is
stored under NUL + its BLAKE3 digest, with the path itself as the record's twelfth field. No
path contains a NUL, so the two kinds of key never meet.
"""

from __future__ import annotations

import errno as _errno
import fcntl
import os
import shutil
import uuid
from collections.abc import Mapping
from pathlib import Path

import blake3
import lmdb
import xxhash

from cowfs.config import state_dir
from cowfs.staging_records import Rec, StagingError

#: Paths up to this many bytes of UTF-8 are their own key (LMDB allows 511).
_INLINE_KEY = 400
_ASIDE = ".removing-"


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

    def load(self) -> tuple[dict[str, Rec], int]:
        """Every record, and the next overlay number."""
        out: dict[str, Rec] = {}
        with self.env.begin() as txn:
            for k, v in txn.cursor(db=self._recs):
                rec, path = Rec.unpack(v)
                out[path if path is not None else bytes(k).decode("utf-8", "surrogateescape")] = rec
            raw = txn.get(b"next_overlay", db=self._meta)
        return out, int(raw or b"1")

    def apply(self, changes: Mapping[str, Rec | None], next_overlay: int | None = None) -> None:
        """Put (a `Rec`) or delete (None) every path in `changes`, in one transaction."""
        with self.env.begin(write=True) as txn:
            for path, rec in changes.items():
                key, hashed = record_key(path)
                if rec is None:
                    txn.delete(key, db=self._recs)
                else:
                    txn.put(key, rec.pack(path if hashed else None), db=self._recs)
            if next_overlay is not None:
                txn.put(b"next_overlay", str(next_overlay).encode(), db=self._meta)

    def clear(self) -> None:
        with self.env.begin(write=True) as txn:
            txn.drop(self._recs, delete=False)
        self.env.sync(True)

    def sync(self) -> None:
        self.env.sync(True)

    def close(self) -> None:
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
