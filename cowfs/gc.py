"""The collector: reclaim chunks, tree nodes and (with retention) commits nothing live reaches,
with writers running on other machines and no lock server.

One run: mark from every root, list what the store holds, publish the unmarked keys as this
run's candidates together with its sweep set (the keys that were candidates in the previous
run too, at least a grace period earlier), wait one writer window, then delete the sweep set
minus what writers rescued. The protocol and why it loses no chunk of a finished commit are in
docs/architecture.md, "Garbage collection"; `gcguard` is the writers' half.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cowfs import gcstate, layout
from cowfs.commits import Commit
from cowfs.config import gc_window_s
from cowfs.errors import Conflict, CorruptObject, ObjectMissing
from cowfs.index import PRESENT_TTL_S

if TYPE_CHECKING:
    from cowfs.lake import Lake

DEFAULT_GRACE_S = 24 * 3600.0
#: A run whose sweep has not finished this long after it was published is taken as crashed;
#: a collector stops deleting once its own run is this old.
STALE_S = 3600.0
Progress = Callable[[str, int], None]


@dataclass
class GcOptions:
    grace_s: float = DEFAULT_GRACE_S
    #: None keeps every commit; otherwise commits no root reaches and older than this go.
    keep_commits_since_s: float | None = None
    window_s: float = field(default_factory=gc_window_s)
    dry_run: bool = False


@dataclass
class RunPlan:
    run: int
    started: float
    listed: dict[str, int]
    marked: set[str]
    missing: set[str]
    candidates: frozenset[str]
    sweep: frozenset[str]
    roots: int
    previous: gcstate.RunRecord | None


@dataclass
class GcReport:
    runs: list[int] = field(default_factory=list)
    dry_run: bool = False
    roots: int = 0
    listed: int = 0
    listed_bytes: int = 0
    live: int = 0
    candidates: int = 0
    candidate_bytes: int = 0
    #: What this invocation deleted (or, with --dry-run, would delete now).
    swept: int = 0
    swept_bytes: int = 0
    swept_chunks: int = 0
    swept_trees: int = 0
    commits_dropped: int = 0
    rescued: int = 0
    missing: list[str] = field(default_factory=list)
    waited_s: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return dict(self.__dict__)


# --- roots and marking ------------------------------------------------------------------------


def _json(lake: Lake, key: str) -> dict | None:
    try:
        return json.loads(lake.objects.get(key))
    except (ObjectMissing, ValueError):
        return None


def find_roots(
    lake: Lake, now: float, keep_s: float | None, commits: dict[str, int] | None = None
) -> set[str]:
    """Keys every live object is reached from: branch heads, tags, every commit (or with
    retention, every commit younger than `keep_s`), pipeline records, and holds. `commits`,
    when given, receives the commit listing, which the collector then need not list again."""
    objects = lake.objects
    roots: set[str] = set()
    commits = {} if commits is None else commits
    for prefix in (layout.REFS, layout.TAGS):
        for key, _ in objects.list(prefix):
            d = _json(lake, key)
            if d and "commit" in d:
                repo = key[len(prefix) :].rpartition("/")[0]
                roots.add(layout.commit_key(repo, d["commit"]))
    for key, size in objects.list(layout.COMMITS):
        commits[key] = size
        if keep_s is None:
            roots.add(key)
            continue
        try:
            c = Commit.from_record(lake.store.get_record(key, cache=True))
        except (ObjectMissing, ValueError):
            continue
        if c.created >= now - keep_s:
            roots.add(key)
    for key, _ in objects.list(layout.JOBS):
        job = _json(lake, key) or {}
        pipeline = job.get("pipeline", "")
        for inp in job.get("inputs") or ():
            if inp.get("repo") and inp.get("commit"):
                roots.add(layout.commit_key(inp["repo"], inp["commit"]))
        if job.get("output_commit") and pipeline:
            roots.add(layout.commit_key(pipeline, job["output_commit"]))
        if job.get("datum_tree"):
            roots.add(layout.tree_key(job["datum_tree"]))
    for key, _ in objects.list(layout.DATUMS):
        for raw in (_json(lake, key) or {}).get("output") or ():
            for chunk in raw[6] or ():
                roots.add(layout.chunk_key(chunk[0]))
    for hold in gcstate.list_holds(objects):
        roots.add(layout.commit_key(hold.repo, hold.commit))
    return roots


def mark(
    lake: Lake, roots: set[str], progress: Progress | None = None
) -> tuple[set[str], set[str]]:
    """Everything reachable from `roots`: commits reach their parents and tree, tree nodes their
    children and chunks. Returns (marked, missing): a missing object is reported, not fatal."""
    marked: set[str] = set()
    missing: set[str] = set()
    stack = list(roots)
    while stack:
        key = stack.pop()
        if key in marked:
            continue
        marked.add(key)
        kind = layout.object_kind_of_key(key)
        try:
            if kind == "commit":
                repo, _ = layout.parse_commit_key(key)
                c = Commit.from_record(lake.store.get_record(key, cache=True))
                stack.append(layout.tree_key(c.tree))
                stack.extend(layout.commit_key(repo, p) for p in c.parents)
            elif kind == "tree":
                node = lake.store.load_node(layout.oid_of(key))
                if node.level == 0:
                    for e in node.items:
                        for ch in e.chunks or ():
                            marked.add(layout.chunk_key(ch.id))
                else:
                    stack.extend(layout.tree_key(c.id) for c in node.items)
                if progress:
                    progress("mark", 1)
        except (ObjectMissing, CorruptObject, ValueError):
            missing.add(key)
    return marked, missing


def list_collectable(lake: Lake, commits: dict[str, int] | None) -> dict[str, int]:
    """Every commit (with retention: the listing `find_roots` made), tree node and chunk,
    listed in that order: an object is written before anything that refers to it, so whatever
    a listed object reaches is listed."""
    out: dict[str, int] = dict(commits or {})
    for prefix in (layout.TREES, layout.CHUNKS):
        for key, size in lake.objects.list(prefix):
            out[key] = size
    return out


# --- one run ----------------------------------------------------------------------------------


def _previous(lake: Lake) -> gcstate.RunRecord | None:
    runs = gcstate.list_runs(lake.objects)
    if not runs:
        return None
    prev = gcstate.load_run(lake.objects, runs[-1])
    unfinished = prev is not None and gcstate.load_swept(lake.objects, prev.run) is None
    if unfinished and time.time() - prev.published < STALE_S:
        raise Conflict(
            f"collector run {prev.run} is still sweeping (published "
            f"{time.time() - prev.published:.0f}s ago): wait for it to finish"
        )
    return prev


def plan_run(lake: Lake, opts: GcOptions, progress: Progress | None = None) -> RunPlan:
    """Mark and list: nothing is written."""
    started = time.time()
    prev = _previous(lake)
    commits: dict[str, int] = {}
    roots = find_roots(lake, started, opts.keep_commits_since_s, commits)
    marked, missing = mark(lake, roots, progress)
    retention = opts.keep_commits_since_s is not None
    listed = list_collectable(lake, commits if retention else None)
    candidates = frozenset(k for k in listed if k not in marked)
    if prev is not None and started - prev.published >= opts.grace_s:
        sweep = candidates & prev.candidates
    else:
        sweep = frozenset()
    return RunPlan(
        (prev.run + 1) if prev else 1,
        started,
        listed,
        marked,
        missing,
        candidates,
        sweep,
        len(roots),
        prev,
    )


def publish(lake: Lake, plan: RunPlan) -> gcstate.RunRecord:
    rec = gcstate.RunRecord(plan.run, time.time(), 0.0, plan.candidates, plan.sweep)
    if not gcstate.publish_run(lake.objects, rec):
        raise Conflict(f"another collector published run {plan.run} first: run gc again later")
    return rec


def sweep(lake: Lake, rec: gcstate.RunRecord, report: GcReport, sizes: dict[str, int]) -> None:
    """Delete the run's sweep set minus every rescue, commits first, chunks last, so a sweep
    cut short never leaves a commit whose objects are gone; then record what went."""
    objects = lake.objects
    rescued = gcstate.read_rescues(objects, rec.run) | gcstate.read_rescues(objects, rec.run - 1)
    doomed = rec.sweep - rescued
    report.rescued += len(rec.sweep & rescued)
    deleted: set[str] = set()
    order = {"commit": 0, "tree": 1, "chunk": 2}
    for key in sorted(doomed, key=lambda k: (order.get(layout.object_kind_of_key(k), 3), k)):
        if time.time() - rec.published > STALE_S:
            break  # writers now take this run for crashed; stop rather than race them
        kind = layout.object_kind_of_key(key)
        if kind == "commit":
            _drop_commit_markers(lake, key)
            report.commits_dropped += 1
        objects.delete(key)
        lake.store.index.forget_present(key)
        lake.store.index.forget_blob(key)
        deleted.add(key)
        report.swept += 1
        report.swept_bytes += sizes.get(key, 0)
        report.swept_chunks += kind == "chunk"
        report.swept_trees += kind == "tree"
    gcstate.publish_swept(objects, gcstate.Swept(rec.run, time.time(), frozenset(deleted)))
    _forget_old_runs(lake, rec.run)


def _drop_commit_markers(lake: Lake, key: str) -> None:
    """A dropped commit takes its provenance markers with it, both directions."""
    repo, cid = layout.parse_commit_key(key)
    try:
        c = Commit.from_record(json.loads(lake.objects.get(key)))
    except (ObjectMissing, ValueError):
        return
    inputs = [(p.repo, p.commit) for p in c.provenance]
    for marker in layout.commit_marker_keys(repo, cid, c.global_id, inputs):
        lake.objects.delete(marker)
    for marker, _ in lake.objects.list(layout.downstream_prefix(repo, cid)):
        lake.objects.delete(marker)


def _forget_old_runs(lake: Lake, newest: int) -> None:
    """Keep the last two runs, and every run a node's "present" cache may predate."""
    now = time.time()
    for run in gcstate.list_runs(lake.objects):
        if run >= newest - 1:
            continue
        swept = gcstate.load_swept(lake.objects, run)
        finished = swept.finished if swept else 0.0
        if now - finished > PRESENT_TTL_S + STALE_S:
            gcstate.drop_run(lake.objects, run)


