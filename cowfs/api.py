"""The lake from Python without a mount: `cowfs.connect()` and what it returns.

A `Client` names data the way the CLI does (`images@main:/cats/1.jpg`, `images@3f2a9c`,
`images@main^`). Reads of a branch follow its head, re-read at most every `head_ttl` seconds
(and at once after this client's own commits); a file opened on a branch keeps reading the commit
it was opened on. File bytes come through one shared `ChunkReader`, so a read fetches only the
chunks its range touches and files packed into one chunk share a single fetch.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from cowfs.commits import Commit
from cowfs.config import default_store_url
from cowfs.entries import Entry, EntryType
from cowfs.errors import CowfsError, NotFound, UsageError
from cowfs.index import Index
from cowfs.lake import Lake
from cowfs.objectstore import open_objectstore
from cowfs.reader import ChunkReader
from cowfs.refs import Ref, parse_ref
from cowfs.store import Store
from cowfs.writer import BranchWriter

#: Chunks fetched ahead of a sequential reader: enough to keep 16 GETs in flight on S3, where
#: 4 left a 256 MiB read at 40% of the GETs' own speed.
READAHEAD = 16
#: Seconds a branch head is trusted before it is read again.
DEFAULT_HEAD_TTL = 1.0
_COMMITS_KEPT = 4096


@dataclass(frozen=True)
class FileInfo:
    """One file, directory or symlink of a commit."""

    path: str
    type: str
    size: int
    mode: int
    mtime: float
    #: BLAKE3-256 of the content, hex; equal content has an equal digest anywhere in the lake.
    digest: str | None
    target: str | None
    #: The commit this was read from.
    commit: str

    @property
    def name(self) -> str:
        return self.path.rpartition("/")[2]

    @property
    def is_dir(self) -> bool:
        return self.type == "directory"

    @classmethod
    def of(cls, entry: Entry, commit: Commit) -> FileInfo:
        kind = {EntryType.FILE: "file", EntryType.DIR: "directory"}.get(entry.type, "symlink")
        return cls(
            "/" + entry.path,
            kind,
            entry.size,
            entry.mode,
            entry.mtime_ns / 1e9,
            entry.digest.hex() if entry.digest else None,
            entry.target,
            commit.id,
        )


def root_entry(commit: Commit) -> Entry:
    """The root of a commit, which has no entry of its own in the tree."""
    return Entry("", EntryType.DIR, 0o755, 0, int((commit.finished or commit.created) * 1e9))


class Client:
    """A connection to one store. Thread-safe for reading; after `fork()` open a new one."""

    def __init__(
        self,
        lake: Lake,
        head_ttl: float = DEFAULT_HEAD_TTL,
        release: Callable[[], None] | None = None,
    ) -> None:
        self.lake = lake
        self._release = release or lake.close
        self.url = lake.url
        self.head_ttl = head_ttl
        # A remote store is latency-bound: keep more chunk fetches in flight.
        self.reader = ChunkReader(lake.store, workers=8 if lake.objects.is_local else 16)
        self._heads: dict[tuple[str, str], tuple[float, Commit]] = {}
        self._commits: dict[tuple[str, str, int], Commit] = {}
        self._lock = threading.Lock()
        self.pid = os.getpid()

    def close(self) -> None:
        self.reader.close()
        release, self._release = self._release, lambda: None
        release()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- commits -------------------------------------------------------------------------------

    def resolve(self, ref: Ref | str) -> Commit:
        """The commit a ref names now: a branch's head (cached `head_ttl` s), a commit, an
        ancestor. Commit ids and ancestors of commit ids never change, so they are kept."""
        ref = parse_ref(ref) if isinstance(ref, str) else ref
        now = time.monotonic()
        with self._lock:
            hit = self._heads.get((ref.repo, ref.rev))
            kept = self._commits.get((ref.repo, ref.rev, ref.back))
        if kept is not None:
            return kept
        if hit is not None and now - hit[0] < self.head_ttl and not ref.back:
            return hit[1]
        head = self.lake.head(ref.repo, ref.rev)
        if head is not None:
            with self._lock:
                self._heads[(ref.repo, ref.rev)] = (now, head)
            if not ref.back:
                return head
        commit = self.lake.resolve(ref)
        if head is None:
            with self._lock:
                if len(self._commits) > _COMMITS_KEPT:
                    self._commits.clear()
                self._commits[(ref.repo, ref.rev, ref.back)] = commit
        return commit

    def commit_of(self, ref: str) -> Commit:
        """The commit record: `id`, `global_id`, `provenance`, `files`, `bytes`, `message`..."""
        return self.resolve(ref)

    def log(self, ref: str) -> Iterator[Commit]:
        commit = self.resolve(ref)
        return self.lake.log(commit.repo, commit)

    def repos(self) -> list[str]:
        return sorted(r["name"] for r in self.lake.list_repos())

    def branches(self, repo: str) -> dict[str, str]:
        """Branch name -> head commit id."""
        return dict(self.lake.branches(repo))

    def invalidate(self, repo: str | None = None, branch: str | None = None) -> None:
        """Forget cached branch heads (all, or one), so the next read sees the store's."""
        with self._lock:
            if repo is None:
                self._heads.clear()
            else:
                self._heads.pop((repo, branch or "main"), None)

    # --- reading -------------------------------------------------------------------------------

    def entry(self, target: str | Ref) -> tuple[Commit, Entry]:
        """The commit and the entry a target names; raises `NotFound` when there is none."""
        ref = parse_ref(target) if isinstance(target, str) else target
        commit = self.resolve(ref)
        if not ref.path:
            return commit, root_entry(commit)
        found = self.lake.lookup(commit, ref.path)
        if found is None:
            raise NotFound(f"no such file or directory /{ref.path} in {ref.repo}@{ref.rev}")
        return commit, found

    def info(self, target: str) -> FileInfo:
        commit, entry = self.entry(target)
        return FileInfo.of(entry, commit)

    def exists(self, target: str) -> bool:
        try:
            self.entry(target)
        except NotFound:
            return False
        return True

    def ls(self, target: str) -> list[FileInfo]:
        """A directory's children (a file lists as itself)."""
        commit, top = self.entry(target)
        if not top.is_dir:
            return [FileInfo.of(top, commit)]
        return [FileInfo.of(e, commit) for e in self.lake.list_dir(commit, top.path)]

    def walk(self, target: str) -> Iterator[FileInfo]:
        """Everything beneath a path, in path order, from one commit."""
        commit, top = self.entry(target)
        for e in self.lake.walk(commit, top.path):
            if e.path != top.path:
                yield FileInfo.of(e, commit)

    def read_bytes(self, target: str) -> bytes:
        _, e = self.entry(target)
        return self.read_entry(e)

    def read_entry(self, entry: Entry, start: int = 0, end: int | None = None) -> bytes:
        if entry.is_dir:
            raise UsageError(f"/{entry.path} is a directory")
        end = entry.size if end is None else min(end, entry.size)
        if start == 0 and end == entry.size and len(entry.chunks) > 1:
            return b"".join(self.reader.iter_file(entry))
        return self.reader.read(entry, start, max(0, end - start))

    def open(self, target: str, mode: str = "rb") -> io.BufferedReader:
        """A read-only, seekable binary file, pinned to the commit resolved now."""
        if mode != "rb":
            raise UsageError(f"cowfs files open as 'rb' only, not {mode!r}: use lake.writer()")
        _, e = self.entry(target)
        if e.is_dir:
            raise UsageError(f"/{e.path} is a directory")
        return io.BufferedReader(EntryFile(self.reader, e), buffer_size=256 << 10)

    # --- writing -------------------------------------------------------------------------------

    def writer(self, target: str, message: str = "") -> BranchWriter:
        """Writes to a branch that land as one commit when the `with` block ends cleanly, and
        not at all when it raises. Paths are relative to the target's path, if it has one."""
        ref = parse_ref(target)
        if ref.back:
            raise UsageError(f"{ref} names an ancestor commit: write to a branch")
        return BranchWriter(
            self.lake,
            ref.repo,
            ref.rev,
            message,
            root=ref.path,
            on_commit=lambda c: self.invalidate(ref.repo, ref.rev),
        )


