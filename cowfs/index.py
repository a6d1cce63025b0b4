"""The node-local LMDB index: a cache of the object store that can always be rebuilt.

Nothing here is the truth. Delete the folder and cowfs refetches what it needs from the store:
the worst that happens is slower reads and a `put` that re-reads files it could have skipped.
So LMDB runs with sync off, trading durability (not needed) for speed.

Databases:
- `blobs`: object key -> plain bytes of tree nodes and commit records. Chunks of remote stores
  are files under `files/chunks/…` instead. Both count against one size cap, enforced by
  evicting the least recently used.
- `atime`: object key -> (size, last use), the bookkeeping for that eviction.
- `present`: object key -> when it was seen in the store, so `put` skips uploads it knows exist.
- `stat`: local file path -> (size, mtime, inode, ctime, entry), git's index for `put`.
- `doubt`: object key -> when a read found it damaged or missing; such an object is uploaded
  again by the next put of its bytes, and never referenced by a new commit until then.
"""

from __future__ import annotations

import os
import struct
import sys
import threading
import time
from pathlib import Path

import lmdb

from cowfs import layout
from cowfs.errors import CowfsError, UsageError

_ATIME = struct.Struct("<QQ")
#: A key seen in the store is trusted this long before `put` asks the store again. A garbage
#: collector must keep unreferenced objects for longer than this (see docs/architecture.md).
PRESENT_TTL_S = 24 * 3600
#: Refreshing a blob's last-use time costs a write transaction; do it at most this often.
_TOUCH_EVERY_S = 300
DEFAULT_CACHE_BYTES = 8 << 30
#: Blobs under this key prefix are kept as files next to the LMDB environment.
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
                max_dbs=8,
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
        self._files = self.path / "files"
        #: Chunk folders made (or found) by this process: a `mkdir` per cached chunk was 3% of
        #: a cold read's CPU. At most one per chunk-key prefix (4,096).
        self._dirs: set[Path] = set()
        self._lock = threading.Lock()
        self._evicting = False
        self._warned = False

    def close(self) -> None:
        self.env.close()

    # --- blobs -------------------------------------------------------------------------------

    def _file(self, key: str) -> Path | None:
        """Where a large blob (a chunk) lives: plain files read with the kernel's read-ahead,
        instead of LMDB pages faulted in one by one once the page cache has been dropped."""
        return self._files / key if key.startswith(_FILE_PREFIX) else None

    def chunk_file(self, key: str) -> Path | None:
        """The cached plain file of chunk `key`, if the cache holds one (for sub-chunk reads:
        `cowfs.chunkfiles`); it may be evicted at any moment after."""
        path = self._file(key)
        return path if path is not None and path.is_file() else None

    def get_blob(self, key: str) -> bytes | None:
        k = key.encode()
        path = self._file(key)
        with self.env.begin(buffers=False) as txn:
            raw = txn.get(k, db=self._atime)
            data = txn.get(k, db=self._blobs) if path is None else None
        if path is not None:
            if raw is None:
                return None
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                return None
        if data is None:
            return None
        now = int(time.time())
        if raw is not None and now - _ATIME.unpack(raw)[1] > _TOUCH_EVERY_S:
            with self.env.begin(write=True) as txn:
                txn.put(k, _ATIME.pack(len(data), now), db=self._atime)
        return data

    def put_blob(self, key: str, data: bytes) -> None:
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
                            struct.pack("<Q", max(self._total(txn) - size, 0)),
                            db=self._meta,
                        )
                        txn.delete(k, db=self._blobs)
                        path = self._file(k.decode())
                        if path is not None:
                            path.unlink(missing_ok=True)
                        gone += 1
                    txn.delete(k, db=db)
        return gone

    def _put_blob(self, key: str, data: bytes) -> None:
        k = key.encode()
        size = len(data)
        path = self._file(key)
        if path is not None:
            if path.parent not in self._dirs:
                path.parent.mkdir(parents=True, exist_ok=True)
                self._dirs.add(path.parent)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            try:
                tmp.write_bytes(data)
            except FileNotFoundError:  # the folder was removed since: make it again
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp.write_bytes(data)
            os.replace(tmp, path)
        with self.env.begin(write=True) as txn:
            total = self._total(txn)
            if txn.get(k, db=self._atime) is None:
                total += size
                txn.put(b"cached_bytes", struct.pack("<Q", total), db=self._meta)
            if path is None:
                txn.put(k, data, db=self._blobs)
            txn.put(k, _ATIME.pack(size, int(time.time())), db=self._atime)
        if total > self.cache_bytes:
            self._evict()

    def _total(self, txn: lmdb.Transaction) -> int:
        raw = txn.get(b"cached_bytes", db=self._meta)
        return struct.unpack("<Q", raw)[0] if raw else 0

    def cached_bytes(self) -> int:
        with self.env.begin() as txn:
            return self._total(txn)

    def _evict(self) -> None:
        """Drop the least recently used blobs until the cache is at 90% of its cap."""
        with self._lock:
            if self._evicting:
                return
            self._evicting = True
        try:
            with self.env.begin(write=True) as txn:
                total = self._total(txn)
                target = int(self.cache_bytes * 0.9)
                if total <= self.cache_bytes:
                    return
                rows = [
                    (_ATIME.unpack(v)[1], _ATIME.unpack(v)[0], bytes(k))
                    for k, v in txn.cursor(db=self._atime)
                ]
                rows.sort()
                for _, size, k in rows:
                    if total <= target:
                        break
                    path = self._file(k.decode())
                    if path is not None:
                        path.unlink(missing_ok=True)
                    txn.delete(k, db=self._blobs)
                    txn.delete(k, db=self._atime)
                    total -= size
                txn.put(b"cached_bytes", struct.pack("<Q", max(total, 0)), db=self._meta)
        finally:
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
