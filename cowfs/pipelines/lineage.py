"""Lineage: what made a commit (upstream) and what came of it (downstream), across chains.

Upstream follows each commit's provenance; downstream follows the `downstream/` index the lake
writes beside every commit that has provenance. Both walk breadth-first and visit each commit
once, so a diamond of pipelines does not repeat itself.

`wait_pending` answers `cowfs wait`: which pipelines downstream of a global ID still owe it a
commit. A pipeline whose input has since moved past that ID's commit (the watcher runs the
newest head, not every intermediate one) owes nothing.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from cowfs.commits import Commit
from cowfs.errors import NotFound
from cowfs.lake import Lake
from cowfs.pipelines import records

DONE_STATES = ("finished", "failed")


@dataclass(frozen=True)
class Step:
    depth: int
    commit: Commit
    #: The commit this one was reached from (None for the start).
    via: str | None


def upstream(lake: Lake, start: Commit) -> list[Step]:
    return _walk(lake, start, lambda c: [lake.get_commit(p.repo, p.commit) for p in c.provenance])


def downstream(lake: Lake, start: Commit) -> list[Step]:
    return _walk(lake, start, lambda c: lake.downstream(c.repo, c.id))


def _walk(lake: Lake, start: Commit, nexts) -> list[Step]:
    out: list[Step] = []
    seen = {(start.repo, start.id)}
    todo: deque[Step] = deque([Step(0, start, None)])
    while todo:
        step = todo.popleft()
        out.append(step)
        for c in sorted(nexts(step.commit), key=lambda c: (c.repo, c.created)):
            if (c.repo, c.id) not in seen:
                seen.add((c.repo, c.id))
                todo.append(Step(step.depth + 1, c, f"{step.commit.repo}@{step.commit.id}"))
    return out


def _descends(lake: Lake, repo: str, newer: str, older: Commit) -> bool:
    """Whether commit `newer` of `repo` is `older` or has it as an ancestor."""
    try:
        c: Commit | None = lake.get_commit(repo, newer)
    except NotFound:
        return False
    while c is not None:
        if c.id == older.id:
            return True
        if c.created < older.created or c.parent is None:
            return False
        c = lake.get_commit(repo, c.parent)
    return False


def wait_pending(lake: Lake, global_id: str) -> tuple[list[Commit], list[str]]:
    """The commits of `global_id` so far, and the pipelines that still owe it one."""
    commits = lake.inspect(global_id)
    if not commits:
        raise NotFound(f"no commit carries global ID {global_id}")
    by_repo: dict[str, list[Commit]] = {}
    for c in commits:
        by_repo.setdefault(c.repo, []).append(c)
    pipelines = {p.name: p for p in records.list_pipelines(lake)}
    affected = set(by_repo)
    changed = True
    while changed:
        changed = False
        for p in pipelines.values():
            if p.name not in affected and any(i.repo in affected for i in p.spec.pfs_inputs()):
                affected.add(p.name)
                changed = True
    relevant = [
        p
        for p in pipelines.values()
        if p.name in affected and p.name not in _sources(by_repo, pipelines)
    ]
    settled: dict[str, bool] = {}

    def is_settled(name: str, depth: int = 0) -> bool:
        if name in settled:
            return settled[name]
        if depth > len(pipelines):
            return False
        p = pipelines[name]
        mine = by_repo.get(name, [])
        if any(c.state in DONE_STATES for c in mine):
            settled[name] = True
            return True
        ins = [(i, by_repo[i.repo]) for i in p.spec.pfs_inputs() if i.repo in by_repo]
        if not ins:
            ups = [
                i.repo for i in p.spec.pfs_inputs() if i.repo in pipelines and i.repo in affected
            ]
            result = all(is_settled(u, depth + 1) for u in ups)
            settled[name] = result
            return result
        finished_ins = []
        for _, cs in ins:
            fin = [c for c in cs if c.state == "finished"]
            if not fin:
                continue  # failed upstream: its branch never moved, nothing will run for it
            finished_ins.append(fin[0])
        if not finished_ins:
            settled[name] = True
            return True
        state = records.get_state(lake, name)
        processed = state.inputs if state else {}
        for inp, _ in ins:
            g = next((c for c in by_repo[inp.repo] if c.state == "finished"), None)
            pc = processed.get(inp.name)
            if g is None or pc is None:
                continue
            if pc != g.id and _descends(lake, inp.repo, pc, g):
                settled[name] = True
                return True
        settled[name] = False
        return False

    pending = [p.name for p in relevant if not is_settled(p.name)]
    return commits, sorted(pending)


def _sources(by_repo: dict[str, list[Commit]], pipelines: dict) -> set[str]:
    """Repos whose commit of this ID is the user's own write, not a pipeline's output."""
    return {
        r
        for r, cs in by_repo.items()
        if r not in pipelines or any(c.origin != "pipeline" for c in cs)
    }
