"""Tags, merge, revert, branch reset and gc through the real `cowfs` command line: results,
exit codes (1 for a refused operation, 2 for bad input) and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cowfs import merge3
from cowfs.check import check
from cowfs.refs import parse_ref
from cowfs.tags import create_tag
from tests.historyutil import put, read_files
from tests.lakeenv import LakeEnv, make_env
from tests.test_pipeline import spec, write_spec


@pytest.fixture
def env(tmp_path: Path) -> LakeEnv:
    e = make_env(tmp_path, None)
    e.env["COWFS_GC_WINDOW"] = "0"
    e.run("init")
    with e.lake() as lake:
        lake.create_repo("img")
    return e


def _put(env: LakeEnv, branch: str, files: dict[str, str]) -> str:
    """Set-up goes through the Python API: each CLI call costs a second on a loaded machine."""
    with env.lake() as lake:
        return put(lake, "img", branch, {p: d.encode() for p, d in files.items()}).id


def test_tags_resolve_and_never_move(env: LakeEnv) -> None:
    c1 = _put(env, "main", {"a.txt": "one"})
    env.run("tag", "create", "img@v1.0", "--from", "img@main", "-m", "first")
    _put(env, "main", {"a.txt": "two"})
    assert env.out("cat", "img@v1.0:/a.txt") == "one"
    with env.lake() as lake:
        assert lake.resolve(parse_ref("img@v1.0")).id == c1
        assert lake.find_commit("img", "v1.0").id == c1
    assert [t["name"] for t in env.json("tag", "list", "img")] == ["v1.0"]
    for args, code, words in [
        (("tag", "create", "img@v1.0", "--from", "img@main"), 1, "tags never move"),
        (("tag", "create", "img@main", "--from", "img@main"), 1, "is a branch"),
        (("branch", "create", "img@v1.0", "--from", "img@main"), 1, "is a tag"),
        (("tag", "create", "img@a\x01", "--from", "img@main"), 2, "invalid"),
    ]:
        got, err = env.fail(*args)
        assert (got, len(err.splitlines())) == (code, 1) and words in err, err
    env.run("tag", "delete", "img@v1.0")
    code, err = env.fail("cat", "img@v1.0:/a.txt")
    assert code == 1 and len(err.splitlines()) == 1


def test_merge_conflicts_strategies_and_two_parents(env: LakeEnv) -> None:
    base = _put(env, "main", {"shared.txt": "base"})
    env.run("branch", "create", "img@dev", "--from", "img@main")
    _put(env, "dev", {"shared.txt": "dev", "dev-only.txt": "d"})
    dest = _put(env, "main", {"shared.txt": "main"})

    proc = env.run("merge", "img@dev", "img@main", "--json", ok=False)
    assert proc.returncode == 1 and proc.stderr.decode().count("\n") == 1
    out = json.loads(proc.stdout)
    assert out["base"] == base and [c["path"] for c in out["conflicts"]] == ["/shared.txt"]
    assert out["conflicts"][0]["dest"].startswith("4 B") and out["committed"] is None

    dry = env.json("merge", "img@dev", "img@main", "--dry-run", "--strategy", "dest-wins")
    assert dry["committed"] is None and dry["changes"] == 1

    merged = env.json("merge", "img@dev", "img@main", "--strategy", "dest-wins")
    log = env.json("log", "img@main")
    assert log[0]["id"] == merged["committed"] and len(log[0]["parents"]) == 2
    assert log[1]["id"] == dest, "log follows first parents through a merge"
    with env.lake() as lake:
        files = read_files(lake, lake.head("img", "main"))
    assert files == {"shared.txt": b"main", "dev-only.txt": b"d"}
    assert env.json("merge", "img@dev", "img@main")["up_to_date"] is True
    code, err = env.fail("merge", "img@dev", "img@main", "--strategy", "nope")
    assert code == 2


def test_revert_and_reset(env: LakeEnv) -> None:
    _put(env, "main", {"a.txt": "a"})
    bad = _put(env, "main", {"labels.txt": "bad labels"})
    head = _put(env, "main", {"b.txt": "b"})
    out = env.json("revert", "img@main", bad, "-m", "undo bad labels")
    moved = env.json("branch", "reset", "img@main", bad)
    with env.lake() as lake:
        reverted = lake.get_commit("img", out["committed"])
        assert reverted.message == "undo bad labels" and reverted.parents == (head,)
        assert read_files(lake, reverted) == {"a.txt": b"a", "b.txt": b"b"}
        assert (moved["from"], moved["to"]) == (reverted.id, bad)
        assert lake.head_id("img", "main") == bad
        assert read_files(lake, lake.get_commit("img", head))["b.txt"] == b"b"
    code, err = env.fail("branch", "reset", "img@main", "0" * 32)
    assert code == 1 and len(err.splitlines()) == 1


def test_gc_reclaims_only_what_nothing_reaches(env: LakeEnv) -> None:
    keep = _put(env, "main", {"keep.txt": "kept"})
    with env.lake() as lake:
        create_tag(lake, "img", "v1", keep)
    _put(env, "main", {"big.bin": "x" * 300_000})
    with env.lake() as lake:
        lake.set_branch("img", "main", lake.get_commit("img", keep))

    dry = env.json("gc", "--dry-run", "--grace", "0", "--keep-commits-since", "0")
    assert dry["dry_run"] and dry["swept"] > 0 and dry["commits_dropped"] == 0
    kept = env.json("gc", "--grace", "0")
    # Only the empty tree the first commit started from is garbage: every commit is a root.
    assert (kept["swept_chunks"], kept["commits_dropped"]) == (0, 0)
    done = env.json("gc", "--grace", "0", "--keep-commits-since", "0")
    assert done["commits_dropped"] == 1 and done["swept_chunks"] == 1
    with env.lake() as lake:
        assert read_files(lake, lake.resolve(parse_ref("img@v1"))) == {"keep.txt": b"kept"}
        assert check(lake, read_fraction=1.0).ok
    code, err = env.fail("gc", "--grace", "soon")
    assert code == 2 and err.startswith("cowfs: error: --grace")


def test_pipeline_runs_on_a_merge_commit_and_gc_keeps_its_records(env: LakeEnv) -> None:
    with env.lake() as lake:
        lake.create_repo("data")
        put(lake, "data", "main", {"a.txt": b"alpha\n"})
        lake.create_branch("data", "dev", lake.head("data", "main"))
        put(lake, "data", "dev", {"b.txt": b"beta\n"})
        put(lake, "data", "main", {"c.txt": b"gamma\n"})
        merge3.merge(lake, "data", lake.head("data", "dev"), "main")
    env.run("pipeline", "create", "-f", write_spec(env, spec()))
    assert env.json("pipeline", "run", "up")["state"] == "success"
    env.json("gc", "--grace", "0", "--keep-commits-since", "0")
    with env.lake() as lake:
        assert check(lake, read_fraction=1.0).ok
        got = read_files(lake, lake.head("up", "main"))
        assert got == {"a.txt": b"ALPHA\n", "b.txt": b"BETA\n", "c.txt": b"GAMMA\n"}
