"""Glob patterns over repo paths, with capture groups for `join_on` and `group_by`.

Pachyderm users write `/*`, `/**`, `/*/*.csv` and `/(*)-(*).txt`; the parentheses capture the text
a wildcard matched so that `join_on: "$1"` can pair datums across inputs. Patterns compile to
anchored regular expressions once per job, so matching 100,000 paths stays a tight loop.

The expressions run on RE2 (PyPI `google-re2`), whose matching is linear in the path's length
whatever the pattern: Python's backtracking `re` takes exponential time on globs such as
`"/" + "*" * 3000 + "x"` or `"(a*)*" * 30`, so a spec could hang every job of its pipeline.
Validation also bounds a glob's size (`MAX_GLOB_BYTES`, `MAX_GLOB_OPERATORS`), which bounds the
compiled program, so one spec cannot make planning slow or large either.
"""

from __future__ import annotations

import re
from functools import lru_cache

import re2

_TEMPLATE_REF = re.compile(r"\$(\d+)")
#: The longest glob accepted: a path's limit (`names.MAX_PATH_BYTES`) is already generous.
MAX_GLOB_BYTES = 4096
#: The most wildcards, classes, groups and alternatives in one glob.
MAX_GLOB_OPERATORS = 256
_OPERATORS = frozenset("*?[({,")
_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 8 << 20


class GlobError(ValueError):
    pass


def check_bounds(pattern: str) -> None:
    """Refuse globs too large to be a reasonable selection of paths (what validation calls)."""
    size = len(pattern.encode())
    if size > MAX_GLOB_BYTES:
        raise GlobError(f"glob is {size} bytes long; at most {MAX_GLOB_BYTES} are allowed")
    ops = sum(1 for c in pattern if c in _OPERATORS)
    if ops > MAX_GLOB_OPERATORS:
        raise GlobError(
            f"glob has {ops} wildcards, classes, groups and alternatives; at most "
            f"{MAX_GLOB_OPERATORS} are allowed"
        )


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re2._Regexp:
    """The regex for a glob; the leading `/` names the repo root and is optional.

    `*` and `?` never cross a `/`; `**` does; `[...]` is a character class; `{a,b}` an
    alternation; `(...)` a capture group.
    """
    check_bounds(pattern)
    body = pattern.strip("/") if pattern.strip("/") else ""
    out: list[str] = []
    i = 0
    depth = 0
    braces = 0
    while i < len(body):
        c = body[i]
        if c == "*":
            if body.startswith("**", i):
                # `**/` also matches nothing, so `/a/**/b` matches `a/b`.
                if body.startswith("**/", i):
                    out.append("(?:.*/)?")
                    i += 3
                    continue
                out.append(".*")
                i += 2
                continue
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            end = body.find(
                "]", i + 2 if body.startswith("[!", i) or body.startswith("[^", i) else i + 1
            )
            if end < 0:
                raise GlobError(f"unclosed '[' in glob {pattern!r}")
            inner = body[i + 1 : end]
            if inner.startswith("!"):
                inner = "^" + inner[1:]
            out.append("[" + inner.replace("\\", "\\\\") + "]")
            i = end
        elif c == "(":
            depth += 1
            out.append("(")
        elif c == ")":
            if depth == 0:
                raise GlobError(f"unbalanced ')' in glob {pattern!r}")
            depth -= 1
            out.append(")")
        elif c == "{":
            braces += 1
            out.append("(?:")
        elif c == "}":
            if braces == 0:
                raise GlobError(f"unbalanced '}}' in glob {pattern!r}")
            braces -= 1
            out.append(")")
        elif c == "," and braces:
            out.append("|")
        else:
            out.append(re.escape(c))
        i += 1
    if depth:
        raise GlobError(f"unclosed '(' in glob {pattern!r}")
    if braces:
        raise GlobError(f"unclosed '{{' in glob {pattern!r}")
    try:
        # `\z` anchors the end, `match` the start; `(?s)` lets `.` cross newlines in names.
        return re2.compile("(?s)" + "".join(out) + r"\z", _RE2_OPTIONS)
    except re2.error as e:
        msg = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else e
        raise GlobError(f"invalid glob {pattern[:100]!r}: {msg}") from None


def capture_count(pattern: str) -> int:
    return compile_glob(pattern).groups


def is_root_glob(pattern: str) -> bool:
    """`/` (or empty) selects the whole repo as one datum."""
    return pattern.strip("/") == ""


def template_refs(template: str) -> list[int]:
    """The capture groups a `join_on`/`group_by` template names (`$1-$2` -> [1, 2])."""
    return [int(n) for n in _TEMPLATE_REF.findall(template)]


def expand(template: str, captures: tuple[str, ...]) -> str:
    """Fill `$N` in a template from a match's capture groups (1-based, as in Pachyderm)."""

    def sub(m: re.Match[str]) -> str:
        n = int(m.group(1))
        return captures[n - 1] if 0 < n <= len(captures) else ""

    return _TEMPLATE_REF.sub(sub, template)
