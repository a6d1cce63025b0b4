"""Parsing what users type to name data: `repo`, `repo@branch`, `repo@<id>^`, `repo@main:/a/b`."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cowfs.errors import UsageError
from cowfs.names import check_name, normalize_path

DEFAULT_BRANCH = "main"
_ANCESTRY = re.compile(r"(\^+|~\d+)+$")


@dataclass(frozen=True)
class Ref:
    repo: str
    rev: str = DEFAULT_BRANCH
    #: How many first-parent steps back from `rev`: `main^^` and `main~2` are both 2.
    back: int = 0
    path: str = ""
    has_path: bool = False

    def __str__(self) -> str:
        s = f"{self.repo}@{self.rev}" + (f"~{self.back}" if self.back else "")
        return s + (f":/{self.path}" if self.has_path else "")


def parse_ref(text: str, allow_path: bool = True) -> Ref:
    repo, at, rest = text.partition("@")
    rev, colon, path = rest.partition(":") if at else ("", *text.partition(":")[1:])
    if not at:
        repo = text.partition(":")[0]
    if colon and not allow_path:
        raise UsageError(f"{text!r} names a path, but this command takes a commit or branch")
    check_name(repo, "repo name")
    back = 0
    m = _ANCESTRY.search(rev)
    if m:
        for part in re.findall(r"\^+|~\d+", m.group(0)):
            back += len(part) if part[0] == "^" else int(part[1:])
        rev = rev[: m.start()]
    if at and not rev:
        raise UsageError(f"invalid ref {text!r}: expected repo@branch or repo@commit-id")
    rev = rev or DEFAULT_BRANCH
    check_name(rev, "branch or commit")
    return Ref(repo, rev, back, normalize_path(path) if colon else "", bool(colon))


def parse_branch_ref(
    text: str, allow_path: bool = True, what: str = "write to", spelled: bool = False
) -> Ref:
    """A ref that names a branch (or tag) to change or create, never an ancestor: `repo@dev~1`
    or `repo@HEAD^` would otherwise write to (or create) a branch named `dev` or `HEAD`.

    With `spelled`, the name must be written out: deleting, tagging, merging into, resetting or
    committing to a branch the user left to default to `main` would be a surprise."""
    if spelled and "@" not in text.partition(":")[0]:
        raise UsageError(f"cannot {what} {text!r}: spell out the name, as in {text}@main")
    ref = parse_ref(text, allow_path=allow_path)
    if ref.back:
        raise UsageError(
            f"cannot {what} {text!r}: '^' and '~' name an ancestor commit, which is immutable; "
            "name a branch (branch names use letters, digits, '-', '_' and '.')"
        )
    return ref
