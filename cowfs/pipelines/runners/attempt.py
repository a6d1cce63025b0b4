"""One datum on one worker, with its tries: shared by every runner, so a datum runs the same
way in a local thread and in a Ray task."""

from __future__ import annotations

from cowfs.entries import Entry, EntryType
from cowfs.errors import CowfsError, UsageError
from cowfs.export import write_file
from cowfs.names import normalize_path
from cowfs.pipelines.datums import Datum
from cowfs.pipelines.worker import Attempt, Worker
from cowfs.reader import ChunkReader


def materialize(
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
        worker.own(target)


def run_datum(
    worker: Worker,
    reader: ChunkReader,
    entries: dict[tuple[str, str], Entry],
    h: str,
    d: Datum,
    tries: int,
    timeout: float | None,
) -> tuple[Attempt, int]:
    """Up to `tries` attempts, back to back; a failure to write the inputs is not retried.
    Returns the last attempt (its log is every failed try's, when it failed) and the tries.
    Raises `worker.Cancelled` when the runner stops."""
    attempt = Attempt(False, "not run", b"", 0.0)
    logs: list[bytes] = []
    n = 0
    for n in range(1, tries + 1):  # noqa: B007
        worker.reset()
        try:
            materialize(reader, entries, worker, d)
        except (OSError, CowfsError) as e:
            return Attempt(False, f"cannot materialize inputs: {e}", b"", 0.0), n
        attempt = worker.run(h, timeout)
        if attempt.ok:
            return attempt, n
        logs.append(f"--- try {n} failed: {attempt.error} ---\n".encode() + attempt.log)
    attempt.log = b"".join(logs) or attempt.log
    return attempt, n
