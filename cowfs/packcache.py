"""The node's chunk cache as a few large append-only pack files (log-structured).

One file per cached chunk cost a create, a write, a rename and later an unlink each: about 30%
of the mount's CPU in a cold read from S3 (ext4 inode allocation alone 7%, and slow soon after
many deletes on a journal-less ext4), and a descriptor per chunk for sub-chunk reads. Here a
chunk's plain bytes are appended to the writing process's current pack (`packs/<id>.pack`,
`pack_bytes` each, 64 MiB by default) and LMDB maps its key to (pack, offset, length).

- One writer per pack, whatever the processes sharing the folder (the mount, the CLI,
  `cowfs.connect`): a writer holds an exclusive `flock` on its pack while it appends, takes a
  new pack (or adopts an unlocked one with room) otherwise, and a new pack's id is never
  reused (`O_EXCL` on a counter kept in LMDB), so bytes once written in a pack never change.
- Bytes are written before their entry is committed, so an entry never points at bytes still
  being written. An entry can still point at bytes that never reached the disk (a machine
  crash with sync off) or at a torn tail. So each entry also holds the xxh3-64 of every 16 KiB
  block of the chunk (`BLOCK`), taken from the bytes given to `put`, which the caller has
  verified (BLAKE3, when the chunk entered the node); every read checks the blocks it
  returns, whole chunks (`get`) and sub-chunk reads (`cowfs.chunkfiles`) alike, in this
  process or after a restart. A chunk that fails is dropped and fetched again; it is never
  served.
- Eviction (driven by `cowfs.index.Index`) drops whole packs, least recently used first: a
  pack's last use is its last write or read. Chunks cached together are those of files read
  together, so a pack is a good unit of recency; copying read chunks forward into a new pack
  would rewrite bytes on exactly the path this module makes cheap. A pack a live writer holds
  is never dropped. An entry is deleted in the same transaction as its pack's record, and the
  file is unlinked after; a reader holding the pack's descriptor reads on safely (the bytes
  are immutable), and descriptors of packs that another process dropped are closed within a
  second (`_DROP_CHECK_S`), so their space is freed.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import struct
import threading
import time
from array import array
from pathlib import Path
from typing import NamedTuple

import lmdb
import xxhash

from cowfs.openfiles import OpenFiles, SharedFd, open_for_blocks

#: Pack files' size once full; smaller with a small cap (a sixteenth of it), so that dropping
#: whole packs can keep the cache under its cap.
PACK_BYTES = 64 << 20
MIN_PACK_BYTES = 64 << 10
#: A pack's blocks are allocated this far ahead of its writes (`fallocate`, size kept): ext4's
#: delayed allocation per written page was a quarter of the cost of appending (0.16 against
#: 0.12 s of CPU per 512 MiB); at most this much is left allocated past the end of a pack its
#: writer never finished.
PREALLOC_BYTES = 8 << 20
#: 16 KiB: a 4 KiB read costs a 16 KiB disk read; 64 KiB blocks made the disk the limit of random
#: 4 KiB reads on this machine (its 128 KiB random reads run at a tenth of its 4 KiB IOPS).
BLOCK = 16 << 10
#: Pack descriptors kept open for reads (one per pack, not per chunk).
OPEN_PACKS = 256
#: How often a reader looks whether another process dropped packs it holds open.
_DROP_CHECK_S = 1.0
#: A pack's last-use time is refreshed by a read at most this often (a write transaction).
TOUCH_EVERY_S = 300

_LOC = struct.Struct("<IQI")  # pack, offset, length; then the block sums
_PACK = struct.Struct("<QQ")  # bytes written (or reserved) in it, last use
_U64 = struct.Struct("<Q")
_PACK_BYTES_KEY = b"pack_bytes"
_NEXT_PACK_KEY = b"next_pack"
_DROPS_KEY = b"pack_drops"
_FALLOC_FL_KEEP_SIZE = 1
_libc = ctypes.CDLL(None, use_errno=True)
_fallocate = getattr(_libc, "fallocate", None)  # Linux only
if _fallocate is not None:
    _fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _preallocate(fd: int, offset: int, length: int) -> None:
    """Best effort: a file system without `fallocate` only loses the speed-up."""
    if _fallocate is not None:
        _fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length)


def _now() -> int:
    return int(time.time())


class PackLoc(NamedTuple):
    pack: int
    offset: int
    length: int
    #: xxh3-64 of each `BLOCK` of the chunk's verified bytes.
    sums: array


def block_sums(plain: bytes | memoryview) -> array:
    mv = memoryview(plain)
    return array(
        "Q", (xxhash.xxh3_64_intdigest(mv[i : i + BLOCK]) for i in range(0, len(mv), BLOCK))
    )


def blocks_match(buf: bytes, start: int, sums: array) -> bool:
    """Whether `buf`, the chunk's bytes from `start` (a multiple of `BLOCK`), has the sums."""
    mv = memoryview(buf)
    return all(
        xxhash.xxh3_64_intdigest(mv[i : i + BLOCK]) == sums[(start + i) // BLOCK]
        for i in range(0, len(mv), BLOCK)
    )


def _entry(pack: int, offset: int, sums: array, length: int) -> bytes:
    return _LOC.pack(pack, offset, length) + sums.tobytes()


def _loc(raw: bytes) -> PackLoc:
    sums = array("Q")
    sums.frombytes(raw[_LOC.size :])
    return PackLoc(*_LOC.unpack_from(raw), sums)


class PackGone(FileNotFoundError):
    """The pack was dropped from the cache: its locations are no longer served."""


def pack_limit(cache_bytes: int) -> int:
    return max(MIN_PACK_BYTES, min(PACK_BYTES, cache_bytes // 16))


def pack_id_key(pack: int) -> bytes:
    """Big-endian, so LMDB's key order is the packs' creation order."""
    return pack.to_bytes(4, "big")


def lru_order(rows: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int, bytes]]:
    """Eviction order over (last use, kind, size, id) rows: least recently used first, then by
    kind and id (a pack id's big-endian bytes order older packs first)."""
    return sorted(rows, key=lambda r: (r[0], r[1], r[3]))


class _Writer:
    __slots__ = ("pack", "key", "file", "end", "allocated", "pid")

    def __init__(self, pack: int, fd: int, end: int) -> None:
        self.pack, self.key, self.file = pack, pack_id_key(pack), SharedFd(fd)
        self.end, self.allocated, self.pid = end, end, os.getpid()


def _pwrite_all(fd: int, data: bytes | memoryview, offset: int) -> None:
    mv = memoryview(data)
    while mv:
        n = os.pwrite(fd, mv, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write to a pack file")
        mv, offset = mv[n:], offset + n


def _pack_path(root: Path, pack: int) -> Path:
    return root / f"{pack:08d}.pack"


def _open_pack(root: Path, dropped: set[int], lock: threading.Lock, pack: int) -> int:
    """A pack's descriptor for block reads; `PackGone` for a pack this process saw dropped."""
    path = _pack_path(root, pack)
    with lock:
        if pack in dropped:
            raise PackGone(errno.ENOENT, "pack dropped", str(path))
    try:
        return open_for_blocks(path)
    except FileNotFoundError:
        raise PackGone(errno.ENOENT, "pack dropped", str(path)) from None


class PackCache:
    """Chunks appended to pack files, located through LMDB. Thread-safe: threads of one process
    append to the same pack concurrently (each writes its own reserved range)."""

    def __init__(self, env: lmdb.Environment, root: Path, pack_bytes: int) -> None:
        self.env = env
        self.root = root
        self.pack_bytes = pack_bytes
        self._locs = env.open_db(b"packed")
        self._packs = env.open_db(b"packs")
        self._members = env.open_db(b"pack_members", dupsort=True)
        self._meta = env.open_db(b"meta")
        self._writer: _Writer | None = None
        self._wlock = threading.Lock()
        self._lock = threading.Lock()
        self._dropped: set[int] = set()
        # Not a bound method: the LRU would then hold this cache, and the cycle would keep the
        # LMDB environment open until a garbage collection, after the caller let go of it.
        self._fds: OpenFiles[int] = OpenFiles(
            OPEN_PACKS, functools.partial(_open_pack, root, self._dropped, self._lock)
        )
        self._drops_seen = -1
        self._checked = 0.0

    def path(self, pack: int) -> Path:
        return _pack_path(self.root, pack)

    # --- accounting --------------------------------------------------------------------------

    def used(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(_PACK_BYTES_KEY, db=self._meta)
        return _U64.unpack(raw)[0] if raw else 0

    def _add_used(self, txn: lmdb.Transaction, delta: int) -> None:
        txn.put(_PACK_BYTES_KEY, _U64.pack(max(self.used(txn) + delta, 0)), db=self._meta)

    def rows(self, txn: lmdb.Transaction) -> list[tuple[int, int, int, bytes]]:
        """(last use, 1, size, pack id key) of every pack, for `lru_order`."""
        out = []
        for k, v in txn.cursor(db=self._packs):
            size, last = _PACK.unpack(v)
            out.append((last, 1, size, bytes(k)))
        return out

    # --- writing -----------------------------------------------------------------------------

    def put(self, key: bytes, data: bytes | memoryview) -> bool:
        """Append a chunk (verified bytes: its block sums are taken from them) and record where
        it lies; False when it was not recorded (the pack was dropped under this writer, or
        another writer recorded the key first)."""
        n = len(data)
        sums = block_sums(data)
        w, off = self._reserve(n)
        try:
            _pwrite_all(w.file.fd, data, off)
        finally:
            with self._wlock:
                w.file.give()
        with self.env.begin(write=True) as txn:
            raw = txn.get(w.key, db=self._packs)
            if raw is not None:
                return self._record(txn, w, key, off, n, raw, sums)
        # Dropped by an eviction since this writer took it (released outside the transaction:
        # a thread taking a new pack holds `_wlock` while it waits for LMDB's write lock).
        self._abandon(w)
        return False

    def _record(
        self,
        txn: lmdb.Transaction,
        w: _Writer,
        key: bytes,
        off: int,
        n: int,
        raw: bytes,
        sums: array,
    ) -> bool:
        """In the put's transaction: the pack grows by what was written, whoever wins the key."""
        size, _ = _PACK.unpack(raw)
        grown = max(size, off + n)
        txn.put(w.key, _PACK.pack(grown, _now()), db=self._packs)
        self._add_used(txn, grown - size)
        if txn.get(key, db=self._locs) is not None:
            return False
        txn.put(key, _entry(w.pack, off, sums, n), db=self._locs)
        txn.put(w.key, key, db=self._members)
        return True

    def _reserve(self, n: int) -> tuple[_Writer, int]:
        with self._wlock:
            w = self._writer
            if w is not None and (w.pid != os.getpid() or (w.end and w.end + n > self.pack_bytes)):
                self._release(w)
                w = None
            if w is None:
                w = self._writer = self._take_pack()
            off = w.end
            w.end += n
            if w.end > w.allocated:
                ahead = min(PREALLOC_BYTES, self.pack_bytes - w.allocated)
                grow = max(ahead, w.end - w.allocated)
                _preallocate(w.file.fd, w.allocated, grow)
                w.allocated += grow
            w.file.users += 1
            return w, off

    def _release(self, w: _Writer) -> None:
        """Under `_wlock`: stop appending to `w` (its flock goes with its last descriptor)."""
        if self._writer is w:
            self._writer = None
        if w.pid == os.getpid():
            w.file.retire()

    def _abandon(self, w: _Writer) -> None:
        with self._wlock:
            self._release(w)

    def _take_pack(self) -> _Writer:
        """A pack this process alone appends to: an unlocked one with room, else a new one."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        with self.env.begin() as txn:
            roomy = [
                (int.from_bytes(k, "big"), _PACK.unpack(v)[0])
                for k, v in txn.cursor(db=self._packs)
                if _PACK.unpack(v)[0] < self.pack_bytes // 2
            ]
        for pack, size in reversed(roomy[-4:]):
            w = self._adopt(pack, size)
            if w is not None:
                return w
        return self._new_pack()

    def _adopt(self, pack: int, size: int) -> _Writer | None:
        try:
            fd = os.open(self.path(pack), os.O_WRONLY | os.O_CLOEXEC)
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
        return _Writer(pack, fd, max(size, st.st_size))

    def _new_pack(self) -> _Writer:
        with self.env.begin(write=True) as txn:
            raw = txn.get(_NEXT_PACK_KEY, db=self._meta)
            pack = _U64.unpack(raw)[0] if raw else 1
            while True:
                try:
                    fd = os.open(
                        self.path(pack), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
                    )
                    break
                except FileExistsError:  # the counter went back (the index lost a write)
                    pack += 1
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            txn.put(_NEXT_PACK_KEY, _U64.pack(pack + 1), db=self._meta)
            txn.put(pack_id_key(pack), _PACK.pack(0, _now()), db=self._packs)
        return _Writer(pack, fd, 0)

    def close(self) -> None:
        with self._wlock:
            if self._writer is not None:
                self._release(self._writer)
        self._fds.close()

    # --- reading -----------------------------------------------------------------------------

    def locate(self, key: bytes) -> PackLoc | None:
        with self.env.begin() as txn:
            raw = txn.get(key, db=self._locs)
            if raw is None:
                return None
            loc = _loc(raw)
            pk = pack_id_key(loc.pack)
            praw = txn.get(pk, db=self._packs)
        if praw is None:
            return None
        now = _now()
        if now - _PACK.unpack(praw)[1] > TOUCH_EVERY_S:
            with self.env.begin(write=True) as txn:
                praw = txn.get(pk, db=self._packs)
                if praw is not None:
                    txn.put(pk, _PACK.pack(_PACK.unpack(praw)[0], now), db=self._packs)
        return loc

    def get(self, key: bytes) -> bytes | None:
        """A chunk's cached bytes, checked block by block; None if not cached, or no longer
        sound (then its entry is dropped)."""
        loc = self.locate(key)
        if loc is None:
            return None
        try:
            data = self.pread(loc.pack, loc.length, loc.offset)
        except FileNotFoundError:
            return None
        if len(data) == loc.length and blocks_match(data, 0, loc.sums):
            return data
        with self.env.begin(write=True) as txn:
            raw = txn.get(key, db=self._locs)
            if raw is not None and _loc(raw)[:2] == loc[:2]:
                self.forget(txn, key)
        return None

    def pread(self, pack: int, size: int, offset: int) -> bytes:
        """Bytes of a pack through one shared descriptor per pack; `PackGone` once the pack
        was dropped (by this process, or by another one, seen within `_DROP_CHECK_S`)."""
        self._check_drops()
        return self._fds.pread(pack, size, offset)

    def _check_drops(self) -> None:
        now = time.monotonic()
        if now - self._checked < _DROP_CHECK_S:
            return
        self._checked = now
        with self.env.begin() as txn:
            raw = txn.get(_DROPS_KEY, db=self._meta)
            drops = _U64.unpack(raw)[0] if raw else 0
            if drops == self._drops_seen:
                return
            gone = [p for p in self._fds.held() if txn.get(pack_id_key(p), db=self._packs) is None]
        self._drops_seen = drops
        self._forget_packs(gone)

    def _forget_packs(self, packs: list[int]) -> None:
        with self._lock:
            self._dropped.update(packs)
        for p in packs:
            self._fds.drop(p)

    # --- dropping ----------------------------------------------------------------------------

    def forget(self, txn: lmdb.Transaction, key: bytes) -> bool:
        """Drop one chunk's entry (found damaged, or deleted); its bytes stay dead in the pack
        until the pack goes."""
        raw = txn.get(key, db=self._locs)
        if raw is None:
            return False
        txn.delete(key, db=self._locs)
        txn.delete(pack_id_key(_LOC.unpack_from(raw)[0]), key, db=self._members)
        return True

    def keys_under(self, txn: lmdb.Transaction, prefix: bytes) -> list[bytes]:
        cur = txn.cursor(db=self._locs)
        out = []
        if cur.set_range(prefix):
            for k in cur.iternext(values=False):
                if not k.startswith(prefix):
                    break
                out.append(bytes(k))
        return out

    def claim(self, pack_key: bytes) -> int | None:
        """A locked descriptor of a pack no writer holds (so it may be dropped), -1 when its
        file is already gone, None when a writer holds it."""
        pack = int.from_bytes(pack_key, "big")
        w = self._writer
        if w is not None and w.pack == pack and w.pid == os.getpid():
            return None
        try:
            fd = os.open(self.path(pack), os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return -1
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def drop(self, txn: lmdb.Transaction, pack_key: bytes) -> int:
        """Delete a claimed pack's record and every entry in it; the caller unlinks the file
        (`unlink_dropped`) once the transaction committed. Returns the bytes freed."""
        raw = txn.get(pack_key, db=self._packs)
        if raw is None:
            return 0
        pack = int.from_bytes(pack_key, "big")
        cur = txn.cursor(db=self._members)
        keys = list(cur.iternext_dup(values=True)) if cur.set_key(pack_key) else []
        for k in keys:
            loc = txn.get(k, db=self._locs)
            if loc is not None and _LOC.unpack_from(loc)[0] == pack:
                txn.delete(k, db=self._locs)
        txn.delete(pack_key, db=self._members)
        txn.delete(pack_key, db=self._packs)
        size = _PACK.unpack(raw)[0]
        self._add_used(txn, -size)
        raw = txn.get(_DROPS_KEY, db=self._meta)
        txn.put(_DROPS_KEY, _U64.pack((_U64.unpack(raw)[0] if raw else 0) + 1), db=self._meta)
        return size

    def unlink_dropped(self, claimed: dict[bytes, int]) -> None:
        for pack_key, fd in claimed.items():
            pack = int.from_bytes(pack_key, "big")
            self.path(pack).unlink(missing_ok=True)
            if fd >= 0:
                os.close(fd)
        self._forget_packs([int.from_bytes(k, "big") for k in claimed])
