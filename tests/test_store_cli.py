"""The store through its command line, over the local store and over a real S3 server."""

from __future__ import annotations

import filecmp
import os
import random
import re
import subprocess
import sys
import time
from pathlib import Path

from tests.lakeenv import LakeEnv

ID = re.compile(r"^[0-9a-f]{32}$")


def make_tree(root: Path) -> None:
    (root / "cats").mkdir(parents=True)
    (root / "empty").mkdir()
    (root / "cats" / "a.jpg").write_bytes(os.urandom(100_000))
    (root / "cats" / "b.jpg").write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    (root / "zero.txt").write_bytes(b"")
    (root / "naïve café ☕.txt").write_text("unicode names are fine\n")
    (root / "link").symlink_to("cats/a.jpg")


def assert_same_tree(a: Path, b: Path) -> None:
    cmp = filecmp.dircmp(a, b)
    assert not cmp.left_only and not cmp.right_only and not cmp.diff_files, cmp.report()
    for name in cmp.common_files:
        pa, pb = a / name, b / name
        if pa.is_symlink():
            assert os.readlink(pa) == os.readlink(pb)
        else:
            assert pa.read_bytes() == pb.read_bytes()
    for sub in cmp.common_dirs:
        assert_same_tree(a / sub, b / sub)


def commit_of(out: str) -> str:
    last = out.strip().splitlines()[-1]
    assert ID.match(last), out
    return last


def test_put_get_roundtrip(lake_env: LakeEnv, tmp_path: Path) -> None:
    src = tmp_path / "photos"
    make_tree(src)
    lake_env.run("repo", "create", "images")
    cid = commit_of(lake_env.out("put", "images@main", str(src), "-m", "first"))
    names = {e["name"] for e in lake_env.json("ls", "images@main:/")}
    assert names == {"cats", "empty", "zero.txt", "naïve café ☕.txt", "link"}
    got = lake_env.run("cat", "images@main:/cats/b.jpg").stdout
    assert got == (src / "cats" / "b.jpg").read_bytes()
    lake_env.run("get", f"images@{cid}", str(tmp_path / "restore"))
    assert_same_tree(src, tmp_path / "restore")
    assert (tmp_path / "restore" / "empty").is_dir()
    assert os.readlink(tmp_path / "restore" / "link") == "cats/a.jpg"
    lake_env.run("get", "images@main:/cats/a.jpg", str(tmp_path / "one.jpg"))
    assert (tmp_path / "one.jpg").read_bytes() == (src / "cats" / "a.jpg").read_bytes()


def test_history_diff_inspect_and_old_commits(lake_env: LakeEnv, tmp_path: Path) -> None:
    src = tmp_path / "d"
    src.mkdir()
    (src / "keep.txt").write_text("same")
    (src / "change.txt").write_text("v1")
    (src / "gone.txt").write_text("bye")
    lake_env.run("repo", "create", "r")
    first = commit_of(lake_env.out("put", "r@main", str(src), "-m", "one"))
    (src / "change.txt").write_text("version two")
    (src / "gone.txt").unlink()
    (src / "new.txt").write_text("hello")
    second = commit_of(lake_env.out("put", "r@main", str(src), "-m", "two"))
    assert first != second

    log = lake_env.json("log", "r@main")
    assert [c["id"] for c in log] == [second, first]
    assert [c["message"] for c in log] == ["two", "one"]
    assert log[0]["parents"] == [first]

    d = lake_env.json("diff", f"r@{first}", "r@main")
    assert d["added"] == [{"path": "/new.txt", "size": 5}]
    assert d["deleted"] == [{"path": "/gone.txt", "size": 3}]
    assert d["modified"] == [{"path": "/change.txt", "old_size": 2, "size": 11}]
    assert lake_env.json("diff", "r@main^", "r@main") == d

    assert lake_env.run("cat", "r@main^:/change.txt").stdout == b"v1"
    assert lake_env.run("cat", f"r@{first[:10]}:/gone.txt").stdout == b"bye"
    info = lake_env.json("inspect", second)
    assert [(c["repo"], c["id"]) for c in info["commits"]] == [("r", second)]


