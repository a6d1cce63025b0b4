"""Pipeline, job, datum and log records in the object store: the only place they live.

A second machine pointed at the same store sees the same pipelines and jobs, so nothing here
is kept in a node-local database. Keys:

| key | what |
| --- | --- |
| `pipelines/<name>` | the spec, its version and the reprocess salt |
| `pipeline-state/<name>` | the job running or run last, and for which inputs (compare-and-swap) |
| `jobs/<pipeline>/<job>` | one job: state, inputs, counts, output commit, error |
| `datum-lists/<pipeline>/<job>` | every datum of a job, one compact row each |
| `datums/<pipeline>/<hash>` | a processed datum: inputs, state, output tree; what skipping reuses |
| `logs/<pipeline>/<job>/<hash>` | the user code's stdout and stderr for one datum |
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

from cowfs import layout
from cowfs.errors import AlreadyExists, Conflict, NotFound, ObjectMissing, UsageError
from cowfs.lake import Lake
from cowfs.layout import (
    datum_key,
    datum_list_key,
    job_key,
    log_key,
    pipeline_key,
)
from cowfs.layout import pipeline_state_key as state_key
from cowfs.pipelines.results import DatumRecord, DatumRow
from cowfs.pipelines.spec import PipelineSpec, parse

#: A running job whose owner on another machine has not beaten its heart for this long is dead.
#: Read at each check, so tests may shorten it. Runners refresh the heartbeat every
#: `executor.HEARTBEAT_S` seconds for the whole life of a job, which must stay well below this.
STALE_AFTER_S = 60.0


def new_job_id() -> str:
    """32 hex digits that sort by start time, so listing `jobs/<p>/` lists them in order."""
    return f"{time.time_ns() // 1_000_000:012x}{uuid.uuid4().hex[:20]}"


def _get(lake: Lake, key: str) -> dict | None:
    try:
        return json.loads(lake.objects.get(key))
    except ObjectMissing:
        return None


def _put(lake: Lake, key: str, record: dict) -> None:
    lake.objects.put(key, json.dumps(record, sort_keys=True, separators=(",", ":")).encode())


# --- pipelines -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pipeline:
    spec: PipelineSpec
    version: int
    salt: str
    created: float
    updated: float

    @property
    def name(self) -> str:
        return self.spec.name

    def to_record(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "spec": self.spec.to_dict(),
            "version": self.version,
            "salt": self.salt,
            "created": self.created,
            "updated": self.updated,
        }

    @classmethod
    def from_record(cls, d: dict) -> Pipeline:
        return cls(parse(d["spec"]), d["version"], d.get("salt", ""), d["created"], d["updated"])


def get_pipeline(lake: Lake, name: str) -> Pipeline:
    d = _get(lake, pipeline_key(name))
    if d is None:
        raise NotFound(f"no pipeline named {name}: see `cowfs pipeline list`")
    return Pipeline.from_record(d)


def _list(lake: Lake, prefix: str) -> list[dict]:
    """Every record under a prefix; one deleted between listing and reading is left out."""
    found = (_get(lake, key) for key, _ in lake.objects.list(prefix))
    return [d for d in found if d is not None]


def list_pipelines(lake: Lake) -> list[Pipeline]:
    return [Pipeline.from_record(d) for d in _list(lake, layout.PIPELINES)]


def check_graph(lake: Lake, spec: PipelineSpec, others: list[Pipeline]) -> None:
    """Inputs must exist and no pipeline may, through others, read its own output."""
    missing = []
    for inp in spec.pfs_inputs():
        if inp.cron is not None:
            continue  # the pipeline's own tick repo, made with it
        try:
            lake.repo(inp.repo)
        except NotFound:
            missing.append(inp.repo)
    if missing:
        raise NotFound(
            f"pipeline {spec.name} reads repo(s) that do not exist: "
            f"{', '.join(sorted(set(missing)))}"
            " (create them with `cowfs repo create`)"
        )
    reads = {p.name: {i.repo for i in p.spec.pfs_inputs()} for p in others if p.name != spec.name}
    reads[spec.name] = {i.repo for i in spec.pfs_inputs()}
    seen: set[str] = set()
    stack = [spec.name]
    while stack:
        name = stack.pop()
        for upstream in reads.get(name, ()):
            if upstream == spec.name:
                raise UsageError(f"pipeline {spec.name} would read its own output through a cycle")
            if upstream not in seen:
                seen.add(upstream)
                stack.append(upstream)


def create_pipeline(lake: Lake, spec: PipelineSpec) -> Pipeline:
    if _get(lake, pipeline_key(spec.name)) is not None:
        raise AlreadyExists(f"pipeline {spec.name} exists: use `cowfs pipeline update`")
    check_graph(lake, spec, list_pipelines(lake))
    try:
        lake.repo(spec.name)
        raise AlreadyExists(
            f"a repo named {spec.name} already exists, and a pipeline's output repo takes its "
            "name: delete the repo or name the pipeline differently"
        )
    except NotFound:
        pass
    now = time.time()
    p = Pipeline(spec, 1, "", now, now)
    data = json.dumps(p.to_record(), sort_keys=True).encode()
    if not lake.objects.swap(pipeline_key(spec.name), data, None):
        raise AlreadyExists(f"pipeline {spec.name} was just created by someone else")
    lake.create_repo(spec.name, f"output of pipeline {spec.name}")
    _create_tick_repos(lake, spec)
    return p


def _create_tick_repos(lake: Lake, spec: PipelineSpec) -> None:
    for inp in spec.pfs_inputs():
        if inp.cron is not None:
            try:
                lake.repo(inp.repo)
            except NotFound:
                lake.create_repo(inp.repo, f"ticks of cron input {inp.name} of {spec.name}")


def update_pipeline(lake: Lake, spec: PipelineSpec, reprocess: bool = False) -> Pipeline:
    """A new version of the spec; `reprocess` changes the salt so every datum hash changes."""
    current = lake.objects.get_versioned(pipeline_key(spec.name))
    if current is None:
        raise NotFound(f"no pipeline named {spec.name}: use `cowfs pipeline create`")
    old = Pipeline.from_record(json.loads(current.data))
    check_graph(lake, spec, list_pipelines(lake))
    salt = uuid.uuid4().hex if reprocess else old.salt
    p = Pipeline(spec, old.version + 1, salt, old.created, time.time())
    data = json.dumps(p.to_record(), sort_keys=True).encode()
    if not lake.objects.swap(pipeline_key(spec.name), data, current.token):
        raise Conflict(f"pipeline {spec.name} was updated by someone else meanwhile: retry")
    _create_tick_repos(lake, spec)
    return p


def delete_pipeline(lake: Lake, name: str, keep_repo: bool = False) -> None:
    ticks = [i.repo for i in get_pipeline(lake, name).spec.pfs_inputs() if i.cron is not None]
    lake.objects.delete(pipeline_key(name))
    for prefix in layout.pipeline_owned_prefixes(name):
        for key, _ in lake.objects.list(prefix):
            lake.objects.delete(key)
    lake.objects.delete(state_key(name))
    if not keep_repo:
        for repo in [name, *ticks]:
            try:
                lake.delete_repo(repo)
            except NotFound:
                pass


# --- jobs ----------------------------------------------------------------------------------------


@dataclass
class Job:
    id: str
    pipeline: str
    state: str  # running | success | failed | interrupted | restarted
    version: int
    inputs: list[dict]  # [{name, repo, branch, commit}]
    global_id: str
    created: float
    owner: dict
    started: float | None = None
    finished: float | None = None
    heartbeat: float | None = None
    total: int = 0
    processed: int = 0
    skipped: int = 0
    failed: int = 0
    output_commit: str | None = None
    error: str | None = None
    failed_datum: str | None = None
    datum_tree: str | None = None
    restarts: str | None = None  # the job this one took over from
    extra: dict = field(default_factory=dict)

    @property
    def done(self) -> bool:
        return self.state in ("success", "failed")

    def to_record(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, d: dict) -> Job:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def seconds(self) -> float | None:
        if self.started is None:
            return None
        return (self.finished or time.time()) - self.started


def put_job(lake: Lake, job: Job) -> None:
    _put(lake, job_key(job.pipeline, job.id), job.to_record())


def get_job(lake: Lake, pipeline: str, job_id: str) -> Job:
    d = _get(lake, job_key(pipeline, job_id))
    if d is None:
        raise NotFound(f"no job {job_id} in pipeline {pipeline}")
    return Job.from_record(d)


def list_jobs(lake: Lake, pipeline: str) -> list[Job]:
    return [Job.from_record(d) for d in _list(lake, layout.jobs_prefix(pipeline))]


def find_job(lake: Lake, ident: str) -> Job:
    """A job by id or unique prefix, in whichever pipeline has it."""
    if len(ident) < 6 or not all(c in "0123456789abcdef" for c in ident):
        raise UsageError(f"{ident!r} is not a job id (hex, at least 6 digits)")
    found = []
    for key, _ in lake.objects.list(layout.jobs_prefix()):
        pipeline, jid = layout.parse_job_key(key)
        if jid.startswith(ident):
            found.append((pipeline, jid))
    if not found:
        raise NotFound(f"no job {ident}: see `cowfs job list`")
    if len(found) > 1:
        raise UsageError(f"job id {ident} is ambiguous: give more digits")
    return get_job(lake, *found[0])


# --- the per-pipeline claim ----------------------------------------------------------------------


def this_owner(instance: str) -> dict:
    pid = os.getpid()
    return {
        "host": _host(),
        "boot": _boot_id(),
        "pid": pid,
        "start": process_start(pid),
        "instance": instance,
    }


def _host() -> str:
    return socket.gethostname()


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


def process_start(pid: int) -> int | None:
    """The process's start time (field 22 of /proc/<pid>/stat, clock ticks since boot): with
    the boot id and the pid it names one process, so a reused pid is told apart. None when
    there is no such process or /proc cannot say."""
    try:
        with open(f"/proc/{int(pid)}/stat", "rb") as f:
            stat = f.read()
        # The command name (field 2) is in parentheses and may hold spaces or ')'.
        return int(stat[stat.rindex(b")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError, TypeError):
        return None


def owner_alive(
    owner: dict, heartbeat: float | None, instance: str, stale_after: float | None = None
) -> bool:
    """Whether the process that claimed a job may still be running it.

    On this host and boot: its pid exists and, when the owner recorded its start time, that
    process started then (a pid reused by another process is not the runner). Elsewhere: its
    heartbeat is under `STALE_AFTER_S` old."""
    if owner.get("host") == _host() and owner.get("boot") == _boot_id():
        pid = owner.get("pid")
        if pid == os.getpid():
            return owner.get("instance") == instance
        try:
            os.kill(int(pid), 0)
        except (ProcessLookupError, TypeError, ValueError):
            return False
        except PermissionError:
            pass
        start = owner.get("start")
        if start is None:
            return True  # a record from before start times were kept: the pid alone decides
        now = process_start(int(pid))
        if now is None:
            # Gone since the kill above, or /proc hides it: only the former is proof of death.
            return os.path.exists(f"/proc/{int(pid)}")
        return now == start
    limit = STALE_AFTER_S if stale_after is None else stale_after
    return heartbeat is not None and time.time() - heartbeat < limit


@dataclass
class ClaimState:
    """`pipeline-state/<name>`: the claim on a pipeline, naming the job running or run last."""

    key: str
    version: int
    inputs: dict[str, str | None]
    job: str
    state: str  # running | success | failed | interrupted
    owner: dict
    heartbeat: float | None = None
    finished: float | None = None

    @classmethod
    def from_record(cls, d: dict) -> ClaimState:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})

    def to_record(self) -> dict:
        d = asdict(self)
        if d["finished"] is None:
            del d["finished"]
        return d

    def alive(self, instance: str, stale_after: float | None = None) -> bool:
        return owner_alive(self.owner, self.heartbeat, instance, stale_after)


def get_state(lake: Lake, name: str) -> ClaimState | None:
    d = _get(lake, state_key(name))
    return ClaimState.from_record(d) if d is not None else None


def claim(
    lake: Lake,
    name: str,
    fields: dict,
    instance: str,
    force: bool,
    stale_after: float | None = None,
) -> tuple[str, ClaimState | None]:
    """Take the pipeline for one job by compare-and-swap, so two daemons never run it twice.

    Refuses (Conflict) while a live owner runs a job; a job left running by a dead owner is
    taken over. Unless `force`, also refuses when the last job already had these `fields`.
    Returns the new job id and the state it replaced.
    """
    current = lake.objects.get_versioned(state_key(name))
    old = ClaimState.from_record(json.loads(current.data)) if current else None
    if old is not None and old.state == "running":
        if old.alive(instance, stale_after):
            raise Conflict(
                f"pipeline {name} is running job {old.job} "
                f"(pid {old.owner.get('pid')} on {old.owner.get('host')})"
            )
    elif (
        old is not None
        and not force
        and old.key == fields.get("key")
        and old.state in ("success", "failed")
    ):
        raise Conflict(f"pipeline {name} already ran job {old.job} for these inputs")
    job_id = new_job_id()
    new = {
        **fields,
        "job": job_id,
        "state": "running",
        "owner": this_owner(instance),
        "heartbeat": time.time(),
    }
    data = json.dumps(new, sort_keys=True).encode()
    if not lake.objects.swap(state_key(name), data, current.token if current else None):
        raise Conflict(f"pipeline {name} was claimed by another runner")
    return job_id, old


class ClaimLost(Conflict):
    """This runner's job was taken over by another runner: it must not commit or record."""


