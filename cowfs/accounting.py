"""Store-wide accounting (`cowfs stats`) and the per-repo damage report it and `repo list` show.

Store-wide commands read every repo, so each repo is read on its own: a repo whose records are
damaged (a ref naming a missing commit, a lost ref, a corrupt record) is reported as one line
and the rest of the store is still counted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cowfs import layout
from cowfs.errors import CowfsError
from cowfs.repos import branch_record_incarnation

if TYPE_CHECKING:
    from cowfs.lake import Lake


def repo_damage(lake: Lake, repo: str) -> list[str]:
    """Refs naming missing or unreadable commits, and branches that lost their ref."""
    out: list[str] = []
    try:
        branches = lake.branches(repo)
    except CowfsError as e:
        return [f"repo {repo}: {e}"]
    for name, cid in branches:
        try:
            lake.get_commit(repo, cid)
        except CowfsError as e:
            out.append(f"branch {repo}@{name} names commit {cid}: {e}")
    have = {name for name, _ in branches}
    inc = lake.incarnation(repo)
    for key, _ in lake.objects.list(layout.branch_records_prefix(repo)):
        name = layout.last_part(key)
        if name in have:
            continue
        try:
            data = lake.objects.get(key)
        except CowfsError:
            continue
        if branch_record_incarnation(data) == inc:
            msg = lake.lost_branch(repo, name)
            if msg:
                out.append(msg)
    return out


def stats(lake: Lake) -> dict[str, Any]:
    chunks = stored_chunks = trees = stored_trees = 0
    for _, size in lake.objects.list(layout.CHUNKS):
        chunks += 1
        stored_chunks += size
    for _, size in lake.objects.list(layout.TREES):
        trees += 1
        stored_trees += size
    commits = logical = head_bytes = head_files = 0
    damaged: list[str] = []
    repos = lake.list_repos(damaged)
    for r in repos:
        name = r["name"]
        try:
            for key, _ in lake.objects.list(layout.commits_prefix(name)):
                c = lake.live_commit(name, layout.last_part(key))
                if c is None:
                    continue  # left by a writer killed while its repo was deleted
                commits += 1
                logical += c.bytes
            for _, cid in lake.branches(name):
                c = lake.live_commit(name, cid)
                if c is not None:
                    head_bytes += c.bytes
                    head_files += c.files
        except CowfsError as e:
            damaged.append(f"repo {name}: {e}")
            continue
        damaged.extend(repo_damage(lake, name))
    stored = stored_chunks + stored_trees
    return {
        "store": lake.url,
        "repos": len(repos),
        "commits": commits,
        "chunks": chunks,
        "tree_nodes": trees,
        "logical_bytes": logical,
        "head_bytes": head_bytes,
        "head_files": head_files,
        "stored_bytes": stored,
        "stored_chunk_bytes": stored_chunks,
        "stored_tree_bytes": stored_trees,
        "dedup_ratio": round(logical / stored, 3) if stored else None,
        "damaged": damaged,
    }
