"""The prolly tree against a plain sorted dict: same contents, canonical shape, cheap edits."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from cowfs import tree
from cowfs.entries import ChunkRef, Entry, EntryType
from tests.memnodes import MemNodes

names = st.text(alphabet="ab/.-é☕", min_size=1, max_size=8).map(
    lambda s: "/".join(p for p in s.split("/") if p) or "x"
)


def entry(path: str, size: int = 1) -> Entry:
    return Entry(path, EntryType.FILE, 0o644, size, 0, bytes(32), (ChunkRef("ab" * 32, 0, size),))


edit_lists = st.lists(st.tuples(names, st.one_of(st.none(), st.integers(0, 1000))), max_size=60)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(names, st.integers(0, 1000), max_size=300), edit_lists)
def test_apply_matches_a_dict_and_is_canonical(initial: dict[str, int], edits: list) -> None:
    nodes = MemNodes()
    root = tree.build(nodes, [entry(p, s) for p, s in sorted(initial.items())])
    model = dict(initial)
    changes: dict[str, Entry | None] = {}
    for path, size in edits:
        changes[path] = None if size is None else entry(path, size)
        if size is None:
            model.pop(path, None)
        else:
            model[path] = size
    new = tree.apply(nodes, root, changes)
    got = [(e.path, e.size) for e in tree.iter_all(nodes, new)]
    assert got == sorted(model.items())
    # The shape depends on the contents alone, not on the history that produced them.
    assert new == tree.build(nodes, [entry(p, s) for p, s in sorted(model.items())])
    assert tree.totals(nodes, new) == (len(model), sum(model.values()))
    for path in list(initial)[:20] + [p for p, _ in edits[:20]]:
        found = tree.lookup(nodes, new, path)
        assert (found.size if found else None) == model.get(path)


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(names, st.integers(0, 9), max_size=200),
    st.dictionaries(names, st.integers(0, 9), max_size=200),
)
def test_diff_matches_a_dict_diff(a: dict[str, int], b: dict[str, int]) -> None:
    nodes = MemNodes()
    ra = tree.build(nodes, [entry(p, s) for p, s in sorted(a.items())])
    rb = tree.build(nodes, [entry(p, s) for p, s in sorted(b.items())])
    got = [(c.path, c.kind) for c in tree.diff(nodes, ra, rb)]
    want = []
    for p in sorted(set(a) | set(b)):
        if p not in a:
            want.append((p, "added"))
        elif p not in b:
            want.append((p, "deleted"))
        elif a[p] != b[p]:
            want.append((p, "modified"))
    assert got == want


@settings(max_examples=150, deadline=None)
@given(st.sets(names, max_size=300), st.sampled_from(["", "a", "b", "a/b", "ab", "a.b"]))
def test_list_dir_and_iter_under(paths: set[str], d: str) -> None:
    nodes = MemNodes()
    root = tree.build(nodes, [entry(p) for p in sorted(paths)])
    prefix = d + "/" if d else ""
    children = sorted({p for p in paths if p.startswith(prefix) and "/" not in p[len(prefix) :]})
    assert [e.path for e in tree.list_dir(nodes, root, d)] == children
    under = sorted(p for p in paths if p == d or p.startswith(prefix))
    assert [e.path for e in tree.iter_under(nodes, root, d)] == under


def big_tree(nodes: MemNodes, n: int) -> str:
    return tree.build(
        nodes, sorted((entry(f"d{i % 100:02d}/f{i:06d}") for i in range(n)), key=lambda e: e.path)
    )


def test_one_file_added_to_100k_writes_a_handful_of_nodes() -> None:
    nodes = MemNodes()
    root = big_tree(nodes, 100_000)
    total = nodes.writes
    assert total > 1000
    nodes.writes = nodes.loads = 0
    new = tree.apply(nodes, root, {"d42/new-file": entry("d42/new-file")})
    assert nodes.writes <= 5
    assert nodes.loads <= 10
    nodes.loads = 0
    changes = list(tree.diff(nodes, root, new))
    assert [c.path for c in changes] == ["d42/new-file"]
    assert nodes.loads <= 10  # a diff walks the changed path only, not the tree


def test_list_dir_skips_subdirectories_contents() -> None:
    nodes = MemNodes()
    root = big_tree(nodes, 100_000)
    nodes.loads = 0
    assert len(list(tree.list_dir(nodes, root, ""))) == 0  # only files under d00..d99: no dirs
    paths = [f"d{i:02d}" for i in range(100)]
    root = tree.apply(nodes, root, {p: Entry(p, EntryType.DIR) for p in paths})
    nodes.loads = 0
    assert [e.path for e in tree.list_dir(nodes, root, "")] == paths
    assert nodes.loads < 100 * 4
