"""Branches that lost their ref: store damage, told apart from branches that never existed.

A branch's record (`layout.branch_record_key`) is written when the branch is made and outlives
its ref; a record of the live incarnation with no ref behind it means the ref was deleted behind
cowfs' back. Writers refuse to start a new history there and readers say how to restore it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cowfs import layout
from cowfs.errors import CowfsError, ObjectMissing
from cowfs.layout import ref_key
from cowfs.repos import branch_record_incarnation

if TYPE_CHECKING:
    from cowfs.lake import Lake


def lost_branch(lake: Lake, repo: str, branch: str) -> str | None:
    """A message when `repo@branch` has no ref although it had a head, else None."""
    inc = lake.incarnation(repo)
    try:
        data = lake.objects.get(layout.branch_record_key(repo, branch))
    except ObjectMissing:
        return None
    if inc is None or branch_record_incarnation(data) != inc:
        return None
    if lake.head_id(repo, branch) is not None:
        return None
    newest = newest_commit_of(lake, repo, branch)
    restore = (
        f"restore it with `cowfs branch create {repo}@{branch} --from {repo}@{newest}`, or "
        if newest
        else ""
    )
    return (
        f"branch {repo}@{branch} had commits but its ref {ref_key(repo, branch)} is missing "
        f"(store damage): {restore}forget it with `cowfs branch delete {repo}@{branch}`"
    )


def newest_commit_of(lake: Lake, repo: str, branch: str) -> str | None:
    """The id of the newest finished commit made on `branch`: where a restore would start."""
    best: tuple[float, str] | None = None
    for key, _ in lake.objects.list(layout.commits_prefix(repo)):
        try:
            c = lake.get_commit(repo, layout.last_part(key))
        except CowfsError:
            continue
        if c.branch == branch and c.state == "finished" and (best is None or c.created > best[0]):
            best = (c.created, c.id)
    return best[1] if best else None
