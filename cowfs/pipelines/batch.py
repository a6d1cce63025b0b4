"""The helper a batching transform imports: many datums, one process (stdlib only).

With `datum_batching: true` the runner starts the transform once per worker and feeds it datums:

1. Before each datum it fills `/pfs/<input>` with that datum's files and empties `/pfs/out`.
2. It writes one JSON line to the process's stdin: `{"id": ..., "inputs": {name: dir}, "out": dir}`
   (`json.dumps` defaults, so `"id"` comes first).
3. The process does its work, flushes stdout and stderr, and writes one line to the FIFO named by
   `$COWFS_DONE`: the datum's id to complete it, or `error <id> <message>` to fail this try.
   A reply must name the datum it answers, so a stray or repeated line cannot complete another
   one: any other line fails the datum with a "protocol error" and the process is replaced.
4. The runner collects `/pfs/out` and sends the next line; it closes stdin when none are left.

A datum's log is what the process wrote from the datum's line until its reply, which is why
the process flushes before replying. A process that exits or times out fails the datum it was
on; the next datum gets a fresh process. In Python:

    from cowfs.pipelines import batch
    for datum in batch.datums():
        (datum.out / "n.txt").write_text(str(len(list(datum.inputs["images"].iterdir()))))

In a shell (the id is the first value of the line):

    while read -r line; do
        id=${line#'{"id": "'}; id=${id%%'"'*}
        ...
        echo "$id" > "$COWFS_DONE"
    done

This module must import nothing outside the standard library: it runs inside sandboxes and
containers where only the user's Python may exist.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Datum:
    id: str
    inputs: dict[str, Path]
    out: Path


def datums() -> Iterator[Datum]:
    """Yield datum after datum; each is reported done when the loop asks for the next one.

    An exception in the loop body ends the process, which fails that datum (and is retried).
    """
    done_path = os.environ.get("COWFS_DONE")
    if not done_path:
        raise RuntimeError("cowfs.pipelines.batch.datums() runs only under datum_batching: true")
    with open(done_path, "w", buffering=1) as done:
        for line in sys.stdin:
            if not line.strip():
                continue
            raw = json.loads(line)
            datum = Datum(
                raw["id"], {k: Path(v) for k, v in raw["inputs"].items()}, Path(raw["out"])
            )
            yield datum
            sys.stdout.flush()
            sys.stderr.flush()
            done.write(datum.id + "\n")
            done.flush()
