"""A large local file read through a memory map, while a read lease keeps writers out.

Why map: a put that `read`s a cold 1 GiB file into fresh blocks copies every page-cache page
into zero-filled memory, and on a 2-core machine that memory traffic also slows the threads
hashing beside it. Cut, hashed and written straight from the page cache through a read-only
map, the same put costs 0.8 to 1.4 s less CPU here (docs/benchmarks.md).

Why the lease: a mapped file that shrinks under its reader kills the process with SIGBUS,
which Python cannot catch. So a file is mapped only while this process holds a read lease on it
(`F_SETLEASE`, `F_RDLCK`): the kernel then holds back every open for writing and every truncate
of the file until the lease is given up, marking it *breaking* meanwhile. The reader asks
between windows (`F_GETLEASE`, one system call) and, when a writer waits, stops, lets what it
handed out finish, gives the lease up and the caller reads the file the ordinary way. Where no
lease can be had (the file is open for writing somewhere; another user's file without
`CAP_LEASE`) the caller reads it the ordinary way too. So it does on any file system not known to
be local (`LOCAL_FS`): a lease there is only local, and a network file system (NFS, SMB, one
served through FUSE) can shrink a file from another machine without asking this one.

A lease break normally signals the holder with SIGIO, whose default action ends the process.
The descriptor's signal is set to SIGURG (ignored by default) before the lease is taken, and
its owner cleared right after, so a break sends nothing and is only seen by asking.

What is left: a holder stopped for longer than `/proc/sys/fs/lease-break-time` (45 s by
default) while a writer waits loses the lease to it; if that writer truncates the file, the
holder dies by SIGBUS when it resumes (nothing is committed; the put is simply gone).
"""

from __future__ import annotations

import ctypes
import fcntl
import mmap
import os
import signal
import threading
from collections.abc import Iterable
from concurrent.futures import Future

#: Leases are Linux's; elsewhere every file is read the ordinary way.
SUPPORTED = all(hasattr(fcntl, n) for n in ("F_SETLEASE", "F_GETLEASE", "F_SETOWN"))
_F_SETSIG = getattr(fcntl, "F_SETSIG", 10)
_PAGE = mmap.ALLOCATIONGRANULARITY
#: `statfs` magic numbers of file systems whose files change only through this kernel: ext2-4,
#: XFS, Btrfs, tmpfs, F2FS, ZFS, bcachefs and overlayfs (its writes copy a file up, leaving the
#: mapped lower one as it was).
LOCAL_FS = frozenset(
    (0xEF53, 0x58465342, 0x9123683E, 0x01021994, 0xF2F52010, 0x2FC12FC1, 0xCA451A4E, 0x794C7630)
)
_libc = ctypes.CDLL(None, use_errno=True)
_fstatfs = getattr(_libc, "fstatfs", None)


def fs_type(fd: int) -> int | None:
    """The `statfs` magic of the file system holding `fd` (None where it cannot be asked)."""
    if _fstatfs is None:
        return None
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes; f_type comes first
    if _fstatfs(fd, buf) != 0:
        return None
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class LeasedFile:
    """One file open read-only under a read lease. The lease (and with it the promise that
    the views stay readable) lasts until `release_after`'s futures are all done."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._lock = threading.Lock()
        self._left = 0
        self._released = False
        self._ahead = 0  # what was asked of the page cache so far

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> LeasedFile | None:
        """The file under a lease, or None where it cannot have one (read it normally)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size == 0 or fs_type(fd) not in LOCAL_FS or not _take_lease(fd):
                os.close(fd)
                return None
        except BaseException:
            os.close(fd)
            raise
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        return cls(fd, size)

    def view(self, start: int, stop: int) -> memoryview:
        """Bytes [start, stop) of the file, mapped. The map goes away with the last view of it."""
        base = start - start % _PAGE
        m = mmap.mmap(self.fd, stop - base, access=mmap.ACCESS_READ, offset=base)
        return memoryview(m)[start - base :]

    def prefetch_to(self, end: int) -> None:
        """Start reading the file up to `end` into the page cache, without waiting (so the
        cutter's page faults find the pages there instead of waiting for the disk)."""
        end = min(end, self.size)
        if end > self._ahead:
            os.posix_fadvise(self.fd, self._ahead, end - self._ahead, os.POSIX_FADV_WILLNEED)
            self._ahead = end

    def writer_waits(self) -> bool:
        """Whether someone is held back opening the file for writing or truncating it."""
        return fcntl.fcntl(self.fd, fcntl.F_GETLEASE) != fcntl.F_RDLCK

    def release_after(self, futures: Iterable[Future[object]]) -> None:
        """Give the lease up (and close the file) once every one of `futures` is done: they
        are what still reads the views."""
        pending = list(futures)
        with self._lock:
            self._left = len(pending) + 1
        for f in pending:
            f.add_done_callback(self._one_done)
        self._one_done(None)

    def _one_done(self, _: object) -> None:
        with self._lock:
            self._left -= 1
            if self._left > 0 or self._released:
                return
            self._released = True
        try:
            fcntl.fcntl(self.fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)
        finally:
            os.close(self.fd)


def _take_lease(fd: int) -> bool:
    try:
        fcntl.fcntl(fd, _F_SETSIG, signal.SIGURG)
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError:
        return False
    fcntl.fcntl(fd, fcntl.F_SETOWN, 0)
    return True
