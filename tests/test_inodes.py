"""The inode table against a plain model: nodes made, counted, forgotten, renamed and unlinked
in any order keep their numbers, paths and counts, and go exactly when nothing holds them."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from daemon.inodes import ROOT, InodeTable, Node


class FakeView:
    def __init__(self, key: tuple) -> None:
        self.key = key


@dataclass
class M:
    parent: int
    name: bytes
    view: int  # index into the machine's views; -1 outside a view
    root: bool = False  # the view's root
    lookups: int = 0
    opens: int = 0
    dead: str | None = None  # the path a detached node answers for


NAMES = st.sampled_from([b"a", b"b", b"c", b"d\xc3\xa9"])


class TableMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        # Tiny, so the index grows and wraps around and the name arena is compacted.
        self.t = InodeTable(index_size=4, compact_min=4)
        self.views = [FakeView(("c", "r", "1")), FakeView(("c", "r", "2"))]
        repo = self.t.child(self.t.get(ROOT), b"r", "repo")
        self.t.ref(repo)
        self.m: dict[int, M] = {ROOT: M(0, b"", -1, lookups=1), repo.ino: M(ROOT, b"r", -1)}
        self.m[repo.ino].lookups = 1
        self.repo = repo.ino

    # --- the model ---

    def kids(self, ino: int) -> int:
        return sum(1 for n in self.m.values() if n.parent == ino and n.dead is None)

    def path(self, ino: int) -> str:
        n = self.m[ino]
        if n.dead is not None:
            return n.dead
        parts = []
        while not self.m[ino].root:
            parts.append(self.m[ino].name)
            ino = self.m[ino].parent
        return b"/".join(reversed(parts)).decode()

    def drop_check(self, ino: int) -> None:
        while ino and ino != ROOT and ino in self.m:
            n = self.m[ino]
            if n.lookups or n.opens or self.kids(ino):
                return
            del self.m[ino]
            ino = n.parent if n.dead is None else 0

    def live_child(self, parent: int, name: bytes) -> int | None:
        for ino, n in self.m.items():
            if n.parent == parent and n.name == name and n.dead is None and not n.root:
                return ino
        return None

    def view_nodes(self, alive: bool = True) -> list[int]:
        return sorted(i for i, n in self.m.items() if n.view >= 0 and (n.dead is None) == alive)

    def is_under(self, ino: int, top: int) -> bool:
        while ino in self.m and self.m[ino].dead is None:
            if ino == top:
                return True
            if self.m[ino].root:
                return False
            ino = self.m[ino].parent
        return False

    # --- rules ---

    @rule(v=st.integers(0, 1), n=st.integers(1, 3))
    def look_up_view_root(self, v: int, n: int) -> None:
        node = self.t.view_root(self.views[v], self.repo, b"main%d" % v)
        self.t.ref(node, n)
        for ino, m in self.m.items():
            if m.root and m.view == v:
                assert node.ino == ino
                break
        else:
            assert node.ino not in self.m
            self.m[node.ino] = M(self.repo, b"main%d" % v, v, root=True)
        self.m[node.ino].lookups += n

    @precondition(lambda self: self.view_nodes())
    @rule(data=st.data(), name=NAMES, n=st.integers(1, 3))
    def look_up_child(self, data: st.DataObject, name: bytes, n: int) -> None:
        parent = data.draw(st.sampled_from(self.view_nodes()))
        node = self.t.child(Node(self.t, parent), name)
        self.t.ref(node, n)
        known = self.live_child(parent, name)
        if known is not None:
            assert node.ino == known
        else:
            assert node.ino not in self.m
            self.m[node.ino] = M(parent, name, self.m[parent].view)
        self.m[node.ino].lookups += n

    @precondition(lambda self: len(self.m) > 2)
    @rule(data=st.data(), n=st.integers(1, 4))
    def forget(self, data: st.DataObject, n: int) -> None:
        ino = data.draw(st.sampled_from(sorted(self.m)))
        self.t.forget(ino, n)
        if ino != ROOT:
            self.m[ino].lookups = max(0, self.m[ino].lookups - n)
            self.drop_check(ino)

    @precondition(lambda self: self.view_nodes() + self.view_nodes(False))
    @rule(data=st.data())
    def open_handle(self, data: st.DataObject) -> None:
        ino = data.draw(st.sampled_from(self.view_nodes() + self.view_nodes(False)))
        self.t.get(ino).opens += 1
        self.m[ino].opens += 1

    @precondition(lambda self: any(n.opens for n in self.m.values()))
    @rule(data=st.data())
    def close_handle(self, data: st.DataObject) -> None:
        ino = data.draw(st.sampled_from(sorted(i for i, n in self.m.items() if n.opens)))
        node = self.t.get(ino)
        node.opens -= 1
        self.t.maybe_drop(node)
        self.m[ino].opens -= 1
        self.drop_check(ino)

    def leaves(self) -> list[int]:
        """What unlink and rmdir may remove: a directory only once nothing in it is left."""
        return [i for i in self.view_nodes() if not self.m[i].root and not self.kids(i)]

    @precondition(lambda self: self.leaves())
    @rule(data=st.data(), kept=st.booleans())
    def unlink(self, data: st.DataObject, kept: bool) -> None:
        ino = data.draw(st.sampled_from(self.leaves()))
        n = self.m[ino]
        path = self.path(ino)
        self.t.detach(self.views[n.view], path, f"\x00orphan/{ino}" if kept else None)
        parent = n.parent
        n.dead = f"\x00orphan/{ino}" if kept else path
        self.drop_check(parent)
        self.drop_check(ino)

    @precondition(lambda self: any(not self.m[i].root for i in self.view_nodes()))
    @rule(data=st.data(), name=NAMES)
    def rename(self, data: st.DataObject, name: bytes) -> None:
        ino = data.draw(st.sampled_from([i for i in self.view_nodes() if not self.m[i].root]))
        n = self.m[ino]
        targets = [
            i for i in self.view_nodes() if self.m[i].view == n.view and not self.is_under(i, ino)
        ]
        if not targets:
            return
        new_parent = data.draw(st.sampled_from(targets))
        old = self.path(ino)
        new = "/".join(p for p in (self.path(new_parent), name.decode()) if p)
        if old == new:
            return
        stale = self.live_child(new_parent, name)
        if stale is not None and self.kids(stale):
            return  # a rename over a non-empty directory fails
        self.t.rekey(self.views[n.view], old, new, new_parent, name, None)
        if stale is not None:
            s_parent = self.m[stale].parent
            self.m[stale].dead = new
            old_parent, n.parent, n.name = n.parent, new_parent, name
            self.drop_check(s_parent)
            self.drop_check(stale)
        else:
            old_parent, n.parent, n.name = n.parent, new_parent, name
        self.drop_check(old_parent)

    # --- what must hold ---

    @invariant()
    def same_nodes(self) -> None:
        assert len(self.t) == len(self.m)
        for ino, n in self.m.items():
            node = self.t.get(ino)
            assert node is not None
            assert (node.lookups, node.opens) == (n.lookups, n.opens)
            if n.view < 0:
                continue
            assert node.view is self.views[n.view]
            assert node.unlinked == (n.dead is not None)
            path = self.path(ino)
            assert node.path == path
            if n.dead is None:
                assert self.t.find(self.views[n.view], path) == node
            else:
                found = self.t.find(self.views[n.view], path) if n.dead[:1] != "\x00" else None
                assert found is None or found.ino != ino
        held = {v.key for v in self.t.held_views()}
        assert held == {self.views[n.view].key for n in self.m.values() if n.view >= 0}


TableMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_inode_table_matches_model = TableMachine.TestCase


def test_many_nodes_reuse_freed_numbers() -> None:
    """A walk's worth of nodes, all forgotten, then another: numbers are reused, not grown."""
    t = InodeTable()
    view = FakeView(("c", "r", "x"))
    repo = t.child(t.get(ROOT), b"r", "repo")
    vroot = t.view_root(view, repo.ino, b"main")
    t.ref(vroot)
    made = []
    for d in range(20):
        dnode = t.child(vroot, b"d%02d" % d)
        t.ref(dnode)
        for f in range(200):
            node = t.child(dnode, b"f%04d" % f)
            t.ref(node)
            made.append(node.ino)
        made.append(dnode.ino)
    assert t.find(view, "d07/f0123").path == "d07/f0123"
    top = max(made)
    for ino in made:
        t.forget(ino, 1)
    assert len(t) == 3  # root, repo, view root
    again = [t.child(vroot, b"e%04d" % i).ino for i in range(len(made))]
    assert max(again) <= top
