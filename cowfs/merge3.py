"""Three-way merge over prolly trees: what the source changed since the merge base, applied to
the destination, with paths both sides changed differently reported as conflicts.

The cost follows the two diffs (base -> dest, base -> source), never the size of the trees:
`tree.diff` skips every subtree both sides share.

Rules, per path:
- changed on the source only: the source's version applies;
- changed on both to the same content (or both to a directory): nothing to do;
- a directory deleted on one side and still a directory on the other: no conflict of its own
  (the paths beneath it decide);
- changed on both differently: a conflict, listed with the base's and both sides' versions;
  `fail` refuses the merge, `source-wins` takes the source's, `dest-wins` keeps the dest's.
Then the structure is made whole: a directory one side deleted stays while the merged tree keeps
something beneath it, and a conflict decided for a file drops the other side's changes beneath
that path.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cowfs.changes import ChangeSet
from cowfs.commits import Commit
from cowfs.entries import Entry
from cowfs.errors import Conflict, CowfsError, UsageError
from cowfs.names import ancestors
from cowfs.tree import NodeStore, diff, iter_under, lookup

if TYPE_CHECKING:
    from cowfs.lake import Lake

STRATEGIES = ("fail", "source-wins", "dest-wins")
_RETRIES = 10


@dataclass(frozen=True)
class MergeConflict:
    path: str
    base: Entry | None
    dest: Entry | None
    source: Entry | None


@dataclass
class MergePlan:
    #: Exact edits to the destination's tree (None deletes that path).
    edits: dict[str, Entry | None] = field(default_factory=dict)
    conflicts: list[MergeConflict] = field(default_factory=list)

    def changeset(self) -> ChangeSet:
        return ChangeSet(
            puts={p: e for p, e in self.edits.items() if e is not None},
            deletes=[p for p, e in self.edits.items() if e is None],
        )


class MergeConflicts(CowfsError):
    """The merge (or revert) would conflict and the strategy is `fail`: nothing was committed."""

    def __init__(self, message: str, conflicts: list[MergeConflict]) -> None:
        super().__init__(message)
        self.conflicts = conflicts
        self.base: str | None = None


def _same(a: Entry | None, b: Entry | None) -> bool:
    if a is None or b is None:
        return a is b
    if a.is_dir and b.is_dir:
        return True  # a directory's mode and mtime never make a conflict
    return a.same_content(b)


def _dir_meets_delete(base: Entry | None, mine: Entry | None, theirs: Entry | None) -> bool:
    """One side deleted a directory that the other still has as a directory (its mode or mtime
    changed, or it was made again): no conflict of its own. The paths beneath decide, each on
    its own, and `_make_whole` keeps the directory while anything stays beneath it."""
    if base is None or not base.is_dir:
        return False
    return (mine is None and theirs is not None and theirs.is_dir) or (
        theirs is None and mine is not None and mine.is_dir
    )


def plan_merge(nodes: NodeStore, base: str, dest: str, source: str, strategy: str) -> MergePlan:
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown merge strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    ours = {c.path: c.new for c in diff(nodes, base, dest)}
    plan = MergePlan()
    # Paths decided for a non-directory: the other side's changes beneath them are dropped.
    blocked: list[str] = []
    for ch in diff(nodes, base, source):
        if any(ch.path.startswith(b + "/") for b in blocked):
            continue
        if ch.path not in ours:
            plan.edits[ch.path] = ch.new
            continue
        mine = ours[ch.path]
        if _same(mine, ch.new):
            continue
        if _dir_meets_delete(ch.old, mine, ch.new):
            if ch.new is None:
                plan.edits[ch.path] = None
            continue
        plan.conflicts.append(MergeConflict(ch.path, ch.old, mine, ch.new))
        if strategy == "source-wins":
            plan.edits[ch.path] = ch.new
            if ch.new is None or not ch.new.is_dir:
                blocked.append(ch.path)
        elif strategy == "dest-wins" and (mine is None or not mine.is_dir):
            blocked.append(ch.path)
    if strategy == "dest-wins":
        _drop_blocked(plan, blocked)
    _make_whole(nodes, dest, plan)
    return plan


def _drop_blocked(plan: MergePlan, blocked: list[str]) -> None:
    for path in list(plan.edits):
        if any(path.startswith(b + "/") for b in blocked):
            del plan.edits[path]


def _make_whole(nodes: NodeStore, dest: str, plan: MergePlan) -> None:
    """Keep a deleted directory that still has entries beneath it, and drop puts beneath a path
    the merged tree holds as a file (the conflict there was decided for the file)."""

    def merged(path: str) -> Entry | None:
        return plan.edits[path] if path in plan.edits else lookup(nodes, dest, path)

    for path, e in list(plan.edits.items()):
        if e is not None and any(
            (a := merged(anc)) is not None and not a.is_dir for anc in ancestors(path)
        ):
            del plan.edits[path]
    for path, e in list(plan.edits.items()):
        if e is None and path in plan.edits:
            old = lookup(nodes, dest, path)
            if old is not None and old.is_dir and _keeps_children(nodes, dest, plan, path):
                del plan.edits[path]
                for anc in ancestors(path):
                    if plan.edits.get(anc, False) is None:
                        del plan.edits[anc]


def _keeps_children(nodes: NodeStore, dest: str, plan: MergePlan, path: str) -> bool:
    for e in iter_under(nodes, dest, path):
        if e.path != path and plan.edits.get(e.path, e) is not None:
            return True
    return any(p.startswith(path + "/") and e is not None for p, e in plan.edits.items())


def merge_base(lake: Lake, repo: str, a: Commit, b: Commit) -> Commit | None:
    """The nearest common ancestor: breadth-first from both sides at once, so the walk stops
    at the first commit both reach, not at the root of history."""
    seen: dict[str, set[str]] = {}
    queues = {"a": deque([a.id]), "b": deque([b.id])}
    while queues["a"] or queues["b"]:
        for side, other in (("a", "b"), ("b", "a")):
            q = queues[side]
            for _ in range(len(q)):
                cid = q.popleft()
                sides = seen.setdefault(cid, set())
                if side in sides:
                    continue
                sides.add(side)
                if other in sides:
                    return lake.get_commit(repo, cid)
                q.extend(lake.get_commit(repo, cid).parents)
    return None


def is_ancestor(lake: Lake, repo: str, maybe: Commit, of: Commit) -> bool:
    seen: set[str] = set()
    todo = [of.id]
    while todo:
        cid = todo.pop()
        if cid == maybe.id:
            return True
        if cid in seen:
            continue
        seen.add(cid)
        todo.extend(lake.get_commit(repo, cid).parents)
    return False


@dataclass
class MergeResult:
    plan: MergePlan
    base: Commit | None
    dest: Commit | None
    source: Commit
    commit: Commit | None
    up_to_date: bool = False


def _conflict_error(what: str, conflicts: list[MergeConflict]) -> MergeConflicts:
    shown = ", ".join("/" + c.path for c in conflicts[:5])
    more = f" and {len(conflicts) - 5} more" if len(conflicts) > 5 else ""
    return MergeConflicts(
        f"{what}: {len(conflicts)} conflicting paths ({shown}{more}); nothing was committed; "
        "pick --strategy source-wins or dest-wins",
        conflicts,
    )


def land(
    lake: Lake,
    repo: str,
    branch: str,
    compute: Callable[[Commit | None], tuple[MergePlan, tuple[str, ...], dict]],
    message: str,
    strategy: str,
    what: str,
) -> tuple[MergePlan, Commit | None, Commit | None]:
    """Compute a plan against the branch head and commit it only over that very head; when the
    head moved meanwhile, compute again (a merge is not a change set that can be re-applied)."""
    for _ in range(_RETRIES):
        head = lake.head(repo, branch)
        plan, parents, extra = compute(head)
        if plan.conflicts and strategy == "fail":
            raise _conflict_error(what, plan.conflicts)
        try:
            commit = lake.commit(
                repo,
                branch,
                plan.changeset(),
                message,
                allow_empty=True,
                extra=extra,
                extra_parents=parents,
                expected_head=head.id if head else None,
            )
        except Conflict as e:
            if "moved while this change was computed" in str(e):
                continue
            raise
        return plan, head, commit
    raise Conflict(f"{repo}@{branch} kept moving during the {what}: retry")


def merge(
    lake: Lake,
    repo: str,
    source: Commit,
    branch: str,
    strategy: str = "fail",
    dry_run: bool = False,
    message: str = "",
    source_name: str = "",
) -> MergeResult:
    """Merge commit `source` into `repo@branch` with a commit whose parents are both heads."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown merge strategy {strategy!r}: use {', '.join(STRATEGIES)}")
    from cowfs.tree import empty_tree

    state: dict = {}

    def compute(head: Commit | None) -> tuple[MergePlan, tuple[str, ...], dict]:
        if head is None:
            raise UsageError(f"{repo}@{branch} has no commit to merge into")
        base = merge_base(lake, repo, head, source)
        state.update(base=base, head=head)
        base_tree = base.tree if base else empty_tree(lake.store)
        plan = plan_merge(lake.store, base_tree, head.tree, source.tree, strategy)
        return plan, (source.id,), {"merged": source.id}

    head = lake.head(repo, branch)
    if head is not None and is_ancestor(lake, repo, source, head):
        return MergeResult(MergePlan(), source, head, source, None, up_to_date=True)
    if dry_run:
        plan, _, _ = compute(head)
        return MergeResult(plan, state["base"], head, source, None)
    label = source_name or source.id
    try:
        plan, head, commit = land(
            lake,
            repo,
            branch,
            compute,
            message or f"merge {label} into {branch}",
            strategy,
            "merge",
        )
    except MergeConflicts as e:
        e.base = state["base"].id if state.get("base") else None
        raise
    return MergeResult(plan, state.get("base"), head, source, commit)
