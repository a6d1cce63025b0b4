"""Inode numbers for what the kernel has been told about, with the kernel's lookup counts, kept
in columns (one `array` per field, indexed by inode number) rather than one object per inode:
the kernel may hold millions of inodes and forgets them only under memory pressure
(docs/mount.md, *Memory*).

A node is its parent's inode and its own name (the bytes the kernel gave us), so a path is
rebuilt by walking up to the view root, and a rename moves one node and all beneath it follows.
A node pins its parent (`_kids`): a file held open keeps its directories resolvable after the
kernel forgot them. `(parent, name) -> inode` is an open-addressing hash over an `array` of
inode numbers (linear probing, backward-shift deletion), since a `dict` would cost a tuple
key and an `int` per inode. View roots are found by view instead (one root per view, whichever
name reached it), and views are interned to small ids, each counted by the nodes that use it.

A node is dropped when its lookup count, its open handles and its pinning children are all 0,
and its number goes to a free list: FUSE lets a number be reused once the kernel forgot it.
"""

from __future__ import annotations

from array import array
from typing import Any

import pyfuse3

ROOT = pyfuse3.ROOT_INODE

_FREE, _ROOT, _IDS, _REPO, _GID, _VROOT, _VIEW = range(7)
_KIND_NAMES = ("free", "root", "ids", "repo", "gid", "view", "view")
_KIND_CODES = {"ids": _IDS, "repo": _REPO, "gid": _GID, "view": _VIEW}
#: `_flags` bit: unlinked while open (or replaced by a rename): no lookup finds it.
_UNLINKED = 1
_HASH_MIX = 0x9E3779B1
_MIN_INDEX = 1024
#: Paths of nodes inside views, remembered: a request asks a node's path several times, and
#: each answer walks to the view root and joins the names. Cleared when full, and whenever a
#: rename or unlink moves nodes.
_PATH_CACHE = 4096


class Node:
    """A view of one inode's columns: made on demand, so holding one costs nothing per inode
    the table keeps. Valid while its inode is in the table."""

    __slots__ = ("_t", "ino")

    def __init__(self, table: InodeTable, ino: int) -> None:
        self._t = table
        self.ino = ino

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Node) and other._t is self._t and other.ino == self.ino

    def __hash__(self) -> int:
        return hash(self.ino)

    def __repr__(self) -> str:
        return f"Node({self.ino}, {self.kind}, {self.path!r})"

    @property
    def kind(self) -> str:
        return _KIND_NAMES[self._t._kind[self.ino]]

    @property
    def is_view_root(self) -> bool:
        return self._t._kind[self.ino] == _VROOT

    @property
    def view(self) -> Any:
        t = self._t
        k = t._kind[self.ino]
        return t._views[t._vid[self.ino]] if k in (_VROOT, _VIEW) else None

    @property
    def path(self) -> str:
        return self._t.path_of(self.ino)

    @property
    def lookups(self) -> int:
        return self._t._lookups[self.ino]

    @property
    def opens(self) -> int:
        return self._t._opens[self.ino]

    @opens.setter
    def opens(self, n: int) -> None:
        self._t._opens[self.ino] = n

    @property
    def parent(self) -> int:
        return self._t._parent[self.ino]

    @property
    def name(self) -> bytes:
        return self._t.name_of(self.ino)

    @property
    def unlinked(self) -> bool:
        return bool(self._t._flags[self.ino] & _UNLINKED)


