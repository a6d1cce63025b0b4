"""`cowfs check`: verify the store from its own bytes (never the node's caches) and report every
problem with the object and what it affects. It repairs nothing.

Checks: every branch and tag names an existing commit; every commit record decodes and its
parents exist; every tree node it reaches exists and decodes (hash included); every chunk a
tree refers to exists, and with `read_fraction` > 0 that share of them (chosen by id, so a rerun
reads the same ones) hashes to its id; every `globals/` and `downstream/` marker names existing
commits. A damaged object is then traced to the commits and paths it breaks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import xxhash

from cowfs import layout
from cowfs.commits import Commit
from cowfs.errors import CorruptObject, ObjectMissing
from cowfs.objects import Kind, decode
from cowfs.tree import Node, decode_node

if TYPE_CHECKING:
    from cowfs.lake import Lake

#: Paths named per damaged object; the count says how many there are in all.
_MAX_PATHS = 20
#: Chunks fetched and verified at once by --read-data.
_READERS = 16


@dataclass
class Problem:
    kind: str
    key: str
    message: str
    commits: list[str] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    path_count: int = 0


@dataclass
class CheckReport:
    problems: list[Problem] = field(default_factory=list)
    refs: int = 0
    tags: int = 0
    commits: int = 0
    trees: int = 0
    chunks: int = 0
    chunks_read: int = 0
    bytes_read: int = 0
    markers: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict:
        d = dict(self.__dict__)
        d["problems"] = [p.__dict__ for p in self.problems]
        d["ok"] = self.ok
        return d


def _selected(oid: str, fraction: float) -> bool:
    if fraction >= 1:
        return True
    return xxhash.xxh3_64_intdigest(oid.encode()) % 10_000 < fraction * 10_000


class _Checker:
    def __init__(self, lake: Lake, read_fraction: float, progress: Callable[[int], None] | None):
        self.lake = lake
        self.objects = lake.objects
        self.read_fraction = read_fraction
        self.progress = progress
        self.report = CheckReport()
        self.nodes: dict[str, Node] = {}
        self.bad: dict[str, Problem] = {}
        self.commit_keys: set[str] = set()
        self.commits: dict[str, Commit] = {}
        self.damaged: dict[str, bool] = {}

    def problem(self, kind: str, key: str, message: str) -> Problem:
        p = Problem(kind, key, message)
        self.report.problems.append(p)
        return p

    def run(self) -> CheckReport:
        self.commit_keys = {k for k, _ in self.objects.list(layout.COMMITS)}
        self.check_heads(layout.REFS, "branch")
        self.check_heads(layout.TAGS, "tag")
        self.check_lost_refs()
        for key in sorted(self.commit_keys):
            self.check_commit(key)
        self.check_chunks()
        self.check_markers()
        self.trace()
        return self.report

    def check_heads(self, prefix: str, what: str) -> None:
        for key, _ in self.objects.list(prefix):
            repo, _, name = key[len(prefix) :].rpartition("/")
            if what == "branch":
                self.report.refs += 1
            else:
                self.report.tags += 1
            try:
                cid = json.loads(self.objects.get(key))["commit"]
            except (ObjectMissing, ValueError, KeyError, TypeError):
                self.problem(f"{what}-unreadable", key, f"{what} {repo}@{name} does not decode")
                continue
            if layout.commit_key(repo, cid) not in self.commit_keys:
                p = self.problem(
                    f"{what}-missing-commit",
                    key,
                    f"{what} {repo}@{name} names commit {cid}, which is not in the store",
                )
                p.commits.append(f"{repo}@{cid}")

    def check_lost_refs(self) -> None:
        """A branch whose creation was recorded but whose ref is gone lost its head."""
        refs = {k[len(layout.REFS) :] for k, _ in self.objects.list(layout.REFS)}
        for key, _ in self.objects.list(layout.BRANCHES):
            name = key[len(layout.BRANCHES) :]
            if name not in refs:
                repo, _, branch = name.rpartition("/")
                self.problem(
                    "branch-lost", key, f"branch {repo}@{branch} was created but its ref is gone"
                )

    def check_commit(self, key: str) -> None:
        repo, cid = layout.parse_commit_key(key)
        self.report.commits += 1
        try:
            c = Commit.from_record(json.loads(self.objects.get(key)))
        except (ObjectMissing, ValueError, TypeError):
            self.problem("commit-unreadable", key, f"commit record {repo}@{cid} does not decode")
            return
        self.commits[key] = c
        for p in c.parents:
            if layout.commit_key(repo, p) not in self.commit_keys:
                prob = self.problem(
                    "parent-missing", key, f"commit {repo}@{cid} has parent {p}, which is missing"
                )
                prob.commits.append(f"{repo}@{cid}")
        self.walk(c.tree)

    def walk(self, root: str) -> None:
        stack = [root]
        while stack:
            oid = stack.pop()
            if oid in self.nodes or layout.tree_key(oid) in self.bad:
                continue
            key = layout.tree_key(oid)
            try:
                node = decode_node(decode(oid, self.objects.get(key), Kind.TREE))
            except ObjectMissing:
                self.bad[key] = self.problem("tree-missing", key, f"tree node {oid} is missing")
                continue
            except (CorruptObject, ValueError, TypeError) as e:
                self.bad[key] = self.problem("tree-corrupt", key, str(e))
                continue
            self.nodes[oid] = node
            self.report.trees += 1
            if node.level > 0:
                stack.extend(c.id for c in node.items)

    def check_chunks(self) -> None:
        present = {k for k, _ in self.objects.list(layout.CHUNKS)}
        wanted = {
            ch.id
            for node in self.nodes.values()
            if node.level == 0
            for e in node.items
            for ch in e.chunks or ()
        }
        to_read = []
        for oid in sorted(wanted):
            key = layout.chunk_key(oid)
            self.report.chunks += 1
            if key not in present:
                self.bad[key] = self.problem("chunk-missing", key, f"chunk {oid} is missing")
            elif self.read_fraction > 0 and _selected(oid, self.read_fraction):
                to_read.append(oid)
        with ThreadPoolExecutor(_READERS) as pool:
            for oid, size, error in pool.map(self.read_chunk, to_read):
                key = layout.chunk_key(oid)
                if error is not None:
                    self.bad[key] = self.problem(error[0], key, error[1])
                    continue
                self.report.chunks_read += 1
                self.report.bytes_read += size
                if self.progress:
                    self.progress(size)

    def read_chunk(self, oid: str) -> tuple[str, int, tuple[str, str] | None]:
        """Fetch and verify one chunk (on a worker thread: BLAKE3 and the GET release the GIL)."""
        try:
            framed = self.objects.get(layout.chunk_key(oid))
            decode(oid, framed, Kind.CHUNK)
        except ObjectMissing:
            return oid, 0, ("chunk-missing", f"chunk {oid} is missing")
        except CorruptObject as e:
            return oid, 0, ("chunk-corrupt", str(e))
        return oid, len(framed), None

    def check_markers(self) -> None:
        for key, _ in self.objects.list(layout.GLOBALS):
            self.report.markers += 1
            try:
                _, at = layout.parse_global_key(key)
            except ValueError:
                self.problem("marker-unreadable", key, f"marker {key} is not a global ID marker")
                continue
            self.marker_target(key, [at])
        for key, _ in self.objects.list(layout.DOWNSTREAM):
            self.report.markers += 1
            try:
                src, out = layout.parse_downstream_key(key)
            except ValueError:
                self.problem("marker-unreadable", key, f"marker {key} is not a provenance marker")
                continue
            self.marker_target(key, [src, out])

    def marker_target(self, key: str, ats: list[layout.CommitAt]) -> None:
        for at in ats:
            if layout.commit_key(at.repo, at.commit) not in self.commit_keys:
                p = self.problem(
                    "marker-dangling",
                    key,
                    f"marker {key} names commit {at.repo}@{at.commit}, which is not in the store",
                )
                p.commits.append(f"{at.repo}@{at.commit}")

    def trace(self) -> None:
        """Name the commits and paths each damaged tree node or chunk breaks: one more walk of
        the intact nodes, only into subtrees that hold damage."""
        if not self.bad:
            return
        for _, c in sorted(self.commits.items()):
            if self.holds_damage(c.tree):
                self.blame(c.tree, f"{c.repo}@{c.id}", "")

    def holds_damage(self, oid: str) -> bool:
        if layout.tree_key(oid) in self.bad:
            return True
        if oid not in self.damaged:
            node = self.nodes[oid]
            if node.level == 0:
                hit = any(
                    layout.chunk_key(ch.id) in self.bad for e in node.items for ch in e.chunks or ()
                )
            else:
                hit = any([self.holds_damage(c.id) for c in node.items])
            self.damaged[oid] = hit
        return self.damaged[oid]

    def blame(self, oid: str, commit: str, last_before: str) -> None:
        key = layout.tree_key(oid)
        if key in self.bad:
            self.add(self.bad[key], commit, f"paths after /{last_before} in node {oid}")
            return
        node = self.nodes[oid]
        if node.level == 0:
            for e in node.items:
                for ch in e.chunks or ():
                    ck = layout.chunk_key(ch.id)
                    if ck in self.bad:
                        self.add(self.bad[ck], commit, "/" + e.path)
            return
        before = last_before
        for child in node.items:
            if self.holds_damage(child.id):
                self.blame(child.id, commit, before)
            before = child.last_key

    def add(self, p: Problem, commit: str, path: str) -> None:
        if commit not in p.commits:
            p.commits.append(commit)
        if path not in p.paths:
            p.path_count += 1
            if len(p.paths) < _MAX_PATHS:
                p.paths.append(path)


def check(
    lake: Lake, read_fraction: float = 0.0, progress: Callable[[int], None] | None = None
) -> CheckReport:
    return _Checker(lake, read_fraction, progress).run()
