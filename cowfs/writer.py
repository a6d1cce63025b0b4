"""Streaming bytes into a branch from code: many writes, one commit.

A `BranchWriter` gathers puts and deletes as a `ChangeSet` and lands them with `Lake.commit`, the
compare-and-swap path that re-applies the change when another writer moved the branch first, so
concurrent writers of different paths both land. Data is chunked and uploaded while it is
written: a large file never sits whole in memory (a stream holds at most a few chunks), and small
files are packed together into shared chunks the way `cowfs put` packs them. Nothing is visible
until `commit()`; a writer dropped, aborted or left by an exception lands nothing (its uploaded
chunks are unreferenced and wait for garbage collection, as after a failed put).

The Python API and the fsspec filesystem write through this class; it and the S3 gateway cut,
hash and upload through the same `chunking` calls (`Chunker.add_stream`, `store_stream`,
`final_cuts`), so a file's chunks are the same whichever way it was written.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import blake3

from cowfs.changes import ChangeSet
from cowfs.chunking import MAX_CHUNK, SMALL_FILE, Chunker, FileData, Pending, Readable, final_cuts
from cowfs.commits import Commit
from cowfs.entries import Entry, dir_entry
from cowfs.errors import ReadOnly, UsageError
from cowfs.lake import Lake
from cowfs.names import ancestors, check_name, normalize_path

#: Small files wait in memory up to this many bytes before they are packed and uploaded.
PACK_BYTES = 64 << 20
#: A stream written piece by piece is cut once this much is buffered (at least 4 chunks).
_CUT_AT = 4 * MAX_CHUNK


@dataclass
class _Put:
    mode: int
    mtime_ns: int
    data: Pending | FileData | None = None
    #: An entry reused as it is (a copy or rename: no bytes move).
    entry: Entry | None = None


def check_writable(lake: Lake, repo: str, branch: str) -> None:
    """Refuse a write to a commit: only branches move. A missing branch is created by the
    commit, as `cowfs put` does."""
    lake.repo(repo)
    check_name(branch, "branch name")
    if lake.head_id(repo, branch) is None and lake.find_commit(repo, branch) is not None:
        raise ReadOnly(f"{repo}@{branch} is a commit, and commits are immutable: write to a branch")


class BranchWriter:
    """Writes to one branch, landed as one commit. Not thread-safe: one writer per thread."""

    def __init__(
        self,
        lake: Lake,
        repo: str,
        branch: str,
        message: str = "",
        *,
        root: str = "",
        on_commit: Callable[[Commit], None] | None = None,
    ) -> None:
        check_writable(lake, repo, branch)
        self.lake = lake
        self.repo = repo
        self.branch = branch
        self.message = message
        #: Paths given to this writer are relative to this directory of the branch.
        self.root = normalize_path(root)
        self.on_commit = on_commit
        self._puts: dict[str, _Put] = {}
        self._small: dict[str, bytes] = {}
        self._small_bytes = 0
        self._deletes: list[str] = []
        #: How many pending puts lie beneath each directory (a file there would conflict).
        self._beneath: Counter[str] = Counter()
        self._chunker: Chunker | None = None
        self._done = False
        #: The commit `commit()` landed (or the unchanged head), once it has run.
        self.result: Commit | None = None

    # --- writing -------------------------------------------------------------------------------

    def put_bytes(
        self, path: str, data: bytes, mode: int = 0o644, mtime_ns: int | None = None
    ) -> None:
        self._put_data(self._key(path), data, mode, mtime_ns)

    def _put_data(self, key: str, data: bytes, mode: int, mtime_ns: int | None) -> None:
        self._set(key, _Put(mode & 0o7777, mtime_ns or time.time_ns()))
        if len(data) >= SMALL_FILE:
            self._puts[key].data = self._chunks().add_bytes(data)
            return
        self._small[key] = bytes(data)
        self._small_bytes += len(data)
        if self._small_bytes >= PACK_BYTES:
            self._pack()

    def put_stream(
        self, path: str, readable: Readable, mode: int = 0o644, mtime_ns: int | None = None
    ) -> None:
        """Everything `readable` yields until EOF, chunked as it is read."""
        key = self._key(path)
        head = bytearray(SMALL_FILE)
        view = memoryview(head)
        got = 0
        while got < SMALL_FILE:
            n = readable.readinto(view[got:])
            if not n:
                view.release()
                self._put_data(key, bytes(head[:got]), mode, mtime_ns)
                return
            got += n
        view.release()
        self._check_file(key)
        put = _Put(mode & 0o7777, mtime_ns or time.time_ns())
        put.data = self._chunks().add_stream(_Prefixed(bytes(head), readable))
        self._set(key, put)

    def put_file(self, path: str, local: str | os.PathLike[str]) -> None:
        """A local file, streamed from disk; it keeps its permission bits and mtime."""
        st = os.stat(local)
        with open(local, "rb") as f:
            self.put_stream(path, f, st.st_mode, st.st_mtime_ns)

    def open(self, path: str, mode: int = 0o644) -> StreamSink:
        """A file-like sink: `write()` pieces, `close()` to add the file to this writer."""
        return StreamSink(self, self._key(path), mode)

    def put_entry(self, path: str, entry: Entry) -> None:
        """Place an existing entry's content at `path` without moving bytes (copy, rename).
        Its chunks must be in this lake's store (any repo of it)."""
        key = self._key(path)
        put = _Put(entry.mode, entry.mtime_ns, entry=entry.with_path(key))
        self._set(key, put, as_dir=entry.is_dir)

    def mkdir(self, path: str, mode: int = 0o755) -> None:
        key = self._key(path)
        now = time.time_ns()
        self._set(key, _Put(mode & 0o7777, now, entry=dir_entry(key, mode, now)), as_dir=True)

    def delete(self, path: str) -> None:
        """Remove a file or a directory with everything beneath it ("" is everything)."""
        self._check_open()
        key = normalize_path(f"{self.root}/{path}")
        for p in [p for p in self._puts if _under(p, key)]:
            self._forget(p)
        self._deletes.append(key)

    # --- landing -------------------------------------------------------------------------------

    def changes(self) -> ChangeSet:
        """Wait for every upload and return the change as it stands (for callers that land it
        themselves, e.g. with provenance)."""
        self._pack()
        if self._chunker is not None:
            self._chunker.wait()
        puts = {p: self._entry(p, put) for p, put in self._puts.items()}
        return ChangeSet(puts=puts, deletes=list(self._deletes))

    def commit(self, message: str | None = None) -> Commit | None:
        """Land everything as one commit. Returns it, or the unchanged head when the writes
        change nothing (None on a branch that does not exist yet and gets nothing)."""
        self._check_open()
        try:
            changes = self.changes()
            if changes:
                self.result = self.lake.commit(
                    self.repo, self.branch, changes, self.message if message is None else message
                )
            else:
                self.result = self.lake.head(self.repo, self.branch)
        finally:
            self._close()
        if self.on_commit is not None and self.result is not None:
            self.on_commit(self.result)
        return self.result

    def abort(self) -> None:
        if not self._done:
            self._close()

    def __enter__(self) -> BranchWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None and not self._done:
            self.commit()
        else:
            self.abort()

    # --- inside --------------------------------------------------------------------------------

    def _key(self, path: str) -> str:
        self._check_open()
        key = normalize_path(f"{self.root}/{path}")
        if not key:
            raise UsageError("cannot write the root of a repo: give a path")
        return key

    def _check_open(self) -> None:
        if self._done:
            raise UsageError(f"this writer for {self.repo}@{self.branch} is finished")

    def _chunks(self) -> Chunker:
        if self._chunker is None:
            self._chunker = Chunker(self.lake.store)
        return self._chunker

    def _check_file(self, key: str, as_dir: bool = False) -> None:
        """A path cannot be a file and a directory in one change: refuse it at the write that
        makes it so, rather than failing the whole commit later."""
        for anc in ancestors(key):
            put = self._puts.get(anc)
            if put is not None and not (put.entry is not None and put.entry.is_dir):
                raise UsageError(f"cannot write /{key}: /{anc} is a file in this change")
        if not as_dir and self._beneath[key]:
            raise UsageError(f"cannot write /{key} as a file: this change writes beneath it")

    def _set(self, key: str, put: _Put, as_dir: bool = False) -> None:
        self._check_file(key, as_dir)
        self._forget(key)
        self._puts[key] = put
        self._beneath.update(ancestors(key))

    def _forget(self, key: str) -> None:
        if self._puts.pop(key, None) is not None:
            self._beneath.subtract(ancestors(key))
        old = self._small.pop(key, None)
        if old is not None:
            self._small_bytes -= len(old)

    def _pack(self) -> None:
        """Cut the waiting small files as one stream, so they share chunks."""
        if not self._small:
            return
        keys = list(self._small)
        pendings = self._chunks().add_small_files(self._small[k] for k in keys)
        for key, pending in zip(keys, pendings, strict=True):
            self._puts[key].data = pending
        self._small.clear()
        self._small_bytes = 0

    def _entry(self, path: str, put: _Put) -> Entry:
        if put.entry is not None:
            return put.entry
        assert put.data is not None
        data = put.data.result() if isinstance(put.data, Pending) else put.data
        return data.entry(path, put.mode, put.mtime_ns)

    def _add_data(self, key: str, put: _Put) -> None:
        self._set(key, put)

    def _close(self) -> None:
        self._done = True
        self._small.clear()
        if self._chunker is not None:
            self._chunker.close()
            self._chunker = None


