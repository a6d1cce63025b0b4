"""The lake: repos, branches and commits over a `Store`. This is the Python API.

Branch heads are the only mutable objects; every move is a compare-and-swap on the ref, retried
by re-applying the writer's `ChangeSet` to the new head when another writer won.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from cowfs import gcguard, layout, tags, tree
from cowfs.changes import ChangeSet, resolve
from cowfs.commits import Commit, Provenance, new_id
from cowfs.config import cache_dir_for, default_store_url
from cowfs.entries import Entry
from cowfs.errors import (
    AlreadyExists,
    Conflict,
    NotFound,
    ObjectMissing,
    StoreUnavailable,
    UsageError,
)
from cowfs.index import Index
from cowfs.layout import (
    MARKER,
    commit_key,
    downstream_key,
    global_key,
    ref_key,
    repo_key,
)
from cowfs.names import check_name
from cowfs.objectstore import ObjectStore, open_objectstore
from cowfs.refs import Ref
from cowfs.store import Store

STORE_FORMAT = 1
_CAS_TRIES = 50


class Lake:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.objects: ObjectStore = store.objects
        self.url = store.objects.url

    @classmethod
    def open(
        cls, url: str | None = None, create: bool = False, cache_bytes: int | None = None
    ) -> Lake:
        url = url or default_store_url()
        objects = open_objectstore(url, create=create)
        if create:
            if not objects.exists(MARKER):
                objects.put(
                    MARKER, json.dumps({"format": STORE_FORMAT, "created": time.time()}).encode()
                )
        elif not objects.exists(MARKER):
            raise StoreUnavailable(f"no cowfs store at {objects.url}: run `cowfs init` first")
        marker = json.loads(objects.get(MARKER))
        if marker.get("format") != STORE_FORMAT:
            raise StoreUnavailable(
                f"store {objects.url} has format {marker.get('format')}, "
                f"this cowfs reads {STORE_FORMAT}: upgrade cowfs"
            )
        index = Index(cache_dir_for(objects.url), cache_bytes=cache_bytes)
        return cls(Store(objects, index))

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Lake:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- repos ---------------------------------------------------------------------------------

    def create_repo(self, name: str, description: str = "") -> dict:
        check_name(name, "repo name")
        record = {"name": name, "description": description, "created": time.time()}
        data = json.dumps(record, sort_keys=True).encode()
        if not self.objects.swap(repo_key(name), data, None):
            raise AlreadyExists(f"repo {name} already exists")
        return record

    def repo(self, name: str) -> dict:
        check_name(name, "repo name")
        try:
            return json.loads(self.objects.get(repo_key(name)))
        except ObjectMissing:
            raise NotFound(f"no repo named {name}: see `cowfs repo list`") from None

    def list_repos(self) -> list[dict]:
        return [json.loads(self.objects.get(k)) for k, _ in self.objects.list(layout.REPOS)]

    def delete_repo(self, name: str) -> None:
        """Drop a repo, its branches and its commit records; chunks wait for garbage collection."""
        self.repo(name)
        for prefix in (layout.refs_prefix(name), layout.commits_prefix(name)):
            for key, _ in self.objects.list(prefix):
                self.objects.delete(key)
        self.objects.delete(repo_key(name))

    # --- branches ------------------------------------------------------------------------------

    def branches(self, repo: str) -> list[tuple[str, str]]:
        self.repo(repo)
        out = []
        for key, _ in self.objects.list(layout.refs_prefix(repo)):
            out.append((layout.last_part(key), json.loads(self.objects.get(key))["commit"]))
        return out

    def head_id(self, repo: str, branch: str) -> str | None:
        v = self.objects.get_versioned(ref_key(repo, branch))
        return json.loads(v.data)["commit"] if v else None

    def head(self, repo: str, branch: str) -> Commit | None:
        cid = self.head_id(repo, branch)
        return self.get_commit(repo, cid) if cid else None

    def create_branch(self, repo: str, branch: str, start: Commit | None) -> None:
        self.repo(repo)
        check_name(branch, "branch name")
        if start is None:
            raise UsageError(
                f"cannot create branch {repo}@{branch}: give --from a commit or branch"
            )
        # history hook: a name is a branch or a tag; the collector's guard before the swap.
        tags.refuse_branch_named_like_tag(self.objects, repo, branch)
        gcguard.guard_commit(self, start, None)
        if not self.objects.swap(ref_key(repo, branch), _ref_bytes(start.id), None):
            raise AlreadyExists(f"branch {repo}@{branch} already exists")

    def delete_branch(self, repo: str, branch: str) -> None:
        if self.head_id(repo, branch) is None:
            raise NotFound(f"no branch {repo}@{branch}")
        self.objects.delete(ref_key(repo, branch))

    # --- commits -------------------------------------------------------------------------------

    def get_commit(self, repo: str, cid: str) -> Commit:
        try:
            return Commit.from_record(self.store.get_record(commit_key(repo, cid), cache=True))
        except ObjectMissing:
            raise NotFound(f"no commit {cid} in repo {repo}") from None

    def find_commit(self, repo: str, prefix: str) -> Commit | None:
        """A commit by full id or by a unique prefix of at least 6 characters."""
        try:
            return self.get_commit(repo, prefix)
        except NotFound:
            pass
        tag = tags.get_tag(self.objects, repo, prefix)  # history hook: tags resolve as ids do
        if tag is not None:
            return self.get_commit(repo, tag.commit)
        if len(prefix) < 6 or not all(c in "0123456789abcdef" for c in prefix):
            return None
        matches = [
            layout.last_part(k) for k, _ in self.objects.list(layout.commits_prefix(repo, prefix))
        ]
        if len(matches) > 1:
            raise UsageError(f"commit prefix {prefix} is ambiguous in {repo}: give more characters")
        return self.get_commit(repo, matches[0]) if matches else None

    def resolve(self, ref: Ref) -> Commit:
        self.repo(ref.repo)
        commit = self.head(ref.repo, ref.rev)
        if commit is None:  # find_commit also resolves tags (history hook)
            commit = self.find_commit(ref.repo, ref.rev)
        if commit is None:
            raise NotFound(
                f"{ref.repo}@{ref.rev} is neither a branch nor a commit (nor a tag): "
                f"see `cowfs branch list {ref.repo}`"
            )
        for _ in range(ref.back):
            if commit.parent is None:
                raise NotFound(f"{ref} goes back past the first commit of {ref.repo}")
            commit = self.get_commit(ref.repo, commit.parent)
        return commit

    def log(self, repo: str, start: Commit) -> Iterator[Commit]:
        commit: Commit | None = start
        while commit is not None:
            yield commit
            commit = self.get_commit(repo, commit.parent) if commit.parent else None

    def commit(
        self,
        repo: str,
        branch: str,
        changes: ChangeSet,
        message: str = "",
        *,
        origin: str = "user",
        global_id: str | None = None,
        provenance: tuple[Provenance, ...] = (),
        state: str = "finished",
        error: str | None = None,
        allow_empty: bool = False,
        extra: dict[str, Any] | None = None,
        extra_parents: tuple[str, ...] = (),
        expected_head: str | None = None,
    ) -> Commit:
        """Land `changes` on `repo@branch` as one new commit, whoever else is writing.

        Returns the head unchanged when the change changes nothing (unless `allow_empty`).
        A commit in state "failed" is recorded but the branch does not move to it.
        `extra_parents` follow the head as parents (a merge); with `expected_head`, a head
        that moved raises `Conflict` instead of re-applying (a merge or revert recomputes).
        """
        self.repo(repo)
        check_name(branch, "branch name")
        for _ in range(_CAS_TRIES):
            current = self.objects.get_versioned(ref_key(repo, branch))
            head = self.get_commit(repo, json.loads(current.data)["commit"]) if current else None
            if expected_head is not None and (head.id if head else None) != expected_head:
                raise Conflict(f"{repo}@{branch} moved while this change was computed: retry")
            if current is None:
                tags.refuse_branch_named_like_tag(self.objects, repo, branch)  # history hook
            base = head.tree if head else tree.empty_tree(self.store)
            edits = resolve(self.store, base, changes)
            new_tree = tree.apply(self.store, base, edits)
            if head is not None and new_tree == head.tree and not allow_empty:
                return head
            files, size = tree.totals(self.store, new_tree)
            cid = new_id()
            now = time.time()
            commit = Commit(
                id=cid,
                repo=repo,
                tree=new_tree,
                parents=((head.id,) if head else ()) + extra_parents,
                branch=branch,
                global_id=global_id or cid,
                origin=origin,
                message=message,
                created=now,
                finished=now,
                state=state,
                error=error,
                provenance=provenance,
                files=files,
                bytes=size,
                extra=extra or {},
            )
            self._write_commit(commit)
            if state != "finished":
                return commit
            try:  # history hook: the collector's guard, right before the swap
                gcguard.before_swap(
                    self,
                    repo,
                    new_tree,
                    head.tree if head else None,
                    [commit_key(repo, cid)] + [commit_key(repo, p) for p in extra_parents],
                )
            except Conflict:
                self._unwrite_commit(commit)
                raise
            if self.objects.swap(
                ref_key(repo, branch), _ref_bytes(cid), current.token if current else None
            ):
                return commit
            self._unwrite_commit(commit)
        raise Conflict(
            f"{repo}@{branch} kept moving under this commit after {_CAS_TRIES} tries: retry"
        )

    def _write_commit(self, c: Commit) -> None:
        self.store.put_record(commit_key(c.repo, c.id), c.to_record())
        self.objects.put(global_key(c.global_id, c.repo, c.id), b"")
        for p in c.provenance:
            self.objects.put(downstream_key(p.repo, p.commit, c.repo, c.id), b"")

    def _unwrite_commit(self, c: Commit) -> None:
        for p in c.provenance:
            self.objects.delete(downstream_key(p.repo, p.commit, c.repo, c.id))
        self.objects.delete(global_key(c.global_id, c.repo, c.id))
        self.objects.delete(commit_key(c.repo, c.id))

    def set_branch(
        self, repo: str, branch: str, commit: Commit, expected: str | None = None
    ) -> None:
        """Point a branch at an existing commit (used by pipelines to publish a finished job)."""
        current = self.objects.get_versioned(ref_key(repo, branch))
        if expected is not None:
            head = json.loads(current.data)["commit"] if current else None
            if head != expected:
                raise Conflict(f"{repo}@{branch} moved to {head} while expected {expected}")
        old = self.get_commit(repo, json.loads(current.data)["commit"]) if current else None
        gcguard.guard_commit(self, commit, old.tree if old else None)  # history hook
        if not self.objects.swap(
            ref_key(repo, branch), _ref_bytes(commit.id), current.token if current else None
        ):
            raise Conflict(f"{repo}@{branch} moved while it was being set: retry")

    def inspect(self, global_id: str) -> list[Commit]:
        out = []
        for key, _ in self.objects.list(layout.globals_prefix(global_id)):
            _, (repo, cid) = layout.parse_global_key(key)
            out.append(self.get_commit(repo, cid))
        return out

    def downstream(self, repo: str, cid: str) -> list[Commit]:
        out = []
        for key, _ in self.objects.list(layout.downstream_prefix(repo, cid)):
            _, (out_repo, out_cid) = layout.parse_downstream_key(key)
            out.append(self.get_commit(out_repo, out_cid))
        return out

    # --- reading trees -------------------------------------------------------------------------

    def lookup(self, commit: Commit, path: str) -> Entry | None:
        if not path:
            return None
        return tree.lookup(self.store, commit.tree, path)

    def list_dir(self, commit: Commit, path: str) -> Iterator[Entry]:
        return tree.list_dir(self.store, commit.tree, path)

    def walk(self, commit: Commit, path: str = "") -> Iterator[Entry]:
        return tree.iter_under(self.store, commit.tree, path)

    def diff(self, a: Commit, b: Commit) -> Iterator[tree.Change]:
        """Changes in content between two commits (a file re-stored elsewhere is unchanged)."""
        for ch in tree.diff(self.store, a.tree, b.tree):
            if ch.old is None or ch.new is None or not ch.old.same_content(ch.new):
                yield ch

    # --- accounting ----------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        """Logical bytes (every commit counted whole) against the bytes the store really holds."""
        chunks = stored_chunks = trees = stored_trees = 0
        for _, size in self.objects.list(layout.CHUNKS):
            chunks += 1
            stored_chunks += size
        for _, size in self.objects.list(layout.TREES):
            trees += 1
            stored_trees += size
        commits = logical = head_bytes = head_files = 0
        repos = self.list_repos()
        for r in repos:
            for key, _ in self.objects.list(layout.commits_prefix(r["name"])):
                c = self.get_commit(r["name"], layout.last_part(key))
                commits += 1
                logical += c.bytes
            for _, cid in self.branches(r["name"]):
                c = self.get_commit(r["name"], cid)
                head_bytes += c.bytes
                head_files += c.files
        stored = stored_chunks + stored_trees
        return {
            "store": self.url,
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
        }


def _ref_bytes(cid: str) -> bytes:
    return json.dumps({"commit": cid}).encode()
