"""A commit's file tree: a sorted map `path -> Entry` stored as a prolly tree.

Node boundaries are chosen by the keys alone: a key ends a node at level L when the low
`FANOUT_BITS * (L + 1)` bits of its xxh3 hash are zero. Boundaries therefore nest (a level-2
boundary is also a level-1 and level-0 boundary) and the whole shape of the tree is a function of
its key set, never of the order edits arrived in. Two commits that share most paths share most
nodes; an edit rewrites only the nodes on the path from the changed leaf to the root; a diff
skips every subtree whose hash is equal on both sides.

Leaves hold entries. Inner nodes hold one `Child` per node below: its last key, its id, and the
number of files and bytes beneath it, so the totals of any tree are read from its root alone.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import msgpack
import xxhash

from cowfs.entries import Entry, EntryType, pack_entry, unpack_entry

FANOUT_BITS = 6


@dataclass(frozen=True, slots=True)
class Child:
    last_key: str
    id: str
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Node:
    level: int
    items: tuple  # tuple[Entry, ...] at level 0, tuple[Child, ...] above

    @property
    def last_key(self) -> str:
        last = self.items[-1]
        return last.path if self.level == 0 else last.last_key

    def totals(self) -> tuple[int, int]:
        if self.level == 0:
            files = [e for e in self.items if e.type is not EntryType.DIR]
            return len(files), sum(e.size for e in files)
        return sum(c.files for c in self.items), sum(c.bytes for c in self.items)


class NodeStore(Protocol):
    def load_node(self, node_id: str) -> Node: ...

    def save_node(self, node: Node) -> str: ...


def encode_node(node: Node) -> bytes:
    if node.level == 0:
        items = [pack_entry(e) for e in node.items]
    else:
        items = [[c.last_key, bytes.fromhex(c.id), c.files, c.bytes] for c in node.items]
    return msgpack.packb([node.level, items], use_bin_type=True)


def decode_node(data: bytes) -> Node:
    level, items = msgpack.unpackb(data, raw=False, use_list=True)
    if level == 0:
        return Node(0, tuple(unpack_entry(i) for i in items))
    return Node(level, tuple(Child(k, cid.hex(), f, b) for k, cid, f, b in items))


def is_boundary(key: str, level: int) -> bool:
    mask = (1 << (FANOUT_BITS * (level + 1))) - 1
    return xxhash.xxh3_64_intdigest(key.encode()) & mask == 0


class Builder:
    """Builds the canonical tree from entries (and whole reused subtrees) fed in key order."""

    def __init__(self, nodes: NodeStore) -> None:
        self.nodes = nodes
        self.pending: list[list] = [[]]

    def aligned(self, level: int) -> bool:
        """True when nothing is pending at `level` or below, so a whole node of that level fits."""
        return all(not self.pending[lv] for lv in range(min(level + 1, len(self.pending))))

    def add_entry(self, entry: Entry) -> None:
        self._add(0, entry, entry.path)

    def add_subtree(self, level: int, child: Child) -> None:
        self._add(level + 1, child, child.last_key)

    def _add(self, level: int, item: Entry | Child, key: str) -> None:
        while len(self.pending) <= level:
            self.pending.append([])
        self.pending[level].append(item)
        if is_boundary(key, level):
            self._close(level)

    def _close(self, level: int) -> None:
        items = tuple(self.pending[level])
        self.pending[level] = []
        node = Node(level, items)
        files, size = node.totals()
        child = Child(node.last_key, self.nodes.save_node(node), files, size)
        self._add(level + 1, child, child.last_key)

    def finish(self) -> str:
        level = 0
        while level < len(self.pending):
            higher = any(self.pending[lv] for lv in range(level + 1, len(self.pending)))
            items = self.pending[level]
            if level > 0 and not higher and len(items) == 1:
                return items[0].id
            if not items and not higher:
                break
            if items:
                node = Node(level, tuple(items))
                self.pending[level] = []
                files, size = node.totals()
                child = Child(node.last_key, self.nodes.save_node(node), files, size)
                while len(self.pending) <= level + 1:
                    self.pending.append([])
                self.pending[level + 1].append(child)
            level += 1
        return self.nodes.save_node(Node(0, ()))


def build(nodes: NodeStore, entries: Iterable[Entry]) -> str:
    """Build a tree from entries already sorted by path; returns the root id."""
    b = Builder(nodes)
    for e in entries:
        b.add_entry(e)
    return b.finish()


def empty_tree(nodes: NodeStore) -> str:
    return nodes.save_node(Node(0, ()))


def apply(
    nodes: NodeStore,
    root: str,
    edits: Mapping[str, Entry | None],
    graft: Graft | None = None,
) -> str:
    """Return the root of `root` with `edits` applied (None deletes a path), and `graft`'s
    entries put in place of everything strictly beneath its prefix.

    Walks the old tree in key order, re-using every subtree that no edit touches and that ends
    on a boundary of its own level, so the cost is proportional to the edits, not to the tree.
    A graft's entries are read from its tree as they are needed, never all held at once.
    """
    if not edits and graft is None:
        return root
    b = Builder(nodes)
    stream = _Edits(edits, nodes, graft)

    def walk(node_id: str, before: str | None) -> None:
        node = nodes.load_node(node_id)
        if node.level == 0:
            for e in node.items:
                stream.emit_before(e.path, b)
                new = stream.take(e.path)
                if new is not _NONE:
                    if new is not None:
                        b.add_entry(new)
                elif not stream.dropped(e.path):
                    b.add_entry(e)
            return
        for child in node.items:
            level = node.level - 1
            if (
                stream.untouched(before, child.last_key)
                and b.aligned(level)
                and is_boundary(child.last_key, level)
            ):
                b.add_subtree(level, child)
            else:
                walk(child.id, before)
            before = child.last_key

    walk(root, None)
    stream.emit_before(None, b)
    return b.finish()


@dataclass(frozen=True, slots=True)
class Graft:
    """A tree of entries (full paths, all strictly beneath `prefix`) that replaces whatever
    lies beneath `prefix`: how a put of a large directory lands without its entries in memory."""

    prefix: str
    root: str

    def covers(self, path: str) -> bool:
        return path.startswith(self.prefix + "/") if self.prefix else True


_NONE = object()


class _GraftCursor:
    """A position in a graft's tree that can hand over a whole subtree without opening it."""

    def __init__(self, nodes: NodeStore, root: str) -> None:
        self.nodes = nodes
        node = nodes.load_node(root)
        self.stack: list[list] = [[node, 0]] if node.items else []
        self._first: str | None = None  # first key of what is next, once looked up

    def _settle(self) -> None:
        while self.stack and self.stack[-1][1] >= len(self.stack[-1][0].items):
            self.stack.pop()
            if self.stack:
                self.stack[-1][1] += 1

    def first_key(self) -> str | None:
        self._settle()
        if not self.stack:
            return None
        if self._first is None:
            node, i = self.stack[-1]
            item = node.items[i]
            while node.level > 0:
                node = self.nodes.load_node(item.id)
                item = node.items[0]
            self._first = item.path
        return self._first

    def whole(self) -> tuple[int, Child] | None:
        """The unopened subtree that comes next, with its level (None at a leaf's entries)."""
        self._settle()
        node, i = self.stack[-1]
        return (node.level - 1, node.items[i]) if node.level > 0 else None

    def skip(self) -> None:
        self.stack[-1][1] += 1
        self._first = None

    def open(self) -> None:
        node, i = self.stack[-1]
        self.stack.append([self.nodes.load_node(node.items[i].id), 0])

    def pop_entry(self) -> Entry:
        self._settle()
        while self.stack[-1][0].level > 0:
            self.open()
        node, i = self.stack[-1]
        self.stack[-1][1] += 1
        self._first = None
        return node.items[i]