def _account(report: GcReport, plan: RunPlan) -> None:
    report.runs.append(plan.run)
    report.roots = plan.roots
    report.listed = len(plan.listed)
    report.listed_bytes = sum(plan.listed.values())
    report.live = sum(1 for k in plan.listed if k in plan.marked)
    report.candidates = len(plan.candidates)
    report.candidate_bytes = sum(plan.listed[k] for k in plan.candidates)
    report.missing = sorted(plan.missing)


def run_once(
    lake: Lake,
    opts: GcOptions,
    report: GcReport,
    progress: Progress | None = None,
    wait: Callable[[float], None] = time.sleep,
) -> RunPlan:
    plan = plan_run(lake, opts, progress)
    _account(report, plan)
    if opts.dry_run:
        report.swept = len(plan.sweep)
        report.swept_bytes = sum(plan.listed[k] for k in plan.sweep)
        return plan
    rec = publish(lake, plan)
    if opts.window_s > 0:
        t0 = time.monotonic()
        wait(opts.window_s)
        report.waited_s += time.monotonic() - t0
    sweep(lake, rec, report, plan.listed)
    return plan


def collect(lake: Lake, opts: GcOptions, progress: Progress | None = None) -> GcReport:
    """One run; with a zero grace period, a second at once, so that everything unreferenced
    now is gone when it returns (no writer may rely on it meanwhile: they are guarded)."""
    t0 = time.monotonic()
    report = GcReport(dry_run=opts.dry_run)
    plan = run_once(lake, opts, report, progress)
    if opts.grace_s <= 0:
        if opts.dry_run:
            report.swept = len(plan.candidates)
            report.swept_bytes = report.candidate_bytes
        elif plan.candidates - plan.sweep:
            run_once(lake, opts, report, progress)
    report.seconds = time.monotonic() - t0
    return report
