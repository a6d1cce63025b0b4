"""Repo and ref records, and the rule that ties them together: the repo's incarnation.

A repo record carries a random `incarnation` id, and every ref, branch record and commit of the
repo carries the incarnation it was made in. Deleting a repo and creating one of the same name
makes a new incarnation, so anything a racing or killed writer left behind from the old one
(a ref swapped after the delete listed refs, a commit record) names another incarnation and
readers treat it as absent: it can never surface as a branch of the new repo. Records written
before incarnations existed carry none and match a repo record that has none.

A repo being deleted is first marked `deleting` by a compare-and-swap on its record (the
delete's single point of decision); from then on it does not exist for readers, `repo create`
of the name is refused until the delete finishes, and a writer whose branch swap landed meanwhile
finds the mark when it re-reads the record after the swap, and undoes its commit.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import asdict, dataclass

from cowfs.errors import CorruptObject

#: How often a compare-and-swap on a repo record or a ref is retried before giving up (each
#: retry re-reads what the other writer left).
CAS_TRIES = 50
_CID = re.compile(r"[0-9a-f]{32}")


@dataclass(frozen=True)
class RepoRecord:
    name: str
    description: str = ""
    created: float = 0.0
    incarnation: str = ""
    #: Set by `repo delete` before it removes anything; the repo no longer exists for readers.
    deleting: bool = False

    @classmethod
    def new(cls, name: str, description: str = "") -> RepoRecord:
        return cls(name, description, time.time(), uuid.uuid4().hex)

    def to_bytes(self) -> bytes:
        d = asdict(self)
        if not self.deleting:
            d.pop("deleting")
        return json.dumps(d, sort_keys=True).encode()

    def public(self) -> dict:
        return {"name": self.name, "description": self.description, "created": self.created}


def parse_repo_record(key: str, data: bytes) -> RepoRecord:
    try:
        d = json.loads(data)
        return RepoRecord(
            name=str(d["name"]),
            description=str(d.get("description", "")),
            created=float(d.get("created", 0.0)),
            incarnation=str(d.get("incarnation", "")),
            deleting=bool(d.get("deleting", False)),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CorruptObject(f"repo record {key} is corrupt: {e!r}") from None


@dataclass(frozen=True)
class RefRecord:
    commit: str
    incarnation: str = ""

    def to_bytes(self) -> bytes:
        d: dict = {"commit": self.commit}
        if self.incarnation:
            d["incarnation"] = self.incarnation
        return json.dumps(d).encode()


def parse_ref_record(key: str, data: bytes) -> RefRecord:
    try:
        d = json.loads(data)
        cid = d["commit"]
        inc = d.get("incarnation", "")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CorruptObject(f"ref {key} is corrupt: not a JSON head record") from None
    if not isinstance(cid, str) or not _CID.fullmatch(cid) or not isinstance(inc, str):
        raise CorruptObject(f"ref {key} is corrupt: it names no valid commit id")
    return RefRecord(cid, inc)


def branch_record_bytes(incarnation: str) -> bytes:
    return json.dumps({"incarnation": incarnation, "created": time.time()}).encode()


def branch_record_incarnation(data: bytes) -> str | None:
    """The incarnation a branch record was written in; None when it is unreadable."""
    try:
        inc = json.loads(data).get("incarnation", "")
    except (ValueError, AttributeError):
        return None
    return inc if isinstance(inc, str) else None