class _Edits:
    """The edits of one `apply` in key order: a dict's, merged with a graft's as they are read.
    Whole subtrees of the graft that nothing else falls inside are reused as they are."""

    def __init__(
        self, edits: Mapping[str, Entry | None], nodes: NodeStore, graft: Graft | None
    ) -> None:
        self.edits = edits
        self.keys = sorted(edits)
        self.ei = 0
        self.graft = graft
        self.cursor = _GraftCursor(nodes, graft.root) if graft else None

    def _dict_key(self) -> str | None:
        return self.keys[self.ei] if self.ei < len(self.keys) else None

    def _graft_key(self) -> str | None:
        return self.cursor.first_key() if self.cursor is not None else None

    def _next_key(self) -> str | None:
        k, g = self._dict_key(), self._graft_key()
        if k is None or (g is not None and g < k):
            return g
        return k

    def _pop(self) -> Entry | None:
        k, g = self._dict_key(), self._graft_key()
        if g is not None and (k is None or g <= k):
            assert self.cursor is not None
            e = self.cursor.pop_entry()
            if k == e.path:
                self.ei += 1  # the graft wins over a dict edit of the same path
            return e
        self.ei += 1
        return self.edits[k]  # type: ignore[index]

    def emit_before(self, key: str | None, b: Builder) -> None:
        while (nk := self._next_key()) is not None and (key is None or nk < key):
            k = self._dict_key()
            if self.cursor is not None and nk == self._graft_key() and nk != k:
                whole = self.cursor.whole()
                if whole is not None:
                    level, child = whole
                    last = child.last_key
                    if (
                        (key is None or last < key)
                        and (k is None or last < k)
                        and b.aligned(level)
                        and is_boundary(last, level)
                    ):
                        b.add_subtree(level, child)
                        self.cursor.skip()
                    else:
                        self.cursor.open()
                    continue
            new = self._pop()
            if new is not None:
                b.add_entry(new)

    def take(self, key: str) -> Entry | None | object:
        """The edit of exactly `key` (None: delete), or `_NONE` when there is none."""
        if self._next_key() == key:
            return self._pop()
        return _NONE

    def dropped(self, path: str) -> bool:
        return self.graft is not None and self.graft.covers(path)

    def untouched(self, after: str | None, last: str) -> bool:
        """Whether no edit and no grafted range falls in the keys `(after, last]`."""
        nk = self._next_key()
        if nk is not None and nk <= last:
            return False
        if self.graft is None:
            return True
        if not self.graft.prefix:
            return False
        lo, hi = self.graft.prefix + "/", self.graft.prefix + "0"
        return last < lo or (after is not None and after >= hi)


