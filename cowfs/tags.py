"""Tags: immutable names for commits, created once and never moved.

A tag is `tags/<repo>/<tag>` holding `{"commit": …, "created": …, "message": …}`, written with a
create-only swap so two writers racing for one name cannot both win. Tags resolve wherever
branches do (`repo@v1.0:/path`, the mount's `/@v1.0`). A tag and a branch of one repo never share a
name (each create refuses the other's), so a name means one thing; should a race between the two
creates leave both, the branch wins in resolution (the order is branch, tag, commit id).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cowfs import layout
from cowfs.errors import AlreadyExists, NotFound, ObjectMissing
from cowfs.names import check_name
from cowfs.objectstore import ObjectStore

if TYPE_CHECKING:
    from cowfs.lake import Lake


@dataclass(frozen=True)
class Tag:
    repo: str
    name: str
    commit: str
    created: float
    message: str = ""


def get_tag(objects: ObjectStore, repo: str, name: str) -> Tag | None:
    try:
        raw = json.loads(objects.get(layout.tag_key(repo, name)))
    except ObjectMissing:
        return None
    return Tag(repo, name, raw["commit"], raw.get("created", 0.0), raw.get("message", ""))


def list_tags(objects: ObjectStore, repo: str) -> list[Tag]:
    out = []
    for key, _ in objects.list(layout.tags_prefix(repo)):
        tag = get_tag(objects, repo, layout.last_part(key))
        if tag is not None:
            out.append(tag)
    return out


def refuse_branch_named_like_tag(objects: ObjectStore, repo: str, branch: str) -> None:
    """Called before a branch is created: a name is a branch or a tag, never both."""
    if objects.exists(layout.tag_key(repo, branch)):
        raise AlreadyExists(
            f"{repo}@{branch} is a tag: a branch cannot have a tag's name "
            f"(see `cowfs tag list {repo}`)"
        )


def create_tag(lake: Lake, repo: str, name: str, commit: str, message: str = "") -> Tag:
    from cowfs import gcguard

    lake.repo(repo)
    check_name(name, "tag name")
    if lake.head_id(repo, name) is not None:
        raise AlreadyExists(f"{repo}@{name} is a branch: a tag cannot have a branch's name")
    target = lake.get_commit(repo, commit)
    if target.state != "finished":
        raise NotFound(f"commit {commit} in {repo} is {target.state}: only finished commits")
    tag = Tag(repo, name, commit, time.time(), message)
    record = {"commit": commit, "created": tag.created, "message": message}
    gcguard.guard_commit(lake, target, None)
    if not lake.objects.swap(layout.tag_key(repo, name), json.dumps(record).encode(), None):
        raise AlreadyExists(f"tag {repo}@{name} already exists: tags never move")
    return tag


def delete_tag(lake: Lake, repo: str, name: str) -> Tag:
    lake.repo(repo)
    tag = get_tag(lake.objects, repo, name)
    if tag is None:
        raise NotFound(f"no tag {repo}@{name}: see `cowfs tag list {repo}`")
    lake.objects.delete(layout.tag_key(repo, name))
    return tag
