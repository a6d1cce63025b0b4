"""The pieces of `cowfs://` around the filesystem class: its files, its write batches and
transactions, and the mapping of cowfs errors to the builtin ones fsspec callers expect."""

from __future__ import annotations

import errno
import functools
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from fsspec.spec import AbstractBufferedFile
from fsspec.transaction import Transaction

from cowfs.api import READAHEAD
from cowfs.commits import Commit
from cowfs.entries import Entry
from cowfs.errors import (
    AlreadyExists,
    CowfsError,
    NameTooLong,
    NotFound,
    ObjectMissing,
    ReadOnly,
    UsageError,
)
from cowfs.refs import Ref
from cowfs.writer import BranchWriter, StreamSink

if TYPE_CHECKING:
    from cowfs.filesystem import CowFileSystem


def as_os_error(e: CowfsError) -> Exception:
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


def os_errors(fn: Callable) -> Callable:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except CowfsError as e:
            mapped = as_os_error(e)
            if mapped is e:
                raise
            raise mapped from e

    return wrapper


class WriteBatch:
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
        self.batch = WriteBatch(fs)

    def start(self) -> None:
        super().start()
        self.batch = WriteBatch(self.fs)

    def complete(self, commit: bool = True) -> None:
        batch = self.batch
        try:
            super().complete(commit)
        except BaseException:
            batch.abort()
            raise
        if commit:
            os_errors(batch.commit)()
        else:
            batch.abort()


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
        ahead = READAHEAD if start == self._next else 0
        data = reader.read(self.entry, start, max(0, end - start), readahead=ahead)
        self._next = start + len(data)
        return data


class CowWriteFile(AbstractBufferedFile):
    """Bytes streamed into a `BranchWriter` as they are written. With its own batch (outside a
    transaction) closing it is one commit; inside one, the transaction lands it. Leaving a
    `with` block by an exception lands nothing."""

    def __init__(
        self, fs: CowFileSystem, path: str, sink: StreamSink, own: WriteBatch | None
    ) -> None:
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
                os_errors(self.own.commit)()
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
