"""The node-local LMDB index: a cache of the object store that can always be rebuilt.

Nothing here is the truth. Delete the folder and cowfs refetches what it needs from the store:
the worst that happens is slower reads and a `put` that re-reads files it could have skipped.
So LMDB runs with sync off, trading durability (not needed) for speed.

Databases:
- `blobs`: object key -> plain bytes of tree nodes and commit records. Chunks of remote stores
  are appended to pack files under `packs/` instead (`cowfs.packcache`: its databases `packed`,
  `packs` and `pack_members`). Both count against one size cap, enforced by evicting the least
  recently used blobs and whole packs.
- `atime`: blob key -> (size, last use), the bookkeeping for that eviction.
- `present`: object key -> when it was seen in the store, so `put` skips uploads it knows exist.
- `stat`: local file path -> (size, mtime, inode, ctime, entry), git's index for `put`.
- `doubt`: object key -> when a read found it damaged or missing; such an object is uploaded
  again by the next put of its bytes, and never referenced by a new commit until then.
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import threading
import time
from pathlib import Path

import lmdb

from cowfs import layout
from cowfs.errors import CowfsError, UsageError
from cowfs.packcache import PackCache, lru_order, pack_limit
from cowfs.packformat import PackLoc

_ATIME = struct.Struct("<QQ")
#: A key seen in the store is trusted this long before `put` asks the store again. A garbage
#: collector must keep unreferenced objects for longer than this (see docs/architecture.md).
PRESENT_TTL_S = 24 * 3600
#: Refreshing a blob's last-use time costs a write transaction; do it at most this often.
_TOUCH_EVERY_S = 300
DEFAULT_CACHE_BYTES = 8 << 30
#: Blobs under this key prefix (chunks) are appended to pack files (`cowfs.packcache`).
_FILE_PREFIX = layout.CHUNKS


def default_cache_bytes() -> int:
    raw = os.environ.get("COWFS_CACHE_SIZE")
    if not raw:
        return DEFAULT_CACHE_BYTES
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    given = raw
    raw = raw.strip().upper().rstrip("B").rstrip("I")
    try:
        if raw and raw[-1] in units:
            return int(float(raw[:-1]) * units[raw[-1]])
        return int(raw)
    except ValueError:
        raise UsageError(f"COWFS_CACHE_SIZE={given!r} is not a size: use e.g. 8G or 500M") from None


class Index:
    def __init__(self, path: str | os.PathLike[str], cache_bytes: int | None = None) -> None:
        self.path = Path(path)
        self.cache_bytes = cache_bytes if cache_bytes is not None else default_cache_bytes()
        map_size = max(1 << 30, self.cache_bytes * 2 + (1 << 30))
        try:
            # Private: remote stores' chunks are cached here in the clear.
            self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.env = lmdb.open(
                str(self.path),
                map_size=map_size,
                max_dbs=12,
                sync=False,
                metasync=False,
                readahead=False,
                max_readers=512,
            )
        except (OSError, lmdb.Error) as e:
            raise CowfsError(
                f"cannot open the local cache at {self.path}: {e}; "
                "point COWFS_CACHE_DIR at a writable folder"
            ) from None
        self._blobs = self.env.open_db(b"blobs")
        self._atime = self.env.open_db(b"atime")
        self._present = self.env.open_db(b"present")
        self._stat = self.env.open_db(b"stat")
        self._meta = self.env.open_db(b"meta")
        self._doubt = self.env.open_db(b"doubt")
        self.packs = PackCache(self.env, self.path / "packs", pack_limit(self.cache_bytes))
        self._lock = threading.Lock()
        self._evicting = False
        self._warned = False
        self._drop_old_chunk_files()

    def close(self) -> None:
        self.packs.close()
        self.env.close()

    # --- blobs -------------------------------------------------------------------------------

    def _drop_old_chunk_files(self) -> None:
        """The cache before pack files kept one file per chunk under `files/`: its entries
        are dropped from the accounting and its files removed, once (a cache, so nothing is
        lost but a refetch). Renamed first, so two processes opening at once never race."""
        old = self.path / "files"
        if not old.exists():
            return
        p = _FILE_PREFIX.encode()
        with self.env.begin(write=True) as txn:
            cur = txn.cursor(db=self._atime)
            rows = []
            if cur.set_range(p):
                for k, v in cur:
                    if not bytes(k).startswith(p):
                        break
                    rows.append((bytes(k), _ATIME.unpack(v)[0]))
            for k, _ in rows:
                txn.delete(k, db=self._atime)
            left = max(self._blob_bytes(txn) - sum(n for _, n in rows), 0)
            txn.put(b"cached_bytes", struct.pack("<Q", left), db=self._meta)
        gone = self.path / f"files.old.{os.getpid()}.{threading.get_ident()}"
        try:
            old.rename(gone)
        except OSError:
            return
        shutil.rmtree(gone, ignore_errors=True)

    def chunk_location(self, key: str) -> PackLoc | None:
        """Where chunk `key`'s plain bytes lie in a pack, with the block sums every read of
        them is checked against (sub-chunk reads, `cowfs.chunkfiles`); the pack may be dropped
        at any moment after."""
        if not key.startswith(_FILE_PREFIX):
            return None
        return self.packs.locate(key.encode())

    def get_blob(self, key: str) -> bytes | None:
        """A cached blob. A chunk comes back checked against the block sums its entry took
        when it entered (the index has no sync, so its bytes may be torn or lost since: then
        it is a miss); other blobs come back as written, for the caller to check."""
        k = key.encode()
        if key.startswith(_FILE_PREFIX):
            return self.packs.get(k)
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(k, db=self._atime)
            data = txn.get(k, db=self._blobs)
        if data is None:
            return None
        now = int(time.time())
        if raw is not None and now - _ATIME.unpack(raw)[1] > _TOUCH_EVERY_S:
            with self.env.begin(write=True) as txn:
                txn.put(k, _ATIME.pack(len(data), now), db=self._atime)
        return data

    def put_blob(self, key: str, data: bytes | memoryview) -> None:
        """Cache a blob if there is room; a cache that cannot be written only costs speed.

        A cap of 0 turns caching off: data read once, as a stream, then costs no disk writes
        (on a 2-core machine, writing the cache is a third of a cold 1 GiB read over S3).
        """
        if self.cache_bytes <= 0:
            return
        try:
            self._put_blob(key, data)
        except (OSError, lmdb.Error) as e:
            if not self._warned:
                self._warned = True
                print(f"cowfs: warning: not caching in {self.path}: {e}", file=sys.stderr)

    def forget_blob(self, key: str) -> None:
        """Drop one cached blob (found damaged, or its object was deleted)."""
        self.forget_prefix(key, exact=True)

    def forget_prefix(self, prefix: str, exact: bool = False) -> int:
        """Drop every cached blob and `present` entry under `prefix` (what a delete removed:
        cached records are treated as immutable, so a delete must purge them). Returns how
        many blobs went."""
        p = prefix.encode()
        gone = 0
        with self._lock, self.env.begin(write=True) as txn:
            chunks = [p] if exact else self.packs.keys_under(txn, p)
            gone += sum(self.packs.forget(txn, k) for k in chunks)
            for db in (self._atime, self._present):
                cur = txn.cursor(db=db)
                keys = []
                if cur.set_range(p):
                    for k in cur.iternext(values=False):
                        if not k.startswith(p) or (exact and k != p):
                            break
                        keys.append(bytes(k))
                for k in keys:
                    if db is self._atime:
                        raw = txn.get(k, db=self._atime)
                        size = _ATIME.unpack(raw)[0] if raw else 0
                        txn.put(
                            b"cached_bytes",
                            struct.pack("<Q", max(self._blob_bytes(txn) - size, 0)),
                            db=self._meta,
                        )
                        txn.delete(k, db=self._blobs)
                        gone += 1
                    txn.delete(k, db=db)
        return gone

    def _put_blob(self, key: str, data: bytes | memoryview) -> None:
        k = key.encode()
        if key.startswith(_FILE_PREFIX):
            self.packs.put(k, data)
            with self.env.begin() as txn:
                total = self._total(txn)
        else:
            with self.env.begin(write=True) as txn:
                blobs = self._blob_bytes(txn)
                if txn.get(k, db=self._atime) is None:
                    blobs += len(data)
                    txn.put(b"cached_bytes", struct.pack("<Q", blobs), db=self._meta)
                txn.put(k, data, db=self._blobs)
                txn.put(k, _ATIME.pack(len(data), int(time.time())), db=self._atime)
                total = blobs + self.packs.used(txn)
        if total > self.cache_bytes:
            self._evict()

    def _blob_bytes(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"cached_bytes", db=self._meta)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def _total(self, txn: lmdb.Transaction) -> int:
        return self._blob_bytes(txn) + self.packs.used(txn)

    def cached_bytes(self) -> int:
        """Bytes the cache holds on disk: LMDB blobs and whole pack files (dead bytes in a
        pack, of chunks forgotten one by one, count until the pack goes)."""
        with self.env.begin() as txn:
            return self._total(txn)

    def _evict(self) -> None:
        """Drop the least recently used blobs and whole packs until the cache is at 90% of its
        cap. Packs a writer (of any process) holds are skipped."""
        with self._lock:
            if self._evicting:
                return
            self._evicting = True
        claimed: dict[bytes, int] = {}
        committed = False
        try:
            with self.env.begin(write=True) as txn:
                blobs, packs = self._blob_bytes(txn), self.packs.used(txn)
                if blobs + packs <= self.cache_bytes:
                    return
                target = int(self.cache_bytes * 0.9)
                rows = [
                    (_ATIME.unpack(v)[1], 0, _ATIME.unpack(v)[0], bytes(k))
                    for k, v in txn.cursor(db=self._atime)
                ]
                for _, kind, size, k in lru_order(rows + self.packs.rows(txn)):
                    if blobs + packs <= target:
                        break
                    if kind == 0:
                        txn.delete(k, db=self._blobs)
                        txn.delete(k, db=self._atime)
                        blobs -= size
                        continue
                    fd = self.packs.claim(k)
                    if fd is None:
                        continue
                    claimed[k] = fd
                    packs -= self.packs.drop(txn, k)
                txn.put(b"cached_bytes", struct.pack("<Q", max(blobs, 0)), db=self._meta)
            committed = True
        finally:
            if committed:
                self.packs.unlink_dropped(claimed)
            else:
                for fd in claimed.values():
                    if fd >= 0:
                        os.close(fd)
            self._evicting = False

    # --- objects known to be in the store ---------------------------------------------------

    def is_present(self, key: str) -> bool:
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self._present)
        return raw is not None and time.time() - struct.unpack("<Q", raw)[0] < PRESENT_TTL_S

    def mark_present(self, keys: list[str]) -> None:
        if not keys:
            return
        now = struct.pack("<Q", int(time.time()))
        with self.env.begin(write=True) as txn:
            for k in keys:
                txn.put(k.encode(), now, db=self._present)

    def forget_present(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self._present)

    # --- objects this node found damaged or missing -----------------------------------------

    def doubt(self, key: str) -> None:
        """Remember that a read of `key` failed its check (or found nothing): it is no longer
        trusted as present, the next writer of its bytes uploads it again, and no commit is
        published that references it until then."""
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self._present)
            txn.put(key.encode(), struct.pack("<Q", int(time.time())), db=self._doubt)

    def is_doubted(self, key: str) -> bool:
        with self.env.begin() as txn:
            return txn.get(key.encode(), db=self._doubt) is not None

    def doubted(self, keys: list[str]) -> set[str]:
        with self.env.begin() as txn:
            if txn.stat(self._doubt)["entries"] == 0:
                return set()
            return {k for k in keys if txn.get(k.encode(), db=self._doubt) is not None}

    def check_keys(self, keys: list[str]) -> tuple[set[str], set[str]]:
        """(doubted, not known present) among `keys`, in one read transaction."""
        now = time.time()
        doubted: set[str] = set()
        absent: set[str] = set()
        with self.env.begin() as txn:
            any_doubt = txn.stat(self._doubt)["entries"] > 0
            for k in keys:
                b = k.encode()
                if any_doubt and txn.get(b, db=self._doubt) is not None:
                    doubted.add(k)
                raw = txn.get(b, db=self._present)
                if raw is None or now - struct.unpack("<Q", raw)[0] >= PRESENT_TTL_S:
                    absent.add(k)
        return doubted, absent

    def any_doubts(self) -> bool:
        with self.env.begin() as txn:
            return txn.stat(self._doubt)["entries"] > 0

    def clear_doubt(self, key: str) -> None:
        with self.env.begin(write=True) as txn:
            txn.delete(key.encode(), db=self._doubt)

    # --- put's stat cache -------------------------------------------------------------------

    def get_stat(self, key: str) -> bytes | None:
        with self.env.begin() as txn:
            return txn.get(key.encode(), db=self._stat)

    def get_stats(self, keys: list[str]) -> list[bytes | None]:
        with self.env.begin() as txn:
            return [txn.get(k.encode(), db=self._stat) for k in keys]

    def put_stats(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        with self.env.begin(write=True) as txn:
            for k, v in items:
                txn.put(k.encode(), v, db=self._stat)
