"""Model-based test of the lake's history operations and the collector.

Random sequences of puts, deletes, branch creates, merges, reverts, resets, branch deletes and
collections (zero grace, with and without retention) run against a real local store while a
plain-dict model predicts every commit's files. After each collection, every commit the model
still expects reads back exactly from the store's own bytes, and the store holds no tree node or
chunk that no remaining commit references.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from cowfs import gc, merge3, revert
from cowfs.changes import ChangeSet
from cowfs.objectstore.local import LocalStore
from tests.historyutil import file_entry, lake_on, read_files, referenced_objects, stored_objects

PATHS = ["a/x", "a/y", "b/z", "c", "d/e/f"]
CONTENTS = [b"one", b"two", b"three", b"four" * 100, b""]
BRANCHES = ["main", "dev", "topic"]
REPO = "r"


def three_way(base: dict, dest: dict, source: dict, strategy: str) -> tuple[dict, set[str]]:
    """The merge rule on plain dicts of files: the reference the tree merge must agree with."""
    out: dict = {}
    conflicts = set()
    for p in set(base) | set(dest) | set(source):
        b, o, t = base.get(p), dest.get(p), source.get(p)
        if o == t or t == b:
            v = o
        elif o == b:
            v = t
        else:
            conflicts.add(p)
            v = t if strategy == "source-wins" else o
        if v is not None:
            out[p] = v
    return out, conflicts


class History(RuleBasedStateMachine):
    @initialize()
    def setup(self) -> None:
        # On tmpfs the swap's syncfs costs nothing: this test is about logic, not durability,
        # and a disk shared with other test runs makes every sync slow.
        shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self.dir = Path(tempfile.mkdtemp(prefix="cowfs-gcmodel-", dir=shm))
        self.lake = lake_on(LocalStore(self.dir / "store", create=True), self.dir / "cache")
        self.lake.create_repo(REPO)
        first = self.lake.commit(REPO, "main", ChangeSet(), allow_empty=True)
        self.files: dict[str, dict[str, bytes]] = {first.id: {}}
        self.parents: dict[str, tuple[str, ...]] = {first.id: ()}
        self.heads: dict[str, str] = {"main": first.id}
        self.lake.create_branch(REPO, "dev", first)
        self.heads["dev"] = first.id
        self.since_gc = 0

    def teardown(self) -> None:
        self.lake.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _record(self, commit, files: dict) -> None:  # noqa: ANN001
        self.files[commit.id] = files
        self.parents[commit.id] = commit.parents
        self.heads[commit.branch] = commit.id
        self.since_gc += 1

    def _ancestors(self, cid: str) -> set[str]:
        out, todo = set(), [cid]
        while todo:
            c = todo.pop()
            if c not in out:
                out.add(c)
                todo.extend(self.parents[c])
        return out

    def _branch(self, data: st.DataObject) -> str:
        return data.draw(st.sampled_from(sorted(self.heads)))

    @rule(data=st.data(), path=st.sampled_from(PATHS), content=st.sampled_from(CONTENTS))
    def put(self, data: st.DataObject, path: str, content: bytes) -> None:
        branch = self._branch(data)
        c = self.lake.commit(
            REPO,
            branch,
            ChangeSet(puts={path: file_entry(self.lake, path, content)}),
            allow_empty=True,
        )
        self._record(c, {**self.files[self.heads[branch]], path: content})

    @rule(data=st.data(), path=st.sampled_from(PATHS))
    def delete(self, data: st.DataObject, path: str) -> None:
        branch = self._branch(data)
        if path not in self.files[self.heads[branch]]:
            return
        c = self.lake.commit(REPO, branch, ChangeSet(deletes=[path]), allow_empty=True)
        files = dict(self.files[self.heads[branch]])
        del files[path]
        self._record(c, files)

    @precondition(lambda self: len(self.heads) < len(BRANCHES))
    @rule(data=st.data())
    def create_branch(self, data: st.DataObject) -> None:
        new = data.draw(st.sampled_from(sorted(set(BRANCHES) - set(self.heads))))
        start = self._branch(data)
        self.lake.create_branch(REPO, new, self.lake.get_commit(REPO, self.heads[start]))
        self.heads[new] = self.heads[start]

    @precondition(lambda self: len(self.heads) > 1)
    @rule(data=st.data(), strategy=st.sampled_from(merge3.STRATEGIES))
    def merge(self, data: st.DataObject, strategy: str) -> None:
        src = self._branch(data)
        dst = data.draw(st.sampled_from(sorted(set(self.heads) - {src})))
        s, d = self.heads[src], self.heads[dst]
        source = self.lake.get_commit(REPO, s)
        if s in self._ancestors(d):
            res = merge3.merge(self.lake, REPO, source, dst, strategy)
            assert res.up_to_date and res.commit is None
            return
        base = merge3.merge_base(self.lake, REPO, self.lake.get_commit(REPO, d), source)
        assert base is not None and base.id in self._ancestors(s) & self._ancestors(d)
        want, conflicts = three_way(self.files[base.id], self.files[d], self.files[s], strategy)
        try:
            res = merge3.merge(self.lake, REPO, source, dst, strategy)
        except merge3.MergeConflicts as e:
            assert strategy == "fail" and {c.path for c in e.conflicts} == conflicts
            return
        assert not (strategy == "fail" and conflicts)
        assert {c.path for c in res.plan.conflicts if not (c.dest or c.source).is_dir} == conflicts
        assert res.commit.parents == (d, s)
        self._record(res.commit, want)

    @rule(data=st.data(), back=st.integers(0, 3), strategy=st.sampled_from(merge3.STRATEGIES))
    def revert(self, data: st.DataObject, back: int, strategy: str) -> None:
        branch = self._branch(data)
        target = self.heads[branch]
        for _ in range(back):
            if self.parents[target]:
                target = self.parents[target][0]
        first = self.parents[target][0] if self.parents[target] else None
        parent_files = self.files[first] if first else {}
        head = self.heads[branch]
        want, conflicts = three_way(self.files[target], self.files[head], parent_files, strategy)
        try:
            _, c = revert.revert(
                self.lake, REPO, branch, self.lake.get_commit(REPO, target), strategy=strategy
            )
        except merge3.MergeConflicts as e:
            assert strategy == "fail" and {x.path for x in e.conflicts} == conflicts
            return
        assert not (strategy == "fail" and conflicts)
        self._record(c, want)

    @rule(data=st.data())
    def reset(self, data: st.DataObject) -> None:
        branch = self._branch(data)
        to = data.draw(st.sampled_from(list(self.files)))  # creation order: ids are random
        revert.reset(self.lake, REPO, branch, self.lake.get_commit(REPO, to))
        self.heads[branch] = to

    @precondition(lambda self: len(self.heads) > 1)
    @rule(data=st.data())
    def delete_branch(self, data: st.DataObject) -> None:
        branch = data.draw(st.sampled_from(sorted(set(self.heads) - {"main"})))
        self.lake.delete_branch(REPO, branch)
        del self.heads[branch]

    @precondition(lambda self: self.since_gc >= 3)
    @rule(retention=st.booleans())
    def collect(self, retention: bool) -> None:
        self.since_gc = 0
        opts = gc.GcOptions(grace_s=0, keep_commits_since_s=0 if retention else None, window_s=0)
        gc.collect(self.lake, opts)
        if retention:
            live = set().union(*(self._ancestors(h) for h in self.heads.values()))
            for cid in set(self.files) - live:
                del self.files[cid]
                del self.parents[cid]
        self.everything_reads_back()
        assert stored_objects(self.lake) == referenced_objects(self.lake)

    def everything_reads_back(self) -> None:
        for cid, files in self.files.items():
            assert read_files(self.lake, self.lake.get_commit(REPO, cid)) == files, cid

    @invariant()
    def heads_match(self) -> None:
        if hasattr(self, "lake"):
            got = {b: c for b, c in self.lake.branches(REPO)}
            assert got == self.heads


TestHistory = History.TestCase
TestHistory.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
