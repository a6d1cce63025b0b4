"""The local runner: `parallelism` worker threads on this machine, each with its own `/pfs`
directory and (per datum, or per worker with batching) its own process.

Finished datums' outputs are stored in groups (every `flush_every` datums or `flush_seconds`),
small files of the whole group packed into shared chunks, and the store synced before the
group is handed back, so the records the executor writes never point at missing chunks.
"""

from __future__ import annotations

import os
import queue
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from cowfs import config
from cowfs.errors import CowfsError, UsageError
from cowfs.pipelines.datums import Datum
from cowfs.pipelines.outputs import ingest
from cowfs.pipelines.results import DatumResult
from cowfs.pipelines.runners import RunContext, StopFlag
from cowfs.pipelines.runners.attempt import run_datum
from cowfs.pipelines.sandbox import Sandbox, SandboxUnavailable, choose
from cowfs.pipelines.spec import PipelineSpec
from cowfs.pipelines.worker import Attempt, Cancelled, Worker
from cowfs.reader import ChunkReader

#: The most datum input bytes a job puts in /dev/shm (times four, for outputs and slack).
_SHM_LIMIT = 4 << 30
_warned: set[str] = set()


@dataclass
class _Done:
    hash: str
    attempt: Attempt
    tries: int
    holding: Path | None  # where its output was moved; None when it failed


def sandbox_for(spec: PipelineSpec) -> Sandbox:
    """The sandbox on this machine, said once per process when it is weaker than bubblewrap."""
    try:
        sandbox = choose(spec, config.sandbox_user())
    except SandboxUnavailable as e:
        raise UsageError(str(e)) from None
    if sandbox.reason and sandbox.reason not in _warned:
        _warned.add(sandbox.reason)
        print(
            f"cowfs: running transforms without a sandbox ({sandbox.reason}); inputs are at "
            "$PFS_<INPUT> and output at $PFS_OUT, not /pfs",
            file=sys.stderr,
        )
    return sandbox


class _Either:
    """Set when the runner stops (shared by every job) or when this job must stop alone."""

    def __init__(self, shared: StopFlag) -> None:
        self.shared = shared
        self.own = threading.Event()

    def is_set(self) -> bool:
        return self.shared.is_set() or self.own.is_set()


class LocalRunner:
    name = "local"

    def run(self, ctx: RunContext, todo: list[tuple[str, Datum]]) -> Iterator[list[DatumResult]]:
        spec = ctx.pipeline.spec
        sandbox = sandbox_for(spec)
        names = [i.name for i in spec.pfs_inputs()]
        input_bytes = sum(ctx.entries[(f.input, f.path)].size for _, d in todo for f in d.files)
        scratch = ctx.tmp_dir or scratch_dir(input_bytes)
        tmp = Path(tempfile.mkdtemp(prefix=f"cowfs-job-{spec.name}-", dir=scratch))
        reader = ChunkReader(ctx.lake.store)
        queue_in: queue.Queue[tuple[str, Datum]] = queue.Queue()
        for item in todo:
            queue_in.put(item)
        done: queue.Queue[_Done | None] = queue.Queue()
        stop = threading.Event()
        cancel = _Either(ctx.cancel)
        nworkers = max(1, min(spec.parallelism, len(todo)))
        node = socket.gethostname()

        def work(i: int) -> None:
            worker = Worker(tmp / f"w{i}", spec, sandbox, names, cancel)
            try:
                while not stop.is_set():
                    try:
                        h, d = queue_in.get_nowait()
                    except queue.Empty:
                        return
                    attempt, tries = run_datum(
                        worker, reader, ctx.entries, h, d, spec.datum_tries, spec.datum_timeout
                    )
                    if attempt.ok:
                        holding = tmp / "outs" / h
                        worker.take_output(holding)
                        done.put(_Done(h, attempt, tries, holding))
                    else:
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
        pending: list[_Done] = []
        finished_workers = 0
        last_flush = time.monotonic()

        def flush() -> list[DatumResult]:
            got = ingest(ctx.lake.store, [(p.hash, p.holding) for p in pending if p.holding])
            ctx.lake.objects.sync()
            out = [
                DatumResult(
                    p.hash, True, "", p.tries, p.attempt.seconds, p.attempt.log, got[p.hash], node
                )  # fmt: skip
                for p in pending
            ]
            for p in pending:
                if p.holding is not None:
                    shutil.rmtree(p.holding, ignore_errors=True)
            pending.clear()
            return out

        try:
            while finished_workers < nworkers:
                try:
                    item = done.get(timeout=0.5)
                except queue.Empty:
                    item = False
                if item is None:
                    finished_workers += 1
                elif item:
                    if not item.hash:
                        raise CowfsError(item.attempt.error)
                    if item.holding is None:
                        a = item.attempt
                        yield [DatumResult(item.hash, False, a.error, item.tries, a.seconds,
                                           a.log, None, node)]  # fmt: skip
                    else:
                        pending.append(item)
                if pending and (
                    len(pending) >= ctx.flush_every
                    or time.monotonic() - last_flush > ctx.flush_seconds
                ):
                    yield flush()
                    last_flush = time.monotonic()
            if pending:
                yield flush()
        except BaseException:
            cancel.own.set()  # Ctrl-C or a store error: kill this job's processes, do not wait
            raise
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=30)
            reader.close()
            shutil.rmtree(tmp, ignore_errors=True)


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
