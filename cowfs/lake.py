"""The lake: repos, branches and commits over a `Store`. This is the Python API.

Branch heads are the only mutable objects; every move is a compare-and-swap on the ref, retried
by re-applying the writer's `ChangeSet` to the new head when another writer won. Refs and commits
belong to one incarnation of their repo (`cowfs.repos`): a writer re-reads the repo record after
its swap and undoes its commit if a delete got there first, and readers ignore whatever another
incarnation left behind.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

from cowfs import accounting, gcguard, layout, lost_refs, repo_removal, tags, tree
from cowfs.changes import ChangeSet, resolve
from cowfs.commits import Commit, Provenance, new_id, parse_record
from cowfs.config import StoreSettings, cache_dir_for, default_store_url
from cowfs.entries import Entry
from cowfs.errors import (
    AlreadyExists,
    Conflict,
    CorruptObject,
    Damaged,
    NotFound,
    ObjectMissing,
    StoreUnavailable,
    UsageError,
)
from cowfs.index import Index
from cowfs.layout import MARKER, commit_key, ref_key, repo_key
from cowfs.names import check_name
from cowfs.objectstore import ObjectStore, Versioned, open_objectstore
from cowfs.refs import Ref
from cowfs.repos import (
    CAS_TRIES,
    RefRecord,
    RepoRecord,
    branch_record_bytes,
    parse_ref_record,
    parse_repo_record,
)
from cowfs.store import Store, parse_json

STORE_FORMAT = 1
#: How long a reader trusts the repo incarnation it read (writers re-read it after each swap).
_INCARNATION_TTL_S = 2.0


class Lake:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.objects: ObjectStore = store.objects
        self.url = store.objects.url
        #: repo -> (when read, its incarnation or None when there is no live repo).
        self._incs: dict[str, tuple[float, str | None]] = {}

    @classmethod
    def open(
        cls,
        url: str | None = None,
        create: bool = False,
        cache_bytes: int | None = None,
        settings: StoreSettings | None = None,
    ) -> Lake:
        url = url or default_store_url()
        objects = open_objectstore(url, create=create, settings=settings)
        if create:
            if not objects.exists(MARKER):
                objects.put(
                    MARKER, json.dumps({"format": STORE_FORMAT, "created": time.time()}).encode()
                )
        elif not objects.exists(MARKER):
            raise StoreUnavailable(f"no cowfs store at {objects.url}: run `cowfs init` first")
        marker = parse_json(MARKER, objects.get(MARKER))
        if not isinstance(marker, dict) or marker.get("format") != STORE_FORMAT:
            found = marker.get("format") if isinstance(marker, dict) else marker
            raise StoreUnavailable(
                f"store {objects.url} has format {found}, "
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

    def _read_repo(self, name: str) -> tuple[RepoRecord, Versioned] | None:
        v = self.objects.get_versioned(repo_key(name))
        return None if v is None else (parse_repo_record(repo_key(name), v.data), v)

    def repo_record(self, name: str, deleting_ok: bool = False) -> RepoRecord:
        """The live repo's record; with `deleting_ok`, also one a delete has marked (so that
        the delete can be finished)."""
        check_name(name, "repo name")
        got = self._read_repo(name)
        if got is not None and got[0].deleting and deleting_ok:
            return got[0]
        if got is None or got[0].deleting:
            self._incs[name] = (time.monotonic(), None)
            raise NotFound(f"no repo named {name}: see `cowfs repo list`")
        self._incs[name] = (time.monotonic(), got[0].incarnation)
        return got[0]

    def repo(self, name: str) -> dict:
        return self.repo_record(name).public()

    def incarnation(self, repo: str, fresh: bool = False) -> str | None:
        """The live repo's incarnation (None when there is none), re-read at most every
        `_INCARNATION_TTL_S` unless `fresh`: readers check every ref and commit against it."""
        hit = self._incs.get(repo)
        if not fresh and hit is not None and time.monotonic() - hit[0] < _INCARNATION_TTL_S:
            return hit[1]
        try:
            return self.repo_record(repo).incarnation
        except NotFound:
            return None

    def forget_incarnation(self, repo: str) -> None:
        """The repo is gone (a delete marked it): readers see no incarnation from now on."""
        self._incs[repo] = (time.monotonic(), None)

    def create_repo(self, name: str, description: str = "") -> dict:
        check_name(name, "repo name")
        record = RepoRecord.new(name, description)
        if not self.objects.swap(repo_key(name), record.to_bytes(), None):
            got = self._read_repo(name)
            if got is not None and got[0].deleting:
                raise AlreadyExists(
                    f"repo {name} is still being deleted (was a delete interrupted?): "
                    f"finish it with `cowfs repo delete {name} --yes`"
                )
            raise AlreadyExists(f"repo {name} already exists")
        self._incs[name] = (time.monotonic(), record.incarnation)
        return record.public()

    def list_repos(self, damage: list[str] | None = None) -> list[dict]:
        """Every live repo; an unreadable record is reported into `damage` (when given) and
        skipped, so one repo's damage never breaks a store-wide command."""
        out = []
        for key, _ in self.objects.list(layout.REPOS):
            try:
                rec = parse_repo_record(key, self.objects.get(key))
            except ObjectMissing:
                continue  # deleted while listing
            except CorruptObject as e:
                if damage is None:
                    raise
                damage.append(str(e))
                continue
            if not rec.deleting:
                out.append(rec.public())
        return out

    def delete_repo(self, name: str) -> None:
        """Drop a repo, whole or (if interrupted) finished by running it again
        (`cowfs.repo_removal`)."""
        repo_removal.delete_repo(self, name)

    # --- branches ------------------------------------------------------------------------------

    def _ref(self, repo: str, branch: str, inc: str | None) -> tuple[Versioned | None, str | None]:
        """The ref object (for its swap token) and the head it names in incarnation `inc`;
        a ref left from another incarnation names nothing."""
        key = ref_key(repo, branch)
        v = self.objects.get_versioned(key)
        if v is None:
            return None, None
        ref = parse_ref_record(key, v.data)
        return v, (ref.commit if ref.incarnation == inc else None)

    def branches(self, repo: str) -> list[tuple[str, str]]:
        inc = self.repo_record(repo).incarnation
        out = []
        for key, _ in self.objects.list(layout.refs_prefix(repo)):
            v = self.objects.get_versioned(key)
            if v is None:
                continue
            ref = parse_ref_record(key, v.data)
            if ref.incarnation == inc:
                out.append((layout.last_part(key), ref.commit))
        return out

    def head_id(self, repo: str, branch: str) -> str | None:
        return self._ref(repo, branch, self.incarnation(repo))[1]

    def head(self, repo: str, branch: str) -> Commit | None:
        cid = self.head_id(repo, branch)
        return self.get_commit(repo, cid) if cid else None

    def lost_branch(self, repo: str, branch: str) -> str | None:
        """A message when `repo@branch` had a head but has no ref (`cowfs.lost_refs`)."""
        return lost_refs.lost_branch(self, repo, branch)

    def _refuse_lost(self, repo: str, branch: str) -> None:
        msg = self.lost_branch(repo, branch)
        if msg:
            raise Damaged(msg)

    def create_branch(self, repo: str, branch: str, start: Commit | None) -> None:
        """A new branch at `start` (also how a branch whose ref was lost is restored)."""
        inc = self.repo_record(repo).incarnation
        check_name(branch, "branch name")
        if start is None:
            raise UsageError(
                f"cannot create branch {repo}@{branch}: give --from a commit or branch"
            )
        # history hook: a name is a branch or a tag; the collector's guard before the swap.
        tags.refuse_branch_named_like_tag(self.objects, repo, branch)
        current, head = self._ref(repo, branch, inc)
        if head is not None:
            raise AlreadyExists(f"branch {repo}@{branch} already exists")
        gcguard.guard_commit(self, start, None)
        ref = RefRecord(start.id, inc).to_bytes()
        if not self.objects.swap(ref_key(repo, branch), ref, current.token if current else None):
            raise AlreadyExists(f"branch {repo}@{branch} already exists")
        self._after_swap(repo, branch, inc, ref, created=True)

    def delete_branch(self, repo: str, branch: str) -> None:
        if self.head_id(repo, branch) is None and self.lost_branch(repo, branch) is None:
            raise NotFound(f"no branch {repo}@{branch}")
        self.objects.delete(ref_key(repo, branch))
        self.objects.delete(layout.branch_record_key(repo, branch))

    def _after_swap(
        self,
        repo: str,
        branch: str,
        inc: str,
        ref: bytes,
        created: bool,
        undo: Commit | None = None,
    ) -> None:
        """Confirm a branch swap against a delete racing it (no lock server: the repo record is
        re-read after the swap). If the repo was deleted meanwhile, undo the swap and the commit
        and fail: a delete wins or loses cleanly. A new branch gets its branch record."""
        if self.incarnation(repo, fresh=True) != inc:
            key = ref_key(repo, branch)
            now = self.objects.get_versioned(key)
            if now is not None and now.data == ref:
                self.objects.delete(key)
            if undo is not None:
                self._unwrite_commit(undo)
            raise NotFound(
                f"repo {repo} was deleted while this change was being made: nothing was committed"
            )
        if created:
            self.objects.put(layout.branch_record_key(repo, branch), branch_record_bytes(inc))

    # --- commits -------------------------------------------------------------------------------

    def get_commit(self, repo: str, cid: str) -> Commit:
        key = commit_key(repo, cid)
        try:
            commit = self.store.get_record(
                key, cache=True, check=lambda r: parse_record(key, r, repo, cid)
            )
        except ObjectMissing:
            raise NotFound(f"no commit {cid} in repo {repo}") from None
        if commit.incarnation != self.incarnation(repo):
            raise NotFound(f"no commit {cid} in repo {repo}")
        return commit

    def live_commit(self, repo: str, cid: str) -> Commit | None:
        """The commit a marker names, or None when the marker dangles (its repo or commit was
        deleted): readers of markers skip those."""
        try:
            return self.get_commit(repo, cid)
        except NotFound:
            return None

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
            c
            for k, _ in self.objects.list(layout.commits_prefix(repo, prefix))
            if (c := self.live_commit(repo, layout.last_part(k))) is not None
        ]
        if len(matches) > 1:
            raise UsageError(f"commit prefix {prefix} is ambiguous in {repo}: give more characters")
        return matches[0] if matches else None

    def resolve(self, ref: Ref) -> Commit:
        self.repo(ref.repo)
        commit = self.head(ref.repo, ref.rev)
        if commit is None:  # find_commit also resolves tags (history hook)
            commit = self.find_commit(ref.repo, ref.rev)
        if commit is None:
            self._refuse_lost(ref.repo, ref.rev)
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
        A commit in state "failed" is recorded but the branch does not move to it. Refuses to
        start a new history on a branch that lost its ref, and to publish a commit that
        references a chunk this node found damaged or missing.
        `extra_parents` follow the head as parents (a merge); with `expected_head`, a head
        that moved raises `Conflict` instead of re-applying (a merge or revert recomputes).
        """
        inc = self.repo_record(repo).incarnation
        check_name(branch, "branch name")
        for _ in range(CAS_TRIES):
            current, head_id = self._ref(repo, branch, inc)
            head = self.get_commit(repo, head_id) if head_id else None
            if expected_head is not None and (head.id if head else None) != expected_head:
                raise Conflict(f"{repo}@{branch} moved while this change was computed: retry")
            if head is None:
                self._refuse_lost(repo, branch)
                tags.refuse_branch_named_like_tag(self.objects, repo, branch)  # history hook
            new_tree = self._new_tree(head, changes)
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
                incarnation=inc,
            )
            self._write_commit(commit)
            if state != "finished" or self._publish(commit, branch, head, current):
                return commit
        raise Conflict(
            f"{repo}@{branch} kept moving under this commit after {CAS_TRIES} tries: retry"
        )

    def _new_tree(self, head: Commit | None, changes: ChangeSet) -> str:
        """The tree of `changes` applied over `head`; refuses chunks this node found damaged."""
        base = head.tree if head else tree.empty_tree(self.store)
        edits = resolve(self.store, base, changes)
        grafted = tree.iter_all(self.store, changes.graft.root) if changes.graft else ()
        self.store.refuse_doubted(
            e for e in itertools.chain(edits.values(), grafted) if e is not None
        )
        return tree.apply(self.store, base, edits, changes.graft)

    def _publish(
        self, c: Commit, branch: str, head: Commit | None, current: Versioned | None
    ) -> bool:
        """Swap the branch from `head` to the written commit `c`; False (and `c` unwritten)
        when another writer moved it first, so the caller re-applies over the new head."""
        try:  # history hook: the collector's guard, right before the swap
            gcguard.before_swap(
                self,
                c.repo,
                c.tree,
                head.tree if head else None,
                [commit_key(c.repo, p) for p in (c.id, *(c.parents[1:] if head else c.parents))],
            )
        except Conflict:
            self._unwrite_commit(c)
            raise
        ref = RefRecord(c.id, c.incarnation).to_bytes()
        if self.objects.swap(ref_key(c.repo, branch), ref, current.token if current else None):
            self._after_swap(c.repo, branch, c.incarnation, ref, created=head is None, undo=c)
            return True
        self._unwrite_commit(c)
        return False

    def _marker_keys(self, c: Commit) -> list[str]:
        return layout.commit_marker_keys(
            c.repo, c.id, c.global_id, [(p.repo, p.commit) for p in c.provenance]
        )

    def _write_commit(self, c: Commit) -> None:
        self.store.put_record(commit_key(c.repo, c.id), c.to_record())
        for key in self._marker_keys(c):
            self.objects.put(key, b"")

    def _unwrite_commit(self, c: Commit) -> None:
        for key in self._marker_keys(c):
            self.objects.delete(key)
        self.objects.delete(commit_key(c.repo, c.id))
        self.store.index.forget_blob(commit_key(c.repo, c.id))

    def set_branch(
        self, repo: str, branch: str, commit: Commit, expected: str | None = None
    ) -> None:
        """Point a branch at an existing commit (used by pipelines to publish a finished job)."""
        inc = self.repo_record(repo).incarnation
        if commit.incarnation != inc:
            raise NotFound(f"no commit {commit.id} in repo {repo}")
        current, head = self._ref(repo, branch, inc)
        if expected is not None and head != expected:
            raise Conflict(f"{repo}@{branch} moved to {head} while expected {expected}")
        old = self.get_commit(repo, head) if head else None
        gcguard.guard_commit(self, commit, old.tree if old else None)  # history hook
        ref = RefRecord(commit.id, inc).to_bytes()
        if not self.objects.swap(ref_key(repo, branch), ref, current.token if current else None):
            raise Conflict(f"{repo}@{branch} moved while it was being set: retry")
        self._after_swap(repo, branch, inc, ref, created=head is None)

    def inspect(self, global_id: str) -> list[Commit]:
        """Every live commit carrying `global_id` (markers of deleted commits are skipped)."""
        out = []
        for key, _ in self.objects.list(layout.globals_prefix(global_id)):
            _, (repo, cid) = layout.parse_global_key(key)
            c = self.live_commit(repo, cid)
            if c is not None:
                out.append(c)
        return out

    def downstream(self, repo: str, cid: str) -> list[Commit]:
        out = []
        for key, _ in self.objects.list(layout.downstream_prefix(repo, cid)):
            _, (out_repo, out_cid) = layout.parse_downstream_key(key)
            c = self.live_commit(out_repo, out_cid)
            if c is not None:
                out.append(c)
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
        return accounting.stats(self)

    def repo_damage(self, repo: str) -> list[str]:
        """What is wrong with one repo's branches, one line each (empty when nothing is)."""
        return accounting.repo_damage(self, repo)
