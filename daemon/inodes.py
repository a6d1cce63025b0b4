"""Inode numbers for what the kernel has been told about, with the kernel's lookup counts.

A node is named by a key: a tuple for the fixed levels (root, `.ids`, a repo, a global ID) or
`(view key, path)` inside a view. The kernel holds a count of lookups per inode and returns them
with `forget`; a node is dropped when that count and its open handles both reach zero, so the
table holds what the kernel holds, not everything ever listed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyfuse3

ROOT = pyfuse3.ROOT_INODE


@dataclass(eq=False, slots=True)
class Node:
    """One inode the kernel holds: slotted (no per-node `__dict__`), since the kernel may hold
    millions (docs/mount.md, *Memory*)."""

    ino: int
    key: tuple
    kind: str  # "root", "ids", "repo", "gid", "view"
    view: Any = None
    path: str = ""
    lookups: int = 0
    opens: int = 0
    #: For view nodes: the parent's inode and this node's name, to invalidate its dentry.
    parent: int = 0
    name: bytes = b""
    #: Unlinked while open (or replaced by a rename): `st_nlink` 0, no lookup finds it.
    unlinked: bool = False


class InodeTable:
    def __init__(self) -> None:
        self._next = ROOT + 1
        self._by_key: dict[tuple, Node] = {}
        self._by_ino: dict[int, Node] = {}
        root = Node(ROOT, ("root",), "root", lookups=1)
        self._by_key[root.key] = root
        self._by_ino[ROOT] = root

    def __len__(self) -> int:
        return len(self._by_ino)

    def get(self, ino: int) -> Node | None:
        return self._by_ino.get(ino)

    def nodes(self) -> list[Node]:
        return list(self._by_ino.values())

    def by_key(self, key: tuple) -> Node | None:
        return self._by_key.get(key)

    def ensure(
        self,
        key: tuple,
        kind: str,
        view: Any = None,
        path: str = "",
        parent: int = 0,
        name: bytes = b"",
    ) -> Node:
        node = self._by_key.get(key)
        if node is None:
            node = Node(self._next, key, kind, view, path, parent=parent, name=name)
            self._next += 1
            self._by_key[key] = node
            self._by_ino[node.ino] = node
        elif parent:
            node.parent, node.name = parent, name
        return node

    def ref(self, node: Node, n: int = 1) -> None:
        node.lookups += n

    def forget(self, ino: int, n: int) -> None:
        node = self._by_ino.get(ino)
        if node is None or ino == ROOT:
            return
        node.lookups = max(0, node.lookups - n)
        self.maybe_drop(node)

    def maybe_drop(self, node: Node) -> None:
        if node.lookups == 0 and node.opens == 0 and node.ino != ROOT:
            self._by_ino.pop(node.ino, None)
            if self._by_key.get(node.key) is node:
                del self._by_key[node.key]

    def nodes_of_view(self, view_key: tuple) -> list[Node]:
        return [n for n in self._by_ino.values() if n.kind == "view" and n.key[0] == view_key]

    def rekey(self, view_key: tuple, old: str, new: str) -> None:
        """After a rename, the inodes under `old` (the kernel keeps them) answer for `new`."""
        prefix = old + "/"
        moved = [
            n for n in self.nodes_of_view(view_key) if n.path == old or n.path.startswith(prefix)
        ]
        for n in moved:
            if self._by_key.get(n.key) is n:
                del self._by_key[n.key]
        for n in moved:
            n.path = new + n.path[len(old) :]
            n.key = (view_key, n.path)
            stale = self._by_key.get(n.key)
            if stale is not None:
                stale.key = (view_key, "\x00dead", stale.ino)
                self._by_key[stale.key] = stale
            self._by_key[n.key] = n

    def detach(self, view_key: tuple, path: str, kept: str | None = None) -> None:
        """A removed path: its inode lives on for open handles but no lookup finds it.

        `kept` is where the staging area keeps the file for those handles (see
        `Staging.unlink`); the node answers for it from then on."""
        node = self._by_key.get((view_key, path))
        if node is not None:
            del self._by_key[node.key]
            node.key = (view_key, "\x00dead", node.ino)
            node.unlinked = True
            if kept is not None:
                node.path = kept
            self._by_key[node.key] = node
            self.maybe_drop(node)
