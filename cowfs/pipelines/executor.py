"""Running one job of a pipeline, start to finish, with or without a daemon.

A job: read the input heads, plan datums, skip every datum whose hash was processed before
(reusing its output), run the rest in `parallelism` workers, merge all outputs, and commit them
with the input commit's global ID and provenance. A failed datum (after its retries) fails the
job: its output commit is recorded in state "failed" with the error and log, and the output
branch stays where it was.

Which datums were processed is remembered twice: in a "datum tree" (paths `<hash>/<output
path>`, a prolly tree whose root sits in the output commit's `extra`) for the cheap common case
of the next job, and in a `datums/<pipeline>/<hash>` record per datum, written as soon as the
datum's output is stored, so a job killed halfway loses at most the datums it had not flushed.
"""

from __future__ import annotations

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cowfs import tree
from cowfs.changes import ChangeSet
from cowfs.commits import Commit, Provenance
from cowfs.entries import Entry, EntryType, dir_entry
from cowfs.errors import CowfsError, UsageError
from cowfs.export import write_file
from cowfs.lake import Lake
from cowfs.names import normalize_path
from cowfs.pipelines import records
from cowfs.pipelines.datums import (
    Datum,
    InputFile,
    Under,
    datum_hash,
    plan,
    plan_delta,
    supports_delta,
    transform_hash,
)
from cowfs.pipelines.merge import Collision, merge
from cowfs.pipelines.outputs import entry_from_json, entry_to_json, ingest
from cowfs.pipelines.records import Job, Pipeline
from cowfs.pipelines.sandbox import SandboxUnavailable, choose
from cowfs.pipelines.worker import Attempt, Cancelled, Worker
from cowfs.reader import ChunkReader

#: How often a running job's claim gets a fresh heartbeat (from planning to the last record,
#: by a thread of its own), and the job record one while datums run. Must stay well below
#: `records.STALE_AFTER_S`; read at each beat, so tests may shorten it.
HEARTBEAT_S = 5.0
#: The most datum input bytes a job puts in /dev/shm (times four, for outputs and slack).
_SHM_LIMIT = 4 << 30
_LOG_TAIL = 4000
_warned: set[str] = set()
log = logging.getLogger("cowfs.pipelines")


class JobInterrupted(CowfsError):
    """The runner was asked to stop; the job is left for the next runner to restart."""


class _Heartbeat:
    """Refreshes the claim's heartbeat every `HEARTBEAT_S` seconds for the whole life of a job
    (planning, processing, merging, committing), so no runner elsewhere takes over a job whose
    runner is alive but busy. Each beat is a compare-and-swap that also checks the claim is
    still this job's: when it is not, `lost` is set (and processing stops early)."""

    def __init__(self, lake: Lake, name: str, job: Job, instance: str) -> None:
        self.lake, self.name, self.job, self.instance = lake, name, job, instance
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"cowfs-heartbeat-{name}", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            now = time.time()
            try:
                ours = records.set_state(
                    self.lake, self.name, self.job.id, self.instance, heartbeat=now
                )
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again next beat
                log.warning("pipeline %s: job %s: heartbeat failed: %s", self.name, self.job.id, e)
                continue
            if not ours:
                log.warning(
                    "pipeline %s: job %s: another runner took the job over", self.name, self.job.id
                )
                self.lost.set()
                return
            self.job.heartbeat = now


class Observer:
    """Hooks for metrics; the library calls them, the daemon counts."""

    def job_started(self, job: Job) -> None:
        pass

    def datum(self, pipeline: str, state: str, seconds: float) -> None:
        pass

    def job_finished(self, job: Job) -> None:
        pass


@dataclass
class RunOptions:
    #: Run even when the last job had exactly these inputs and spec (the CLI's `pipeline run`).
    force: bool = True
    instance: str = field(default_factory=lambda: uuid.uuid4().hex)
    cancel: threading.Event = field(default_factory=threading.Event)
    observer: Observer = field(default_factory=Observer)
    say: Callable[[str], None] = lambda s: None
    tmp_dir: str | None = None
    #: Datums whose outputs are stored and recorded together, and the longest a finished datum
    #: waits for that (what a killed runner can lose).
    flush_every: int = 512
    flush_seconds: float = 1.0


# --- inputs --------------------------------------------------------------------------------------


def current_inputs(lake: Lake, pipeline: Pipeline) -> list[dict]:
    """The head commit of each pfs input (None where the branch has no commit yet)."""
    out = []
    for inp in pipeline.spec.pfs_inputs():
        out.append(
            {
                "name": inp.name,
                "repo": inp.repo,
                "branch": inp.branch,
                "commit": lake.head_id(inp.repo, inp.branch),
            }
        )
    return out


