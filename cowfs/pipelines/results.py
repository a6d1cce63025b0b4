"""Typed records of datums: what a runner returns, what a job's datum list and a datum record
hold. Plain data with their JSON forms (docs/pipelines.md, "Datum list" and "Datum record")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple

from cowfs.entries import Entry
from cowfs.pipelines.outputs import entry_from_json, entry_to_json


class DatumRow(NamedTuple):
    """One datum of a job's datum list: `[hash, state, tries, seconds, label]`, plus `node`
    (where it ran) as a sixth element when known."""

    hash: str
    state: str  # processed | skipped | failed
    tries: int
    seconds: float
    label: str
    node: str = ""

    def to_json(self) -> list:
        row: list = [self.hash, self.state, self.tries, self.seconds, self.label]
        return [*row, self.node] if self.node else row

    @classmethod
    def from_json(cls, raw: list) -> DatumRow:
        return cls(raw[0], raw[1], raw[2], raw[3], raw[4], raw[5] if len(raw) > 5 else "")

    @classmethod
    def skipped(cls, h: str, label: str) -> DatumRow:
        return cls(h, "skipped", 0, 0.0, label)


@dataclass
class DatumRecord:
    """`datums/<pipeline>/<hash>`: a processed datum, what skipping reuses."""

    hash: str
    job: str
    state: str  # success | failed
    tries: int
    seconds: float
    inputs: list[list[str]]  # [input, path, digest string]
    log: str | None
    time: float
    output: list[Entry] | None = None  # on success
    error: str | None = None  # on failure
    node: str = ""

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "hash": self.hash,
            "job": self.job,
            "state": self.state,
            "tries": self.tries,
            "seconds": self.seconds,
            "inputs": self.inputs,
            "log": self.log,
            "time": self.time,
        }
        if self.output is not None:
            d["output"] = [entry_to_json(e) for e in self.output]
        if self.error is not None:
            d["error"] = self.error
        if self.node:
            d["node"] = self.node
        return d

    @classmethod
    def from_json(cls, d: dict) -> DatumRecord:
        out = d.get("output")
        return cls(
            d["hash"],
            d.get("job", ""),
            d["state"],
            d.get("tries", 0),
            d.get("seconds", 0.0),
            d.get("inputs", []),
            d.get("log"),
            d.get("time", 0.0),
            [entry_from_json(r) for r in out] if out is not None else None,
            d.get("error"),
            d.get("node", ""),
        )


@dataclass
class DatumResult:
    """What a runner hands back for one datum: its output entries (chunks already stored and
    synced, wherever it ran), or the failure after its tries."""

    hash: str
    ok: bool
    error: str
    tries: int
    seconds: float
    log: bytes
    outputs: list[Entry] | None = None
    node: str = ""
    extra: dict = field(default_factory=dict)