class EntryFile(io.RawIOBase):
    """One file of a commit as a raw, seekable stream over the chunk reader."""

    def __init__(self, reader: ChunkReader, entry: Entry) -> None:
        self.reader = reader
        self.entry = entry
        self.pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.entry.size}[whence]
        if base + offset < 0:
            raise OSError(22, "negative seek position")
        self.pos = base + offset
        return self.pos

    def tell(self) -> int:
        return self.pos

    def readinto(self, buffer: Any) -> int:
        data = self.reader.read(self.entry, self.pos, len(buffer), readahead=READAHEAD)
        n = len(data)
        buffer[:n] = data
        self.pos += n
        return n

    def readall(self) -> bytes:
        data = self.reader.read(self.entry, self.pos, max(0, self.entry.size - self.pos))
        self.pos += len(data)
        return data


def connect(store: str | None = None, *, head_ttl: float = DEFAULT_HEAD_TTL) -> Client:
    """Open the lake at `store` (a folder, `file://`, `s3://bucket/prefix`), or the one the CLI
    uses: `COWFS_STORE`, else the default local store.

    Clients of one store in one process share one `Lake` (LMDB allows a process one handle
    per environment), closed with the last of them."""
    key = (store or default_store_url(), os.environ.get("COWFS_CACHE_DIR"), os.getpid())
    with _shared_lock:
        lake, users = _shared.get(key, (None, 0))
        if lake is None:
            lake = _open_lake(store)
        _shared[key] = (lake, users + 1)
    return Client(lake, head_ttl=head_ttl, release=lambda: _release(key))


def _open_lake(store: str | None) -> Lake:
    """The lake, with the node's index; in a forked child whose parent holds that index open
    (a DataLoader worker), with a private one instead.

    py-lmdb refuses to open an environment its process already has open, and a forked child
    inherits that record while it must not use the parent's handle (LMDB forbids it). So the
    child gets an empty index in a folder removed at once (the open files live on) with caching
    off: it reads straight from the store, and its in-memory chunk reader still shares packed
    chunks between the files it reads."""
    try:
        return Lake.open(store)
    except CowfsError as e:
        if "already open in this process" not in str(e):
            raise
    # Lake.open checked the store before it failed on the index.
    objects = open_objectstore(store or default_store_url())
    private = tempfile.mkdtemp(prefix="cowfs-worker-")
    try:
        index = Index(private, cache_bytes=0)
    finally:
        shutil.rmtree(private, ignore_errors=True)
    return Lake(Store(objects, index))


_shared: dict[tuple[str, str | None, int], tuple[Lake, int]] = {}
_shared_lock = threading.Lock()


def _release(key: tuple[str, str | None, int]) -> None:
    with _shared_lock:
        lake, users = _shared[key]
        if users > 1:
            _shared[key] = (lake, users - 1)
            return
        del _shared[key]
    lake.close()