def holds(state: ClaimState | None, job_id: str, instance: str | None) -> bool:
    """Whether a state record is still the claim of `job_id` by the runner `instance`."""
    if state is None or state.job != job_id:
        return False
    return instance is None or state.owner.get("instance") == instance


def set_state(
    lake: Lake, name: str, job_id: str, instance: str | None = None, **changes: Any
) -> bool:
    """Update the claim this runner holds, by compare-and-swap: the ownership check and the
    update are one atomic step. Returns False (changing nothing) when the record no longer
    names this job (and, given `instance`, this runner): someone took the job over."""
    for _ in range(20):
        current = lake.objects.get_versioned(state_key(name))
        if current is None:
            return False
        st = json.loads(current.data)
        if not holds(ClaimState.from_record(st), job_id, instance):
            return False
        st.update(changes)
        data = json.dumps(st, sort_keys=True).encode()
        if lake.objects.swap(state_key(name), data, current.token):
            return True
    raise Conflict(f"pipeline {name}: the state record kept changing under job {job_id}: retry")


# --- datums and logs -----------------------------------------------------------------------------


def get_datum(lake: Lake, pipeline: str, datum: str) -> DatumRecord | None:
    d = _get(lake, datum_key(pipeline, datum))
    return DatumRecord.from_json(d) if d is not None else None