def _under(path: str, top: str) -> bool:
    return not top or path == top or path.startswith(top + "/")


class _Prefixed:
    """`head` followed by the rest of `rest`: a stream whose first bytes were already read."""

    def __init__(self, head: bytes, rest: Readable) -> None:
        self.head = memoryview(head)
        self.rest = rest

    def readinto(self, buffer: memoryview, /) -> int:
        if self.head:
            n = min(len(buffer), len(self.head))
            buffer[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        return self.rest.readinto(buffer)


def _last_final_cut(chunker: Chunker, buf: bytearray) -> int:
    """Where the last cut of `buf` falls that more bytes could not move (0 if none yet)."""
    cuts = final_cuts(chunker.cdc, memoryview(buf), last=False)
    return cuts[-1][0] + cuts[-1][1] if cuts else 0


class StreamSink:
    """Bytes pushed by `write()`, chunked on the way with the same cut points as a pulled
    stream: a cut is final once a whole maximum chunk of bytes follows its start, so only the
    bytes after the last final cut are held (under `_CUT_AT` + 4 MiB)."""

    def __init__(self, writer: BranchWriter, key: str, mode: int) -> None:
        self.writer = writer
        self.key = key
        self.mode = mode & 0o7777
        self.mtime_ns = time.time_ns()
        self.buf = bytearray()
        self.pending: Pending | None = None
        self.hasher = blake3.blake3()
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> int:
        if self.closed:
            raise ValueError("write to a closed cowfs file")
        self.buf += data
        if len(self.buf) >= _CUT_AT:
            self._cut(final=False)
        return len(data)

    def _cut(self, final: bool) -> None:
        chunker = self.writer._chunks()
        end = len(self.buf) if final else _last_final_cut(chunker, self.buf)
        if not end:
            return
        piece = bytes(memoryview(self.buf)[:end])
        part = chunker.add_bytes(piece)
        self.hasher.update(piece)
        if self.pending is None:
            self.pending = Pending()
        self.pending.parts.extend(part.parts)
        self.pending.size += part.size
        del self.buf[:end]

    def close(self) -> None:
        """Hand the finished file to the writer (it lands with the writer's commit)."""
        if self.closed:
            return
        self.closed = True
        if self.pending is None:
            self.writer._put_data(self.key, bytes(self.buf), self.mode, self.mtime_ns)
            return
        self._cut(final=True)
        self.pending.digest = self.hasher.digest()
        self.writer._add_data(self.key, _Put(self.mode, self.mtime_ns, self.pending))

    def discard(self) -> None:
        self.closed = True
        self.buf = bytearray()