def lookup(nodes: NodeStore, root: str, path: str) -> Entry | None:
    node = nodes.load_node(root)
    while node.level > 0:
        i = bisect_left([c.last_key for c in node.items], path)
        if i == len(node.items):
            return None
        node = nodes.load_node(node.items[i].id)
    i = bisect_left([e.path for e in node.items], path)
    if i < len(node.items) and node.items[i].path == path:
        return node.items[i]
    return None


def iter_from(nodes: NodeStore, root: str, start: str = "") -> Iterator[Entry]:
    """Every entry with path >= start, in order, loading only the nodes it walks through."""
    stack: list[tuple[Node, int]] = []
    node = nodes.load_node(root)
    while node.level > 0:
        i = bisect_left([c.last_key for c in node.items], start)
        if i == len(node.items):
            break
        stack.append((node, i))
        node = nodes.load_node(node.items[i].id)
    else:
        i = bisect_left([e.path for e in node.items], start)
        yield from node.items[i:]
    while stack:
        parent, i = stack.pop()
        if i + 1 < len(parent.items):
            stack.append((parent, i + 1))
            node = nodes.load_node(parent.items[i + 1].id)
            while node.level > 0:
                stack.append((node, 0))
                node = nodes.load_node(node.items[0].id)
            yield from node.items


