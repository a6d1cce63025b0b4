"""What a directory tree under the mount shows: one commit, or one branch's staged writes.

A view over a commit is immutable, so everything read from it (entries, directory listings) is
cached for as long as the view lives, and the kernel is told to cache it too. A branch's head is
shown as a view over the head's commit keyed by the commit id: when the head moves, the branch
directory resolves to a new view with new inodes, and handles open on the old one keep reading
the commit they were opened on. A branch open for writing is a view over its staging area;
when that write session ends (commit, discard, reload) the view is frozen onto the branch's new
head, so the inodes, handles and working directories in it go on reading (only writes fail).
"""

from __future__ import annotations

import errno
from bisect import bisect_left
from dataclasses import dataclass, field

from cowfs.commits import Commit
from cowfs.entries import Entry, dir_entry
from cowfs.staging import Staging, StagingError
from cowfs.store import Store
from cowfs.tree import TreeView, empty_tree
from daemon.caches import ByteLRU, entry_bytes, listing_bytes

#: Byte caps of each immutable view's caches (estimated, `daemon.caches`): entries by path,
#: directory listings, and per directory the chunks its files live in. The tree refills them.
ENTRY_CACHE_BYTES = 8 << 20
LISTING_CACHE_BYTES = 16 << 20
DIR_CHUNKS_BYTES = 4 << 20

DirChunks = tuple[list[str], dict[str, int]]


def _entries() -> ByteLRU[str, Entry]:
    return ByteLRU(ENTRY_CACHE_BYTES, entry_bytes)


def _listings() -> ByteLRU[str, list[Entry]]:
    return ByteLRU(LISTING_CACHE_BYTES, listing_bytes)


def _dir_chunks_bytes(v: DirChunks) -> int:
    return 200 + 200 * len(v[0])


def _dir_chunks() -> ByteLRU[str, DirChunks]:
    return ByteLRU(DIR_CHUNKS_BYTES, _dir_chunks_bytes)


@dataclass(eq=False)
class View:
    #: ("c", repo, name) commit by id, ("b", repo, branch, cid) branch head,
    #: ("g", gid, repo) global ID, ("w", repo, branch, epoch) branch open for writing.
    key: tuple
    repo: str
    commit: Commit | None
    branch: str | None = None
    staging: Staging | None = None
    tree: TreeView | None = None
    entries: ByteLRU[str, Entry] = field(default_factory=_entries)
    listings: ByteLRU[str, list[Entry]] = field(default_factory=_listings)
    #: Per directory: the chunks its files live in, in listing order, to prefetch a walk.
    dir_chunks: ByteLRU[str, DirChunks] = field(default_factory=_dir_chunks)

    @property
    def writable(self) -> bool:
        return self.staging is not None

    @property
    def immutable(self) -> bool:
        return self.staging is None

    @property
    def commit_id(self) -> str:
        if self.staging is not None:
            return self.staging.base or ""
        return self.commit.id if self.commit else ""

    @property
    def global_id(self) -> str:
        return self.commit.global_id if self.commit else ""

    def cached(self, path: str) -> Entry | None:
        """Without blocking: from the entry cache, else from the parent's cached listing (a
        walk's entries are held once, in their listing, not again per path)."""
        if not path:
            return _ROOT
        if self.staging is not None:
            return None
        e = self.entries.get(path)
        if e is None:
            listing = self.listings.get(path.rpartition("/")[0])
            if listing:
                i = bisect_left(listing, path, key=_path_of)
                if i < len(listing) and listing[i].path == path:
                    e = listing[i]
        return e

    def freeze(self, store: Store, commit: Commit | None) -> None:
        """The write session ended: from now on show `commit` (the branch head), read-only.

        Called with the staging lock held, so an operation that waited for that lock finds the
        area closed and this view already frozen (see `_retry`)."""
        self.commit = commit
        self.tree = TreeView(store, commit.tree if commit else empty_tree(store))
        self.entries.clear()
        self.listings.clear()
        self.dir_chunks.clear()
        self.staging = None

    def _retry(self, st: Staging, e: StagingError) -> None:
        """An operation on `st` found the area closed: go on from the frozen view if this view
        was frozen meanwhile, else the error stands."""
        if e.errno != errno.EROFS or self.staging is st:
            raise e

    def lookup(self, path: str) -> Entry | None:
        """Blocking: may load tree nodes from the store."""
        if not path:
            return _ROOT
        st = self.staging
        if st is not None:
            try:
                return st.lookup(path)
            except StagingError as e:
                self._retry(st, e)
        e = self.cached(path)
        if e is None:
            assert self.tree is not None
            e = self.tree.lookup(path)
            if e is not None:
                self._remember(e)
        return e

    def list_dir(self, path: str) -> list[Entry]:
        """Blocking: the children of directory `path`, sorted by name."""
        st = self.staging
        if st is not None:
            try:
                return st.list_dir(path)
            except StagingError as e:
                self._retry(st, e)
        out = self.listings.get(path)
        if out is None:
            assert self.tree is not None
            out = list(self.tree.list_dir(path))
            self.listings.put(path, out)
            order: list[str] = []
            pos: dict[str, int] = {}
            for e in out:
                for c in e.chunks:
                    if c.id not in pos:
                        pos[c.id] = len(order)
                        order.append(c.id)
            self.dir_chunks.put(path, (order, pos))
        return out

    def _remember(self, e: Entry) -> None:
        self.entries.put(e.path, e)


_ROOT = dir_entry("", 0o755)


def _path_of(e: Entry) -> str:
    return e.path


def commit_view(key: tuple, store: Store, commit: Commit, branch: str | None = None) -> View:
    return View(key, commit.repo, commit, branch, None, TreeView(store, commit.tree))


def write_view(key: tuple, staging: Staging) -> View:
    return View(key, staging.repo, None, staging.branch, staging)
