"""What every command shares: opening the lake, printing for people or for scripts, progress."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import click

from cowfs.lake import Lake


class Context:
    def __init__(self, store: str | None) -> None:
        self.store_url = store
        self._lake: Lake | None = None

    def lake(self) -> Lake:
        if self._lake is None:
            self._lake = Lake.open(self.store_url)
        return self._lake

    def close(self) -> None:
        if self._lake is not None:
            self._lake.close()


pass_ctx = click.make_pass_decorator(Context)

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


@contextmanager
def progress_bar(
    desc: str, enabled: bool
) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """(advance, set_total) callbacks: a bytes/s bar on a terminal, nothing elsewhere."""
    if not enabled or not sys.stderr.isatty():
        yield (lambda n: None), (lambda n: None)
        return
    from tqdm import tqdm

    bar = tqdm(
        desc=desc,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        file=sys.stderr,
        leave=False,
        dynamic_ncols=True,
    )

    def set_total(n: int) -> None:
        bar.total = n
        bar.refresh()

    try:
        yield bar.update, set_total
    finally:
        bar.close()
