"""The watcher: polls every pipeline's input branches and starts a job when a head moves.

Polling the store (not a notification channel) keeps the store the only shared truth: any
number of daemons on any number of machines watch the same bucket, and the compare-and-swap
claim in `records.claim` lets exactly one of them run each job. A job left "running" by a dead
daemon (or "interrupted" by a stopped one) is taken over and restarted; its finished datums are
skipped by hash, so a restart costs only the datums that were in flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import trio

from cowfs.errors import Conflict, CowfsError
from cowfs.lake import Lake
from cowfs.pipelines import cron, records
from cowfs.pipelines.executor import JobInterrupted, current_inputs, job_fields
from cowfs.pipelines.runners import RunnerUnavailable
from daemon import metrics
from daemon.runner import run_in_thread

log = logging.getLogger("cowfs.watcher")


def why_run(
    key: str, state: records.ClaimState | None, owner_alive: Callable[[records.ClaimState], bool]
) -> str | None:
    """Why a pipeline needs a job now, or None. Pure, given the liveness check."""
    if state is None:
        return "first job"
    st = state.state
    if st == "running":
        return None if owner_alive(state) else "its runner died: restarting the job"
    if st == "interrupted":
        return "the last job was interrupted: restarting it"
    if state.key != key:
        return "inputs or spec changed"
    return None


class Watcher:
    def __init__(
        self,
        lake: Lake,
        interval: float,
        instance: str,
        stop: threading.Event,
        say: Callable[[str], None] = log.info,
        ray: str | None = None,
    ) -> None:
        self.lake = lake
        self.ray = ray
        self.interval = interval
        self.instance = instance
        self.stop = stop
        self.say = say
        self.running: set[str] = set()

    def due(self) -> list[tuple[str, str]]:
        """(pipeline, reason) for every pipeline that needs a job; runs in a worker thread.
        Cron inputs get their due ticks first, so a tick's job starts in the same poll."""
        out = []
        for p in records.list_pipelines(self.lake):
            self._tick(p)
            if p.name in self.running:
                continue
            inputs = current_inputs(self.lake, p)
            if all(i["commit"] is None for i in inputs):
                continue
            key = job_fields(p, inputs)["key"]
            state = records.get_state(self.lake, p.name)

            def alive(st: records.ClaimState) -> bool:
                return st.alive(self.instance)

            reason = why_run(key, state, alive)
            if reason:
                out.append((p.name, reason))
        return out

    def _tick(self, p: records.Pipeline) -> None:
        for inp in p.spec.pfs_inputs():
            if inp.cron is None:
                continue
            try:
                c = cron.tick(self.lake, inp, p.created)
            except (CowfsError, OSError) as e:
                metrics.WATCH_ERRORS.inc()
                log.warning("pipeline %s: cannot commit the tick of %s: %s", p.name, inp.name, e)
                continue
            if c is not None:
                when = cron.tick_name(float(c.extra.get("cron_tick", c.created)))
                self.say(f"pipeline {p.name}: tick {when} -> {inp.repo}@{c.id}")

    async def run(self, task_status=trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            task_status.started()
            while not self.stop.is_set():
                try:
                    due = await trio.to_thread.run_sync(self.due)
                    metrics.WATCH_POLLS.inc()
                except (CowfsError, OSError) as e:
                    metrics.WATCH_ERRORS.inc()
                    log.warning("watcher: cannot poll the store: %s", e)
                    due = []
                for name, reason in due:
                    if name not in self.running:
                        self.running.add(name)
                        self.say(f"pipeline {name}: starting a job ({reason})")
                        nursery.start_soon(self._job, name)
                await trio.sleep(self.interval)

    async def _job(self, name: str) -> None:
        try:
            job = await run_in_thread(
                self.lake, name, self.instance, self.stop, self.say, ray=self.ray
            )
            if job is not None and job.state == "failed":
                self.say(
                    f"pipeline {name}: job {job.id} failed: {(job.error or '').splitlines()[0]}"
                )
        except Conflict as e:
            log.info("pipeline %s: %s", name, e)
        except JobInterrupted:
            self.say(f"pipeline {name}: job interrupted by shutdown; it restarts with the daemon")
        except RunnerUnavailable as e:  # e.g. its Ray cluster is down: one line, no traceback
            metrics.WATCH_ERRORS.inc()
            log.warning("pipeline %s: cannot start a job: %s", name, e)
        except Exception as e:  # noqa: BLE001 - one pipeline's bug must not stop the others
            metrics.WATCH_ERRORS.inc()
            log.exception("pipeline %s: job crashed: %s", name, e)
        finally:
            self.running.discard(name)
