"""Which pack this process appends to, and the range each append reserves in it.

One writer per pack, whatever the processes sharing the cache's folder (the mount, the CLI,
`cowfs.connect`): a writer holds an exclusive `flock` on its pack while it appends, takes a new
pack (or adopts an unlocked one with room) otherwise, and a new pack's id is never reused
(`O_EXCL` on a counter kept in LMDB), so bytes once written in a pack never change. Threads of
one process append to the same pack at once, each into the range it reserved; recording what
was appended is `cowfs.packcache`'s.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import threading
import time
from pathlib import Path

import lmdb

from cowfs.openfiles import SharedFd
from cowfs.packformat import NEXT_PACK_KEY, PACK, U64, pack_id_key, pack_path

#: A pack's blocks are allocated this far ahead of its writes (`fallocate`, size kept): ext4's
#: delayed allocation per written page was a quarter of the cost of appending (0.16 against
#: 0.12 s of CPU per 512 MiB); at most this much is left allocated past the end of a pack its
#: writer never finished.
PREALLOC_BYTES = 8 << 20
#: Of the packs with room (under half full), the newest this many are tried for adoption.
_ADOPT_TRIES = 4

_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)  # Linux only
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Best effort: a file system without `fallocate` only loses the speed-up."""
    if _fallocate is not None:
        _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length)


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write to a pack file")
        mv, offset = mv[n:], offset + n


class Appending:
    """A pack held for appending: its descriptor (the flock goes with its last user), the end
    of what is reserved in it, and how far its blocks are allocated."""

    __slots__ = ("pack", "key", "file", "end", "allocated", "pid")

    def __init__(self, pack: int, fd: int, end: int) -> None:
        self.pack, self.key, self.file = pack, pack_id_key(pack), SharedFd(fd)
        self.end, self.allocated, self.pid = end, end, os.getpid()


class PackWriter:
    """Thread-safe; after a fork the child takes a pack of its own (the parent's flock is not
    the child's to rely on)."""

    def __init__(
        self,
        env: lmdb.Environment,
        root: Path,
        pack_bytes: int,
        packs: lmdb._Database,
        meta: lmdb._Database,
    ) -> None:
        self.env, self.root, self.pack_bytes = env, root, pack_bytes
        self._packs, self._meta = packs, meta
        self._current: Appending | None = None
        self._lock = threading.Lock()

    def append(self, data: bytes | memoryview) -> tuple[Appending, int]:
        """Write `data` into the current pack; the pack and where in it the bytes start."""
        w, off = self._reserve(len(data))
        try:
            _pwrite_all(w.file.fd, data, off)
        finally:
            with self._lock:
                w.file.give()
        return w, off

    def abandon(self, w: Appending) -> None:
        """Stop appending to `w` (it was dropped under this writer)."""
        with self._lock:
            self._release(w)

    def holds(self, pack: int) -> bool:
        w = self._current
        return w is not None and w.pack == pack and w.pid == os.getpid()

    def close(self) -> None:
        with self._lock:
            if self._current is not None:
                self._release(self._current)

    def _reserve(self, n: int) -> tuple[Appending, int]:
        with self._lock:
            w = self._current
            if w is not None and (w.pid != os.getpid() or (w.end and w.end + n > self.pack_bytes)):
                self._release(w)
                w = None
            if w is None:
                w = self._current = self._take_pack()
            off = w.end
            w.end += n
            if w.end > w.allocated:
                ahead = min(PREALLOC_BYTES, self.pack_bytes - w.allocated)
                grow = max(ahead, w.end - w.allocated)
                _preallocate(w.file.fd, w.allocated, grow)
                w.allocated += grow
            w.file.users += 1
            return w, off

    def _release(self, w: Appending) -> None:
        """Under `_lock`."""
        if self._current is w:
            self._current = None
        if w.pid == os.getpid():
            w.file.retire()

    def _take_pack(self) -> Appending:
        """A pack this process alone appends to: an unlocked one with room, else a new one."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.env.begin() as txn:
            roomy = [
                (int.from_bytes(k, "big"), PACK.unpack(v)[0])
                for k, v in txn.cursor(db=self._packs)
                if PACK.unpack(v)[0] < self.pack_bytes // 2
            ]
        for pack, size in reversed(roomy[-_ADOPT_TRIES:]):
            w = self._adopt(pack, size)
            if w is not None:
                return w
        return self._new_pack()

    def _adopt(self, pack: int, size: int) -> Appending | None:
        try:
            fd = os.open(pack_path(self.root, pack), os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            st = os.fstat(fd)
        except OSError:
            os.close(fd)
            return None
        if st.st_nlink == 0:  # dropped between the look-up and the lock
            os.close(fd)
            return None
        # Past both what was recorded and what is on disk: never over bytes an entry points at.
        return Appending(pack, fd, max(size, st.st_size))

    def _new_pack(self) -> Appending:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        with self.env.begin(write=True) as txn:
            raw = txn.get(NEXT_PACK_KEY, db=self._meta)
            pack = U64.unpack(raw)[0] if raw else 1
            while True:
                try:
                    fd = os.open(pack_path(self.root, pack), flags, 0o600)
                    break
                except FileExistsError:  # the counter went back (the index lost a write)
                    pack += 1
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            txn.put(NEXT_PACK_KEY, U64.pack(pack + 1), db=self._meta)
            txn.put(pack_id_key(pack), PACK.pack(0, int(time.time())), db=self._packs)
        return Appending(pack, fd, 0)