class InodeTable:
    def __init__(self, index_size: int = _MIN_INDEX, compact_min: int = 1 << 16) -> None:
        assert index_size & (index_size - 1) == 0, "a power of two"
        # Column 0 is unused (inode 0 means "none"); `_parent` chains the free list.
        self._kind = array("B", [_FREE, _ROOT])
        self._flags = array("B", [0, 0])
        self._parent = array("I", [0, 0])
        self._lookups = array("I", [0, 1])
        self._opens = array("I", [0, 0])
        self._kids = array("I", [0, 0])
        self._vid = array("I", [0, 0])
        #: Names live in one arena, each at `_noff` for `_nlen` bytes (a name is at most 255
        #: bytes, `cowfs.names`): a `bytes` object per name would cost 33 bytes more, plus
        #: its pointer. Names dropped or renamed away are garbage until `_compact`.
        self._arena = bytearray()
        self._noff = array("I", [0, 0])
        self._nlen = array("B", [0, 0])
        self._garbage = 0
        self._compact_min = compact_min
        self._free = 0
        self._live = 1
        self._index = array("I", bytes(4 * index_size))
        self._indexed = 0
        #: Interned views: id -> View, and per id the nodes using it.
        self._views: list[Any] = [None]
        self._vuses = array("I", [0])
        self._vid_of: dict[int, int] = {}
        self._vfree: list[int] = []
        self._vroot: dict[int, int] = {}
        #: Where a detached node answers from (the staging area's orphan, or its last path).
        self._dead_path: dict[int, str] = {}
        self._paths: dict[int, str] = {}

    def __len__(self) -> int:
        return self._live

    def get(self, ino: int) -> Node | None:
        if 0 < ino < len(self._kind) and self._kind[ino] != _FREE:
            return Node(self, ino)
        return None

    def nodes(self) -> list[Node]:
        return [Node(self, i) for i, k in enumerate(self._kind) if k != _FREE]

    def held_views(self) -> list[Any]:
        """The views some node uses (their keys keep them from `sweep_views`)."""
        return [v for v in self._views if v is not None]

    # --- paths ---------------------------------------------------------------------------------

    def path_of(self, ino: int) -> str:
        kind = self._kind[ino]
        if kind == _VIEW:
            if self._flags[ino] & _UNLINKED:
                return self._dead_path.get(ino, "\x00dead")
            path = self._paths.get(ino)
            if path is None:
                if len(self._paths) >= _PATH_CACHE:
                    self._paths.clear()
                path = self._paths[ino] = self._walk_path(ino)
            return path
        if kind in (_REPO, _GID):
            return self.name_of(ino).decode()
        return ""

    def _walk_path(self, ino: int) -> str:
        parts = []
        arena, off, ln, parent, kinds = (
            self._arena,
            self._noff,
            self._nlen,
            self._parent,
            self._kind,
        )
        while kinds[ino] == _VIEW:
            o = off[ino]
            parts.append(arena[o : o + ln[ino]])
            ino = parent[ino]
        parts.reverse()
        return bytearray(b"/").join(parts).decode()

    def name_of(self, ino: int) -> bytes:
        o = self._noff[ino]
        return bytes(self._arena[o : o + self._nlen[ino]])

    def find(self, view: Any, path: str) -> Node | None:
        """The node at `path` in `view`, if the kernel holds one."""
        vid = self._vid_of.get(id(view))
        ino = self._vroot.get(vid, 0) if vid is not None else 0
        if ino and path:
            for part in path.split("/"):
                ino = self._probe(ino, part.encode())[1]
                if not ino:
                    break
        return Node(self, ino) if ino else None

    # --- making nodes --------------------------------------------------------------------------

    def child(self, parent: Node, name: bytes, kind: str = "view") -> Node:
        """The node named `name` under `parent` (inside a view, or `ids`/`repo`/`gid` at the
        fixed levels), made if the table has none."""
        slot, ino = self._probe(parent.ino, name)
        if ino:
            return Node(self, ino)
        code = _KIND_CODES[kind]
        vid = self._vid[parent.ino] if code == _VIEW else 0
        ino = self._alloc(code, parent.ino, name, vid)
        if (self._indexed + 1) * 2 > len(self._index):
            self._rehash(len(self._index) * 2)  # which indexes `ino` too
        else:
            self._index[slot] = ino
            self._indexed += 1
        return Node(self, ino)

    def view_root(self, view: Any, parent: int, name: bytes) -> Node:
        """The root of `view`, reached through `name` under `parent` (the last such name is
        kept, to invalidate its dentry)."""
        vid = self._intern(view)
        ino = self._vroot.get(vid)
        if ino is None:
            ino = self._vroot[vid] = self._alloc(_VROOT, parent, name, vid)
        elif self._parent[ino] != parent or self.name_of(ino) != name:
            self._pin(parent)
            old = self._parent[ino]
            self._parent[ino] = parent
            self._set_name(ino, name)
            self._unpin(old)
        return Node(self, ino)

    def _alloc(self, kind: int, parent: int, name: bytes, vid: int) -> int:
        if self._free:
            ino = self._free
            self._free = self._parent[ino]
            self._kind[ino], self._flags[ino], self._parent[ino] = kind, 0, parent
            self._lookups[ino] = self._opens[ino] = self._kids[ino] = 0
            self._vid[ino] = vid
            self._noff[ino], self._nlen[ino] = len(self._arena), len(name)
        else:
            ino = len(self._kind)
            self._kind.append(kind)
            self._flags.append(0)
            self._parent.append(parent)
            self._lookups.append(0)
            self._opens.append(0)
            self._kids.append(0)
            self._vid.append(vid)
            self._noff.append(len(self._arena))
            self._nlen.append(len(name))
        self._arena += name
        if vid:
            self._vuses[vid] += 1
        self._pin(parent)
        self._live += 1
        return ino

    def _intern(self, view: Any) -> int:
        vid = self._vid_of.get(id(view))
        if vid is None:
            if self._vfree:
                vid = self._vfree.pop()
                self._views[vid] = view
            else:
                vid = len(self._views)
                self._views.append(view)
                self._vuses.append(0)
            self._vid_of[id(view)] = vid
        return vid

    def _release_view(self, vid: int) -> None:
        view = self._views[vid]
        self._views[vid] = None
        del self._vid_of[id(view)]
        self._vfree.append(vid)

    # --- counts and dropping -------------------------------------------------------------------

    def ref(self, node: Node, n: int = 1) -> None:
        self._lookups[node.ino] += n

    def forget(self, ino: int, n: int) -> None:
        if ino == ROOT or not 0 < ino < len(self._kind) or self._kind[ino] == _FREE:
            return
        self._lookups[ino] = max(0, self._lookups[ino] - n)
        self._drop_if_unused(ino)

    def maybe_drop(self, node: Node) -> None:
        self._drop_if_unused(node.ino)

    def _pin(self, parent: int) -> None:
        if parent:
            self._kids[parent] += 1

    def _unpin(self, parent: int) -> None:
        if parent:
            self._kids[parent] -= 1
            self._drop_if_unused(parent)

    def _drop_if_unused(self, ino: int) -> None:
        """Drop `ino` if nothing holds it, then each parent it alone was holding (a loop, not
        recursion: a chain may be deep)."""
        while ino and ino != ROOT and self._kind[ino] != _FREE:
            if self._lookups[ino] or self._opens[ino] or self._kids[ino]:
                return
            kind, parent = self._kind[ino], self._parent[ino]
            if kind == _VROOT:
                del self._vroot[self._vid[ino]]
            elif not self._flags[ino] & _UNLINKED:
                self._remove(ino)
            self._dead_path.pop(ino, None)
            self._paths.pop(ino, None)  # it had no children: no other path named it
            vid = self._vid[ino]
            if vid:
                self._vuses[vid] -= 1
                if not self._vuses[vid]:
                    self._release_view(vid)
            self._kind[ino] = _FREE
            self._garbage += self._nlen[ino]
            self._nlen[ino] = 0
            self._parent[ino] = self._free
            self._free = ino
            self._live -= 1
            if parent:
                self._kids[parent] -= 1
            ino = parent
        self._maybe_compact()

    # --- writable views: rename and unlink -----------------------------------------------------

    def rekey(
        self, view: Any, old: str, new: str, new_parent: int, new_name: bytes, kept: str | None
    ) -> None:
        """After a rename, the node at `old` (the kernel keeps it) answers for `new` under
        `new_parent`; the nodes beneath it follow, being named by their parents. A node that
        was at `new` is detached (`kept`: as `detach`)."""
        self._paths.clear()
        node = self.find(view, old)
        self._pin(new_parent)  # before the replaced node lets go of it
        stale = self.find(view, new)
        if stale is not None and stale != node:
            self.detach(view, new, kept)
        if node is not None:
            ino = node.ino
            self._remove(ino)
            old_parent = self._parent[ino]
            self._pin(new_parent)
            self._parent[ino] = new_parent
            self._set_name(ino, new_name)
            self._insert(ino)
            self._unpin(old_parent)
        self._unpin(new_parent)

    def detach(self, view: Any, path: str, kept: str | None = None) -> None:
        """A removed path: its inode lives on for open handles but no lookup finds it.

        `kept` is where the staging area keeps the file for those handles (see
        `Staging.unlink`); the node answers for it from then on."""
        node = self.find(view, path)
        if node is None or not path:
            return
        self._paths.clear()
        ino = node.ino
        self._remove(ino)
        self._flags[ino] |= _UNLINKED
        self._dead_path[ino] = kept if kept is not None else path
        parent = self._parent[ino]
        self._parent[ino] = 0
        self._unpin(parent)
        self._drop_if_unused(ino)

    # --- the name arena ------------------------------------------------------------------------

    def _set_name(self, ino: int, name: bytes) -> None:
        self._garbage += self._nlen[ino]
        self._noff[ino], self._nlen[ino] = len(self._arena), len(name)
        self._arena += name
        self._maybe_compact()

    def _maybe_compact(self) -> None:
        """Copy the live names into a new arena once garbage is most of it: amortized over
        the drops that made that garbage."""
        if self._garbage < self._compact_min or self._garbage * 2 < len(self._arena):
            return
        arena, off, ln = self._arena, self._noff, self._nlen
        fresh = bytearray()
        for ino, kind in enumerate(self._kind):
            if kind != _FREE:
                o = off[ino]
                off[ino] = len(fresh)
                fresh += arena[o : o + ln[ino]]
        self._arena = fresh
        self._garbage = 0

    # --- the (parent, name) index --------------------------------------------------------------

    def _home(self, parent: int, name: bytes) -> int:
        return (hash(name) ^ (parent * _HASH_MIX)) & (len(self._index) - 1)

    def _probe(self, parent: int, name: bytes) -> tuple[int, int]:
        """(slot, inode) for `(parent, name)`; inode 0 and the empty slot when absent."""
        index, parents, arena, off, ln = (
            self._index,
            self._parent,
            self._arena,
            self._noff,
            self._nlen,
        )
        mask = len(index) - 1
        i = (hash(name) ^ (parent * _HASH_MIX)) & mask
        n = len(name)
        while True:
            ino = index[i]
            if not ino:
                return i, 0
            if parents[ino] == parent and ln[ino] == n and arena[off[ino] : off[ino] + n] == name:
                return i, ino
            i = (i + 1) & mask

    def _insert(self, ino: int) -> None:
        if (self._indexed + 1) * 2 > len(self._index):
            self._rehash(len(self._index) * 2)  # which indexes `ino` too
            return
        i, found = self._probe(self._parent[ino], self.name_of(ino))
        assert not found
        self._index[i] = ino
        self._indexed += 1

    def _remove(self, ino: int) -> None:
        index = self._index
        mask = len(index) - 1
        i, found = self._probe(self._parent[ino], self.name_of(ino))
        if found != ino:
            return
        index[i] = 0
        self._indexed -= 1
        j = i
        while True:
            j = (j + 1) & mask
            k = index[j]
            if not k:
                return
            h = self._home(self._parent[k], self.name_of(k))
            # `k` may move back to the hole at `i` unless its home lies cyclically in (i, j].
            if (i < j and (h <= i or h > j)) or (i > j and i >= h > j):
                index[i] = k
                index[j] = 0
                i = j

    def _rehash(self, size: int) -> None:
        """One pass over the columns (inlined probing: at millions of nodes this pass is the
        mount's longest pause, amortized over the inserts that filled the index)."""
        index = array("I", bytes(4 * size))
        mask = size - 1
        kinds, flags, parents = self._kind, self._flags, self._parent
        arena, off, ln = self._arena, self._noff, self._nlen
        count = 0
        for ino in range(1, len(kinds)):
            if kinds[ino] < _IDS or kinds[ino] == _VROOT or flags[ino] & _UNLINKED:
                continue
            o = off[ino]
            i = (hash(bytes(arena[o : o + ln[ino]])) ^ (parents[ino] * _HASH_MIX)) & mask
            while index[i]:
                i = (i + 1) & mask
            index[i] = ino
            count += 1
        self._index = index
        self._indexed = count