def job_fields(pipeline: Pipeline, inputs: list[dict]) -> dict:
    """What makes two jobs the same job: the spec version and the input commits."""
    commits = {i["name"]: i["commit"] for i in inputs}
    key = f"{pipeline.version}:{pipeline.salt}:" + ",".join(
        f"{n}={c}" for n, c in sorted(commits.items())
    )
    return {"key": key, "version": pipeline.version, "inputs": commits}


def _input_files(
    lake: Lake, inputs: list[dict]
) -> tuple[dict[str, list[InputFile]], dict[tuple[str, str], Entry], dict[str, Commit]]:
    files: dict[str, list[InputFile]] = {}
    entries: dict[tuple[str, str], Entry] = {}
    commits: dict[str, Commit] = {}
    for inp in inputs:
        if inp["commit"] is None:
            files[inp["name"]] = []
            continue
        commit = lake.get_commit(inp["repo"], inp["commit"])
        commits[inp["name"]] = commit
        rows = []
        for e in lake.walk(commit):
            rows.append(InputFile(e.path, _digest(e)))
            entries[(inp["name"], e.path)] = e
        files[inp["name"]] = rows
    return files, entries, commits


# --- the job -------------------------------------------------------------------------------------


def run_job(lake: Lake, name: str, opts: RunOptions | None = None) -> Job | None:
    """Run one job now for the pipeline's current inputs. None when no input has a commit."""
    opts = opts or RunOptions()
    pipeline = records.get_pipeline(lake, name)
    inputs = current_inputs(lake, pipeline)
    if all(i["commit"] is None for i in inputs):
        return None
    fields = job_fields(pipeline, inputs)
    job_id, old = records.claim(lake, name, fields, opts.instance, opts.force)
    restarts = None
    if old is not None and old.get("state") in ("running", "interrupted") and old.get("job"):
        restarts = old["job"]
        _mark_restarted(lake, name, restarts, job_id)
    now = time.time()
    job = Job(
        id=job_id,
        pipeline=name,
        state="running",
        version=pipeline.version,
        inputs=inputs,
        global_id="",
        created=now,
        started=now,
        heartbeat=now,
        owner=records.this_owner(opts.instance),
        restarts=restarts,
    )
    records.put_job(lake, job)
    opts.observer.job_started(job)
    beat = _Heartbeat(lake, name, job, opts.instance)
    beat.start()
    try:
        try:
            _execute(lake, pipeline, job, opts, beat.lost)
        except (JobInterrupted, KeyboardInterrupt):
            job.state = "interrupted"
            job.finished = time.time()
            job.error = "the runner stopped before the job finished; it restarts with the runner"
            if records.set_state(lake, name, job.id, opts.instance, state="interrupted"):
                records.put_job(lake, job)
                raise
            lost = _lost(lake, name, job, "before it stopped")
            if not beat.lost.is_set():  # a real stop (Ctrl-C, shutdown): that is what to raise
                _abandon(lake, name, job, lost, opts)
                raise
            raise lost from None
        except records.ClaimLost:
            raise
        except Exception as e:  # noqa: BLE001 - any failure must end as a failed job, not a stuck one
            if job.state == "running":
                msg = str(e) if isinstance(e, CowfsError) else f"{type(e).__name__}: {e}"
                _fail(lake, pipeline, job, msg, None, None, opts)
    except records.ClaimLost as e:
        _abandon(lake, name, job, e, opts)
        raise
    finally:
        beat.stop()
        opts.observer.job_finished(job)
    return job


def _lost(
    lake: Lake,
    name: str,
    job: Job,
    when: str,
    then: str = "abandoned without moving the output branch or recording a result",
) -> records.ClaimLost:
    st = records.get_state(lake, name) or {}
    return records.ClaimLost(
        f"pipeline {name}: job {job.id} lost its claim {when} (the pipeline's state now names "
        f"job {st.get('job')} of runner {st.get('owner', {}).get('instance')}): {then}"
    )