def put_datum(lake: Lake, pipeline: str, record: DatumRecord) -> None:
    _put(lake, datum_key(pipeline, record.hash), record.to_json())


def put_datum_list(lake: Lake, pipeline: str, job: str, rows: list[DatumRow]) -> None:
    """Rows `[hash, state, tries, seconds, label(, node)]` (label: a short string naming the
    datum's files, for `datum list`, not its full input paths): one object for the whole job."""
    data = json.dumps([r.to_json() for r in rows], separators=(",", ":")).encode()
    lake.objects.put(datum_list_key(pipeline, job), data)


def get_datum_list(lake: Lake, pipeline: str, job: str) -> list[DatumRow]:
    try:
        raw = json.loads(lake.objects.get(datum_list_key(pipeline, job)))
    except ObjectMissing:
        return []
    return [DatumRow.from_json(r) for r in raw]


def put_log(lake: Lake, pipeline: str, job: str, datum: str, data: bytes) -> str:
    key = log_key(pipeline, job, datum)
    lake.objects.put(key, data)
    return key


def list_logs(lake: Lake, pipeline: str, job: str) -> list[tuple[str, bytes]]:
    out = []
    for key, _ in lake.objects.list(layout.logs_prefix(pipeline, job)):
        out.append((key.rpartition("/")[2], lake.objects.get(key)))
    return out
