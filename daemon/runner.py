"""Running one job from trio: the library's executor in a worker thread.

The executor is synchronous (threads and subprocesses), so the daemon hands it to a thread and
keeps its event loop free for the mount. Stopping goes through the shared `stop` event rather than
trio cancellation: the executor kills its processes, records what finished, marks the job
interrupted and returns, and only then does the thread end.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import trio

from cowfs.lake import Lake
from cowfs.pipelines.executor import RunOptions, run_job
from cowfs.pipelines.records import Job
from daemon.metrics import MetricsObserver


async def run_in_thread(
    lake: Lake,
    name: str,
    instance: str,
    stop: threading.Event,
    say: Callable[[str], None],
    ray: str | None = None,
) -> Job | None:
    opts = RunOptions(
        force=False,
        instance=instance,
        cancel=stop,
        observer=MetricsObserver(),
        say=say,
        default_runner="ray" if ray else "local",
        ray_address=ray,
    )
    return await trio.to_thread.run_sync(run_job, lake, name, opts, abandon_on_cancel=False)