def _fence(lake: Lake, name: str, job: Job, opts: RunOptions, when: str) -> None:
    """Check, and keep, this runner's claim before it writes a result: one compare-and-swap
    that refreshes the heartbeat only if the state record still names this job and runner.
    Raises `ClaimLost` otherwise.

    What remains is the window between this swap and the output branch's own swap inside
    `lake.commit` (two keys, no multi-key transaction). The swap has just refreshed the
    heartbeat and the heartbeat thread keeps it fresh, so a runner elsewhere takes over only
    if this runner then stalls past `records.STALE_AFTER_S` without beating (or a writer
    ignores the claim, e.g. `pipeline delete`). A takeover that lands there is seen by the
    final state swap, which then records nothing (the commit stays, with this job's id in
    its `extra`)."""
    now = time.time()
    if not records.set_state(lake, name, job.id, opts.instance, heartbeat=now):
        raise _lost(lake, name, job, when)
    job.heartbeat = now


def _abandon(lake: Lake, name: str, job: Job, e: records.ClaimLost, opts: RunOptions) -> None:
    """The job was taken over: leave the claim and the output to the new owner. The job record
    is only marked `restarted` (what the new owner marks it too), in case this runner's own
    mid-job writes overwrote that mark."""
    log.warning("%s", e)
    opts.say(str(e))
    job.state = "restarted"
    job.finished = job.finished or time.time()
    job.error = str(e)
    try:
        current = records.get_job(lake, name, job.id)
    except CowfsError:
        return
    if current.state == "running":
        current.state, current.finished, current.error = job.state, job.finished, job.error
        records.put_job(lake, current)


def _mark_restarted(lake: Lake, name: str, old_id: str, new_id: str) -> None:
    try:
        old = records.get_job(lake, name, old_id)
    except CowfsError:
        return
    if not old.done:
        old.state = "restarted"
        old.finished = old.finished or time.time()
        old.error = f"its runner died or stopped; restarted as job {new_id}"
        records.put_job(lake, old)


def _provenance(job: Job, commits: dict[str, Commit]) -> tuple[tuple[Provenance, ...], str]:
    seen: dict[tuple[str, str], Provenance] = {}
    for inp in job.inputs:
        c = commits.get(inp["name"])
        if c is not None:
            seen.setdefault((c.repo, c.id), Provenance(c.repo, c.id, inp["branch"]))
    # The newest input commit is the change that caused this job: its global ID travels on.
    newest = max(commits.values(), key=lambda c: c.created)
    return tuple(seen.values()), newest.global_id


