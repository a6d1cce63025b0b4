"""Datum planning, globbing, hashing, merging and spec validation: pure functions, no store."""

from __future__ import annotations

import bisect
import fnmatch
import itertools

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from cowfs.entries import Entry, EntryType
from cowfs.pipelines import globs
from cowfs.pipelines.datums import (
    Datum,
    DatumFile,
    InputFile,
    datum_hash,
    plan,
    plan_delta,
    supports_delta,
    transform_hash,
)
from cowfs.pipelines.merge import Collision, merge
from cowfs.pipelines.spec import Combo, PfsInput, SpecError, Transform, parse

names = st.text(alphabet="abcxyz019-_", min_size=1, max_size=6)
digests = st.text(alphabet="0123456789abcdef", min_size=4, max_size=8)


@st.composite
def flat_files(draw: st.DrawFn, min_size: int = 0) -> list[InputFile]:
    paths = draw(st.lists(names, min_size=min_size, max_size=12, unique=True))
    return sorted(InputFile(p, draw(digests)) for p in paths)


@st.composite
def nested_files(draw: st.DrawFn) -> list[InputFile]:
    """A tree with directories listed before their contents, sorted by path as trees are."""
    files = draw(st.lists(st.tuples(names, names), min_size=0, max_size=15, unique=True))
    entries: dict[str, str] = {}
    for d, f in files:
        entries[d] = ""
        entries[f"{d}/{f}.txt"] = draw(digests)
    return sorted(InputFile(p, dg) for p, dg in entries.items())


def pfs(name: str, glob: str = "/*", **kw: object) -> PfsInput:
    return PfsInput(name=name, repo=name, glob=glob, **kw)  # type: ignore[arg-type]


def paths_of(d: Datum) -> list[str]:
    return [f.path for f in d.files]


# --- globs ---------------------------------------------------------------------------------------

segment = st.text(alphabet="ab*?", min_size=1, max_size=4)
path_seg = st.text(alphabet="ab.", min_size=1, max_size=4)


@given(st.lists(segment, min_size=1, max_size=3), st.lists(path_seg, min_size=1, max_size=3))
def test_glob_matches_like_fnmatch_per_segment(pattern: list[str], path: list[str]) -> None:
    """Without `**`, a glob matches exactly when every `/` segment matches on its own."""
    assume(not any("**" in seg for seg in pattern))
    glob = "/" + "/".join(pattern)
    expected = len(pattern) == len(path) and all(
        fnmatch.fnmatchcase(p, g) for p, g in zip(path, pattern)
    )
    assert bool(globs.compile_glob(glob).match("/".join(path))) == expected


def test_glob_features() -> None:
    rx = globs.compile_glob
    assert rx("/**").match("a/b/c")
    assert rx("/a/**/c").match("a/c") and rx("/a/**/c").match("a/x/y/c")
    assert rx("/*.{csv,json}").match("x.json") and not rx("/*.{csv,json}").match("x.txt")
    assert rx("/[ab]*").match("bee") and not rx("/[!ab]*").match("bee")
    assert rx("/(*)-(*).txt").match("a-b.txt").groups() == ("a", "b")
    assert globs.expand("$2_$1", ("a", "b")) == "b_a"
    for bad in ("/(*", "/*)", "/[ab", "/{a,b"):
        with pytest.raises(globs.GlobError):
            globs.compile_glob(bad)


def _finishes(fn, timeout: float = 60.0) -> bool:
    """Whether `fn` returns within a generous bound (a backtracking match never would)."""
    import threading

    t = threading.Thread(target=fn, daemon=True)
    t.start()
    t.join(timeout)
    return not t.is_alive()


def test_pathological_globs_are_bounded_or_matched_in_linear_time() -> None:
    """Issue 8 item 14: these globs made `pipeline run` hang under a backtracking matcher."""
    stars = "/" + "*" * 3000 + "x"
    with pytest.raises(globs.GlobError, match="3000 wildcards.*at most 256"):
        globs.compile_glob(stars)
    with pytest.raises(SpecError, match=r"input\.pfs\.glob: glob has 3000 wildcards"):
        parse({"pipeline": "p", "input": {"pfs": {"repo": "r", "glob": stars}},
               "transform": {"cmd": ["true"]}})  # fmt: skip
    with pytest.raises(globs.GlobError, match="at most 4096 are allowed"):
        globs.compile_glob("/" + "a" * 5000)
    nested = "/" + "(a*)*" * 30  # accepted: 60 operators, but exponential for `re`
    parse({"pipeline": "p", "input": {"pfs": {"repo": "r", "glob": nested}},
           "transform": {"cmd": ["true"]}})  # fmt: skip
    hits = [InputFile("a" * n + "b", "d") for n in range(30, 4000, 40)]
    misses = [InputFile("a" * n + "/b", "d") for n in range(30, 4000, 40)]
    got: list = []
    assert _finishes(lambda: got.append(plan(pfs("in", nested), {"in": hits + misses})))
    assert len(got[0]) == len(hits)


