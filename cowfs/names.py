"""Which names and paths cowfs accepts, in one place.

Repo and branch names: letters, digits, `-`, `_` and `.`, 1 to 128 characters, not starting with
`.` (so `.ids` and friends under the mount can never collide with a repo). Paths inside a repo are
any UTF-8 text without NUL; empty, `.` and `..` components are refused rather than resolved, so a
path can never climb out of the repo it names.
"""

from __future__ import annotations

import re

from cowfs.errors import UsageError

_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
NAME_RULE = "letters, digits, '-', '_' and '.', at most 128, not starting with '.'"


def check_name(name: str, what: str = "name") -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(f"invalid {what} {name!r}: use {NAME_RULE}")
    return name


def normalize_path(path: str) -> str:
    """Turn a user's path (`/a/b/`, `a//b`) into the tree's key form `a/b`; `""` is the root."""
    if "\x00" in path:
        raise UsageError(f"invalid path {path!r}: NUL is not allowed")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"invalid path {path!r}: not valid UTF-8") from None
    parts = [p for p in path.split("/") if p]
    for p in parts:
        if p in (".", ".."):
            raise UsageError(f"invalid path {path!r}: '.' and '..' components are not allowed")
    return "/".join(parts)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def ancestors(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]: the directories that must exist for `path` to exist."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
