"""Deleting a repo with no lock server: a mark, then the removal, resumable at any point.

The repo record is marked `deleting` by compare-and-swap: from then on the repo is gone for
readers and writers (`Lake.repo_record`), and a writer that swapped a ref meanwhile undoes its
commit (`Lake._after_swap`). Its refs, branch records, commits and every marker they wrote are
then removed and purged from the node's index, and the record last. Chunks wait for garbage
collection. An interrupted delete leaves the mark, and running the delete again finishes it.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import TYPE_CHECKING

from cowfs import layout
from cowfs.errors import Conflict, NotFound, ObjectMissing
from cowfs.layout import repo_key
from cowfs.names import check_name
from cowfs.repos import CAS_TRIES

if TYPE_CHECKING:
    from cowfs.lake import Lake


def delete_repo(lake: Lake, name: str) -> None:
    check_name(name, "repo name")
    for _ in range(CAS_TRIES):
        got = lake._read_repo(name)
        if got is None:
            raise NotFound(f"no repo named {name}: see `cowfs repo list`")
        record, current = got
        if record.deleting:
            break
        marked = replace(record, deleting=True)
        if lake.objects.swap(repo_key(name), marked.to_bytes(), current.token):
            break
    else:
        raise Conflict(f"repo {name} kept changing while being deleted: retry")
    lake.forget_incarnation(name)
    for prefix in layout.repo_owned_prefixes(name):
        for key, _ in lake.objects.list(prefix):
            if prefix == layout.commits_prefix(name):
                for marker in markers_of(lake, key):
                    lake.objects.delete(marker)
            lake.objects.delete(key)
        lake.store.index.forget_prefix(prefix)
    lake.objects.delete(repo_key(name))


def markers_of(lake: Lake, key: str) -> list[str]:
    """The markers a commit record names, read leniently: a damaged record loses only its
    markers (which readers skip once dangling)."""
    try:
        d = json.loads(lake.objects.get(key))
        inputs = [(p["repo"], p["commit"]) for p in d.get("provenance", ())]
        return layout.commit_marker_keys(d["repo"], d["id"], d.get("global_id") or d["id"], inputs)
    except (ObjectMissing, ValueError, KeyError, TypeError, AttributeError):
        return []