# --- planning ------------------------------------------------------------------------------------


@given(flat_files())
def test_star_glob_makes_one_datum_per_file(files: list[InputFile]) -> None:
    datums = plan(pfs("in"), {"in": files})
    assert sorted(paths_of(d)[0] for d in datums) == [f.path for f in files]
    assert all(len(d.files) == 1 for d in datums)


@given(nested_files())
def test_directory_datum_holds_everything_beneath(files: list[InputFile]) -> None:
    datums = plan(pfs("in"), {"in": files})
    tops = sorted({f.path.split("/")[0] for f in files})
    assert len(datums) == len(tops)
    covered = sorted(p for d in datums for p in paths_of(d))
    assert covered == sorted(f.path for f in files)
    for d in datums:
        top = d.files[0].path.split("/")[0]
        assert all(p == top or p.startswith(top + "/") for p in paths_of(d))


@given(nested_files())
def test_root_glob_is_one_datum_and_double_star_sees_every_entry(files: list[InputFile]) -> None:
    whole = plan(pfs("in", "/"), {"in": files})
    assert len(whole) == (1 if files else 0)
    every = plan(pfs("in", "/**"), {"in": files})
    assert len(every) == len(files)


@given(flat_files(), flat_files())
def test_cross_is_the_product_and_union_the_sum(a: list[InputFile], b: list[InputFile]) -> None:
    files = {"a": a, "b": b}
    cross = plan(Combo("cross", (pfs("a"), pfs("b"))), files)
    assert len(cross) == len(a) * len(b)
    assert all({f.input for f in d.files} == {"a", "b"} for d in cross)
    union = plan(Combo("union", (pfs("a"), pfs("b"))), files)
    assert len(union) == len(a) + len(b)


keys = st.sampled_from(["k1", "k2", "k3", "k4"])


@st.composite
def keyed_files(draw: st.DrawFn) -> list[InputFile]:
    plain = st.text(alphabet="abcxyz019", min_size=1, max_size=4)
    items = draw(st.lists(st.tuples(keys, plain), max_size=8, unique=True))
    return sorted(InputFile(f"{k}-{n}.txt", draw(digests)) for k, n in items)


def _key(path: str) -> str:
    return path.split("-", 1)[0]


@given(keyed_files(), keyed_files(), st.booleans())
def test_join_pairs_files_with_equal_keys(
    a: list[InputFile], b: list[InputFile], outer: bool
) -> None:
    node = Combo(
        "join",
        (
            pfs("a", "/(*)-*.txt", join_on="$1", outer_join=outer),
            pfs("b", "/(*)-*.txt", join_on="$1"),
        ),
    )
    got = sorted(tuple((f.input, f.path) for f in d.files) for d in plan(node, {"a": a, "b": b}))
    expected = set()
    for fa, fb in itertools.product(a, b):
        if _key(fa.path) == _key(fb.path):
            expected.add((("a", fa.path), ("b", fb.path)))
    if outer:
        bkeys = {_key(f.path) for f in b}
        expected |= {(("a", fa.path),) for fa in a if _key(fa.path) not in bkeys}
    assert got == sorted(expected)


@given(keyed_files(), keyed_files())
def test_group_makes_one_datum_per_key(a: list[InputFile], b: list[InputFile]) -> None:
    node = Combo(
        "group", (pfs("a", "/(*)-*.txt", group_by="$1"), pfs("b", "/(*)-*.txt", group_by="$1"))
    )
    datums = plan(node, {"a": a, "b": b})
    all_keys = {_key(f.path) for f in a + b}
    assert len(datums) == len(all_keys)
    for d in datums:
        assert len({_key(f.path) for f in d.files}) == 1
    assert sum(len(d.files) for d in datums) == len(a) + len(b)


# --- hashing -------------------------------------------------------------------------------------


