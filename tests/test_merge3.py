"""Pure parts of the history code over in-memory trees: the merge planner's structural rules,
and the guard's walk of what a new tree reaches beyond the old one."""

from __future__ import annotations

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings

from cowfs import layout
from cowfs.cli.lifecycle import parse_duration, parse_fraction
from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.errors import UsageError
from cowfs.gcguard import fresh_objects
from cowfs.merge3 import plan_merge
from cowfs.tree import build, iter_all
from tests.memnodes import MemNodes


def f(path: str, data: str) -> Entry:
    oid = (data.encode().hex() * 64)[:64].ljust(64, "0")
    return Entry(path, EntryType.FILE, 0o644, len(data), 0, data.encode(), (ChunkRef(oid, 0, 1),))


def tree_of(nodes: MemNodes, *entries: Entry) -> str:
    paths = {e.path for e in entries}
    dirs = {p.rsplit("/", 1)[0] for p in paths if "/" in p}
    return build(nodes, sorted([*entries, *(dir_entry(d) for d in dirs)], key=lambda e: e.path))


def test_one_sided_changes_apply_and_equal_changes_do_not_conflict() -> None:
    n = MemNodes()
    base = tree_of(n, f("a", "1"), f("b", "1"))
    dest = tree_of(n, f("a", "2"), f("b", "1"), f("same", "x"))
    src = tree_of(n, f("a", "1"), f("c", "3"), f("same", "x"))
    plan = plan_merge(n, base, dest, src, "fail")
    assert not plan.conflicts
    assert plan.edits == {"b": None, "c": f("c", "3")}


def test_conflicts_list_all_three_versions_and_strategies_decide() -> None:
    n = MemNodes()
    base = tree_of(n, f("a", "base"))
    dest = tree_of(n, f("a", "dest"))
    src = tree_of(n, f("a", "src"))
    (c,) = plan_merge(n, base, dest, src, "fail").conflicts
    assert (c.base, c.dest, c.source) == (f("a", "base"), f("a", "dest"), f("a", "src"))
    assert plan_merge(n, base, dest, src, "source-wins").edits == {"a": f("a", "src")}
    assert plan_merge(n, base, dest, src, "dest-wins").edits == {}
    with pytest.raises(UsageError):
        plan_merge(n, base, dest, src, "ours")


def test_a_deleted_directory_stays_while_the_other_side_adds_beneath_it() -> None:
    n = MemNodes()
    base = tree_of(n, f("d/x", "1"))
    dest = tree_of(n, f("d/x", "1"), f("d/new", "2"))
    src = tree_of(n, f("other", "3"))  # the source deleted d/ and everything in it
    plan = plan_merge(n, base, dest, src, "fail")
    assert plan.edits == {"d/x": None, "other": f("other", "3")}


def test_a_directory_deleted_on_one_side_and_remade_on_the_other_is_no_conflict() -> None:
    """Found by the history model: put a/x, revert it, put it again (a/ is made again, with a
    new mtime), then revert the first put. The directory entry alone must not conflict, and
    under `source-wins` must not block the deletes beneath it."""
    n = MemNodes()
    base = build(n, [dir_entry("a", mtime_ns=1), f("a/x", "1")])
    remade = build(n, [dir_entry("a", mtime_ns=2), f("a/x", "1")])
    gone = build(n, [])
    for strategy in ("fail", "source-wins", "dest-wins"):
        plan = plan_merge(n, base, remade, gone, strategy)
        assert not plan.conflicts
        assert plan.edits == {"a": None, "a/x": None}
        plan = plan_merge(n, base, gone, remade, strategy)  # the other way round
        assert not plan.conflicts and plan.edits == {}
    grown = build(n, [dir_entry("a", mtime_ns=2), f("a/x", "1"), f("a/y", "2")])
    plan = plan_merge(n, base, grown, gone, "fail")
    assert not plan.conflicts
    assert plan.edits == {"a/x": None}  # a/ stays: a/y is still in it


def test_a_file_that_wins_over_a_directory_drops_the_other_sides_children() -> None:
    n = MemNodes()
    base = tree_of(n, f("p", "file"))
    dest = tree_of(n, f("p", "changed"))
    src = tree_of(n, f("p/inside", "1"))  # the source made p a directory
    plan = plan_merge(n, base, dest, src, "dest-wins")
    assert plan.edits == {}
    plan = plan_merge(n, base, dest, src, "source-wins")
    assert plan.edits["p/inside"] == f("p/inside", "1") and plan.edits["p"].is_dir


def test_durations_and_fractions() -> None:
    assert parse_duration("90d", "x") == 90 * 86400
    assert parse_duration("24h", "x") == 86400 and parse_duration("0", "x") == 0
    assert parse_fraction("5%") == 0.05
    for bad in ("1x", "-3h", ""):
        with pytest.raises(UsageError):
            parse_duration(bad, "--grace")
    with pytest.raises(UsageError):
        parse_fraction("0%")


def _reach(n: MemNodes, root: str) -> set[str]:
    out = {layout.tree_key(root)}
    stack = [root]
    while stack:
        node = n.load_node(stack.pop())
        if node.level == 0:
            out.update(layout.chunk_key(c.id) for e in node.items for c in e.chunks or ())
        else:
            for c in node.items:
                out.add(layout.tree_key(c.id))
                stack.append(c.id)
    return out


keys = st.lists(st.text("abcdefg", min_size=1, max_size=5), max_size=150, unique=True)


@settings(max_examples=40, deadline=None)
@given(old=keys, new=keys, data=st.sampled_from(["1", "2"]))
def test_fresh_objects_covers_everything_new(old: list[str], new: list[str], data: str) -> None:
    n = MemNodes()
    a = build(n, [f(p, "1") for p in sorted(old)])
    b = build(n, [f(p, data) for p in sorted(new)])
    assert fresh_objects(n, a, b) >= _reach(n, b) - _reach(n, a)
    assert fresh_objects(n, None, b) >= _reach(n, b)
    assert len(list(iter_all(n, b))) == len(new)
