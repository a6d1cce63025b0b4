"""Commit records: immutable once written, JSON so any tool can read them."""

from __future__ import annotations

import time
import uuid
from dataclasses import asdict, dataclass, field

FORMAT = 1


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Provenance:
    repo: str
    commit: str
    branch: str | None = None


@dataclass(frozen=True)
class Commit:
    id: str
    repo: str
    tree: str
    parents: tuple[str, ...] = ()
    branch: str | None = None
    #: Shared by a user's commit and every commit computed from it, across repos.
    global_id: str = ""
    origin: str = "user"
    message: str = ""
    created: float = field(default_factory=time.time)
    finished: float | None = None
    state: str = "finished"
    error: str | None = None
    provenance: tuple[Provenance, ...] = ()
    files: int = 0
    bytes: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def parent(self) -> str | None:
        return self.parents[0] if self.parents else None

    def to_record(self) -> dict:
        d = asdict(self)
        d["format"] = FORMAT
        d["parents"] = list(self.parents)
        d["provenance"] = [asdict(p) for p in self.provenance]
        return d

    @classmethod
    def from_record(cls, d: dict) -> Commit:
        d = dict(d)
        d.pop("format", None)
        d["parents"] = tuple(d.get("parents", ()))
        d["provenance"] = tuple(Provenance(**p) for p in d.get("provenance", ()))
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})