@given(flat_files(min_size=1), st.data())
def test_a_changed_file_changes_only_its_datum(files: list[InputFile], data: st.DataObject) -> None:
    tid = transform_hash(Transform(("sh",)))
    before = {datum_hash(tid, d) for d in plan(pfs("in"), {"in": files})}
    i = data.draw(st.integers(0, len(files) - 1))
    changed = list(files)
    changed[i] = InputFile(files[i].path, files[i].digest + "ff")
    after = {datum_hash(tid, d) for d in plan(pfs("in"), {"in": changed})}
    assert len(before - after) == 1 and len(after - before) == 1


@settings(max_examples=30)
@given(flat_files(min_size=1))
def test_transform_and_salt_change_every_hash(files: list[InputFile]) -> None:
    datums = plan(pfs("in"), {"in": files})
    t1 = transform_hash(Transform(("sh",), ("cp -r /pfs/in /pfs/out",)))
    t2 = transform_hash(Transform(("sh",), ("cp -r /pfs/in /pfs/out ",)))
    t3 = transform_hash(Transform(("sh",), ("cp -r /pfs/in /pfs/out",)), salt="again")
    t4 = transform_hash(Transform(("sh",), ("cp -r /pfs/in /pfs/out",), (("A", "1"),)))
    for d in datums:
        assert len({datum_hash(t, d) for t in (t1, t2, t3, t4)}) == 4


def test_hash_covers_path_and_input_name() -> None:
    tid = transform_hash(Transform(("sh",)))
    base = Datum((DatumFile("in", "a", "00"),))
    assert datum_hash(tid, base) != datum_hash(tid, Datum((DatumFile("in", "b", "00"),)))
    assert datum_hash(tid, base) != datum_hash(tid, Datum((DatumFile("in2", "a", "00"),)))


# --- merging -------------------------------------------------------------------------------------


def _f(path: str) -> Entry:
    return Entry(path, EntryType.FILE, 0o644, 1)


def _d(path: str) -> Entry:
    return Entry(path, EntryType.DIR, 0o755)


@given(st.dictionaries(st.text("abc", min_size=2, max_size=2), st.lists(names, max_size=4)))
def test_merge_finds_every_path_written_twice(outputs: dict[str, list[str]]) -> None:
    entries = {k: [_f(p) for p in dict.fromkeys(v)] for k, v in outputs.items()}
    writers: dict[str, list[str]] = {}
    for k, ps in entries.items():
        for e in ps:
            writers.setdefault(e.path, []).append(k)
    dup = {p: w for p, w in writers.items() if len(w) > 1}
    if dup:
        with pytest.raises(Collision) as info:
            merge(entries)
        assert sorted([info.value.first, info.value.second]) == sorted(dup[info.value.path])[:2]
    else:
        assert set(merge(entries)) == set(writers)


def test_merge_shares_directories_but_not_file_and_directory() -> None:
    merged = merge({"a": [_d("res"), _f("res/1")], "b": [_d("res"), _f("res/2")]})
    assert set(merged) == {"res", "res/1", "res/2"}
    with pytest.raises(Collision) as info:
        merge({"a": [_f("x")], "b": [_d("x"), _f("x/y")]})
    assert (info.value.first, info.value.second, info.value.path) == ("a", "b", "x")


# --- spec validation -----------------------------------------------------------------------------


def test_spec_defaults_and_round_trip() -> None:
    spec = parse(
        {
            "pipeline": "edges",
            "input": {"pfs": {"repo": "images", "glob": "/*"}},
            "transform": {"cmd": ["sh"], "stdin": "echo hi", "env": {"N": 3}},
            "datum_timeout": "1m30s",
            "resources": {"cpu": 2, "memory": "512Mi", "gpu": 1},
        }
    )
    assert spec.input == PfsInput("images", "images", "main", "/*")
    assert spec.transform.stdin == ("echo hi",) and dict(spec.transform.env) == {"N": "3"}
    assert spec.datum_timeout == 90 and spec.datum_tries == 3 and spec.parallelism == 1
    assert spec.resources.memory == 512 << 20
    assert parse(spec.to_dict()) == spec


