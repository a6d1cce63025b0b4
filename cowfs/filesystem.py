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
import functools
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.transaction import Transaction
from fsspec.utils import stringify_path

from cowfs.api import DEFAULT_HEAD_TTL, Client, connect
from cowfs.commits import Commit
from cowfs.entries import Entry, EntryType
from cowfs.errors import (
    AlreadyExists,
    CowfsError,
    NameTooLong,
    NotFound,
    ObjectMissing,
    ReadOnly,
    UsageError,
)
from cowfs.export import write_file
from cowfs.names import normalize_path
from cowfs.refs import Ref, parse_ref
from cowfs.writer import BranchWriter, StreamSink

PROTOCOL = "cowfs"
_TYPES = {EntryType.FILE: "file", EntryType.DIR: "directory", EntryType.SYMLINK: "link"}


def _as_os_error(e: CowfsError) -> Exception:
    """The builtin exception fsspec callers expect for a cowfs error."""
    if isinstance(e, OSError):
        return e
    if isinstance(e, ObjectMissing):
        return OSError(errno.EIO, str(e))
    if isinstance(e, NotFound):
        return FileNotFoundError(errno.ENOENT, str(e))
    if isinstance(e, AlreadyExists):
        return FileExistsError(errno.EEXIST, str(e))
    if isinstance(e, NameTooLong):
        return OSError(errno.ENAMETOOLONG, str(e))
    if isinstance(e, UsageError):
        return ValueError(str(e))
    return OSError(e.errno, str(e))


def _os_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CowfsError as e:
            mapped = _as_os_error(e)
            if mapped is e:
                raise
            raise mapped from e

    return wrapper


class _Batch:
    """The writers of one transaction (or one autocommitted call): one per branch."""

    def __init__(self, fs: CowFileSystem) -> None:
        self.fs = fs
        self.writers: dict[tuple[str, str], BranchWriter] = {}

    def writer(self, ref: Ref) -> BranchWriter:
        if ref.back:
            raise ReadOnly(f"{replace(ref, has_path=False)} is an ancestor commit: read-only")
        key = (ref.repo, ref.rev)
        w = self.writers.get(key)
        if w is None:
            w = self.writers[key] = self.fs.client.writer(f"{ref.repo}@{ref.rev}", self.fs.message)
        return w

    def commit(self) -> list[Commit]:
        done: list[Commit] = []
        try:
            for w in self.writers.values():
                c = w.commit()
                if c is not None:
                    done.append(c)
        finally:
            self.abort()
        self.fs.last_commits = done
        return done

    def abort(self) -> None:
        for w in self.writers.values():
            w.abort()


class CowTransaction(Transaction):
    """One commit per branch written, landed when the block ends without an exception.

    Branches land one after another: a transaction over two branches is two commits, and if the
    second cannot land the first stays."""

    def __init__(self, fs: CowFileSystem, **kwargs: Any) -> None:
        super().__init__(fs, **kwargs)
        self.batch = _Batch(fs)

    def start(self) -> None:
        super().start()
        self.batch = _Batch(self.fs)

    def complete(self, commit: bool = True) -> None:
        batch = self.batch
        try:
            super().complete(commit)
        except BaseException:
            batch.abort()
            raise
        if commit:
            _os_errors(batch.commit)()
        else:
            batch.abort()


