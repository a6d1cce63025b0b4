"""Which names and paths cowfs accepts, in one place.

Repo and branch names: letters, digits, `-`, `_` and `.`, 1 to 128 characters, not starting with
`.` (so `.ids` and friends under the mount can never collide with a repo). Paths inside a repo are
any UTF-8 text without NUL; empty, `.` and `..` components are refused rather than resolved, so a
path can never climb out of the repo it names.

Length limits are Linux's, for the whole lake: a path component is at most 255 bytes of UTF-8 and
a whole path at most 4,096, so that anything committed can be written back to a local disk
(`cowfs get`, the mount, pipelines) and nothing the kernel would refuse gets in. Every entry point
(put, the mount, pipeline outputs, the Python API, the S3 gateway) goes through `normalize_path`
or `check_path_limits`, and answers `NameTooLong` (`ENAMETOOLONG`).
"""

from __future__ import annotations

import re

from cowfs.errors import NameTooLong, UsageError

_NAME = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9_.\-]{0,127}")
NAME_RULE = "letters, digits, '-', '_' and '.', at most 128, not starting with '.'"
#: Bytes of UTF-8 in one path component, and in a whole path (as Linux's NAME_MAX and PATH_MAX).
MAX_NAME_BYTES = 255
MAX_PATH_BYTES = 4096


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
    key = "/".join(parts)
    check_path_limits(key)
    return key


def check_component(name: str | bytes) -> None:
    """One name inside a directory (a FUSE lookup's or create's name)."""
    size = len(name) if isinstance(name, bytes) else len(name.encode("utf-8", "surrogateescape"))
    if size > MAX_NAME_BYTES:
        raise NameTooLong(
            f"name too long ({size} bytes, at most {MAX_NAME_BYTES}): {name[:40]!r}..."
        )


def check_path_limits(key: str) -> None:
    """A tree key (`a/b/c`) within the lake's limits; raises `NameTooLong` otherwise."""
    size = len(key.encode("utf-8", "surrogateescape"))
    if size > MAX_PATH_BYTES:
        raise NameTooLong(f"path too long ({size} bytes, at most {MAX_PATH_BYTES}): /{key[:60]}...")
    if size > MAX_NAME_BYTES:
        for part in key.split("/"):
            check_component(part)


def parent_of(path: str) -> str:
    return path.rpartition("/")[0]


def basename(path: str) -> str:
    return path.rpartition("/")[2]


def ancestors(path: str) -> list[str]:
    """`a/b/c` -> [`a`, `a/b`]: the directories that must exist for `path` to exist."""
    parts = path.split("/")
    return ["/".join(parts[:i]) for i in range(1, len(parts))]
