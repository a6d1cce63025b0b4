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
from dataclasses import dataclass, field

from cowfs.commits import Commit
from cowfs.entries import Entry, dir_entry
from cowfs.staging import Staging, StagingError
from cowfs.store import Store
from cowfs.tree import TreeView, empty_tree

#: Entries cached per immutable view before the cache starts over.
_ENTRY_CAP = 400_000
_LISTING_CAP = 20_000


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
    entries: dict[str, Entry] = field(default_factory=dict)
    listings: dict[str, list[Entry]] = field(default_factory=dict)
    #: Per directory: the chunks its files live in, in listing order, to prefetch a walk.
    dir_chunks: dict[str, tuple[list[str], dict[str, int]]] = field(default_factory=dict)

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
        if not path:
            return _ROOT
        return self.entries.get(path) if self.staging is None else None

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
        e = self.entries.get(path)
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
            if len(self.listings) > _LISTING_CAP:
                self.listings.clear()
                self.dir_chunks.clear()
            self.listings[path] = out
            for e in out:
                self._remember(e)
            order: list[str] = []
            pos: dict[str, int] = {}
            for e in out:
                for c in e.chunks:
                    if c.id not in pos:
                        pos[c.id] = len(order)
                        order.append(c.id)
            self.dir_chunks[path] = (order, pos)
        return out

    def _remember(self, e: Entry) -> None:
        if len(self.entries) > _ENTRY_CAP:
            self.entries.clear()
        self.entries[e.path] = e


_ROOT = dir_entry("", 0o755)


def commit_view(key: tuple, store: Store, commit: Commit, branch: str | None = None) -> View:
    return View(key, commit.repo, commit, branch, None, TreeView(store, commit.tree))


def write_view(key: tuple, staging: Staging) -> View:
    return View(key, staging.repo, None, staging.branch, staging)