def _execute(
    lake: Lake, pipeline: Pipeline, job: Job, opts: RunOptions, lost: threading.Event
) -> None:
    spec = pipeline.spec
    tid = transform_hash(spec.transform, pipeline.salt)
    head = lake.head(spec.name, spec.output_branch)
    prev_root = (
        head.extra.get("datums") if head and head.extra.get("pipeline") == spec.name else None
    )
    delta = _delta_plan(lake, pipeline, job, head, tid) if head and prev_root else None
    outputs: dict[str, list[Entry]] = {}
    rows: dict[str, list] = {}
    prev_outputs: dict[str, list[Entry]] = {}
    prev_hashes: set[str] | None
    if delta is not None:
        # Only the datums the input diff touched are candidates; every other datum of the last
        # job is kept as it was, without being read, hashed or looked up.
        commits, entries, planned = delta.commits, delta.entries, delta.added
        prev_hashes = set()
        fast = True
        rows = {r[0]: r for r in delta.kept}
        skipped = len(delta.kept)
        for _ in range(skipped):
            opts.observer.datum(spec.name, "skipped", 0.0)
        job.total = skipped + len(planned)
        opts.say(f"job {job.id}: planned from the input diff since job {delta.since}")
    else:
        files, entries, commits = _input_files(lake, job.inputs)
        planned = {datum_hash(tid, d): d for d in plan(spec.input, files)}
        job.total = len(planned)
        # Fast path: the last job's datum list says which datums it had, so unchanged datums are
        # skipped without reading their outputs, and only added and removed ones touch the trees.
        prev_hashes = _prev_hashes(lake, spec.name, head) if prev_root else None
        fast = prev_hashes is not None
        if prev_hashes is None:
            prev_outputs = _datum_tree_outputs(lake, prev_root)
            prev_hashes = set(prev_outputs)
        skipped = 0
    provenance, gid = _provenance(job, commits)
    job.global_id = gid
    job.extra["provenance"] = [vars(p) for p in provenance]
    todo: list[tuple[str, Datum]] = []
    for h, d in planned.items():
        if h in prev_hashes:
            if not fast:
                outputs[h] = prev_outputs[h]
        else:
            rec = records.get_datum(lake, spec.name, h)
            if rec is not None and rec.get("state") == "success":
                outputs[h] = [entry_from_json(r) for r in rec["output"]]
            else:
                todo.append((h, d))
                continue
        skipped += 1
        rows[h] = [h, "skipped", 0, 0.0, d.label()]
        opts.observer.datum(spec.name, "skipped", 0.0)
    job.skipped = skipped
    opts.say(f"job {job.id}: {job.total} datums, {len(todo)} to process, {job.skipped} skipped")
    records.put_job(lake, job)

    failures: list[tuple[str, Attempt, str | None]] = []
    if todo:
        failures = _process(lake, pipeline, job, todo, entries, outputs, rows, opts, lost)
    if failures:
        for h, attempt, _ in failures:
            rows[h] = [h, "failed", spec.datum_tries, attempt.seconds, planned[h].label()]
        records.put_datum_list(lake, spec.name, job.id, [rows[k] for k in sorted(rows)])
        # The job's error is about the first failure; every failed datum has its own record,
        # row and log, so the rest are counted here and found with `datum list`.
        h, attempt, log_key = failures[0]
        tail = attempt.log[-_LOG_TAIL:].decode(errors="replace")
        msg = (
            f"datum {h[:12]} ({planned[h].label()}) failed after {spec.datum_tries} "
            f"{'try' if spec.datum_tries == 1 else 'tries'}: {attempt.error}"
        )
        if len(failures) > 1:
            msg += f" (and {len(failures) - 1} more failed datum(s): see `cowfs datum list`)"
        if tail.strip():
            msg += f"\n--- log of datum {h[:12]} (last {_LOG_TAIL} bytes) ---\n{tail}"
        _fail(lake, pipeline, job, msg, h, log_key, opts)
        return

    try:
        if fast:
            gone = delta.gone if delta is not None else prev_hashes - planned.keys()
            removed = {h: _datum_outputs(lake, prev_root, h) for h in gone}
            changes = _delta_changes(lake, head, outputs, removed, prev_root)
            datum_root = _update_datum_tree(lake, prev_root, removed, outputs)
        else:
            changes = _changes(lake, head, merge(outputs))
            datum_root = _update_datum_tree(lake, prev_root, prev_outputs, outputs)
    except Collision as c:
        msg = (
            f"datums {c.first[:12]} ({_label(planned, rows, c.first)}) and {c.second[:12]} "
            f"({_label(planned, rows, c.second)}) both write /{c.path}"
        )
        records.put_datum_list(lake, spec.name, job.id, [rows[k] for k in sorted(rows)])
        _fail(lake, pipeline, job, msg, c.second, None, opts)
        return

    records.put_datum_list(lake, spec.name, job.id, [rows[k] for k in sorted(rows)])
    _fence(lake, spec.name, job, opts, "before its output commit")
    commit = lake.commit(
        spec.name,
        spec.output_branch,
        changes,
        f"pipeline {spec.name} job {job.id}",
        origin="pipeline",
        global_id=gid,
        provenance=provenance,
        allow_empty=True,
        extra={"pipeline": spec.name, "job": job.id, "datums": datum_root, "version": job.version},
    )
    job.state = "success"
    job.finished = time.time()
    job.output_commit = commit.id
    job.datum_tree = datum_root
    if not records.set_state(
        lake, spec.name, job.id, opts.instance, state="success", finished=job.finished
    ):
        raise _lost(
            lake,
            spec.name,
            job,
            f"after its output commit {commit.id} landed",
            "its result is not recorded",
        )
    records.put_job(lake, job)
    opts.say(
        f"job {job.id}: success, {job.processed} processed, {job.skipped} skipped, "
        f"output {spec.name}@{commit.id} ({job.seconds():.2f} s)"
    )


def _fail(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    msg: str,
    datum: str | None,
    log_key: str | None,
    opts: RunOptions,
) -> None:
    """Record the failure on the job and as a failed output commit; the branch stays put."""
    spec = pipeline.spec
    gid = job.global_id
    provenance = tuple(Provenance(**p) for p in job.extra.get("provenance", ()))
    _fence(lake, spec.name, job, opts, "before recording its failure")
    job.state = "failed"
    job.finished = time.time()
    job.error = msg
    job.failed_datum = datum
    try:
        if gid:
            commit = lake.commit(
                spec.name,
                spec.output_branch,
                ChangeSet(),
                f"pipeline {spec.name} job {job.id} failed",
                origin="pipeline",
                global_id=gid,
                provenance=provenance,
                state="failed",
                error=msg,
                allow_empty=True,
                extra={"pipeline": spec.name, "job": job.id, "datum": datum, "log": log_key},
            )
            job.output_commit = commit.id
    finally:
        if not records.set_state(
            lake, spec.name, job.id, opts.instance, state="failed", finished=job.finished
        ):
            raise _lost(lake, spec.name, job, "while recording its failure")
        records.put_job(lake, job)
    opts.say(f"job {job.id}: failed: {msg.splitlines()[0]}")


