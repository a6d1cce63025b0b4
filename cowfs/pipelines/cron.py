"""Scheduled inputs: `{cron: {name, spec, overwrite}}` (docs/pipelines.md, "Cron inputs").

As in Pachyderm, the clock drives a pipeline through an ordinary repo: at each tick the daemon
commits a small file holding the tick's time to `<pipeline>_<name>`, and that commit drives the
pipeline like any other input, so ticks have global IDs and lineage.

Ticks are computed, not remembered: the next tick follows the time of the last one (kept in the
tick commit's `extra`; the pipeline's creation before the first), so every daemon watching a
store computes the same tick and the same file, and a second daemon's commit of it changes
nothing (no duplicate). Ticks missed while no daemon ran are not replayed: one tick is made, for
the latest scheduled time that has passed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone

from croniter import croniter

from cowfs.changes import ChangeSet
from cowfs.chunking import Chunker
from cowfs.commits import Commit
from cowfs.entries import Entry, EntryType
from cowfs.lake import Lake
from cowfs.pipelines.spec import PfsInput, parse_duration

#: The file an `overwrite: true` cron input keeps replacing.
OVERWRITE_FILE = "time"


class CronError(ValueError):
    pass


@dataclass(frozen=True)
class Schedule:
    """A cron expression (`*/10 * * * *`, `@hourly`, ...) or `@every <duration>`."""

    spec: str
    every: float | None = None  # seconds, for `@every`

    @classmethod
    def parse(cls, spec: str) -> Schedule:
        text = spec.strip()
        if text.startswith("@every"):
            period = parse_duration(text[len("@every") :].strip())
            if period is None:
                raise CronError(f"{spec!r}: `@every` needs a duration such as 30s, 5m or 1h30m")
            return cls(text, period)
        if not croniter.is_valid(text):
            raise CronError(
                f"{spec!r} is not a cron expression (five fields such as '*/10 * * * *', "
                "'@hourly', or '@every 30s')"
            )
        return cls(text)

    def latest_due(self, last: float, now: float) -> float | None:
        """The latest scheduled time after `last` and not after `now`; None when none has come.
        Missed ticks in between are skipped: one tick stands for them all."""
        if self.every is not None:
            if now < last + self.every:
                return None
            return last + self.every * ((now - last) // self.every)
        nxt = croniter(self.spec, last).get_next(float)
        if nxt > now:
            return None
        return croniter(self.spec, now + 1e-6).get_prev(float)


def tick_name(t: float) -> str:
    """The file of a tick when ticks accumulate: its time, UTC, sortable."""
    return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def last_tick(head: Commit | None, created: float) -> float:
    if head is None:
        return created
    return float(head.extra.get("cron_tick", head.created))


def commit_tick(lake: Lake, inp: PfsInput, t: float) -> Commit:
    """The tick's commit: a file holding its time (ISO 8601, UTC, and Unix seconds)."""
    data = f"{tick_name(t)}\n{t:.6f}\n".encode()
    with Chunker(lake.store) as chunker:
        (pending,) = chunker.add_small_files([data])
        chunker.wait()
        fd = pending.result()
    path = OVERWRITE_FILE if inp.overwrite else tick_name(t)
    mtime = int(t * 1e9)
    entry = Entry(path, EntryType.FILE, 0o644, fd.size, mtime, fd.digest, fd.chunks)
    return lake.commit(
        inp.repo,
        inp.branch,
        ChangeSet(puts={path: entry}),
        f"cron tick {tick_name(t)}",
        origin="cron",
        extra={"cron_tick": t},
    )


def tick(lake: Lake, inp: PfsInput, created: float, now: float | None = None) -> Commit | None:
    """Commit the tick that is due for one cron input, if any."""
    assert inp.cron is not None
    now = time.time() if now is None else now
    head = lake.head(inp.repo, inp.branch)
    due = Schedule.parse(inp.cron).latest_due(last_tick(head, created), now)
    if due is None:
        return None
    return commit_tick(lake, inp, due)