class CowFileSystem(AbstractFileSystem):
    protocol = PROTOCOL
    root_marker = ""
    transaction_type = CowTransaction

    def __init__(
        self,
        store: str | None = None,
        head_ttl: float = DEFAULT_HEAD_TTL,
        message: str = "",
        **kwargs: Any,
    ) -> None:
        """`head_ttl`: seconds a branch head is trusted before it is read again (this
        filesystem's own commits are seen at once). `message`: the message of its commits."""
        super().__init__(store=store, head_ttl=head_ttl, message=message, **kwargs)
        self.store = store
        self.head_ttl = head_ttl
        self.message = message
        self.last_commits: list[Commit] = []
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._local = threading.local()

    @property
    def client(self) -> Client:
        """The connection, opened on first use and again in a forked child (DataLoader
        workers), which must not share the parent's LMDB handle or HTTP connections."""
        c = self._client
        if c is None or c.pid != os.getpid():
            with self._client_lock:
                c = self._client
                if c is None or c.pid != os.getpid():
                    c = self._client = connect(self.store, head_ttl=self.head_ttl)
        return c

    def close(self) -> None:
        if self._client is not None and self._client.pid == os.getpid():
            self._client.close()
        self._client = None

    # --- paths ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
        path = path.strip("/")
        first, sep, rest = path.partition("/")
        if first and "@" not in first:
            first += "@main"
        return first + sep + rest

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _split(self, path: str) -> tuple[str, Ref]:
        """("repo@rev" as written, the ref with its path). The root "" is not a ref."""
        path = self._strip_protocol(path)
        first, _, rest = path.partition("/")
        if not first:
            raise FileNotFoundError(errno.ENOENT, "the root of cowfs:// lists repos only")
        ref = parse_ref(first, allow_path=False)
        return first, replace(ref, path=normalize_path(rest), has_path=True)

    def _lookup(self, path: str) -> tuple[str, Commit, Entry]:
        first, ref = self._split(path)
        commit, entry = self.client.entry(ref)
        return first, commit, entry

    def _info(self, first: str, commit: Commit, e: Entry) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": f"{first}/{e.path}" if e.path else first,
            "size": e.size,
            "type": _TYPES[e.type],
            "mode": e.st_mode,
            "mtime": e.mtime_ns / 1e9,
            "commit": commit.id,
        }
        if e.digest:
            out["digest"] = out["ETag"] = e.digest.hex()
        if e.target is not None:
            out["destination"] = e.target
        return out

    # --- reading -------------------------------------------------------------------------------

    @_os_errors
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        if not path:
            out = [
                {"name": f"{repo}@{branch}", "size": 0, "type": "directory"}
                for repo in self.client.repos()
                for branch in sorted(self.client.branches(repo))
            ]
        else:
            first, commit, top = self._lookup(path)
            if top.is_dir:
                children = self.client.lake.list_dir(commit, top.path)
                out = [self._info(first, commit, e) for e in children]
            else:
                out = [self._info(first, commit, top)]
        return out if detail else [o["name"] for o in out]

    @_os_errors
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        return self._info(*self._lookup(path))

    @_os_errors
    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One walk of one commit's tree, not a listing per directory."""
        path = self._strip_protocol(path)
        if not path:
            return super().find(path, maxdepth, withdirs, detail, **kwargs)
        try:
            first, commit, top = self._lookup(path)
        except FileNotFoundError:
            return {} if detail else []
        out: dict[str, dict[str, Any]] = {}
        if not top.is_dir:
            out[self._info(first, commit, top)["name"]] = self._info(first, commit, top)
        else:
            depth0 = top.path.count("/") + 1 if top.path else 0
            for e in self.client.lake.walk(commit, top.path):
                if e.path == top.path:
                    if withdirs and top.path:
                        out[path] = self._info(first, commit, e)
                    continue
                if maxdepth is not None and e.path.count("/") + 1 - depth0 > maxdepth:
                    continue
                if e.is_dir and not withdirs:
                    continue
                info = self._info(first, commit, e)
                out[info["name"]] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    @_os_errors
    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        _, _, e = self._lookup(path)
        return self._read(path, e, start, end)

    def _read(self, path: str, e: Entry, start: int | None, end: int | None) -> bytes:
        if e.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{path} is a directory")
        size = e.size
        start = 0 if start is None else (max(0, size + start) if start < 0 else start)
        end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        return self.client.read_entry(e, start, end) if end > start else b""

    @_os_errors
    def cat_ranges(
        self,
        paths: list[str],
        starts: int | list[int],
        ends: int | list[int],
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list:
        """Many ranges, each file looked up once however many ranges it has."""
        if not isinstance(starts, list):
            starts = [starts] * len(paths)
        if not isinstance(ends, list):
            ends = [ends] * len(paths)
        if len(starts) != len(paths) or len(ends) != len(paths):
            raise ValueError("cat_ranges needs as many starts and ends as paths")
        entries: dict[str, Entry] = {}
        out: list = []
        for p, s, e in zip(paths, starts, ends):
            try:
                if p not in entries:
                    entries[p] = self._lookup(p)[2]
                out.append(self._read(p, entries[p], s, e))
            except Exception as ex:
                if on_error != "return":
                    raise _as_os_error(ex) if isinstance(ex, CowfsError) else ex from None
                out.append(_as_os_error(ex) if isinstance(ex, CowfsError) else ex)
        return out

    @_os_errors
    def get_file(
        self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None, **kw
    ) -> None:
        _, _, e = self._lookup(rpath)
        if e.is_dir:
            os.makedirs(lpath, exist_ok=True)
            return
        callback.set_size(e.size)
        if outfile is not None or not isinstance(lpath, (str, os.PathLike)):
            f = outfile if outfile is not None else lpath
            for piece in self.client.reader.iter_file(e):
                f.write(piece)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
            write_file(self.client.reader, e, Path(lpath))
        callback.relative_update(e.size)

    @_os_errors
    def checksum(self, path: str) -> int:
        """The content digest (BLAKE3) as an int: equal content, equal checksum."""
        info = self.info(path)
        if "digest" in info:
            return int(info["digest"], 16)
        return super().checksum(path)

    @_os_errors
    def ukey(self, path: str) -> str:
        info = self.info(path)
        return info.get("digest") or super().ukey(path)

    @_os_errors
    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)

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
            batch = _Batch(self)
            own: _Batch | None = batch
        else:
            batch, own = self._current_batch(), None
        sink = batch.writer(ref).open(ref.path)
        return CowWriteFile(self, path, sink, own)

    # --- writing -------------------------------------------------------------------------------

    def _current_batch(self) -> _Batch:
        if self._intrans:
            return self.transaction.batch
        batch = getattr(self._local, "batch", None)
        assert batch is not None
        return batch

    @contextmanager
    def _writing(self) -> Iterator[_Batch]:
        """The batch a write joins: the transaction's, the enclosing call's (`mv` is `copy`
        then `rm`), or a new one committed when this call returns."""
        if self._intrans or getattr(self._local, "batch", None) is not None:
            yield self._current_batch()
            return
        batch = self._local.batch = _Batch(self)
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