@dataclass
class _Delta:
    """A plan made from the input diff since the job that made the output head."""

    since: str  # that job
    commits: dict[str, Commit]
    entries: dict[tuple[str, str], Entry]  # the files of `added` only
    added: dict[str, Datum]  # datums the last job did not have
    gone: set[str]  # hashes of the last job's datums this job does not have
    kept: list[list]  # datum-list rows of the last job's other datums, now skipped


def _delta_plan(lake: Lake, pipeline: Pipeline, job: Job, head: Commit, tid: str) -> _Delta | None:
    """Plan from `tree.diff` between the input trees of the job that made the output head and
    this job's, so a one-file change costs one datum rather than a walk of every input.

    None sends the caller to full planning: the head's job ran another spec version, its
    records are missing, the input is a cross, join or group, or what the diff says the last
    job had disagrees with its datum list (never trust a delta over an inconsistent base).
    """
    spec = pipeline.spec
    since = head.extra.get("job")
    if not since or head.extra.get("version") != pipeline.version:
        return None
    if not supports_delta(spec.input):
        return None
    try:
        prev = records.get_job(lake, spec.name, since)
    except CowfsError:
        return None
    before = {i["name"]: (i["repo"], i["commit"]) for i in prev.inputs}
    now = {i["name"]: (i["repo"], i["commit"]) for i in job.inputs}
    if prev.state != "success" or prev.output_commit != head.id or before.keys() != now.keys():
        return None
    if any(before[n][0] != now[n][0] for n in now):
        return None
    rows = records.get_datum_list(lake, spec.name, since)
    if len(rows) != prev.total or any(r[1] not in ("processed", "skipped") for r in rows):
        return None

    commits: dict[str, Commit] = {}
    entries: dict[tuple[str, str], Entry] = {}
    changed: dict[str, list[str]] = {}
    old_side: dict[str, Under] = {}
    new_side: dict[str, Under] = {}
    empty: list[str] = []

    def root_of(repo: str, cid: str | None) -> str:
        if cid is None:
            if not empty:
                empty.append(tree.empty_tree(lake.store))
            return empty[0]
        return lake.get_commit(repo, cid).tree

    for name, (repo, cid) in now.items():
        if cid is not None:
            commits[name] = lake.get_commit(repo, cid)
        if cid == before[name][1]:
            continue
        old_root, new_root = root_of(repo, before[name][1]), root_of(repo, cid)
        changed[name] = [c.path for c in tree.diff(lake.store, old_root, new_root)]
        old_side[name] = _under(lake, old_root, name, None)
        new_side[name] = _under(lake, new_root, name, entries)
    removed, added = plan_delta(spec.input, changed, old_side, new_side)
    gone = {datum_hash(tid, d) for d in removed}
    had = {r[0] for r in rows}
    new = {datum_hash(tid, d): d for d in added}
    if not gone <= had or not new.keys().isdisjoint(had - gone):
        return None
    kept = [[r[0], "skipped", 0, 0.0, r[4]] for r in rows if r[0] not in gone]
    return _Delta(since, commits, entries, new, gone, kept)


def _under(lake: Lake, root: str, name: str, keep: dict[tuple[str, str], Entry] | None) -> Under:
    """`datums.Under` over one input tree; remembers the entries it reads in `keep`, which is
    how the new side collects the entries that materializing the new datums needs."""

    def under(path: str) -> list[InputFile]:
        out = []
        for e in tree.iter_under(lake.store, root, path):
            out.append(InputFile(e.path, _digest(e)))
            if keep is not None:
                keep[(name, e.path)] = e
        return out

    return under


def _digest(e: Entry) -> str:
    """What a datum's hash sees of an entry: its content, or "" for a directory."""
    if e.is_dir:
        return ""
    if e.type is EntryType.SYMLINK:
        return "link:" + (e.target or "")
    return e.digest.hex() if e.digest else "empty"


# --- datum trees ---------------------------------------------------------------------------------


def _datum_tree_outputs(lake: Lake, root: str | None) -> dict[str, list[Entry]]:
    """hash -> output entries (paths relative to /pfs/out) of every datum in a datum tree."""
    out: dict[str, list[Entry]] = {}
    if not root:
        return out
    for e in tree.iter_all(lake.store, root):
        h, _, rest = e.path.partition("/")
        if not rest:
            out.setdefault(h, [])
        else:
            out.setdefault(h, []).append(e.with_path(rest))
    return out


