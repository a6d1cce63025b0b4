"""Glob patterns over repo paths, with capture groups for `join_on` and `group_by`.

Pachyderm users write `/*`, `/**`, `/*/*.csv` and `/(*)-(*).txt`; the parentheses capture the text
a wildcard matched so that `join_on: "$1"` can pair datums across inputs. Patterns compile to
anchored regular expressions once per job, so matching 100,000 paths stays a tight loop.
"""

from __future__ import annotations

import re
from functools import lru_cache

_TEMPLATE_REF = re.compile(r"\$(\d+)")


class GlobError(ValueError):
    pass


@lru_cache(maxsize=256)
def compile_glob(pattern: str) -> re.Pattern[str]:
    """The regex for a glob; the leading `/` names the repo root and is optional.

    `*` and `?` never cross a `/`; `**` does; `[...]` is a character class; `{a,b}` an
    alternation; `(...)` a capture group.
    """
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
        return re.compile("".join(out) + r"\Z", re.DOTALL)
    except re.error as e:
        raise GlobError(f"invalid glob {pattern!r}: {e}") from None


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
