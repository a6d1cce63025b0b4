"""The Ray runner: batches of datums as Ray tasks, anywhere on a cluster.

A task gets only the store's URL (and the store credentials from the runner's environment),
the canonical spec, and its datums with their input entries. On its node it fetches the input
chunks from the store (verified by hash), runs the same sandboxed transform as the local runner,
stores the output chunks, syncs the store, and returns only entries. Planning, recording and
publishing stay with the job's runner, so a job has one output commit whatever ran it.

Resources map onto Ray's: `resources.cpu` -> `num_cpus` (default 1), `gpu` -> `num_gpus` (Ray
then sets `CUDA_VISIBLE_DEVICES` for the task, and the transform sees it), `memory` -> `memory`.
`parallelism` is the number of tasks in flight. A task that dies with its node or worker is
submitted again (Ray's own retries are off so that each loss counts as a try of every datum of
the batch, up to `datum_tries`); its datums' outputs were never returned, so none counts twice.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import socket
import tempfile
import threading
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from cowfs.errors import CowfsError
from cowfs.pipelines.datums import Datum, DatumFile
from cowfs.pipelines.outputs import entry_from_json, entry_to_json, ingest
from cowfs.pipelines.results import DatumResult
from cowfs.pipelines.runners import RunContext, RunnerUnavailable
from cowfs.pipelines.spec import PipelineSpec

#: Environment a task needs to reach the store (and to choose its sandbox as the runner does).
_PASSED_ENV = ("COWFS_SANDBOX", "COWFS_SANDBOX_USER", "COWFS_JOB_TMP")
_CONNECT_TIMEOUT_S = 5.0
_MAX_BATCH = 256
_connect_lock = threading.Lock()


def connect(address: str) -> None:
    """Connect this process to the Ray cluster at `address` once; one clear line (never a hang)
    when Ray is not installed or nothing answers there."""
    try:
        import ray
    except ImportError:
        raise RunnerUnavailable(
            f"the pipeline runs on Ray (address {address}), but Ray is not installed here: "
            "pip install 'cowfs[ray]'"
        ) from None
    with _connect_lock:
        if ray.is_initialized():
            return
        if address != "local":
            _check_reachable(address)
        try:
            ray.init(
                address=None if address == "local" else address,
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level="WARNING",
                include_dashboard=False if address == "local" else None,
            )
        except Exception as e:  # noqa: BLE001 - Ray raises many kinds; each is one line here
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RunnerUnavailable(
                f"cannot connect to the Ray cluster at {address}: {first}"
            ) from None


def _check_reachable(address: str) -> None:
    """Ray's own connect retries for a long time against an address where nothing listens;
    a TCP connect with a short timeout answers first."""
    target = address
    if address == "auto":
        target = os.environ.get("RAY_ADDRESS", "")
        if not target:
            try:
                target = Path("/tmp/ray/ray_current_cluster").read_text().strip()
            except OSError:
                raise RunnerUnavailable(
                    "no Ray cluster found for address auto (no RAY_ADDRESS, no local cluster "
                    "from `ray start --head`): start one, or name its address"
                ) from None
    if target in ("local", "auto"):
        return
    parsed = urlparse(target if "://" in target else f"ray://{target}")
    host, port = parsed.hostname, parsed.port
    if not host or not port:
        raise RunnerUnavailable(f"Ray address {address!r} is not HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise RunnerUnavailable(
            f"cannot connect to the Ray cluster at {address} ({host}:{port}): {e.strerror or e}"
        ) from None


@dataclass
class _Batch:
    items: list[tuple[str, Datum]]
    lost: int = 0  # times its task died with its node or worker


class RayRunner:
    name = "ray"

    def __init__(self, address: str = "auto", batch_size: int | None = None) -> None:
        self.address = address
        self.batch_size = batch_size
        connect(address)

    def run(self, ctx: RunContext, todo: list[tuple[str, Datum]]) -> Iterator[list[DatumResult]]:
        import ray
        from ray import exceptions as rx

        spec = ctx.pipeline.spec
        size = self.batch_size or max(1, min(_MAX_BATCH, len(todo) // (4 * spec.parallelism)))
        queue = deque(_Batch(todo[i : i + size]) for i in range(0, len(todo), size))
        env = {k: v for k, v in os.environ.items() if k.startswith("AWS_") or k in _PASSED_ENV}
        res = spec.resources
        options: dict[str, Any] = {"num_cpus": res.cpu if res.cpu is not None else 1,
                                   "max_retries": 0, "retry_exceptions": False}  # fmt: skip
        if res.gpu:
            options["num_gpus"] = res.gpu
        if res.memory:
            options["memory"] = res.memory
        task = ray.remote(_run_batch).options(**options)
        spec_record = spec.to_dict()
        inflight: dict[Any, _Batch] = {}
        stopped = False
        lost_errors = (rx.NodeDiedError, rx.WorkerCrashedError, rx.ObjectLostError,
                       rx.OwnerDiedError, rx.LocalRayletDiedError)  # fmt: skip

        def submit(b: _Batch) -> None:
            items = []
            for h, d in b.items:
                files = [[f.input, f.path, f.digest] for f in d.files]
                ents = [entry_to_json(ctx.entries[(f.input, f.path)]) for f in d.files]
                items.append((h, files, ents))
            tries = spec.datum_tries - b.lost
            ref = task.remote(ctx.lake.url, env, spec_record, items, tries, spec.datum_timeout)
            inflight[ref] = b

        try:
            while inflight or (queue and not stopped):
                while queue and not stopped and len(inflight) < spec.parallelism:
                    submit(queue.popleft())
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
                if ctx.cancel.is_set():
                    return
                for ref in ready:
                    b = inflight.pop(ref)
                    try:
                        got = ray.get(ref)
                    except lost_errors as e:
                        b.lost += 1
                        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                        if b.lost < spec.datum_tries:
                            ctx.say(f"job {ctx.job.id}: a Ray task died ({why}); "
                                    f"its {len(b.items)} datum(s) run again elsewhere")  # fmt: skip
                            queue.appendleft(b)
                            continue
                        stopped = True
                        yield [DatumResult(h, False, f"its Ray task died {b.lost} times: {why}",
                                           b.lost, 0.0, b"") for h, _ in b.items]  # fmt: skip
                        continue
                    except rx.RayTaskError as e:
                        raise CowfsError(
                            f"a Ray task of job {ctx.job.id} failed: {e.cause!r}"
                        ) from None
                    results = [_result(r, b.lost) for r in got if r["ran"]]
                    if any(not r.ok for r in results):
                        stopped = True
                    if results:
                        yield results
        finally:
            for ref in inflight:
                ray.cancel(ref, force=True)


def _result(r: dict, lost: int) -> DatumResult:
    outputs = [entry_from_json(e) for e in r["outputs"]] if r["ok"] else None
    return DatumResult(r["hash"], r["ok"], r["error"], r["tries"] + lost, r["seconds"],
                       r["log"], outputs, r["node"])  # fmt: skip


# --- on the worker -------------------------------------------------------------------------------

_lakes: dict[str, Any] = {}


def _lake(url: str):  # noqa: ANN202 - a Lake, imported lazily on the worker
    """One open lake per store and worker process: tasks reuse its index and connections."""
    from cowfs.lake import Lake

    if url not in _lakes:
        _lakes[url] = Lake.open(url)
    return _lakes[url]


def _node() -> str:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray (tests of this function): the host
        return socket.gethostname()


def _run_batch(
    url: str,
    env: dict[str, str],
    spec_record: dict,
    items: list[tuple[str, list[list[str]], list[list]]],
    tries: int,
    timeout: float | None,
) -> list[dict]:
    """A Ray task: run datums one after another in one worker directory, store their outputs,
    and return each datum's entries (or failure). After a datum fails all its tries the rest
    are returned unrun, as the local runner starts no new datum after a failure."""
    from cowfs.pipelines.runners.attempt import run_datum
    from cowfs.pipelines.runners.local import sandbox_for
    from cowfs.pipelines.spec import parse

    os.environ.update(env)
    lake = _lake(url)
    spec: PipelineSpec = parse(spec_record)
    sandbox = sandbox_for(spec)
    names = [i.name for i in spec.pfs_inputs()]
    entries = {}
    datums: list[tuple[str, Datum]] = []
    for h, files, ents in items:
        for f, e in zip(files, ents):
            entries[(f[0], f[1])] = entry_from_json(e)
        datums.append((h, Datum(tuple(DatumFile(*f) for f in files))))
    size = sum(e.size for e in entries.values())
    key = json.dumps([url, spec_record, sorted(env.items())], sort_keys=True)
    tmp, worker, reader = _worker(key, lambda: _new_worker(lake, spec, sandbox, names, size))
    outs = tmp / f"outs-{uuid.uuid4().hex}"
    node = _node()
    out: list[dict] = []
    held: list[tuple[str, Path]] = []
    try:
        failed = False
        for h, d in datums:
            if failed:
                out.append({"hash": h, "ran": False})
                continue
            attempt, n = run_datum(worker, reader, entries, h, d, tries, timeout)
            row = {"hash": h, "ran": True, "ok": attempt.ok, "error": attempt.error,
                   "tries": n, "seconds": attempt.seconds, "log": attempt.log, "node": node,
                   "outputs": []}  # fmt: skip
            if attempt.ok:
                worker.take_output(outs / h)
                held.append((h, outs / h))
            else:
                failed = True
            out.append(row)
        got = ingest(lake.store, held)
        lake.objects.sync()
        for row in out:
            if row.get("ok"):
                row["outputs"] = [entry_to_json(e) for e in got[row["hash"]]]
        return out
    except BaseException:
        _drop_worker()  # its process or directory may be in any state: the next task starts anew
        raise
    finally:
        shutil.rmtree(outs, ignore_errors=True)


#: The worker (directory, process, chunk reader) of the last task in this Ray worker process,
#: kept for the next task of the same job: with batching, its long-lived process then serves
#: every batch this process runs, as a local worker thread's does, instead of starting per task.
_cached: list = []


def _new_worker(lake, spec: PipelineSpec, sandbox, names: list[str], size: int):  # noqa: ANN001, ANN202
    from cowfs.pipelines.runners.local import scratch_dir
    from cowfs.pipelines.worker import Worker
    from cowfs.reader import ChunkReader

    tmp = Path(tempfile.mkdtemp(prefix=f"cowfs-ray-{spec.name}-", dir=scratch_dir(size)))
    return tmp, Worker(tmp / "w0", spec, sandbox, names, threading.Event()), ChunkReader(lake.store)


def _worker(key: str, make):  # noqa: ANN001, ANN202
    if _cached and _cached[0] == key:
        return _cached[1]
    _drop_worker()
    made = make()
    _cached[:] = [key, made]
    return made


def _drop_worker() -> None:
    if _cached:
        tmp, worker, reader = _cached[1]
        _cached.clear()
        worker.close()
        reader.close()
        shutil.rmtree(tmp, ignore_errors=True)


atexit.register(_drop_worker)