def _label(planned: dict[str, Datum], rows: dict[str, list], h: str) -> str:
    """A datum's label; a kept datum of a delta-planned job has only its datum-list row."""
    if h in planned:
        return planned[h].label()
    return rows[h][4] if h in rows else "from an earlier job"


def _prev_hashes(lake: Lake, pipeline: str, head: Commit | None) -> set[str] | None:
    """The datums of the job that made the output head, from its datum list (one small
    object, parsed far faster than the datum tree). None when that list is missing."""
    job = head.extra.get("job") if head else None
    if not job:
        return None
    rows = records.get_datum_list(lake, pipeline, job)
    if not rows and head.files:
        return None
    return {r[0] for r in rows if r[1] in ("processed", "skipped")}


def _datum_outputs(lake: Lake, root: str, h: str) -> list[Entry]:
    found = tree.iter_under(lake.store, root, h)
    return [e.with_path(e.path[len(h) + 1 :]) for e in found if e.path != h]


def _owner(lake: Lake, root: str, path: str) -> str:
    """Which datum of a datum tree wrote `path` (or something beneath it): the slow search
    only a collision pays for."""
    for e in tree.iter_all(lake.store, root):
        h, _, rest = e.path.partition("/")
        if rest == path or rest.startswith(path + "/"):
            return h
    return "?"


def _delta_changes(
    lake: Lake,
    head: Commit,
    added: dict[str, list[Entry]],
    removed: dict[str, list[Entry]],
    prev_root: str,
) -> ChangeSet:
    """The output change from added and removed datums alone, checked against the head for
    paths a kept datum already writes; raises `Collision` naming both datums."""
    view = tree.TreeView(lake.store, head.tree)
    new = merge(added)
    owner = {e.path: h for h, es in added.items() for e in es}
    gone = {e.path for es in removed.values() for e in es if not e.is_dir}
    gone_dirs = {e.path for es in removed.values() for e in es if e.is_dir}
    changes = ChangeSet()

    def kept_under(d: str) -> str | None:
        for e in view.walk(d):
            if e.path != d and e.path not in gone and not e.is_dir:
                return e.path
        return None

    for path, e in new.items():
        cur = view.lookup(path)
        if cur is None or path in gone:
            changes.puts[path] = e
        elif e.is_dir and cur.is_dir:
            continue
        elif e.is_dir:  # a kept datum's file where an added datum makes a directory
            raise Collision(path, _owner(lake, prev_root, path), owner[path])
        elif cur.is_dir:
            other = kept_under(path)
            if other is None:
                changes.puts[path] = e
            else:
                raise Collision(path, _owner(lake, prev_root, other), owner[path])
        else:
            raise Collision(path, _owner(lake, prev_root, path), owner[path])
    changes.deletes = sorted(p for p in gone if p not in new)
    for d in sorted(gone_dirs, reverse=True):
        if d in new or any(p.startswith(d + "/") for p in new):
            continue
        if kept_under(d) is None:
            changes.deletes.append(d)
    return changes


def _update_datum_tree(
    lake: Lake,
    prev_root: str | None,
    prev: dict[str, list[Entry]],
    outputs: dict[str, list[Entry]],
) -> str:
    """The datum tree without the datums of `prev` that `outputs` lacks and with those of
    `outputs` that `prev` lacks: edits to the last tree, so its cost follows the change."""
    edits: dict[str, Entry | None] = {}
    for h, es in prev.items():
        if h not in outputs:
            edits[h] = None
            for e in es:
                edits[f"{h}/{e.path}"] = None
    for h, es in outputs.items():
        if h not in prev:
            edits[h] = dir_entry(h)
            for e in es:
                edits[f"{h}/{e.path}"] = e.with_path(f"{h}/{e.path}")
    base = prev_root or tree.empty_tree(lake.store)
    return tree.apply(lake.store, base, edits)


def _changes(lake: Lake, head: Commit | None, merged: dict[str, Entry]) -> ChangeSet:
    """What turns the output branch's head into exactly the merged outputs."""
    changes = ChangeSet()
    current: dict[str, Entry] = {}
    if head is not None:
        current = {e.path: e for e in lake.walk(head)}
    for path, e in merged.items():
        if current.get(path) != e:
            changes.puts[path] = e
    changes.deletes = [p for p in current if p not in merged]
    return changes


# --- processing ----------------------------------------------------------------------------------


@dataclass
class _Done:
    hash: str
    attempt: Attempt
    tries: int
    holding: Path | None  # where its output was moved; None when it failed


