"""Runners: what turns a job's datums into output entries (docs/pipelines.md, "Runners").

A runner gets the datums to run and a `RunContext`, and yields groups of `DatumResult`s whose
output chunks are already in the store (and synced); the executor records each group (datum
records, logs, the job's counts) and, at the end, publishes. Planning and publishing never run
in a runner. `local` runs datums in threads and subprocesses on this machine; `ray` submits
batches of datums as Ray tasks, each of which needs only the store's URL and credentials.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Protocol

from cowfs.entries import Entry
from cowfs.errors import UsageError
from cowfs.lake import Lake
from cowfs.pipelines.datums import Datum
from cowfs.pipelines.records import Job, Pipeline
from cowfs.pipelines.results import DatumResult


class RunnerUnavailable(UsageError):
    """The runner a job asks for cannot run here (Ray not installed, or its cluster not
    reachable)."""


class StopFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class RunContext:
    lake: Lake
    pipeline: Pipeline
    job: Job
    entries: dict[tuple[str, str], Entry]  # (input, path) -> entry of every datum's files
    cancel: StopFlag  # the runner stops (datums in flight are killed); results so far count
    say: Callable[[str], None]
    tmp_dir: str | None = None
    flush_every: int = 512
    flush_seconds: float = 1.0


class Runner(Protocol):
    name: str

    def run(self, ctx: RunContext, todo: list[tuple[str, Datum]]) -> Iterator[list[DatumResult]]:
        """Run `todo`; after the first datum that fails all its tries, start no new ones (those
        in flight finish and are yielded, failed or not)."""
        ...


def get_runner(kind: str, address: str | None = None, batch_size: int | None = None) -> Runner:
    """`local`, or `ray` connected to `address` (`auto` when None); Ray missing or not
    reachable raises `RunnerUnavailable` with one line naming the address."""
    if kind == "ray":
        from cowfs.pipelines.runners.ray import RayRunner

        return RayRunner(address or "auto", batch_size)
    from cowfs.pipelines.runners.local import LocalRunner

    return LocalRunner()
