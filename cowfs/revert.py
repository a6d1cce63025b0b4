"""Revert and reset: undo a commit with a new one, or move a branch back.

A revert is a three-way merge whose base is the commit being undone and whose source is that
commit's (first) parent: what the commit changed is changed back, and a path changed again
since is a conflict, exactly as in a merge. A reset moves the branch with a compare-and-swap
and deletes nothing: the commits it leaves behind stay until `gc --keep-commits-since` drops
them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cowfs import merge3
from cowfs.commits import Commit
from cowfs.errors import NotFound, UsageError
from cowfs.tree import empty_tree

if TYPE_CHECKING:
    from cowfs.lake import Lake


def revert(
    lake: Lake,
    repo: str,
    branch: str,
    target: Commit,
    message: str = "",
    strategy: str = "fail",
    dry_run: bool = False,
) -> tuple[merge3.MergePlan, Commit | None]:
    parent = lake.get_commit(repo, target.parent) if target.parent else None
    parent_tree = parent.tree if parent else empty_tree(lake.store)

    def compute(head: Commit | None) -> tuple[merge3.MergePlan, tuple[str, ...], dict]:
        if head is None:
            raise NotFound(f"{repo}@{branch} has no commit: nothing to revert")
        if not merge3.is_ancestor(lake, repo, target, head):
            raise UsageError(f"commit {target.id} is not in the history of {repo}@{branch}")
        plan = merge3.plan_merge(lake.store, target.tree, head.tree, parent_tree, strategy)
        return plan, (), {"reverts": target.id}

    if dry_run:
        head = lake.head(repo, branch)
        return compute(head)[0], None
    plan, _, commit = merge3.land(
        lake,
        repo,
        branch,
        compute,
        message or f"revert {target.id}",
        strategy,
        f"revert of {target.id}",
    )
    return plan, commit


def reset(lake: Lake, repo: str, branch: str, target: Commit) -> Commit | None:
    """Point `repo@branch` at `target`; returns the head it had."""
    old = lake.head(repo, branch)
    if old is None:
        raise NotFound(f"no branch {repo}@{branch}")
    if target.state != "finished":
        raise UsageError(f"commit {target.id} is {target.state}: a branch names finished commits")
    lake.set_branch(repo, branch, target, expected=old.id)
    return old