def _process(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    todo: list[tuple[str, Datum]],
    entries: dict[tuple[str, str], Entry],
    outputs: dict[str, list[Entry]],
    rows: dict[str, list],
    opts: RunOptions,
    lost: threading.Event | None = None,
) -> list[tuple[str, Attempt, str | None]]:
    """Run the datums in `todo`; fills `outputs` and `rows`. Returns every failed datum, in
    the order they failed: datums in flight when the first fails still finish, and each that
    fails is recorded, so none of the failures is left without its record and log."""
    spec = pipeline.spec
    try:
        sandbox = choose(spec)
    except SandboxUnavailable as e:
        raise UsageError(str(e)) from None
    if sandbox.reason and sandbox.reason not in _warned:
        _warned.add(sandbox.reason)
        print(
            f"cowfs: running transforms without a sandbox ({sandbox.reason}); inputs are at "
            "$PFS_<INPUT> and output at $PFS_OUT, not /pfs",
            file=sys.stderr,
        )
    if spec.datum_batching and spec.transform.stdin:
        raise UsageError(
            "datum_batching feeds datums on stdin, so transform.stdin cannot be used: put the "
            "code in transform.cmd (e.g. [python3, -c, ...])"
        )
    names = [i.name for i in spec.pfs_inputs()]
    todo_map = dict(todo)
    input_bytes = sum(entries[(f.input, f.path)].size for _, d in todo for f in d.files)
    scratch = opts.tmp_dir or scratch_dir(input_bytes)
    tmp = Path(tempfile.mkdtemp(prefix=f"cowfs-job-{spec.name}-", dir=scratch))
    reader = ChunkReader(lake.store)
    queue_in: queue.Queue[tuple[str, Datum]] = queue.Queue()
    for item in todo:
        queue_in.put(item)
    done: queue.Queue[_Done | None] = queue.Queue()
    stop = threading.Event()
    cancel = _Either(opts.cancel, lost)
    nworkers = max(1, min(spec.parallelism, len(todo)))

    def work(i: int) -> None:
        worker = Worker(tmp / f"w{i}", spec, sandbox, names, cancel)
        try:
            while not stop.is_set():
                try:
                    h, d = queue_in.get_nowait()
                except queue.Empty:
                    return
                attempt = Attempt(False, "not run", b"", 0.0)
                logs: list[bytes] = []
                tries = 0
                for tries in range(1, spec.datum_tries + 1):  # noqa: B007
                    worker.reset()
                    try:
                        _materialize(reader, entries, worker, d)
                    except (OSError, CowfsError) as e:
                        attempt = Attempt(False, f"cannot materialize inputs: {e}", b"", 0.0)
                        break
                    attempt = worker.run(h, spec.datum_timeout)
                    if attempt.ok:
                        break
                    logs.append(
                        f"--- try {tries} failed: {attempt.error} ---\n".encode() + attempt.log
                    )
                if attempt.ok:
                    holding = tmp / "outs" / h
                    worker.take_output(holding)
                    done.put(_Done(h, attempt, tries, holding))
                else:
                    attempt.log = b"".join(logs) or attempt.log
                    done.put(_Done(h, attempt, tries, None))
                    stop.set()
                    return
        except Cancelled:
            stop.set()
        except BaseException as e:  # noqa: BLE001 - reported as the job's error
            done.put(_Done("", Attempt(False, f"worker crashed: {e!r}", b"", 0.0), 0, None))
            stop.set()
        finally:
            worker.close()
            done.put(None)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(nworkers)]
    for t in threads:
        t.start()
    failures: list[tuple[str, Attempt, str | None]] = []
    pending: list[_Done] = []
    finished_workers = 0
    last_beat = last_flush = time.monotonic()
    try:
        with ThreadPoolExecutor(8, thread_name_prefix="cowfs-records") as io:
            while finished_workers < nworkers:
                try:
                    item = done.get(timeout=0.5)
                except queue.Empty:
                    item = False
                if item is None:
                    finished_workers += 1
                elif item:
                    if item.holding is None:
                        failures.append(_record_failure(lake, spec.name, job, item, todo_map))
                        opts.observer.datum(spec.name, "failed", item.attempt.seconds)
                    else:
                        pending.append(item)
                if pending and (
                    len(pending) >= opts.flush_every
                    or time.monotonic() - last_flush > opts.flush_seconds
                ):
                    _flush(lake, spec.name, job, pending, todo_map, outputs, rows, opts, io)
                    pending = []
                    last_flush = time.monotonic()
                if time.monotonic() - last_beat > HEARTBEAT_S:
                    last_beat = time.monotonic()
                    job.heartbeat = time.time()
                    records.put_job(lake, job)
            _flush(lake, spec.name, job, pending, todo_map, outputs, rows, opts, io)
    except BaseException:
        cancel.own.set()  # Ctrl-C or a store error: kill this job's processes, do not wait
        raise
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
        reader.close()
        shutil.rmtree(tmp, ignore_errors=True)
    if cancel.is_set():
        raise JobInterrupted(f"job {job.id} interrupted")
    return failures


