"""Commit records: immutable once written, JSON so any tool can read them."""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import asdict, dataclass, field

from cowfs.errors import CorruptObject

FORMAT = 1
_CID = re.compile(r"[0-9a-f]{32}")
_OID = re.compile(r"[0-9a-f]{64}")


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
    #: The repo's incarnation this commit was made in (see `cowfs.repos`); "" before they existed.
    incarnation: str = ""

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


def _check(ok: bool, key: str, why: str) -> None:
    if not ok:
        raise CorruptObject(
            f"commit record {key} is corrupt: {why} "
            "(restore it from a backup, or move the branch off it)"
        )


def parse_record(key: str, record: object, repo: str, cid: str) -> Commit:
    """A commit from its decoded JSON, checked against the key it was read from.

    Commit ids are random, so a record cannot be verified by hash; it is checked for shape and
    for naming itself (`id`, `repo`) instead. This runs before the node's index caches the
    record, so a damaged record is never served from the cache after the store is repaired.
    """
    _check(isinstance(record, dict), key, "not a JSON object")
    assert isinstance(record, dict)
    _check(record.get("format", FORMAT) == FORMAT, key, f"unknown format {record.get('format')}")
    _check(record.get("id") == cid, key, f"it names commit {record.get('id')!r}")
    _check(record.get("repo") == repo, key, f"it names repo {record.get('repo')!r}")
    _check(
        isinstance(record.get("tree"), str) and bool(_OID.fullmatch(record["tree"])),
        key,
        "no valid tree id",
    )
    parents = record.get("parents", [])
    _check(
        isinstance(parents, list)
        and all(isinstance(p, str) and _CID.fullmatch(p) for p in parents),
        key,
        "bad parents",
    )
    prov = record.get("provenance", [])
    _check(
        isinstance(prov, list)
        and all(isinstance(p, dict) and {"repo", "commit"} <= p.keys() for p in prov),
        key,
        "bad provenance",
    )
    for name, kind in (("files", int), ("bytes", int), ("created", (int, float))):
        _check(isinstance(record.get(name, 0), kind), key, f"bad {name}")
    _check(isinstance(record.get("extra", {}), dict), key, "bad extra")
    _check(isinstance(record.get("incarnation", ""), str), key, "bad incarnation")
    try:
        return Commit.from_record(record)
    except (TypeError, ValueError) as e:
        raise CorruptObject(f"commit record {key} is corrupt: {e}") from None