def test_put_file_destinations_and_mirroring(lake_env: LakeEnv, tmp_path: Path) -> None:
    f = tmp_path / "more.csv"
    f.write_text("a,b\n1,2\n")
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main", str(f))
    lake_env.run("put", "r@main:/extra", str(f))
    lake_env.run("put", "r@main:/a/b.csv", str(f))
    paths = {e["path"] for e in lake_env.json("ls", "-r", "r@main")}
    assert {"/more.csv", "/extra/more.csv", "/a/b.csv"} <= paths

    d = tmp_path / "dir"
    d.mkdir()
    (d / "x").write_text("x")
    (d / "y").write_text("y")
    lake_env.run("put", "r@main:/sub", str(d))
    (d / "y").unlink()
    lake_env.run("put", "r@main:/sub", str(d), "--keep")
    assert {e["name"] for e in lake_env.json("ls", "r@main:/sub")} == {"x", "y"}
    lake_env.run("put", "r@main:/sub", str(d))
    assert {e["name"] for e in lake_env.json("ls", "r@main:/sub")} == {"x"}
    # A directory put to the root mirrors it: everything else goes.
    lake_env.run("put", "r@main", str(d))
    assert {e["path"] for e in lake_env.json("ls", "-r", "r@main")} == {"/x"}


def test_branches_rm_and_repos(lake_env: LakeEnv, tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "old").mkdir(parents=True)
    (d / "old" / "a").write_text("a")
    (d / "b").write_text("b")
    lake_env.run("repo", "create", "r", "-d", "test repo")
    base = commit_of(lake_env.out("put", "r@main", str(d)))
    lake_env.run("branch", "create", "r@dev", "--from", "r@main")
    branches = {b["branch"]: b["head"] for b in lake_env.json("branch", "list", "r")}
    assert branches == {"main": base, "dev": base}

    rm = commit_of(lake_env.out("rm", "r@dev:/old/", "-m", "drop old"))
    assert {e["path"] for e in lake_env.json("ls", "-r", "r@dev")} == {"/b"}
    assert lake_env.json("ls", "r@main:/old")[0]["name"] == "a"
    assert lake_env.json("log", "r@dev")[0]["id"] == rm

    code, err = lake_env.fail("rm", "r@dev:/nope")
    assert code == 2 and "no such file" in err

    assert [r["name"] for r in lake_env.json("repo", "list")] == ["r"]
    lake_env.run("repo", "create", "other")
    code, err = lake_env.fail("repo", "delete", "other")
    assert "--yes" in err
    lake_env.run("repo", "delete", "other", "--yes")
    assert [r["name"] for r in lake_env.json("repo", "list")] == ["r"]


def test_bad_input_is_one_clear_line_and_changes_nothing(lake_env: LakeEnv, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "f").write_text("f")
    lake_env.run("repo", "create", "r")
    head = commit_of(lake_env.out("put", "r@main", str(d)))
    cases = [
        (("repo", "create", ".hidden"), 2, "invalid repo name"),
        (("repo", "create", "a/b"), 2, "invalid repo name"),
        (("repo", "create", "r"), 1, "already exists"),
        (("put", "r@bad~name!", str(d)), 2, "invalid"),
        (("put", "r@main:/../etc", str(d)), 2, "'..'"),
        (("put", "r@main:/a/./b", str(d)), 2, "'.'"),
        (("put", "r@main", str(tmp_path / "missing")), 1, "does not exist"),
        (("put", "nope@main", str(d)), 1, "no repo named nope"),
        (("put", f"r@{head}", str(d)), 2, "immutable"),
        (("ls", "r@unknown"), 1, "neither a branch nor a commit"),
        (("cat", "r@main:/missing"), 1, "no such file"),
        (("cat", "r@main^:/f"), 1, "first commit"),
        (("diff", "r@main", "r@zzz"), 1, "neither a branch nor a commit"),
        (("diff", "r@main", "r@a:b"), 2, "names a path"),
        (("inspect", "not-an-id"), 2, "not a commit or global ID"),
        (("branch", "create", "r@main", "--from", "r@main"), 1, "already exists"),
    ]
    for args, code, text in cases:
        got_code, err = lake_env.fail(*args)
        assert got_code == code, (args, got_code, err)
        assert text in err, (args, err)
        assert len(err.splitlines()) == 1, err
        assert err.startswith("cowfs: error: ") or "Usage" in err
    assert [c["id"] for c in lake_env.json("log", "r@main")] == [head]


