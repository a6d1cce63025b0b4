"""Merging datums' outputs into one tree, refusing two datums that write one path. Pure.

Directories may be shared (every datum may write into `/pfs/out/results/`); a file path may
have one writer only, and a path cannot be a file for one datum and a directory for another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from cowfs.entries import Entry


class Collision(Exception):
    def __init__(self, path: str, first: str, second: str) -> None:
        self.path = path
        self.first = first
        self.second = second
        super().__init__(f"datums {first} and {second} both write /{path}")


def merge(outputs: Mapping[str, Sequence[Entry]]) -> dict[str, Entry]:
    """path -> entry over every datum's output; raises `Collision` naming both datums."""
    merged: dict[str, Entry] = {}
    owner: dict[str, str] = {}
    for datum in sorted(outputs):
        for e in outputs[datum]:
            have = merged.get(e.path)
            if have is None:
                merged[e.path] = e
                owner[e.path] = datum
                continue
            if owner[e.path] == datum:
                continue
            if have.is_dir and e.is_dir:
                continue
            raise Collision(e.path, owner[e.path], datum)
    return merged
