"""Turning entries into the attributes the kernel caches, and how long it may cache them."""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass

import pyfuse3

from cowfs.entries import Entry, EntryType

BLKSIZE = 1 << 20
#: Immutable views: the kernel may keep entries, attributes and pages as long as it likes.
FOREVER = 3600.0 * 24
#: Levels that change as repos, branches and global IDs are made.
LISTING = 1.0
#: The dentry of a branch directory: short, so the next walk sees a moved head.
BRANCH = 0.25
#: Inside a branch open for writing, where the staged files change under the kernel.
WRITABLE = 1.0
#: Directories do not count their subdirectories (a listing per stat would cost a walk of the
#: level below on every readdir); 1 is what btrfs shows too, and find and fts read it as
#: "unknown" rather than as "no subdirectories", which the former 2 claimed.
DIR_NLINK = 1


@dataclass
class Owner:
    uid: int
    gid: int
    since_ns: int

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getuid(), os.getgid(), time.time_ns())


def dir_attr(ino: int, owner: Owner, timeout: float, mode: int = 0o755) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    a.st_mode = stat.S_IFDIR | mode
    a.st_nlink = DIR_NLINK
    a.st_uid, a.st_gid = owner.uid, owner.gid
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = owner.since_ns
    a.st_blksize = BLKSIZE
    a.entry_timeout = a.attr_timeout = timeout
    return a


def entry_attr(
    ino: int, e: Entry, owner: Owner, entry_timeout: float, attr_timeout: float
) -> pyfuse3.EntryAttributes:
    a = pyfuse3.EntryAttributes()
    a.st_ino = ino
    if e.type is EntryType.DIR:
        a.st_mode = stat.S_IFDIR | (e.mode & 0o7777) | 0o500
        a.st_nlink = DIR_NLINK
        a.st_size = 0
    elif e.type is EntryType.SYMLINK:
        a.st_mode = stat.S_IFLNK | 0o777
        a.st_nlink = 1
        a.st_size = len((e.target or "").encode())
    else:
        a.st_mode = stat.S_IFREG | (e.mode & 0o7777) | 0o400
        a.st_nlink = 1
        a.st_size = e.size
    a.st_uid, a.st_gid = owner.uid, owner.gid
    mt = e.mtime_ns or owner.since_ns
    a.st_atime_ns = a.st_mtime_ns = a.st_ctime_ns = mt
    a.st_blksize = BLKSIZE
    a.st_blocks = (a.st_size + 511) // 512
    a.entry_timeout = entry_timeout
    a.attr_timeout = attr_timeout
    return a
