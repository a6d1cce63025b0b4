"""A mirroring change resolved against whatever head it lands on (issue 8, item 8), checked
against a plain dict model with hypothesis: no I/O, the prolly tree over memory."""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import given, settings

from cowfs import tree
from cowfs.changes import ChangeSet, resolve
from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.names import ancestors
from tests.memnodes import MemNodes

files = st.lists(st.sampled_from(["a", "b", "c", "d/e", "d/f", "g/h/i"]), unique=True, max_size=6)


def entry(path: str, size: int) -> Entry:
    return Entry(path, EntryType.FILE, 0o644, size, 0, bytes(32), (ChunkRef("ab" * 32, 0, size),))


def with_dirs(paths: dict[str, Entry]) -> dict[str, Entry]:
    out = dict(paths)
    for p in paths:
        for anc in ancestors(p):
            out.setdefault(anc, dir_entry(anc))
    return out


def mirror(dest: str, names: list[str], size: int) -> ChangeSet:
    puts = {f"{dest}/{n}": entry(f"{dest}/{n}", size) for n in names}
    return ChangeSet(puts=with_dirs(puts) | {dest: dir_entry(dest)}, mirror=[dest])


def land(nodes: MemNodes, root: str, changes: ChangeSet) -> str:
    return tree.apply(nodes, root, resolve(nodes, root, changes))


def files_under(nodes: MemNodes, root: str, path: str) -> set[str]:
    return {e.path for e in tree.iter_under(nodes, root, path) if e.is_file}


@settings(max_examples=150, deadline=None)
@given(files, files, files, st.sampled_from(["same", "x/same"]))
def test_racing_mirrors_leave_exactly_the_last(
    before: list[str], a: list[str], b: list[str], dest: str
) -> None:
    nodes = MemNodes()
    outside = {"keep.txt": entry("keep.txt", 7)}
    start = with_dirs({f"{dest}/{n}": entry(f"{dest}/{n}", 1) for n in before} | outside)
    root = tree.build(nodes, [start[k] for k in sorted(start)])
    # Both writers computed their change on `root`; A lands first, B retries onto A's head.
    after_a = land(nodes, root, mirror(dest, a, 2))
    after_b = land(nodes, after_a, mirror(dest, b, 3))
    assert files_under(nodes, after_b, dest) == {f"{dest}/{n}" for n in b}
    assert tree.lookup(nodes, after_b, "keep.txt") == outside["keep.txt"]
    # The same intent landed on the original head gives the same files: order-independent
    # (directories it had to create carry the time they were made).
    direct = land(nodes, root, mirror(dest, b, 3))
    assert [e for e in tree.iter_all(nodes, direct) if e.is_file] == [
        e for e in tree.iter_all(nodes, after_b) if e.is_file
    ]
