"""Datum planning: which input files each run of the user's code sees. Pure functions.

A datum is a set of `(input name, path, content digest)`. Its hash covers the transform and
those triples, never commit ids or times, so the same file content under the same code is the
same datum in any commit: that is what lets a job skip everything but what changed. Planning
takes plain lists of files per input and returns plain datums, so it is tested with hypothesis
without a store.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import product

import blake3

from cowfs.pipelines import globs
from cowfs.pipelines.spec import Combo, InputNode, PfsInput, Transform, iter_pfs


@dataclass(frozen=True, slots=True, order=True)
class InputFile:
    """One entry of an input commit: a file (with its content digest) or a directory ("")."""

    path: str
    digest: str


@dataclass(frozen=True, slots=True, order=True)
class DatumFile:
    input: str
    path: str
    digest: str

    @property
    def is_dir(self) -> bool:
        return self.digest == ""


@dataclass(frozen=True, slots=True, order=True)
class Datum:
    files: tuple[DatumFile, ...]

    def label(self) -> str:
        """A short description for people: the first few input paths."""
        shown = [f"{f.input}:/{f.path}" for f in self.files if not f.is_dir][:3]
        more = len([f for f in self.files if not f.is_dir]) - len(shown)
        return ", ".join(shown) + (f" (+{more})" if more > 0 else "") or "(empty)"


_Match = tuple[tuple[DatumFile, ...], tuple[str, ...]]


def plan(node: InputNode, files: Mapping[str, Sequence[InputFile]]) -> list[Datum]:
    """Every datum of an input tree, deduplicated and in a stable order.

    `files` maps each pfs input's name to its entries sorted by path (missing = empty).
    """
    found = {Datum(tuple(sorted(fs)) if len(fs) > 1 else tuple(fs)) for fs in _datums(node, files)}
    # Sorting on plain tuples: dataclass comparisons would dominate a 100,000-datum plan.
    return _sorted(found)


def _datums(node: InputNode, files: Mapping[str, Sequence[InputFile]]) -> list[tuple]:
    if isinstance(node, PfsInput):
        return [fs for fs, _ in pfs_matches(node, files.get(node.name, ()))]
    assert isinstance(node, Combo)
    if node.kind == "union":
        return [fs for child in node.inputs for fs in _datums(child, files)]
    if node.kind == "cross":
        parts = [_datums(child, files) for child in node.inputs]
        return [tuple(f for fs in combo for f in fs) for combo in product(*parts)]
    if node.kind == "join":
        return _join(node, files)
    return _group(node, files)


def pfs_matches(inp: PfsInput, entries: Sequence[InputFile]) -> list[_Match]:
    """Each entry the glob matches becomes one datum: a file alone, or a directory with
    everything beneath it. Returns the datum's files and the glob's capture groups."""
    if not entries:
        return []
    if globs.is_root_glob(inp.glob):
        return [(tuple(DatumFile(inp.name, e.path, e.digest) for e in entries), ())]
    regex = globs.compile_glob(inp.glob)
    paths = [e.path for e in entries]
    out: list[_Match] = []
    for i, e in enumerate(entries):
        m = regex.match(e.path)
        if m is None:
            continue
        caps = tuple(g or "" for g in m.groups())
        if e.digest == "":
            lo = i + 1
            hi = bisect_left(paths, e.path + "0", lo)  # "0" sorts right after "/"
            under = [x for x in entries[lo:hi] if x.path.startswith(e.path + "/")]
            fs = (e, *under)
        else:
            fs = (e,)
        out.append((tuple(DatumFile(inp.name, x.path, x.digest) for x in fs), caps))
    return out


def _keyed(inp: PfsInput, template: str, files: Mapping[str, Sequence[InputFile]]) -> dict:
    by_key: dict[str, list[tuple[DatumFile, ...]]] = {}
    for fs, caps in pfs_matches(inp, files.get(inp.name, ())):
        by_key.setdefault(globs.expand(template, caps), []).append(fs)
    return by_key


def _join(node: Combo, files: Mapping[str, Sequence[InputFile]]) -> list[tuple]:
    """Inner join on the `join_on` keys, widened by inputs marked `outer_join`."""
    children = [c for c in node.inputs if isinstance(c, PfsInput)]
    keyed = [_keyed(c, c.join_on or "", files) for c in children]
    keys: set[str] = set()
    for c, k in zip(children, keyed):
        if c.outer_join:
            keys |= set(k)
    if keyed:
        common = set(keyed[0])
        for k in keyed[1:]:
            common &= set(k)
        keys |= common
    out = []
    for key in sorted(keys):
        parts = [k[key] for k in keyed if key in k]
        out.extend(tuple(f for fs in combo for f in fs) for combo in product(*parts))
    return out


def _group(node: Combo, files: Mapping[str, Sequence[InputFile]]) -> list[tuple]:
    """One datum per `group_by` key, holding every match of that key from every input."""
    groups: dict[str, list[DatumFile]] = {}
    for c in node.inputs:
        if isinstance(c, PfsInput):
            for key, lists in _keyed(c, c.group_by or "", files).items():
                groups.setdefault(key, []).extend(f for fs in lists for f in fs)
    return [tuple(dict.fromkeys(fs)) for _, fs in sorted(groups.items())]


# --- planning from a diff ----------------------------------------------------------------------

#: The entry at a path and everything beneath it, sorted by path (empty when there is none);
#: `""` asks for the whole tree. What delta planning reads instead of a whole input tree.
Under = Callable[[str], Sequence[InputFile]]


def supports_delta(node: InputNode) -> bool:
    """Whether `plan_delta` handles this input: pfs inputs and unions of them.

    In a cross, join or group one changed file changes every datum it pairs with, which means
    reading the other inputs in full anyway; those keep full planning.
    """
    if isinstance(node, PfsInput):
        return True
    return node.kind == "union" and all(supports_delta(c) for c in node.inputs)


def plan_delta(
    node: InputNode,
    changed: Mapping[str, Iterable[str]],
    old: Mapping[str, Under],
    new: Mapping[str, Under],
) -> tuple[list[Datum], list[Datum]]:
    """The datums an edit removes and adds: `plan(new) = plan(old) - removed + added`.

    `changed` maps each input's name to the paths whose entries differ between its old and new
    tree (a tree diff); inputs left out did not change. Only the datums anchored at a changed
    path or at an ancestor of one can differ, so the cost follows the edit, not the trees.
    Datums whose files (and so hash) are the same on both sides are in neither list.
    """
    if not supports_delta(node):
        raise ValueError("plan_delta handles pfs inputs and unions of them only")
    removed: set[Datum] = set()
    added: set[Datum] = set()
    for inp in iter_pfs(node):
        paths = changed.get(inp.name)
        if paths is None:
            continue
        for anchor in _anchors(inp, paths):
            before = _datum_at(inp, old[inp.name], anchor)
            after = _datum_at(inp, new[inp.name], anchor)
            if before != after:
                if before is not None:
                    removed.add(before)
                if after is not None:
                    added.add(after)
    return _sorted(removed), _sorted(added)


def _anchors(inp: PfsInput, paths: Iterable[str]) -> list[str]:
    """Every path the glob matches among the changed paths and their ancestors: the places a
    datum that saw the change is rooted ("" for a root glob's single datum)."""
    if globs.is_root_glob(inp.glob):
        return [""] if any(True for _ in paths) else []
    regex = globs.compile_glob(inp.glob)
    seen: set[str] = set()
    out: list[str] = []
    for path in paths:
        end = len(path)
        while end > 0:
            prefix = path[:end]
            if prefix in seen:
                break  # its ancestors were checked with it
            seen.add(prefix)
            if regex.match(prefix):
                out.append(prefix)
            end = path.rfind("/", 0, end)
    return out


def _datum_at(inp: PfsInput, under: Under, anchor: str) -> Datum | None:
    found = under(anchor)
    if not found:
        return None
    if anchor:
        if found[0].path != anchor:
            return None
        if found[0].digest != "":
            found = found[:1]
    return Datum(tuple(DatumFile(inp.name, f.path, f.digest) for f in found))


def _sorted(datums: Iterable[Datum]) -> list[Datum]:
    return sorted(datums, key=lambda d: [(f.input, f.path, f.digest) for f in d.files])


# --- hashing -------------------------------------------------------------------------------------


def transform_hash(transform: Transform, salt: str = "") -> str:
    """The code's identity: `update --reprocess` changes `salt` to force every datum again."""
    blob = json.dumps({"t": transform.identity(), "salt": salt}, sort_keys=True)
    return blake3.blake3(blob.encode()).hexdigest()


def datum_hash(transform_id: str, datum: Datum) -> str:
    h = blake3.blake3(transform_id.encode())
    for f in datum.files:
        h.update(b"\0" + f.input.encode() + b"\0" + f.path.encode() + b"\0" + f.digest.encode())
    return h.hexdigest()
