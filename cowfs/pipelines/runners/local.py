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
        job = _LocalJob(ctx, todo)
        try:
            yield from job.results()
        except BaseException:
            job.cancel.own.set()  # Ctrl-C or a store error: kill this job's processes, do not wait
            raise
        finally:
            job.close()


class _LocalJob:
    """One job's worker threads, the queues between them and the runner, and the outputs of
    finished datums waiting to be stored as a group."""

    def __init__(self, ctx: RunContext, todo: list[tuple[str, Datum]]) -> None:
        self.ctx = ctx
        spec = self.spec = ctx.pipeline.spec
        self.sandbox = sandbox_for(spec)
        self.names = [i.name for i in spec.pfs_inputs()]
        input_bytes = sum(ctx.entries[(f.input, f.path)].size for _, d in todo for f in d.files)
        scratch = ctx.tmp_dir or scratch_dir(input_bytes)
        self.tmp = Path(tempfile.mkdtemp(prefix=f"cowfs-job-{spec.name}-", dir=scratch))
        self.reader = ChunkReader(ctx.lake.store)
        self.todo: queue.Queue[tuple[str, Datum]] = queue.Queue()
        for item in todo:
            self.todo.put(item)
        self.done: queue.Queue[_Done | None] = queue.Queue()
        self.stop = threading.Event()
        self.cancel = _Either(ctx.cancel)
        self.node = socket.gethostname()
        self.pending: list[_Done] = []
        n = max(1, min(spec.parallelism, len(todo)))
        self.threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True) for i in range(n)
        ]
        for t in self.threads:
            t.start()

    def _work(self, i: int) -> None:
        """A worker thread: datums until none are left, one fails, or the job stops; then a
        None on `done`, so the runner counts it finished."""
        spec = self.spec
        worker = Worker(self.tmp / f"w{i}", spec, self.sandbox, self.names, self.cancel)
        try:
            while not self.stop.is_set():
                try:
                    h, d = self.todo.get_nowait()
                except queue.Empty:
                    return
                attempt, tries = run_datum(
                    worker,
                    self.reader,
                    self.ctx.entries,
                    h,
                    d,
                    spec.datum_tries,
                    spec.datum_timeout,
                )
                if not attempt.ok:
                    self.done.put(_Done(h, attempt, tries, None))
                    self.stop.set()
                    return
                holding = self.tmp / "outs" / h
                worker.take_output(holding)
                self.done.put(_Done(h, attempt, tries, holding))
        except Cancelled:
            self.stop.set()
        except BaseException as e:  # noqa: BLE001 - reported as the job's error
            self.done.put(_Done("", Attempt(False, f"worker crashed: {e!r}", b"", 0.0), 0, None))
            self.stop.set()
        finally:
            worker.close()
            self.done.put(None)

    def results(self) -> Iterator[list[DatumResult]]:
        """Failures as they come, successes in stored groups (every `flush_every` datums or
        `flush_seconds`), until every worker has finished."""
        ctx = self.ctx
        finished = 0
        last_flush = time.monotonic()
        while finished < len(self.threads):
            try:
                item = self.done.get(timeout=0.5)
            except queue.Empty:
                item = False
            if item is None:
                finished += 1
            elif item:
                if not item.hash:
                    raise CowfsError(item.attempt.error)
                if item.holding is None:
                    a = item.attempt
                    yield [DatumResult(item.hash, False, a.error, item.tries, a.seconds,
                                       a.log, None, self.node)]  # fmt: skip
                else:
                    self.pending.append(item)
            if self.pending and (
                len(self.pending) >= ctx.flush_every
                or time.monotonic() - last_flush > ctx.flush_seconds
            ):
                yield self._flush()
                last_flush = time.monotonic()
        if self.pending:
            yield self._flush()

    def _flush(self) -> list[DatumResult]:
        """Store the waiting outputs as one group and sync, before any record names them."""
        pending = self.pending
        got = ingest(self.ctx.lake.store, [(p.hash, p.holding) for p in pending if p.holding])
        self.ctx.lake.objects.sync()
        out = [
            DatumResult(
                p.hash, True, "", p.tries, p.attempt.seconds, p.attempt.log, got[p.hash], self.node
            )  # fmt: skip
            for p in pending
        ]
        for p in pending:
            if p.holding is not None:
                shutil.rmtree(p.holding, ignore_errors=True)
        self.pending = []
        return out

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        self.reader.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


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