def test_unreachable_or_missing_store(tmp_path: Path, local_env: LakeEnv) -> None:
    missing = LakeEnv(
        str(tmp_path / "never-initialised"),
        tmp_path,
        dict(local_env.env, COWFS_STORE=str(tmp_path / "never-initialised")),
    )
    code, err = missing.fail("repo", "list")
    assert code == 1 and "cowfs init" in err
    unreachable = LakeEnv(
        "s3://bucket/x",
        tmp_path,
        dict(
            local_env.env,
            COWFS_STORE="s3://bucket/x",
            AWS_ENDPOINT_URL="http://127.0.0.1:9",
            AWS_ACCESS_KEY_ID="k",
            AWS_SECRET_ACCESS_KEY="s",
        ),
    )
    t0 = time.monotonic()
    code, err = unreachable.fail("repo", "list")
    assert code == 1
    assert len(err.splitlines()) == 1 and "127.0.0.1:9" in err, err
    assert time.monotonic() - t0 < 60


def test_non_utf8_names_are_refused(local_env: LakeEnv, tmp_path: Path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    (d / "ok").write_text("x")
    os.close(os.open(os.path.join(os.fsencode(d), b"bad\xffname"), os.O_CREAT | os.O_WRONLY))
    local_env.run("repo", "create", "r")
    code, err = local_env.fail("put", "r@main", str(d))
    assert code == 2 and "not valid UTF-8" in err
    code, err = local_env.fail("log", "r@main")
    assert "neither a branch" in err


def test_corrupted_chunk_is_detected_and_named(lake_env: LakeEnv, tmp_path: Path) -> None:
    f = tmp_path / "data.bin"
    f.write_bytes(os.urandom(2 * 1024 * 1024))
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main:/data.bin", str(f))
    lake = lake_env.lake()
    try:
        keys = [k for k, _ in lake.objects.list("chunks/")]
        key = keys[0]
        data = bytearray(lake.objects.get(key))
        data[-100] ^= 0xFF
        lake.objects.put(key, bytes(data))
    finally:
        lake.close()
    import shutil

    shutil.rmtree(tmp_path / "cache")  # so a remote store's cached copy cannot hide it
    code, err = lake_env.fail("cat", "r@main:/data.bin")
    assert code == 1
    assert key.rpartition("/")[2] in err and "corrupt" in err


def test_deleting_the_index_loses_nothing(lake_env: LakeEnv, tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "src"
    make_tree(src)
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main", str(src))
    shutil.rmtree(tmp_path / "cache")
    lake_env.run("get", "r@main", str(tmp_path / "back"))
    assert_same_tree(src, tmp_path / "back")
    # And put works again without its stat cache, storing nothing new.
    before = lake_env.json("stats")["stored_bytes"]
    lake_env.run("put", "r@main", str(src))
    after = lake_env.json("stats")["stored_bytes"]
    assert after - before < 64 * 1024  # at most a few tree nodes


def test_unchanged_files_are_not_read_again(local_env: LakeEnv, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    old = time.time() - 3600
    for i in range(50):
        p = src / f"f{i}"
        p.write_bytes(os.urandom(1000 + i))
        os.utime(p, (old, old))
    local_env.run("repo", "create", "r")
    first = local_env.json("put", "r@main", str(src))
    assert first["files_read"] == 50
    second = local_env.json("put", "r@main", str(src))
    assert second["files_read"] == 0 and not second["created"]
    (src / "f7").write_bytes(b"changed")
    os.utime(src / "f7", (old + 10, old + 10))
    third = local_env.json("put", "r@main", str(src))
    assert third["files_read"] == 1 and third["created"]
    assert local_env.run("cat", "r@main:/f7").stdout == b"changed"


def _chunk_ids(data: bytes) -> set[str]:
    from pyfastcdc.cy import FastCDC

    from cowfs.chunking import AVG_CHUNK, MAX_CHUNK, MIN_CHUNK
    from cowfs.objects import object_id

    cdc = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    return {object_id(data[c.offset : c.offset + c.length]) for c in cdc.cut_buf(data)}


def test_small_change_in_big_file_stores_little(lake_env: LakeEnv, tmp_path: Path) -> None:
    from cowfs.chunking import MAX_CHUNK

    size = 64 * 1024 * 1024
    rnd = random.Random(13)
    before = rnd.randbytes(size)
    f = tmp_path / "big.bin"
    f.write_bytes(before)
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main:/big.bin", str(f))
    s1 = lake_env.json("stats")
    with open(f, "r+b") as fh:
        fh.seek(size // 2)
        fh.write(rnd.randbytes(1024 * 1024))
    after = f.read_bytes()
    second = lake_env.json("put", "r@main:/big.bin", str(f))
    # The chunks around the change, not the file: exactly those whole-file CDC finds new (the
    # new 1 MiB of random bytes may itself be cut in several).
    want = len(_chunk_ids(after) - _chunk_ids(before))
    assert 1 <= want <= 8
    assert second["chunks_new"] == want
    assert second["tree_nodes_new"] >= 1
    s2 = lake_env.json("stats")
    grown = s2["stored_bytes"] - s1["stored_bytes"]
    assert 1024 * 1024 <= grown <= 1024 * 1024 + 2 * MAX_CHUNK
    assert s2["logical_bytes"] == 2 * size
    assert s2["dedup_ratio"] > 1.7


def test_concurrent_puts_to_one_branch_all_land(lake_env: LakeEnv, tmp_path: Path) -> None:
    lake_env.run("repo", "create", "r")
    seed = tmp_path / "seed.txt"
    seed.write_text("seed")
    lake_env.run("put", "r@main", str(seed))
    script = (
        "import subprocess, sys\n"
        "for i in range(4):\n"
        "    subprocess.run([sys.executable, '-m', 'cowfs.cli.main', 'put',\n"
        "                    f'r@main:/{sys.argv[1]}/{i}.txt', sys.argv[2]], check=True,\n"
        "                    capture_output=True)\n"
    )
    procs = []
    for who in ("alice", "bob"):
        f = tmp_path / f"{who}.txt"
        f.write_text(who)
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, who, str(f)], env=lake_env.env, cwd=tmp_path
            )
        )
    for p in procs:
        assert p.wait(timeout=300) == 0
    paths = {e["path"] for e in lake_env.json("ls", "-r", "r@main")}
    expected = {f"/{w}/{i}.txt" for w in ("alice", "bob") for i in range(4)}
    assert expected <= paths
    assert len(lake_env.json("log", "r@main")) == 1 + 8


def test_the_command_table_names_every_command_where_it_is_defined(tmp_path: Path) -> None:
    """`cowfs` imports a command's module only when it runs (cowfs/cli/main.py): the table must
    name every command of every module, and `cowfs repo list` must not import the others."""
    import pkgutil

    import cowfs.cli
    from cowfs.cli import main

    defined: dict[str, str] = {}
    for info in pkgutil.iter_modules(cowfs.cli.__path__):
        if info.name in ("main", "common"):
            continue
        for name in main.module_commands(info.name):
            defined[name] = info.name
    assert defined == main.COMMAND_MODULES
    # A group's subcommands are all its own module's: none is added from elsewhere, where
    # loading the group alone would miss it.
    import click

    groups = set()
    for info in pkgutil.iter_modules(cowfs.cli.__path__):
        mod = __import__(f"cowfs.cli.{info.name}", fromlist=["x"])
        for cmd in vars(mod).values():
            if isinstance(cmd, click.Group) and cmd.name in main.COMMAND_MODULES:
                groups.add(cmd.name)
                for sub in cmd.commands.values():
                    assert sub.callback.__module__ == mod.__name__, (cmd.name, sub.name)
    assert {"repo", "branch", "tag", "pipeline"} <= groups
    probe = (
        "import sys, runpy\n"
        "sys.argv = ['cowfs', 'repo', 'list']\n"
        "try:\n"
        "    runpy.run_module('cowfs.cli.main', run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith(('cowfs.cli.', 'cowfs.pipelines',"
        " 'cowfs.s3gateway', 'cowfs.api'))))\n"
    )
    env = {**os.environ, "COWFS_STORE": str(tmp_path / "store"), "COWFS_STATE_DIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120
    ).stdout
    assert out.strip() == "['cowfs.cli.admin', 'cowfs.cli.common']", out