class CowReadFile(AbstractBufferedFile):
    """A file pinned to the commit it was opened on. Reads go straight to the chunk reader
    (fsspec's own block cache is off by default: the reader already keeps whole chunks), so a
    range fetches only the chunks it touches; sequential reads fetch the next chunks ahead."""

    def __init__(
        self,
        fs: CowFileSystem,
        path: str,
        entry: Entry,
        info: dict[str, Any],
        cache_options: dict | None,
        kwargs: dict[str, Any],
    ) -> None:
        self.entry = entry
        self._next = 0
        super().__init__(
            fs,
            path,
            mode="rb",
            block_size=kwargs.pop("block_size", None) or 1 << 20,
            cache_type=kwargs.pop("cache_type", "none"),
            cache_options=cache_options,
            size=entry.size,
            **kwargs,
        )
        self._details = info

    def _fetch_range(self, start: int, end: int) -> bytes:
        reader = self.fs.client.reader
        ahead = 4 if start == self._next else 0
        data = reader.read(self.entry, start, max(0, end - start), readahead=ahead)
        self._next = start + len(data)
        return data


class CowWriteFile(AbstractBufferedFile):
    """Bytes streamed into a `BranchWriter` as they are written. With its own batch (outside a
    transaction) closing it is one commit; inside one, the transaction lands it. Leaving a
    `with` block by an exception lands nothing."""

    def __init__(self, fs: CowFileSystem, path: str, sink: StreamSink, own: _Batch | None) -> None:
        super().__init__(fs, path, mode="wb", block_size=4 << 20, autocommit=own is not None)
        self.sink = sink
        self.own = own

    def _initiate_upload(self) -> None:
        pass

    def _upload_chunk(self, final: bool = False) -> bool:
        with self.buffer.getbuffer() as view:
            self.sink.write(view)
        if final:
            self.sink.close()
            if self.own is not None:
                _os_errors(self.own.commit)()
        return True

    def commit(self) -> None:
        if not self.closed:
            self.close()

    def discard(self) -> None:
        self.sink.discard()
        if self.own is not None:
            self.own.abort()
        self.closed = True

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None and not self.closed:
            self.discard()
        else:
            self.close()
