"""A change a writer wants to make, kept apart from the commit it will land on.

Writers describe intent (put these entries, delete these subtrees) rather than a finished tree,
so that when a compare-and-swap on the branch loses to another writer, the same intent is
re-applied to the new head: both changes land, neither is lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from cowfs.entries import Entry, dir_entry
from cowfs.errors import UsageError
from cowfs.names import ancestors
from cowfs.tree import Graft, NodeStore, iter_under, lookup


@dataclass
class ChangeSet:
    puts: dict[str, Entry] = field(default_factory=dict)
    #: Paths deleted with everything beneath them.
    deletes: list[str] = field(default_factory=list)
    #: Refuse deletes of paths the base does not have (`cowfs rm`), rather than ignore them.
    strict_deletes: bool = False
    #: Paths whose subtree must hold exactly the puts beneath them (a mirroring `put` of a
    #: directory; `""` is the root). Resolved against whatever head the change lands on, so a
    #: retry after a lost swap deletes what the *new* head has there, not what the old one had.
    mirror: list[str] = field(default_factory=list)
    #: A tree that replaces everything beneath its prefix (a mirroring `put` of a directory,
    #: built as it was read): like `mirror` with `puts`, but the entries stay in the store.
    graft: Graft | None = None

    def __bool__(self) -> bool:
        return bool(self.puts or self.deletes or self.mirror or self.graft)


def resolve(nodes: NodeStore, base: str, changes: ChangeSet) -> dict[str, Entry | None]:
    """The exact edits that turn tree `base` into the tree the change wants."""
    edits: dict[str, Entry | None] = {}
    now = time.time_ns()
    for path in changes.deletes:
        if not path:
            for e in iter_under(nodes, base, ""):
                edits[e.path] = None
            continue
        found = False
        for e in iter_under(nodes, base, path):
            edits[e.path] = None
            found = True
        if not found and changes.strict_deletes:
            raise UsageError(f"cannot remove /{path}: no such file or directory")
    for root in changes.mirror:
        for e in iter_under(nodes, base, root):
            if e.path != root and e.path not in changes.puts:
                edits[e.path] = None
    edits.update(changes.puts)
    for path in list(changes.puts):
        for anc in ancestors(path):
            if anc in edits:
                new = edits[anc]
                if new is not None and new.is_dir:
                    continue
                if new is not None:
                    raise UsageError(f"cannot put /{path}: /{anc} is a file in the same change")
            current = lookup(nodes, base, anc)
            if current is None or anc in edits or not current.is_dir:
                # Missing, deleted by this change, or a file the change replaces by a directory.
                edits[anc] = dir_entry(anc, mtime_ns=now)
    # A directory replaced by a file takes its old contents with it.
    for path, new in list(edits.items()):
        if new is not None and not new.is_dir:
            old = lookup(nodes, base, path)
            if old is not None and old.is_dir:
                for e in iter_under(nodes, base, path):
                    if e.path != path and e.path not in changes.puts:
                        edits[e.path] = None
    return edits