class _Either:
    """Set when the runner stops (shared by every job) or when this job must stop alone."""

    def __init__(self, shared: threading.Event, lost: threading.Event | None = None) -> None:
        self.shared = shared
        self.own = threading.Event()
        self.lost = lost or threading.Event()  # another runner took the job over

    def is_set(self) -> bool:
        return self.shared.is_set() or self.own.is_set() or self.lost.is_set()


def scratch_dir(input_bytes: int) -> str | None:
    """Where datums' directories go: memory (/dev/shm) when the inputs are small enough to
    fit comfortably, because a datum creates and deletes several files and directories and a
    disk's journal makes each of those cost ten times more. `COWFS_JOB_TMP` decides instead."""
    forced = os.environ.get("COWFS_JOB_TMP")
    if forced:
        return forced
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if os.access("/dev/shm", os.W_OK) and input_bytes * 4 < min(free, _SHM_LIMIT):
        return "/dev/shm"
    return None


def _materialize(
    reader: ChunkReader, entries: dict[tuple[str, str], Entry], worker: Worker, d: Datum
) -> None:
    for f in d.files:
        if normalize_path(f.path) != f.path:
            raise UsageError(f"refusing input path {f.path!r}: not a clean relative path")
        target = worker.input_dir(f.input) / f.path
        e = entries[(f.input, f.path)]
        if e.is_dir:
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        if e.type is EntryType.SYMLINK:
            target.symlink_to(e.target or "")
        else:
            write_file(reader, e, target)


def _record_failure(
    lake: Lake, pipeline: str, job: Job, item: _Done, todo: dict[str, Datum]
) -> tuple[str, Attempt, str | None]:
    job.failed += 1
    log_key = None
    if item.hash:
        log = item.attempt.log + f"\n--- datum failed: {item.attempt.error} ---\n".encode()
        log_key = records.put_log(lake, pipeline, job.id, item.hash, log)
        d = todo[item.hash]
        records.put_datum(
            lake,
            pipeline,
            {
                "hash": item.hash,
                "job": job.id,
                "state": "failed",
                "error": item.attempt.error,
                "tries": item.tries,
                "seconds": item.attempt.seconds,
                "inputs": [[f.input, f.path, f.digest] for f in d.files],
                "log": log_key,
                "time": time.time(),
            },
        )
    else:
        raise CowfsError(item.attempt.error)
    return item.hash, item.attempt, log_key


def _flush(
    lake: Lake,
    pipeline: str,
    job: Job,
    pending: list[_Done],
    todo: dict[str, Datum],
    outputs: dict[str, list[Entry]],
    rows: dict[str, list],
    opts: RunOptions,
    io: ThreadPoolExecutor,
) -> None:
    """Store the outputs of finished datums and record them, so a restart can skip them."""
    if not pending:
        return
    got = ingest(lake.store, [(p.hash, p.holding) for p in pending if p.holding is not None])
    lake.objects.sync()
    futures = []
    for p in pending:
        d = todo[p.hash]
        outs = got[p.hash]
        log_key = None
        if p.attempt.log.strip():
            log_key = records.log_key(pipeline, job.id, p.hash)
            futures.append(io.submit(lake.objects.put, log_key, p.attempt.log))
        rec = {
            "hash": p.hash,
            "job": job.id,
            "state": "success",
            "tries": p.tries,
            "seconds": p.attempt.seconds,
            "inputs": [[f.input, f.path, f.digest] for f in d.files],
            "output": [entry_to_json(e) for e in outs],
            "log": log_key,
            "time": time.time(),
        }
        futures.append(io.submit(records.put_datum, lake, pipeline, rec))
        outputs[p.hash] = outs
        rows[p.hash] = [p.hash, "processed", p.tries, round(p.attempt.seconds, 4), d.label()]
        job.processed += 1
        opts.observer.datum(pipeline, "processed", p.attempt.seconds)
        if p.holding is not None:
            io.submit(shutil.rmtree, p.holding, ignore_errors=True)
    for f in futures:
        f.result()
    job.heartbeat = time.time()
    records.put_job(lake, job)
