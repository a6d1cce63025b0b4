"""`cowfs://` for fsspec: pandas, PyArrow, Hugging Face `datasets`, Dask, DuckDB read the lake.

Paths are `cowfs://<repo>@<branch|commit>/<path>` (`cowfs://<repo>/<path>` means `@main`). The
one storage option that matters is `store` (a folder or `s3://bucket/prefix`; by default the
CLI's `COWFS_STORE` or its default store). fsspec finds this class by the `fsspec.specs` entry
point, so `fsspec.open("cowfs://…")` needs no import.

Writes go through `BranchWriter`. Inside `with fs.transaction:` every write to a branch lands in
one commit when the block ends (none if it raises); outside one, each call (`pipe`, `put`, `rm`,
`mv`, `cp`, closing a file opened `wb`) is its own commit. A commit, or an ancestor like `main^`,
is read-only: writing there raises `PermissionError`. Reads inside a transaction see the branch
as committed, not the transaction's own pending writes.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractBufferedFile

from cowfs.commits import Commit
from cowfs.entries import Entry
from cowfs.fsspec_parts import CowReadFile, CowTransaction, CowWriteFile, WriteBatch
from cowfs.fsspec_parts import os_errors as _os_errors
from cowfs.fsspec_read import PROTOCOL, CowReader
from cowfs.writer import BranchWriter

__all__ = ["PROTOCOL", "CowFileSystem"]


class CowFileSystem(CowReader):
    transaction_type = CowTransaction

    @_os_errors
    def _open(
        self,
        path: str,
        mode: str = "rb",
        block_size: int | None = None,
        autocommit: bool = True,
        cache_options: dict | None = None,
        **kwargs: Any,
    ) -> AbstractBufferedFile:
        path = self._strip_protocol(path)
        if mode == "rb":
            first, commit, e = self._lookup(path)
            if e.is_dir:
                raise IsADirectoryError(errno.EISDIR, f"{path} is a directory")
            return CowReadFile(self, path, e, self._info(first, commit, e), cache_options, kwargs)
        if mode not in ("wb", "xb"):
            raise NotImplementedError(f"cowfs opens files 'rb', 'wb' or 'xb', not {mode!r}")
        if mode == "xb" and self.exists(path):
            raise FileExistsError(errno.EEXIST, f"{path} exists")
        _, ref = self._split(path)
        if autocommit and not self._intrans and getattr(self._local, "batch", None) is None:
            batch = WriteBatch(self)
            own: WriteBatch | None = batch
        else:
            batch, own = self._current_batch(), None
        sink = batch.writer(ref).open(ref.path)
        return CowWriteFile(self, path, sink, own)

    # --- writing -------------------------------------------------------------------------------

    def _current_batch(self) -> WriteBatch:
        if self._intrans:
            return self.transaction.batch
        batch = getattr(self._local, "batch", None)
        assert batch is not None
        return batch

    @contextmanager
    def _writing(self) -> Iterator[WriteBatch]:
        """The batch a write joins: the transaction's, the enclosing call's (`mv` is `copy`
        then `rm`), or a new one committed when this call returns."""
        if self._intrans or getattr(self._local, "batch", None) is not None:
            yield self._current_batch()
            return
        batch = self._local.batch = WriteBatch(self)
        try:
            yield batch
        except BaseException:
            batch.abort()
            raise
        else:
            batch.commit()
        finally:
            self._local.batch = None

    def _writer(self, path: str) -> tuple[BranchWriter, str]:
        _, ref = self._split(path)
        return self._current_batch().writer(ref), ref.path

    @_os_errors
    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        with self._writing():
            if mode == "create" and self.exists(path):
                raise FileExistsError(errno.EEXIST, f"{path} exists")
            w, key = self._writer(path)
            w.put_bytes(key, value)

    @_os_errors
    def put_file(
        self,
        lpath: Any,
        rpath: str,
        callback: Any = DEFAULT_CALLBACK,
        mode: str = "overwrite",
        **kw: Any,
    ) -> None:
        if os.path.isdir(lpath):
            self.makedirs(rpath, exist_ok=True)
            return
        with self._writing():
            if mode == "create" and self.exists(rpath):
                raise FileExistsError(errno.EEXIST, f"{rpath} exists")
            w, key = self._writer(rpath)
            size = os.path.getsize(lpath)
            callback.set_size(size)
            w.put_file(key, lpath)
            callback.relative_update(size)

    @_os_errors
    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        """A copy moves no bytes: the new entry names the same chunks."""
        _, _, e = self._lookup(path1)
        with self._writing():
            w, key = self._writer(path2)
            if e.is_dir:
                w.mkdir(key, e.mode)
            else:
                w.put_entry(key, e)

    @_os_errors
    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        if self.exists(path):
            raise FileExistsError(errno.EEXIST, f"{path} exists")
        if not create_parents and not self.isdir(self._parent(path)):
            raise FileNotFoundError(errno.ENOENT, f"{self._parent(path)} is not a directory")
        with self._writing():
            w, key = self._writer(path)
            w.mkdir(key)

    @_os_errors
    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        if self.isdir(path):
            if not exist_ok:
                raise FileExistsError(errno.EEXIST, f"{path} exists")
            return
        self.mkdir(path)

    def _has_children(self, commit: Commit, e: Entry) -> bool:
        return next(iter(self.client.lake.list_dir(commit, e.path)), None) is not None

    @_os_errors
    def rmdir(self, path: str) -> None:
        first, commit, e = self._lookup(path)
        if not e.is_dir:
            raise NotADirectoryError(errno.ENOTDIR, f"{path} is not a directory")
        if self._has_children(commit, e):
            raise OSError(errno.ENOTEMPTY, f"{path} is not empty")
        self.rm_file(path)

    @_os_errors
    def rm_file(self, path: str) -> None:
        self._lookup(path)
        with self._writing():
            w, key = self._writer(path)
            w.delete(key)

    @_os_errors
    def rm(self, path: Any, recursive: bool = False, maxdepth: int | None = None) -> None:
        """Remove paths; a directory needs `recursive` unless it is empty. One commit."""
        with self._writing():
            paths = self.expand_path(path, recursive=recursive, maxdepth=maxdepth)
            gone: list[str] = []
            for p in paths:
                if any(p.startswith(g + "/") for g in gone):
                    continue
                first, commit, e = self._lookup(p)
                partial = not recursive or maxdepth is not None
                if e.is_dir and partial and self._has_children(commit, e):
                    if not recursive:
                        raise IsADirectoryError(
                            errno.EISDIR, f"{p} is a directory: use recursive=True"
                        )
                    continue
                w, key = self._writer(p)
                w.delete(key)
                gone.append(p)

    @_os_errors
    def touch(self, path: str, truncate: bool = True, **kwargs: Any) -> None:
        """An empty file. An existing one is kept as it is when `truncate=False`."""
        if not truncate and self.exists(path):
            return
        self.pipe_file(path, b"")

    @_os_errors
    def pipe(self, path: Any, value: bytes | None = None, **kwargs: Any) -> None:
        with self._writing():
            super().pipe(path, value, **kwargs)

    @_os_errors
    def put(self, lpath: Any, rpath: Any, recursive: bool = False, **kwargs: Any) -> None:
        with self._writing():
            super().put(lpath, rpath, recursive=recursive, **kwargs)

    @_os_errors
    def copy(self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any) -> None:
        with self._writing():
            super().copy(path1, path2, recursive=recursive, **kwargs)

    @_os_errors
    def mv(self, path1: Any, path2: Any, recursive: bool = False, **kwargs: Any) -> None:
        """Copy then remove, as one commit (a move between branches is one commit on each)."""
        with self._writing():
            super().mv(path1, path2, recursive=recursive, **kwargs)
