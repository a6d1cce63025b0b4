"""An object store in a local folder: one file per key.

Writes go to a temporary file in the same directory and are renamed into place, so a reader or a
crash never sees half an object. `swap` takes an exclusive `flock` on a lock file for the key,
compares, and renames: atomic against every other cowfs process on the machine.

Data is not fsynced object by object (that halves ingest speed); `sync()` flushes the whole
filesystem once with `syncfs(2)`, and `swap` does so before a ref moves whenever this process
has put objects since, so a ref never names an object a crash could lose. The ref itself is
fsynced, renamed into place, and its directory fsynced.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import xxhash

from cowfs.config import StoreSettings
from cowfs.errors import ObjectMissing, StoreUnavailable
from cowfs.objectstore.base import ObjectStore, Versioned

_TMP_PREFIX = ".tmp-"
_LOCK_DIR = ".locks"

#: The C library this process already has loaded (`find_library` would run `ldconfig` in a
#: subprocess at every start of the command line).
_libc = ctypes.CDLL(None, use_errno=True)
_SYNC_FILE_RANGE_WRITE = 2
_start_writeback = getattr(_libc, "sync_file_range", None)  # Linux only
if _start_writeback is not None:
    _start_writeback.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]


def _token(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


class LocalStore(ObjectStore):
    is_local = True

    def __init__(
        self,
        root: str | os.PathLike[str],
        create: bool = False,
        settings: StoreSettings | None = None,
    ) -> None:
        settings = settings or StoreSettings()
        #: Private by default (issue 8, item 16): whoever can read the folder reads every chunk.
        self._file_mode = settings.file_mode
        self._dir_mode = settings.dir_mode
        self.root = Path(root).expanduser().absolute()
        self.url = f"file://{self.root}"
        #: Objects were put since the last sync: the next ref swap must flush them first.
        self._dirty = False
        if create and not self.root.exists():
            self.root.parent.mkdir(parents=True, exist_ok=True)
            self.root.mkdir(mode=self._dir_mode, exist_ok=True)
        if not self.root.is_dir():
            raise StoreUnavailable(
                f"no store at {self.root}: run `cowfs init` or pass --store/COWFS_STORE"
            )

    def _path(self, key: str) -> Path:
        return self.root / key

    def get(self, key: str) -> bytes:
        try:
            with open(self._path(key), "rb") as f:
                return f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"object {key} is missing from {self.url}") from None

    def get_parts(self, key: str, head: int) -> tuple[bytes, bytes | memoryview]:
        try:
            with open(self._path(key), "rb") as f:
                return f.read(head), f.read()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectMissing(f"object {key} is missing from {self.url}") from None

    def put(self, key: str, data: bytes) -> None:
        self._write(key, (data,), durable=False)
        self._dirty = True

    def put_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        self._write(key, parts, durable=False)
        self._dirty = True

    def _write(self, key: str, parts: Sequence[bytes | memoryview], durable: bool) -> None:
        path = self._path(key)
        tmp = path.parent / f"{_TMP_PREFIX}{path.name}.{os.getpid()}.{id(parts):x}"
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        try:
            fd = os.open(tmp, flags, self._file_mode)
        except FileNotFoundError:
            self._make_dirs(path.parent)
            fd = os.open(tmp, flags, self._file_mode)
        try:
            _write_all(fd, parts)
        except OSError as e:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if e.errno == errno.ENOSPC:
                raise StoreUnavailable(f"store {self.root} is full: free space and retry") from e
            raise StoreUnavailable(f"cannot write {key} to {self.root}: {e.strerror}") from e
        if durable:
            os.fsync(fd)
        elif _start_writeback is not None:
            # Start writing the object to disk now, without waiting: by the `syncfs` before
            # the commit's ref moves, most of a large put is on disk already instead of all
            # of it being written then (1.45 s of a 4.5 s put of 1 GiB here).
            _start_writeback(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)
        os.close(fd)
        os.replace(tmp, path)

    def _make_dirs(self, path: Path) -> None:
        missing = []
        while not path.exists() and path != self.root:
            missing.append(path)
            path = path.parent
        for d in reversed(missing):
            try:
                d.mkdir(mode=self._dir_mode)
            except FileExistsError:
                pass

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        base, _, _ = prefix.rpartition("/")
        top = self.root / base if base else self.root
        found: list[tuple[str, int]] = []
        for dirpath, dirnames, filenames in os.walk(top):
            rel = os.path.relpath(dirpath, self.root)
            rel = "" if rel == "." else rel + "/"
            dirnames[:] = [
                d
                for d in dirnames
                if d != _LOCK_DIR and (rel + d + "/").startswith(prefix[: len(rel + d + "/")])
            ]
            for name in filenames:
                key = rel + name
                if name.startswith(_TMP_PREFIX) or not key.startswith(prefix):
                    continue
                try:
                    found.append((key, os.stat(os.path.join(dirpath, name)).st_size))
                except FileNotFoundError:
                    continue
        found.sort()
        yield from found

    def get_versioned(self, key: str) -> Versioned | None:
        try:
            data = self.get(key)
        except ObjectMissing:
            return None
        return Versioned(data, _token(data))

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        lock_dir = self.root / _LOCK_DIR
        lock_dir.mkdir(mode=self._dir_mode, exist_ok=True)
        lock_path = lock_dir / xxhash.xxh3_64_hexdigest(key.encode())
        with open(os.open(lock_path, os.O_RDWR | os.O_CREAT, self._file_mode), "r+b") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            current = self.get_versioned(key)
            if (current.token if current else None) != expected:
                return False
            if self._dirty:
                self.sync()
            self._write(key, (data,), durable=True)
            self._fsync_dir(self._path(key).parent)
            return True

    def sync(self) -> None:
        self._dirty = False
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if _libc.syncfs(fd) != 0:
                err = ctypes.get_errno()
                raise StoreUnavailable(f"syncfs({self.root}) failed: {os.strerror(err)}")
        finally:
            os.close(fd)

    @staticmethod
    def _fsync_dir(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(
    fd: int,
    parts: Sequence[bytes | memoryview],
    writev: Callable[[int, list[memoryview]], int] = os.writev,
) -> None:
    """Write every part in order with `writev`, going on after a short write."""
    views = [v for v in (memoryview(p).cast("B") for p in parts) if v.nbytes]
    while views:
        n = writev(fd, views)
        while n:
            if n >= views[0].nbytes:
                n -= views.pop(0).nbytes
            else:
                views[0] = views[0][n:]
                n = 0
