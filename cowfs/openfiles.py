"""Descriptors shared by reader threads, kept open for the files read most recently.

A block read of a located chunk is then one `pread`, not open + fadvise + pread + close. A
descriptor is closed only once no reader uses it: a closed number could be reused by another
open while a reader still holds it. Used for a local store's raw objects (`cowfs.chunkfiles`)
and the chunk cache's packs (`cowfs.packcache`); the bytes behind both are immutable and
block-checked, so a descriptor of a file deleted since still reads sound bytes, and only keeps
the space until it leaves the LRU.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class SharedFd:
    """One descriptor and its users. `retire` and `give` are called under the owner's lock."""

    __slots__ = ("fd", "users", "dropped")

    def __init__(self, fd: int) -> None:
        self.fd, self.users, self.dropped = fd, 0, False

    def retire(self) -> None:
        """Close now if unused, else when the last user gives it back."""
        self.dropped = True
        if self.users == 0:
            self.users = -1  # closed: a late `give` never sees 0 again
            os.close(self.fd)

    def give(self) -> None:
        self.users -= 1
        if self.dropped and self.users == 0:
            self.users = -1
            os.close(self.fd)


def open_for_blocks(path: str | os.PathLike[str]) -> int:
    """Read-only, and without the local file system reading ahead of each block read."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


class OpenFiles(Generic[K]):
    """Up to `limit` descriptors, least recently read closed first; `opener` opens the file
    of a key (its errors reach the reader)."""

    def __init__(self, limit: int, opener: Callable[[K], int]) -> None:
        self.limit = limit
        self._opener = opener
        self._open: OrderedDict[K, SharedFd] = OrderedDict()
        self._lock = threading.Lock()

    def pread(self, key: K, size: int, offset: int) -> bytes:
        f = self._take(key)
        try:
            return os.pread(f.fd, size, offset)
        finally:
            self._give(f)

    def _give(self, f: SharedFd) -> None:
        with self._lock:
            f.give()

    def _take(self, key: K) -> SharedFd:
        with self._lock:
            f = self._open.get(key)
            if f is not None:
                self._open.move_to_end(key)
                f.users += 1
                return f
        mine = SharedFd(self._opener(key))
        with self._lock:
            f = self._open.get(key)
            if f is None:
                f = self._open[key] = mine
                while len(self._open) > self.limit:
                    self._open.popitem(last=False)[1].retire()
            f.users += 1
        if f is not mine:
            os.close(mine.fd)
        return f

    def held(self) -> list[K]:
        with self._lock:
            return list(self._open)

    def drop(self, key: K) -> None:
        with self._lock:
            f = self._open.pop(key, None)
            if f is not None:
                f.retire()

    def close(self) -> None:
        with self._lock:
            while self._open:
                self._open.popitem()[1].retire()
