"""Opening a branch for writing and sealing its staged writes into one commit.

Both the mount (through its control socket) and the CLI (when no mount runs) come here, so a
commit means the same thing whichever process makes it.
"""

from __future__ import annotations

from cowfs.chunking import Chunker
from cowfs.commits import Commit
from cowfs.lake import Lake
from cowfs.names import check_name
from cowfs.reader import ChunkReader
from cowfs.staging import Staging
from cowfs.tree import empty_tree


def open_write(lake: Lake, repo: str, branch: str) -> Staging:
    """Open (or reopen) `repo@branch` for writing, copy-on-write over its head right now."""
    lake.repo(repo)
    check_name(branch, "branch name")
    if Staging.exists(lake.url, repo, branch):
        return Staging.open(lake.store, lake.url, repo, branch)
    head = lake.head(repo, branch)
    tree = head.tree if head else empty_tree(lake.store)
    return Staging.start(lake.store, lake.url, repo, branch, head.id if head else None, tree)


def seal(
    lake: Lake,
    staging: Staging,
    message: str,
    reader: ChunkReader | None = None,
    keep_open: bool = False,
) -> Commit | None:
    """Commit the staged writes to the branch (re-applied over any newer head), then empty the
    area onto the new head (`keep_open`) or remove it. Returns the new head, or None when there
    was nothing staged and the branch has no commit.

    Writers are blocked for the whole seal, snapshot to clearing: the staging lock is held from
    before the changes are read until the area is emptied. A write(2) that was answered is
    therefore either in the commit or was made after it, into the emptied area (the same
    `Staging`, now over the new head); one that arrives while the area is being removed waits
    and is then refused with EROFS, never answered and dropped. Carrying late writes across
    instead would need every staged record re-based onto the new head, for a seal that is
    short next to the writes it seals.
    """
    own = reader is None
    reader = reader or ChunkReader(lake.store)
    try:
        with staging.lock:
            with Chunker(lake.store) as chunker:
                changes = staging.changeset(reader, chunker)
            if changes:
                head = lake.commit(staging.repo, staging.branch, changes, message)
            else:
                head = lake.head(staging.repo, staging.branch)
            if keep_open:
                tree = head.tree if head else empty_tree(lake.store)
                staging.reset(head.id if head else None, tree)
            else:
                staging.destroy()
            return head
    finally:
        if own:
            reader.close()