def test_spec_errors_name_every_field_at_once() -> None:
    with pytest.raises(SpecError) as info:
        parse(
            {
                "pipeline": "bad name",
                "input": {
                    "cross": [
                        {"pfs": {"repo": "a", "glob": "*"}},
                        {"pfs": {"repo": "b", "glob": "/*", "join_on": "$1"}},
                    ]
                },
                "trasnform": {"cmd": "echo"},
                "parallelism": 0,
                "datum_timeout": "soon",
            }
        )
    text = str(info.value)
    for expected in (
        "pipeline: invalid name 'bad name'",
        "input.cross[0].pfs.glob: must start with '/'",
        "input.cross[1].pfs.join_on: only means something inside a join",
        "trasnform: unknown field (did you mean 'transform'?)",
        "transform: is required",
        "parallelism: must be an integer >= 1",
        "datum_timeout: must be seconds or a duration",
    ):
        assert expected in text, (expected, text)


def test_join_needs_groups_and_unique_names() -> None:
    with pytest.raises(SpecError) as info:
        parse(
            {
                "pipeline": "j",
                "input": {
                    "join": [
                        {"pfs": {"repo": "a", "glob": "/*", "join_on": "$1"}},
                        {"pfs": {"repo": "a", "glob": "/(*)", "join_on": "$2"}},
                    ]
                },
                "transform": {"cmd": ["true"]},
            }
        )
    text = str(info.value)
    assert "has no capture groups" in text
    assert "names a group the glob does not have" in text
    with pytest.raises(SpecError, match="two inputs are named 'a'"):
        parse(
            {
                "pipeline": "c",
                "input": {"cross": [{"pfs": {"repo": "a", "glob": "/*"}}] * 2},
                "transform": {"cmd": ["true"]},
            }
        )


# --- planning from a diff ------------------------------------------------------------------------

DELTA_GLOBS = ["/", "/*", "/*/*", "/**", "/*/*.txt", "/a*", "/(*)/*", "/**/*.txt", "/{a,b}*/**"]
segments = st.sampled_from(["a", "b", "a.txt", "b.txt", "ab", "a-b", "x"])


def with_dirs(files: dict[str, str]) -> dict[str, str]:
    """`files` plus a directory entry ("") for every ancestor, as trees hold them."""
    out = dict(files)
    for path in files:
        parts = path.split("/")
        for i in range(1, len(parts)):
            out["/".join(parts[:i])] = ""
    return out


@st.composite
def trees(draw: st.DrawFn) -> dict[str, str]:
    paths = draw(st.lists(st.lists(segments, min_size=1, max_size=3), max_size=12))
    files: dict[str, str] = {}
    for parts in paths:
        path = "/".join(parts)
        # A path cannot be a file and hold files: keep whichever came first.
        if any(path.startswith(p + "/") or p.startswith(path + "/") or p == path for p in files):
            continue
        files[path] = draw(digests)
    return with_dirs(files)


@st.composite
def edited(draw: st.DrawFn, before: dict[str, str]) -> dict[str, str]:
    """`before` after random adds, deletes (of files and whole directories) and modifications."""
    files = {p: d for p, d in before.items() if d != ""}
    for _ in range(draw(st.integers(0, 5))):
        kind = draw(st.sampled_from(["add", "delete", "modify", "rmdir"]))
        if kind == "add":
            path = "/".join(draw(st.lists(segments, min_size=1, max_size=3)))
            if any(path.startswith(p + "/") or p.startswith(path + "/") for p in files):
                continue
            files[path] = draw(digests)
        elif kind in ("delete", "modify") and files:
            path = draw(st.sampled_from(sorted(files)))
            if kind == "delete":
                del files[path]
            else:
                files[path] = draw(digests)
        elif kind == "rmdir":
            dirs = sorted({p.rsplit("/", 1)[0] for p in files if "/" in p})
            if dirs:
                gone = draw(st.sampled_from(dirs))
                files = {p: d for p, d in files.items() if not p.startswith(gone + "/")}
    out = with_dirs(files)
    if draw(st.booleans()):
        # Directories emptied by deletes survive in a real tree unless removed too; keep those
        # that no file now sits on or above.
        for p, d in before.items():
            parts = p.split("/")
            above = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
            if d == "" and not any(out.get(a, "") != "" for a in above):
                out.update(dict.fromkeys(above, ""))
    return out


def as_files(tree: dict[str, str]) -> list[InputFile]:
    return sorted(InputFile(p, d) for p, d in tree.items())


def under_of(tree: dict[str, str]):
    files = as_files(tree)
    paths = [f.path for f in files]

    def under(path: str) -> list[InputFile]:
        if not path:
            return files
        i = bisect.bisect_left(paths, path)
        out = []
        for f in files[i:]:
            if f.path == path or f.path.startswith(path + "/"):
                out.append(f)
            elif f.path > path + "/":
                break
        return out

    return under


