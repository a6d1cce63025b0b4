"""The node's chunk cache as a few large append-only pack files (log-structured).

One file per cached chunk cost a create, a write, a rename and later an unlink each: about 30%
of the mount's CPU in a cold read from S3 (ext4 inode allocation alone 7%, and slow soon after
many deletes on a journal-less ext4), and a descriptor per chunk for sub-chunk reads. Here a
chunk's plain bytes are appended to the writing process's current pack (`packs/<id>.pack`,
`pack_bytes` each, 64 MiB by default) and LMDB maps its key to (pack, offset, length).

- One writer per pack, whatever the processes sharing the folder (`cowfs.packwriter`), so
  bytes once written in a pack never change; what is kept where is `cowfs.packformat`.
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

import errno
import fcntl
import functools
import os
import threading
import time
from array import array
from pathlib import Path

import lmdb

from cowfs.openfiles import OpenFiles, open_for_blocks
from cowfs.packformat import (
    DROPS_KEY,
    PACK,
    PACK_BYTES_KEY,
    U64,
    PackLoc,
    block_sums,
    blocks_match,
    decode_loc,
    encode_loc,
    loc_pack,
    pack_id_key,
    pack_path,
)
from cowfs.packwriter import Appending, PackWriter

#: Pack files' size once full; smaller with a small cap (a sixteenth of it), so that dropping
#: whole packs can keep the cache under its cap.
PACK_BYTES = 64 << 20
MIN_PACK_BYTES = 64 << 10
#: Pack descriptors kept open for reads (one per pack, not per chunk).
OPEN_PACKS = 256
#: How often a reader looks whether another process dropped packs it holds open.
_DROP_CHECK_S = 1.0
#: A pack's last-use time is refreshed by a read at most this often (a write transaction).
TOUCH_EVERY_S = 300


def _now() -> int:
    return int(time.time())


class PackGone(FileNotFoundError):
    """The pack was dropped from the cache: its locations are no longer served."""


def pack_limit(cache_bytes: int) -> int:
    return max(MIN_PACK_BYTES, min(PACK_BYTES, cache_bytes // 16))


def lru_order(rows: list[tuple[int, int, int, bytes]]) -> list[tuple[int, int, int, bytes]]:
    """Eviction order over (last use, kind, size, id) rows: least recently used first, then by
    kind and id (a pack id's big-endian bytes order older packs first)."""
    return sorted(rows, key=lambda r: (r[0], r[1], r[3]))


def _open_pack(root: Path, dropped: set[int], lock: threading.Lock, pack: int) -> int:
    """A pack's descriptor for block reads; `PackGone` for a pack this process saw dropped."""
    path = pack_path(root, pack)
    with lock:
        if pack in dropped:
            raise PackGone(errno.ENOENT, "pack dropped", str(path))
    try:
        return open_for_blocks(path)
    except FileNotFoundError:
        raise PackGone(errno.ENOENT, "pack dropped", str(path)) from None


class PackCache:
    """Chunks appended to pack files, located through LMDB. Thread-safe."""

    def __init__(self, env: lmdb.Environment, root: Path, pack_bytes: int) -> None:
        self.env = env
        self.root = root
        self.pack_bytes = pack_bytes
        self._locs = env.open_db(b"packed")
        self._packs = env.open_db(b"packs")
        self._members = env.open_db(b"pack_members", dupsort=True)
        self._meta = env.open_db(b"meta")
        self._writer = PackWriter(env, root, pack_bytes, self._packs, self._meta)
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
        return pack_path(self.root, pack)

    # --- accounting --------------------------------------------------------------------------

    def used(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(PACK_BYTES_KEY, db=self._meta)
        return U64.unpack(raw)[0] if raw else 0

    def _add_used(self, txn: lmdb.Transaction, delta: int) -> None:
        txn.put(PACK_BYTES_KEY, U64.pack(max(self.used(txn) + delta, 0)), db=self._meta)

    def rows(self, txn: lmdb.Transaction) -> list[tuple[int, int, int, bytes]]:
        """(last use, 1, size, pack id key) of every pack, for `lru_order`."""
        out = []
        for k, v in txn.cursor(db=self._packs):
            size, last = PACK.unpack(v)
            out.append((last, 1, size, bytes(k)))
        return out

    # --- writing -----------------------------------------------------------------------------

    def put(self, key: bytes, data: bytes | memoryview) -> bool:
        """Append a chunk (verified bytes: its block sums are taken from them) and record where
        it lies; False when it was not recorded (the pack was dropped under this writer, or
        another writer recorded the key first)."""
        sums = block_sums(data)
        w, off = self._writer.append(data)
        with self.env.begin(write=True) as txn:
            raw = txn.get(w.key, db=self._packs)
            if raw is not None:
                return self._record(txn, w, key, off, len(data), raw, sums)
        # Dropped by an eviction since this writer took it (released outside the transaction:
        # a thread taking a new pack holds the writer's lock while it waits for LMDB's).
        self._writer.abandon(w)
        return False

    def _record(
        self,
        txn: lmdb.Transaction,
        w: Appending,
        key: bytes,
        off: int,
        n: int,
        raw: bytes,
        sums: array,
    ) -> bool:
        """In the put's transaction: the pack grows by what was written, whoever wins the key."""
        size, _ = PACK.unpack(raw)
        grown = max(size, off + n)
        txn.put(w.key, PACK.pack(grown, _now()), db=self._packs)
        self._add_used(txn, grown - size)
        if txn.get(key, db=self._locs) is not None:
            return False
        txn.put(key, encode_loc(w.pack, off, sums, n), db=self._locs)
        txn.put(w.key, key, db=self._members)
        return True

    def close(self) -> None:
        self._writer.close()
        self._fds.close()

    # --- reading -----------------------------------------------------------------------------

    def locate(self, key: bytes) -> PackLoc | None:
        with self.env.begin() as txn:
            raw = txn.get(key, db=self._locs)
            if raw is None:
                return None
            loc = decode_loc(raw)
            pk = pack_id_key(loc.pack)
            praw = txn.get(pk, db=self._packs)
        if praw is None:
            return None
        now = _now()
        if now - PACK.unpack(praw)[1] > TOUCH_EVERY_S:
            with self.env.begin(write=True) as txn:
                praw = txn.get(pk, db=self._packs)
                if praw is not None:
                    txn.put(pk, PACK.pack(PACK.unpack(praw)[0], now), db=self._packs)
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
            if raw is not None and decode_loc(raw)[:2] == loc[:2]:
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
            raw = txn.get(DROPS_KEY, db=self._meta)
            drops = U64.unpack(raw)[0] if raw else 0
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
        txn.delete(pack_id_key(loc_pack(raw)), key, db=self._members)
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
        if self._writer.holds(pack):
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
            if loc is not None and loc_pack(loc) == pack:
                txn.delete(k, db=self._locs)
        txn.delete(pack_key, db=self._members)
        txn.delete(pack_key, db=self._packs)
        size = PACK.unpack(raw)[0]
        self._add_used(txn, -size)
        raw = txn.get(DROPS_KEY, db=self._meta)
        txn.put(DROPS_KEY, U64.pack((U64.unpack(raw)[0] if raw else 0) + 1), db=self._meta)
        return size

    def unlink_dropped(self, claimed: dict[bytes, int]) -> None:
        for pack_key, fd in claimed.items():
            pack = int.from_bytes(pack_key, "big")
            self.path(pack).unlink(missing_ok=True)
            if fd >= 0:
                os.close(fd)
        self._forget_packs([int.from_bytes(k, "big") for k in claimed])
