"""Running one job of a pipeline, start to finish, with or without a daemon.

A job is: claim (`records.claim`), **plan** (`planning`: inputs to datums with hashes, which to
run and which to reuse), **run** (a runner from `runners` turns datums into output entries,
here or on a Ray cluster), and **publish** (`publish`: merge, collision check, output commit,
branch swap under the claim). This module wires them together and records what the runner
hands back. A failed datum (after its retries) fails the job: its output commit is recorded in
state "failed" with the error and log, and the output branch stays where it was.

Which datums were processed is remembered twice: in a "datum tree" (paths `<hash>/<output
path>`, a prolly tree whose root sits in the output commit's `extra`) for the cheap common case
of the next job, and in a `datums/<pipeline>/<hash>` record per datum, written as soon as the
datum's output is stored, so a job killed halfway loses at most the datums it had not flushed.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.pipelines import planning, publish, records
from cowfs.pipelines.datums import Datum, datum_hash, transform_hash  # noqa: F401 - re-exported
from cowfs.pipelines.merge import Collision
from cowfs.pipelines.planning import JobPlan, current_inputs, job_fields  # noqa: F401
from cowfs.pipelines.records import Job, Pipeline
from cowfs.pipelines.results import DatumRecord, DatumResult, DatumRow
from cowfs.pipelines.runners import RunContext, Runner, get_runner
from cowfs.pipelines.runners.local import scratch_dir  # noqa: F401 - re-exported

_LOG_TAIL = 4000
log = logging.getLogger("cowfs.pipelines")


class JobInterrupted(CowfsError):
    """The runner was asked to stop; the job is left for the next runner to restart."""


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
    #: How often a running job's claim gets a fresh heartbeat (from planning to the last record,
    #: by a thread of its own), and the job record one while datums run. Must stay well below
    #: `stale_after_s`.
    heartbeat_s: float = 5.0
    #: A running job whose owner on another machine has not beaten its heart for this long is
    #: dead (None: `records.STALE_AFTER_S`).
    stale_after_s: float | None = None
    #: `local` or `ray`; None: what the spec says (`runner`), else the default below.
    runner: str | None = None
    #: The Ray address when the spec names none (`cowfs daemon --ray ADDRESS`).
    ray_address: str | None = None
    #: The runner for pipelines whose spec names none (`cowfs daemon --ray` makes it `ray`).
    default_runner: str = "local"


class _Heartbeat:
    """Refreshes the claim's heartbeat every `heartbeat_s` seconds for the whole life of a job
    (planning, processing, merging, committing), so no runner elsewhere takes over a job whose
    runner is alive but busy. Each beat is a compare-and-swap that also checks the claim is
    still this job's: when it is not, `lost` is set (and processing stops early)."""

    def __init__(self, lake: Lake, name: str, job: Job, opts: RunOptions) -> None:
        self.lake, self.name, self.job, self.opts = lake, name, job, opts
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
        while not self._stop.wait(self.opts.heartbeat_s):
            now = time.time()
            try:
                ours = records.set_state(
                    self.lake, self.name, self.job.id, self.opts.instance, heartbeat=now
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


class _Either:
    """Set when the runner stops (shared by every job) or when this job lost its claim."""

    def __init__(self, *flags: threading.Event) -> None:
        self.flags = flags

    def is_set(self) -> bool:
        return any(f.is_set() for f in self.flags)


# --- the job -------------------------------------------------------------------------------------


def run_job(lake: Lake, name: str, opts: RunOptions | None = None) -> Job | None:
    """Run one job now for the pipeline's current inputs. None when no input has a commit."""
    opts = opts or RunOptions()
    pipeline = records.get_pipeline(lake, name)
    runner = choose_runner(pipeline, opts)  # an unreachable cluster fails here, before a claim
    inputs = current_inputs(lake, pipeline)
    if all(i["commit"] is None for i in inputs):
        return None
    fields = job_fields(pipeline, inputs)
    job_id, old = records.claim(lake, name, fields, opts.instance, opts.force, opts.stale_after_s)
    restarts = None
    if old is not None and old.state in ("running", "interrupted") and old.job:
        restarts = old.job
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
    beat = _Heartbeat(lake, name, job, opts)
    beat.start()
    try:
        try:
            _execute(lake, pipeline, job, opts, runner, beat.lost)
        except (JobInterrupted, KeyboardInterrupt):
            job.state = "interrupted"
            job.finished = time.time()
            job.error = "the runner stopped before the job finished; it restarts with the runner"
            if records.set_state(lake, name, job.id, opts.instance, state="interrupted"):
                records.put_job(lake, job)
                raise
            lost = publish.lost(lake, name, job, "before it stopped")
            if not beat.lost.is_set():  # a real stop (Ctrl-C, shutdown): that is what to raise
                _abandon(lake, job, lost, opts)
                raise
            raise lost from None
        except records.ClaimLost:
            raise
        except Exception as e:  # noqa: BLE001 - any failure must end as a failed job, not a stuck one
            if job.state == "running":
                msg = str(e) if isinstance(e, CowfsError) else f"{type(e).__name__}: {e}"
                _fail(lake, pipeline, job, msg, None, None, opts)
    except records.ClaimLost as e:
        _abandon(lake, job, e, opts)
        raise
    finally:
        beat.stop()
        opts.observer.job_finished(job)
    return job


def choose_runner(pipeline: Pipeline, opts: RunOptions) -> Runner:
    """The options' runner, else the spec's, else the default; Ray is connected to here, so a
    cluster that is not there fails the job's start with one line, before anything is claimed."""
    spec = pipeline.spec.runner
    kind = opts.runner or (spec.kind if spec else None) or opts.default_runner
    address = (spec.address if spec and spec.kind == "ray" else None) or opts.ray_address
    return get_runner(kind, address, spec.batch_size if spec else None)


def _abandon(lake: Lake, job: Job, e: records.ClaimLost, opts: RunOptions) -> None:
    """The job was taken over: leave the claim and the output to the new owner. The job record
    is only marked `restarted` (what the new owner marks it too), in case this runner's own
    mid-job writes overwrote that mark."""
    log.warning("%s", e)
    opts.say(str(e))
    job.state = "restarted"
    job.finished = job.finished or time.time()
    job.error = str(e)
    try:
        current = records.get_job(lake, job.pipeline, job.id)
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


def _execute(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    opts: RunOptions,
    runner: Runner,
    lost: threading.Event,
) -> None:
    spec = pipeline.spec
    plan = planning.make_plan(lake, pipeline, job)
    if plan.since:
        opts.say(f"job {job.id}: planned from the input diff since job {plan.since}")
    provenance, gid = planning.provenance(job, plan.commits)
    job.global_id = gid
    job.extra["provenance"] = [vars(p) for p in provenance]
    job.total, job.skipped = plan.total, plan.skipped
    for _ in range(plan.skipped):
        opts.observer.datum(spec.name, "skipped", 0.0)
    opts.say(
        f"job {job.id}: {job.total} datums, {len(plan.todo)} to process, {job.skipped} skipped"
        + (f" ({runner.name} runner)" if plan.todo and runner.name != "local" else "")
    )
    records.put_job(lake, job)

    failures: list[tuple[DatumResult, str | None]] = []
    if plan.todo:
        failures = _process(lake, pipeline, job, plan, opts, runner, lost)
    if failures:
        _fail_datums(lake, pipeline, job, plan, failures, opts)
        return
    try:
        changes, datum_root = publish.output_change(lake, plan, plan.outputs)
    except Collision as c:
        msg = (
            f"datums {c.first[:12]} ({plan.label(c.first)}) and {c.second[:12]} "
            f"({plan.label(c.second)}) both write /{c.path}"
        )
        _put_rows(lake, spec.name, job, plan)
        _fail(lake, pipeline, job, msg, c.second, None, opts)
        return
    _put_rows(lake, spec.name, job, plan)
    commit = publish.commit_success(lake, pipeline, job, opts.instance, changes, datum_root)
    opts.say(
        f"job {job.id}: success, {job.processed} processed, {job.skipped} skipped, "
        f"output {spec.name}@{commit.id} ({job.seconds():.2f} s)"
    )


def _put_rows(lake: Lake, pipeline: str, job: Job, plan: JobPlan) -> None:
    records.put_datum_list(lake, pipeline, job.id, [plan.rows[k] for k in sorted(plan.rows)])


def _fail_datums(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    plan: JobPlan,
    failures: list[tuple[DatumResult, str | None]],
    opts: RunOptions,
) -> None:
    """The job's error is about the first failure; every failed datum has its own record,
    row and log, so the rest are counted here and found with `datum list`."""
    spec = pipeline.spec
    for r, _ in failures:
        plan.rows[r.hash] = DatumRow(
            r.hash, "failed", spec.datum_tries, r.seconds, plan.label(r.hash), r.node
        )
    _put_rows(lake, spec.name, job, plan)
    first, log_key = failures[0]
    tail = first.log[-_LOG_TAIL:].decode(errors="replace")
    h = first.hash
    msg = (
        f"datum {h[:12]} ({plan.label(h)}) failed after {spec.datum_tries} "
        f"{'try' if spec.datum_tries == 1 else 'tries'}: {first.error}"
    )
    if len(failures) > 1:
        msg += f" (and {len(failures) - 1} more failed datum(s): see `cowfs datum list`)"
    if tail.strip():
        msg += f"\n--- log of datum {h[:12]} (last {_LOG_TAIL} bytes) ---\n{tail}"
    _fail(lake, pipeline, job, msg, h, log_key, opts)


def _fail(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    msg: str,
    datum: str | None,
    log_key: str | None,
    opts: RunOptions,
) -> None:
    publish.commit_failure(lake, pipeline, job, opts.instance, msg, datum, log_key)
    opts.say(f"job {job.id}: failed: {msg.splitlines()[0]}")


# --- processing: the runner's results, recorded as they come -------------------------------------


def _process(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    plan: JobPlan,
    opts: RunOptions,
    runner: Runner,
    lost: threading.Event,
) -> list[tuple[DatumResult, str | None]]:
    """Run the plan's datums; fills `plan.outputs` and `plan.rows`. Returns every failed datum
    (with its log key), in the order they failed: datums in flight when the first fails still
    finish, and each that fails is recorded, so none is left without its record and log."""
    spec = pipeline.spec
    ctx = RunContext(
        lake,
        pipeline,
        job,
        plan.entries,
        _Either(opts.cancel, lost),
        opts.say,
        opts.tmp_dir,
        opts.flush_every,
        opts.flush_seconds,
    )
    todo = dict(plan.todo)
    failures: list[tuple[DatumResult, str | None]] = []
    last_beat = time.monotonic()
    with (
        ThreadPoolExecutor(8, thread_name_prefix="cowfs-records") as io,
        contextlib.closing(runner.run(ctx, plan.todo)) as results,
    ):
        for group in results:
            ok = [r for r in group if r.ok]
            for r in group:
                if not r.ok:
                    failures.append((r, _record_failure(lake, spec.name, job, r, todo[r.hash])))
                    opts.observer.datum(spec.name, "failed", r.seconds)
            if ok:
                _record(lake, spec.name, job, ok, todo, plan, opts, io)
                last_beat = time.monotonic()
            elif time.monotonic() - last_beat > opts.heartbeat_s:
                last_beat = time.monotonic()
                job.heartbeat = time.time()
                records.put_job(lake, job)
    if ctx.cancel.is_set():
        raise JobInterrupted(f"job {job.id} interrupted")
    return failures


def _inputs_of(d: Datum) -> list[list[str]]:
    return [[f.input, f.path, f.digest] for f in d.files]


def _record_failure(lake: Lake, pipeline: str, job: Job, r: DatumResult, d: Datum) -> str:
    job.failed += 1
    text = r.log + f"\n--- datum failed: {r.error} ---\n".encode()
    log_key = records.put_log(lake, pipeline, job.id, r.hash, text)
    rec = DatumRecord(
        r.hash, job.id, "failed", r.tries, r.seconds, _inputs_of(d), log_key, time.time(),
        error=r.error, node=r.node,
    )  # fmt: skip
    records.put_datum(lake, pipeline, rec)
    return log_key


def _record(
    lake: Lake,
    pipeline: str,
    job: Job,
    done: list[DatumResult],
    todo: dict[str, Datum],
    plan: JobPlan,
    opts: RunOptions,
    io: ThreadPoolExecutor,
) -> None:
    """Record datums whose outputs the runner stored (and synced), so a restart skips them."""
    futures = []
    for r in done:
        d = todo[r.hash]
        outs = r.outputs or []
        log_key = None
        if r.log.strip():
            log_key = records.log_key(pipeline, job.id, r.hash)
            futures.append(io.submit(lake.objects.put, log_key, r.log))
        rec = DatumRecord(
            r.hash, job.id, "success", r.tries, r.seconds, _inputs_of(d), log_key, time.time(),
            output=outs, node=r.node,
        )  # fmt: skip
        futures.append(io.submit(records.put_datum, lake, pipeline, rec))
        plan.outputs[r.hash] = outs
        plan.rows[r.hash] = DatumRow(
            r.hash, "processed", r.tries, round(r.seconds, 4), d.label(), r.node
        )
        job.processed += 1
        opts.observer.datum(pipeline, "processed", r.seconds)
    for f in futures:
        f.result()
    job.heartbeat = time.time()
    records.put_job(lake, job)
