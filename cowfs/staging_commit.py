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
    lake: Lake, staging: Staging, message: str, reader: ChunkReader | None = None
) -> Commit | None:
    """Commit the staged writes to the branch (re-applied over any newer head). Returns the
    new head, or None when there was nothing staged and the branch has no commit."""
    own = reader is None
    reader = reader or ChunkReader(lake.store)
    try:
        with Chunker(lake.store) as chunker:
            changes = staging.changeset(reader, chunker)
    finally:
        if own:
            reader.close()
    if not changes:
        return lake.head(staging.repo, staging.branch)
    return lake.commit(staging.repo, staging.branch, changes, message)