def changed_paths(old: dict[str, str], new: dict[str, str]) -> list[str]:
    return sorted(p for p in old.keys() | new.keys() if old.get(p) != new.get(p))


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(DELTA_GLOBS), trees(), st.data())
def test_delta_planning_equals_full_planning(glob: str, old: dict[str, str], data) -> None:
    new = data.draw(edited(old))
    node = pfs("in", glob)
    full_old = set(plan(node, {"in": as_files(old)}))
    full_new = set(plan(node, {"in": as_files(new)}))
    removed, added = plan_delta(
        node, {"in": changed_paths(old, new)}, {"in": under_of(old)}, {"in": under_of(new)}
    )
    assert set(removed) == full_old - full_new
    assert set(added) == full_new - full_old
    assert len(removed) == len(set(removed)) and len(added) == len(set(added))


@settings(max_examples=100, deadline=None)
@given(trees(), trees(), st.data())
def test_delta_planning_of_a_union_touches_only_the_changed_input(
    a: dict[str, str], b: dict[str, str], data
) -> None:
    a2 = data.draw(edited(a))
    node = Combo("union", (pfs("a", "/*"), pfs("b", "/*/*")))
    full_old = set(plan(node, {"a": as_files(a), "b": as_files(b)}))
    full_new = set(plan(node, {"a": as_files(a2), "b": as_files(b)}))
    unders = {"a": under_of(a), "b": under_of(b)}
    removed, added = plan_delta(
        node, {"a": changed_paths(a, a2)}, unders, {**unders, "a": under_of(a2)}
    )
    assert set(removed) == full_old - full_new
    assert set(added) == full_new - full_old


def test_delta_planning_refuses_cross_join_and_group() -> None:
    for kind in ("cross", "join", "group"):
        node = Combo(kind, (pfs("a"), pfs("b")))
        assert not supports_delta(node)
        with pytest.raises(ValueError):
            plan_delta(node, {}, {}, {})
    assert supports_delta(Combo("union", (pfs("a"), pfs("b"))))


def test_input_names_must_not_collide_in_the_environment() -> None:
    with pytest.raises(SpecError) as info:
        parse(
            {
                "pipeline": "p",
                "input": {
                    "cross": [
                        {"pfs": {"repo": "a", "glob": "/*", "name": "a-b"}},
                        {"pfs": {"repo": "b", "glob": "/*", "name": "a_b"}},
                        {"pfs": {"repo": "c", "glob": "/*", "name": "Out"}},
                    ]
                },
                "transform": {"cmd": ["true"]},
            }
        )
    text = str(info.value)
    assert (
        "input.cross[1].pfs.name: inputs 'a-b' (input.cross[0].pfs) and 'a_b' would both set "
        "$PFS_A_B" in text
    ), text
    assert "input.cross[2].pfs.name: input name 'Out' would set $PFS_OUT" in text, text


def test_batching_rejects_transform_stdin() -> None:
    with pytest.raises(SpecError, match=r"transform.stdin: cannot be used with datum_batching"):
        parse(
            {
                "pipeline": "p",
                "input": {"pfs": {"repo": "a", "glob": "/*"}},
                "transform": {"cmd": ["sh"], "stdin": ["echo hi"]},
                "datum_batching": True,
            }
        )


# --- cron schedules ------------------------------------------------------------------------------


def test_cron_schedules_skip_missed_ticks() -> None:
    from cowfs.pipelines.cron import CronError, Schedule

    every = Schedule.parse("@every 2s")
    assert every.every == 2.0
    assert every.latest_due(100.0, 101.9) is None
    assert every.latest_due(100.0, 102.0) == 102.0
    assert every.latest_due(100.0, 111.5) == 110.0  # four missed: one tick, the latest
    minute = Schedule.parse("*/10 * * * *")
    assert minute.latest_due(0.0, 599.0) is None
    assert minute.latest_due(0.0, 600.0) == 600.0
    assert minute.latest_due(0.0, 3601.0) == 3600.0
    for bad in ("@every", "@every soon", "61 * * * *", "tick"):
        with pytest.raises(CronError):
            Schedule.parse(bad)
    with pytest.raises(SpecError, match=r"input\.cross\[0\]\.cron\.spec: 'tick' is not a cron"):
        parse({"pipeline": "p", "transform": {"cmd": ["true"]},
               "input": {"cross": [{"cron": {"name": "t", "spec": "tick"}},
                                   {"pfs": {"repo": "r", "glob": "/"}}]}})  # fmt: skip