def iter_all(nodes: NodeStore, root: str) -> Iterator[Entry]:
    return iter_from(nodes, root, "")


def iter_under(nodes: NodeStore, root: str, path: str) -> Iterator[Entry]:
    """The entry at `path` (if any) and everything beneath it."""
    if not path:
        yield from iter_all(nodes, root)
        return
    for e in iter_from(nodes, root, path):
        if e.path == path or e.path.startswith(path + "/"):
            yield e
        elif e.path > path + "/":
            return


def list_dir(nodes: NodeStore, root: str, path: str) -> Iterator[Entry]:
    """The direct children of directory `path`, skipping over each subdirectory's contents."""
    prefix = path + "/" if path else ""
    start = prefix
    while True:
        skipped = False
        for e in iter_from(nodes, root, start):
            if not e.path.startswith(prefix):
                return
            rest = e.path[len(prefix) :]
            slash = rest.find("/")
            if slash < 0:
                yield e
                continue
            start = prefix + rest[:slash] + "0"  # "0" is the character after "/"
            skipped = True
            break
        if not skipped:
            return


def totals(nodes: NodeStore, root: str) -> tuple[int, int]:
    """(files, bytes) under a root, from the root node alone."""
    return nodes.load_node(root).totals()


@dataclass(frozen=True, slots=True)
class Change:
    path: str
    old: Entry | None
    new: Entry | None

    @property
    def kind(self) -> str:
        if self.old is None:
            return "added"
        if self.new is None:
            return "deleted"
        return "modified"


def diff(nodes: NodeStore, a: str, b: str) -> Iterator[Change]:
    """Changes from tree `a` to tree `b`, in path order, skipping every shared subtree."""
    # Each stack holds, top last, what remains of its tree in order: (level, id) for a whole
    # node not yet opened, or an Entry.
    sa: list = [(nodes.load_node(a).level, a)]
    sb: list = [(nodes.load_node(b).level, b)]

    def expand(stack: list) -> None:
        level, nid = stack.pop()
        node = nodes.load_node(nid)
        if node.level == 0:
            stack.extend(reversed(node.items))
        else:
            stack.extend((node.level - 1, c.id) for c in reversed(node.items))

    while sa and sb:
        x, y = sa[-1], sb[-1]
        xn, yn = isinstance(x, tuple), isinstance(y, tuple)
        if xn and yn:
            if x[1] == y[1]:
                sa.pop()
                sb.pop()
            elif x[0] >= y[0]:
                expand(sa)
            else:
                expand(sb)
        elif xn:
            expand(sa)
        elif yn:
            expand(sb)
        elif x.path == y.path:
            sa.pop()
            sb.pop()
            if x != y:
                yield Change(x.path, x, y)
        elif x.path < y.path:
            sa.pop()
            yield Change(x.path, x, None)
        else:
            sb.pop()
            yield Change(y.path, None, y)
    while sa:
        if isinstance(sa[-1], tuple):
            expand(sa)
        else:
            e = sa.pop()
            yield Change(e.path, e, None)
    while sb:
        if isinstance(sb[-1], tuple):
            expand(sb)
        else:
            e = sb.pop()
            yield Change(e.path, None, e)


class TreeView:
    """One tree, bound to the nodes it lives in: what readers of a commit hold on to."""

    def __init__(self, nodes: NodeStore, root: str) -> None:
        self.nodes = nodes
        self.root = root

    def lookup(self, path: str) -> Entry | None:
        return lookup(self.nodes, self.root, path) if path else None

    def walk(self, path: str = "") -> Iterator[Entry]:
        return iter_under(self.nodes, self.root, path)

    def list_dir(self, path: str) -> Iterator[Entry]:
        return list_dir(self.nodes, self.root, path)

    def totals(self) -> tuple[int, int]:
        return totals(self.nodes, self.root)
