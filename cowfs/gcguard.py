"""The writer's half of the garbage-collection protocol: called right before every swap that
makes a commit reachable (a branch move, a branch or tag create).

The writer reads the collector's newest run, and for every object its new head references
beyond the old head: refuses to swap if that object is being swept right now or was swept since
this node cached it as present (the retry uploads it again), and otherwise names the candidates
it references in a rescue record so the sweep that would delete them keeps them. The whole read
must finish within half the collector's window; a slower writer reads again. The argument that
this loses no chunk of a finished commit is in docs/architecture.md, "Garbage collection".
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable
from typing import TYPE_CHECKING

from cowfs import gcstate, layout
from cowfs.commits import Commit
from cowfs.config import gc_window_s
from cowfs.errors import Conflict, NotFound
from cowfs.tree import NodeStore

if TYPE_CHECKING:
    from cowfs.lake import Lake

#: Tests switch the guard off to show what it prevents; nothing else may.
ENABLED = True


class SweptUnderWriter(Conflict):
    """Objects this commit reuses were swept by the collector: nothing landed; retry."""


def fresh_objects(nodes: NodeStore, old: str | None, new: str) -> set[str]:
    """Keys of the tree nodes and chunks reachable from `new` that `old` may not reach.

    Walks both trees as `tree.diff` does, skipping equal subtrees, so the cost follows the
    difference. A node opened on the new side counts as fresh even if the old tree holds it
    elsewhere: over-counting only costs a set lookup.
    """
    out: set[str] = set()
    sb: list = [(nodes.load_node(new).level, new)]
    sa: list = [(nodes.load_node(old).level, old)] if old else []

    def expand(stack: list, fresh: bool) -> None:
        _, nid = stack.pop()
        node = nodes.load_node(nid)
        if fresh:
            out.add(layout.tree_key(nid))
        if node.level == 0:
            stack.extend(reversed(node.items))
        else:
            stack.extend((node.level - 1, c.id) for c in reversed(node.items))

    def take(e: object) -> None:
        for c in getattr(e, "chunks", ()) or ():
            out.add(layout.chunk_key(c.id))

    while sb:
        y = sb[-1]
        if isinstance(y, tuple):
            if sa and isinstance(sa[-1], tuple) and sa[-1][1] == y[1]:
                sa.pop()
                sb.pop()
            elif sa and isinstance(sa[-1], tuple) and sa[-1][0] >= y[0]:
                expand(sa, False)
            else:
                expand(sb, True)
            continue
        if sa and isinstance(sa[-1], tuple):
            expand(sa, False)
            continue
        x = sa[-1] if sa else None
        if x is not None and x.path == y.path:
            sa.pop()
            sb.pop()
            if x != y:
                take(y)
        elif x is not None and x.path < y.path:
            sa.pop()
        else:
            sb.pop()
            take(y)
    return out


def _closure_within(lake: Lake, candidates: frozenset[str], start: Iterable[str]) -> set[str]:
    """The candidates reachable from `start` through candidates only.

    A listed object that is not a candidate was marked, and so was everything it reaches, so
    the walk stops there; objects the run never listed are in `start` already (they are new
    in this commit).
    """
    todo = [k for k in start if k in candidates]
    out: set[str] = set()
    while todo:
        key = todo.pop()
        if key in out:
            continue
        out.add(key)
        kind = layout.object_kind_of_key(key)
        refs: list[str] = []
        try:
            if kind == "tree":
                node = lake.store.load_node(layout.oid_of(key))
                if node.level == 0:
                    refs = [layout.chunk_key(c.id) for e in node.items for c in e.chunks or ()]
                else:
                    refs = [layout.tree_key(c.id) for c in node.items]
            elif kind == "commit":
                repo, cid = layout.parse_commit_key(key)
                c = lake.get_commit(repo, cid)
                refs = [layout.tree_key(c.tree)] + [layout.commit_key(repo, p) for p in c.parents]
        except NotFound:
            continue
        todo.extend(r for r in refs if r in candidates and r not in out)
    return out


def before_swap(
    lake: Lake,
    repo: str,
    new_tree: str,
    old_tree: str | None,
    commit_keys: Iterable[str] = (),
    writer: str | None = None,
) -> None:
    """Make the objects of a head about to be swapped in safe from the collector, or refuse."""
    if not ENABLED:
        return
    objects = lake.objects
    fresh: set[str] | None = None
    window = gc_window_s()
    writer = writer or uuid.uuid4().hex
    while True:
        started = time.monotonic()
        runs = gcstate.list_runs(objects)
        if not runs:
            return
        records = [r for r in (gcstate.load_run(objects, n) for n in runs) if r is not None]
        if not records or not any(r.candidates or r.sweep for r in records):
            return
        if fresh is None:
            fresh = fresh_objects(lake.store, old_tree, new_tree) | set(commit_keys)
        newest = records[-1]
        _refuse_swept(lake, records, fresh)
        rescue = _closure_within(lake, newest.candidates, fresh)
        if rescue:
            gcstate.put_rescue(objects, newest.run, writer, rescue)
        if window == 0 or time.monotonic() - started < window / 2:
            return


def _refuse_swept(lake: Lake, records: list[gcstate.RunRecord], fresh: set[str]) -> None:
    objects = lake.objects
    newest = records[-1].run
    gone: set[str] = set()
    for rec in records:
        swept = gcstate.load_swept(objects, rec.run)
        hit = fresh & (swept.deleted if swept is not None else rec.sweep)
        if not hit:
            continue
        if swept is None and rec.run == newest:
            for key in hit:
                lake.store.index.forget_present(key)
            raise SweptUnderWriter(
                f"collector run {rec.run} is sweeping {len(hit)} objects this commit reuses "
                f"(e.g. {min(hit)}): nothing was committed; retry once it has finished"
            )
        gone.update(k for k in hit if not objects.exists(k))
    if gone:
        for key in gone:
            lake.store.index.forget_present(key)
        raise SweptUnderWriter(
            f"{len(gone)} objects this commit reuses were garbage-collected after this node "
            f"cached them (e.g. {min(gone)}): nothing was committed; retry to upload them again"
        )


def guard_commit(lake: Lake, commit: Commit, old_tree: str | None) -> None:
    """`before_swap` for an existing commit made reachable (branch create, reset, tag)."""
    before_swap(
        lake,
        commit.repo,
        commit.tree,
        old_tree,
        [layout.commit_key(commit.repo, commit.id)]
        + [layout.commit_key(commit.repo, p) for p in commit.parents],
    )
