"""Regression tests for the store and CLI defects of issue 8 (items 3, 7-13, 16, 17) and the
dangling markers of issue 9, over the local store and SeaweedFS where the defect applies.

Races are forced deterministically (the racing operation runs inside the writer's swap), not
hoped for; tests/test_store_crash.py runs them for real, with kill -9, at random points.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs import layout
from cowfs.errors import AlreadyExists, CorruptObject, Damaged, NotFound
from cowfs.lake import Lake
from cowfs.names import MAX_NAME_BYTES
from cowfs.objectstore import ObjectStore
from cowfs.snapshot import snapshot
from cowfs.tree import TreeView, empty_tree
from tests.lakeenv import LakeEnv


@pytest.fixture
def lake(lake_env: LakeEnv) -> Iterator[Lake]:
    lk = lake_env.lake()
    try:
        yield lk
    finally:
        lk.close()


def put_dir(lake: Lake, repo: str, branch: str, src: Path, dest: str = "") -> str:
    head = lake.head(repo, branch)
    base = TreeView(lake.store, head.tree if head else empty_tree(lake.store))
    changes, _ = snapshot(lake.store, src, dest, mirror=True, base=base)
    return lake.commit(repo, branch, changes).id


def files_of(lake: Lake, repo: str, rev: str) -> dict[str, bytes]:
    from cowfs.reader import ChunkReader

    c = lake.get_commit(repo, rev) if len(rev) == 32 else lake.head(repo, rev)
    assert c is not None
    reader = ChunkReader(lake.store)
    try:
        return {e.path: b"".join(reader.iter_file(e)) for e in lake.walk(c) if e.is_file}
    finally:
        reader.close()


def make_files(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def chunk_keys_of(lake: Lake, repo: str, path: str) -> list[str]:
    e = lake.lookup(lake.head(repo, "main"), path)
    return [layout.chunk_key(c.id) for c in e.chunks]


def damage_object(objects: ObjectStore, key: str) -> bytes:
    good = objects.get(key)
    objects.put(key, good[:-1] + bytes([good[-1] ^ 0xFF]))
    return good


class SwapHook:
    """Runs `action` once, inside the next swap of `key`, before the swap itself: the worst
    interleaving of a writer and whatever `action` does."""

    def __init__(self, objects: ObjectStore, key: str, action) -> None:  # noqa: ANN001
        self.objects, self.key, self.action = objects, key, action
        self.real = objects.swap
        objects.swap = self  # type: ignore[method-assign]

    def __call__(self, key: str, data: bytes, expected: str | None) -> bool:
        if key == self.key and self.action is not None:
            action, self.action = self.action, None
            action()
        return self.real(key, data, expected)


# --- item 7: repo delete racing a writer -----------------------------------------------------


def test_delete_racing_a_put_wins_cleanly(lake_env: LakeEnv, lake: Lake, tmp_path: Path) -> None:
    lake.create_repo("c7")
    src = make_files(tmp_path / "a", {"x.txt": b"one"})
    put_dir(lake, "c7", "main", src)
    other = LakeEnv(
        lake_env.url, lake_env.root, {**lake_env.env, "COWFS_CACHE_DIR": str(tmp_path / "c2")}
    ).lake()
    # The delete lands between the writer's commit record and its branch swap.
    SwapHook(lake.objects, layout.ref_key("c7", "main"), lambda: other.delete_repo("c7"))
    (src / "y.txt").write_bytes(b"two")
    with pytest.raises(NotFound, match="deleted while"):
        put_dir(lake, "c7", "main", src)
    other.close()
    assert list(lake.objects.list(layout.refs_prefix("c7"))) == []
    assert list(lake.objects.list(layout.commits_prefix("c7"))) == []
    assert list(lake.objects.list(layout.GLOBALS)) == []
    # The name is reusable and every store-wide command works.
    lake_env.run("repo", "create", "c7")
    lake_env.run("put", "c7@main:/z.txt", str(src / "y.txt"))
    assert [c["message"] for c in lake_env.json("log", "c7@main")] == [""]
    s = lake_env.json("stats")
    assert s["repos"] == 1 and s["commits"] == 1 and s["damaged"] == []


def test_leftovers_of_a_killed_writer_never_surface(lake_env: LakeEnv, lake: Lake) -> None:
    """A writer killed after its swap, past the delete's listing, leaves a ref and a commit
    of the old incarnation: the re-created repo ignores them."""
    lake.create_repo("c7")
    old_inc = lake.repo_record("c7").incarnation
    lake.delete_repo("c7")
    stale = "ab" * 16
    lake.objects.put(
        layout.ref_key("c7", "main"),
        json.dumps({"commit": stale, "incarnation": old_inc}).encode(),
    )
    lake.objects.put(layout.global_key(stale, "c7", stale), b"")
    lake_env.run("repo", "create", "c7")
    assert lake_env.json("branch", "list", "c7") == []
    assert lake_env.json("stats")["damaged"] == []
    assert lake_env.fail("inspect", stale)[0] == 1  # the dangling marker is skipped
    f = lake_env.root / "f.txt"
    f.write_text("fresh")
    lake_env.run("put", "c7@main:/f.txt", str(f))
    assert len(lake_env.json("log", "c7@main")) == 1


def test_an_interrupted_delete_blocks_create_until_finished(lake_env: LakeEnv, lake: Lake) -> None:
    lake.create_repo("d")
    key = layout.repo_key("d")
    v = lake.objects.get_versioned(key)
    rec = json.loads(v.data)
    rec["deleting"] = True
    assert lake.objects.swap(key, json.dumps(rec).encode(), v.token)
    with pytest.raises(NotFound):
        lake.repo("d")
    with pytest.raises(AlreadyExists, match="still being deleted"):
        lake.create_repo("d")
    assert lake_env.fail("log", "d")[0] == 1
    lake_env.run("repo", "delete", "d", "--yes")  # finishes it
    lake.create_repo("d")


def test_one_damaged_repo_does_not_break_store_wide_commands(lake_env: LakeEnv) -> None:
    f = lake_env.root / "f.txt"
    f.write_text("x")
    for r in ("good", "bad"):
        lake_env.run("repo", "create", r)
        lake_env.run("put", f"{r}@main:/f.txt", str(f))
    cid = lake_env.json("log", "bad@main")[0]["id"]
    lake = lake_env.lake()
    lake.objects.delete(layout.commit_key("bad", cid))
    lake.store.index.forget_blob(layout.commit_key("bad", cid))  # as on another node
    lake.close()
    proc = lake_env.run("stats", "--json", ok=False)
    assert proc.returncode == 1
    s = json.loads(proc.stdout)
    assert s["repos"] == 2 and s["commits"] == 1
    assert any("bad@main" in d for d in s["damaged"]), s["damaged"]
    assert "Traceback" not in proc.stderr.decode()
    proc = lake_env.run("repo", "list", "--json", ok=False)
    assert {r["name"] for r in json.loads(proc.stdout)} == {"good", "bad"}


# --- issue 9: deletes leave no markers, readers skip dangling ones, the index is purged -------


def test_repo_delete_removes_markers_and_cached_records(lake: Lake, tmp_path: Path) -> None:
    from cowfs.changes import ChangeSet
    from cowfs.commits import Provenance

    lake.create_repo("a")
    lake.create_repo("b")
    a = put_dir(lake, "a", "main", make_files(tmp_path / "a", {"f": b"1"}))
    b = lake.commit(
        "b",
        "main",
        ChangeSet(),
        global_id=a,
        provenance=(Provenance("a", a, "main"),),
        allow_empty=True,
    )
    assert {c.repo for c in lake.inspect(a)} == {"a", "b"}  # warms the index with b's commit
    assert [c.id for c in lake.downstream("a", a)] == [b.id]
    lake.delete_repo("b")
    assert [c.repo for c in lake.inspect(a)] == ["a"]
    assert lake.downstream("a", a) == []
    keys = [k for k, _ in lake.objects.list(layout.GLOBALS)] + [
        k for k, _ in lake.objects.list(layout.DOWNSTREAM)
    ]
    assert keys == [layout.global_key(a, "a", a)]
    assert lake.store.index.get_blob(layout.commit_key("b", b.id)) is None
    # A marker left dangling (by a writer killed mid-delete) is skipped by every reader.
    lake.objects.put(layout.global_key(a, "b", b.id), b"")
    lake.objects.put(layout.downstream_key("a", a, "b", b.id), b"")
    assert [c.repo for c in lake.inspect(a)] == ["a"]
    assert lake.downstream("a", a) == []


# --- item 8: concurrent mirroring puts --------------------------------------------------------


def test_racing_mirror_puts_leave_exactly_one_side(lake: Lake, tmp_path: Path) -> None:
    lake.create_repo("m")
    a = make_files(tmp_path / "A", {f"a{i}.txt": b"A" * i for i in range(20)})
    b = make_files(tmp_path / "B", {f"b{i}.txt": b"B" * i for i in range(5)})
    base = TreeView(lake.store, empty_tree(lake.store))
    changes_a, _ = snapshot(lake.store, a, "same", mirror=True, base=base)
    changes_b, _ = snapshot(lake.store, b, "same", mirror=True, base=base)
    lake.commit("m", "main", changes_a)
    lake.commit("m", "main", changes_b)  # computed against the empty head, lands on A's
    assert sorted(files_of(lake, "m", "main")) == sorted(f"same/b{i}.txt" for i in range(5))


def test_racing_mirror_puts_through_the_cli(local_env: LakeEnv, tmp_path: Path) -> None:
    local_env.run("repo", "create", "m")
    a = make_files(tmp_path / "A", {f"a{i:03}.txt": os.urandom(64) for i in range(150)})
    b = make_files(tmp_path / "B", {f"b{i:03}.txt": os.urandom(64) for i in range(150)})
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cowfs.cli.main", "put", "m@main:/same", str(src)],
            env=local_env.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for src in (a, b)
    ]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read()
    names = {e["name"] for e in local_env.json("ls", "m@main:/same")}
    assert names in ({p.name for p in a.iterdir()}, {p.name for p in b.iterdir()})


# --- item 9: damaged or missing chunks are healed by putting the data again -------------------


def test_reput_heals_a_damaged_chunk(lake_env: LakeEnv, tmp_path: Path) -> None:
    src = make_files(tmp_path / "d", {"big.bin": os.urandom(1_500_000), "s.txt": b"small"})
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main", str(src))
    lake = lake_env.lake()
    key = chunk_keys_of(lake, "r", "big.bin")[0]
    damage_object(lake.objects, key)
    lake.close()
    code, err = lake_env.fail("cat", "r@main:/big.bin")
    assert code == 1 and key.rpartition("/")[2] in err
    lake_env.run("put", "r@main", str(src))  # the stat cache says unchanged; the doubt wins
    assert lake_env.run("cat", "r@main:/big.bin").stdout == (src / "big.bin").read_bytes()


def test_reput_heals_a_deleted_chunk_with_a_warm_index(lake_env: LakeEnv, tmp_path: Path) -> None:
    src = make_files(tmp_path / "d", {"f.bin": os.urandom(300_000)})
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main", str(src))
    lake = lake_env.lake()
    for key in chunk_keys_of(lake, "r", "f.bin"):
        lake.objects.delete(key)
    lake.close()
    assert lake_env.fail("get", "r@main", str(tmp_path / "out"))[0] == 1
    lake_env.run("put", "r@main", str(src))
    assert lake_env.run("cat", "r@main:/f.bin").stdout == (src / "f.bin").read_bytes()


def test_reput_heals_a_damaged_chunk_with_a_fresh_index(local_env: LakeEnv, tmp_path: Path) -> None:
    src = make_files(tmp_path / "d", {"f.bin": os.urandom(300_000)})
    local_env.run("repo", "create", "r")
    local_env.run("put", "r@main", str(src))
    lake = local_env.lake()
    damage_object(lake.objects, chunk_keys_of(lake, "r", "f.bin")[0])
    lake.close()
    subprocess.run(["rm", "-rf", local_env.env["COWFS_CACHE_DIR"]], check=True)
    (src / "g.txt").write_text("a change, so that a commit is made")
    local_env.run("put", "r@main", str(src))
    assert local_env.run("cat", "r@main:/f.bin").stdout == (src / "f.bin").read_bytes()


def test_no_commit_references_a_doubted_chunk(lake: Lake, tmp_path: Path) -> None:
    from cowfs.changes import ChangeSet
    from cowfs.reader import ChunkReader

    lake.create_repo("r")
    put_dir(lake, "r", "main", make_files(tmp_path / "d", {"f.bin": os.urandom(300_000)}))
    entry = lake.lookup(lake.head("r", "main"), "f.bin")
    lake.objects.delete(layout.chunk_key(entry.chunks[0].id))
    reader = ChunkReader(lake.store)
    with pytest.raises(NotFound):
        b"".join(reader.iter_file(entry))
    reader.close()
    with pytest.raises(CorruptObject, match="not committing"):
        lake.commit("r", "main", ChangeSet(puts={"copy.bin": entry.with_path("copy.bin")}))


# --- item 10: damaged commit records ----------------------------------------------------------


def test_truncated_commit_record_is_one_line_and_not_cached(lake_env: LakeEnv) -> None:
    f = lake_env.root / "f.txt"
    f.write_text("x")
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main:/f.txt", str(f))
    cid = lake_env.json("log", "r@main")[0]["id"]
    key = layout.commit_key("r", cid)
    lake = lake_env.lake()
    good = lake.objects.get(key)
    lake.store.index.forget_blob(key)
    lake.objects.put(key, good[: len(good) // 2])
    for args in (["log", "r@main"], ["ls", "r@main:/"], ["put", "r@main:/g.txt", str(f)]):
        code, err = lake_env.fail(*args)
        assert code == 1 and key in err and len(err.splitlines()) == 1, err
    lake.objects.put(key, json.dumps({**json.loads(good), "id": "0" * 32}).encode())
    code, err = lake_env.fail("log", "r@main")
    assert "names commit" in err
    lake.objects.put(key, good)  # repaired: nothing bad was cached
    lake.close()
    assert lake_env.json("log", "r@main")[0]["id"] == cid


# --- item 11 and item 3: get restores around damage and over-long names -----------------------


def test_get_restores_every_undamaged_path(lake_env: LakeEnv, tmp_path: Path) -> None:
    files = {"a.bin": os.urandom(1_200_000), "b.bin": os.urandom(1_300_000), "c.txt": b"c"}
    src = make_files(tmp_path / "d", files)
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main", str(src))
    lake = lake_env.lake()
    damage_object(lake.objects, chunk_keys_of(lake, "r", "a.bin")[0])
    lake.close()
    out = tmp_path / "out"
    code, err = lake_env.fail("get", "r@main", str(out))
    assert code == 1 and "/a.bin" in err and "Traceback" not in err
    assert not (out / "a.bin").exists()
    assert (out / "b.bin").read_bytes() == files["b.bin"]
    assert (out / "c.txt").read_bytes() == b"c"


def test_overlong_names_refused_by_put_and_skipped_by_get(
    lake_env: LakeEnv, lake: Lake, tmp_path: Path
) -> None:
    from cowfs.changes import ChangeSet
    from cowfs.entries import Entry, EntryType, dir_entry

    long = "n" * (MAX_NAME_BYTES + 1)
    src = tmp_path / "d"
    (src / ("p" * 250)).mkdir(parents=True)
    (src / ("p" * 250) / ("q" * 250)).write_text("over the path limit once under the dest")
    lake.create_repo("r")
    # No disk holds a name over 255 bytes, so put meets the limit as a path over 4,096.
    dest = "/".join(["x" * 250] * 15)
    code, err = lake_env.fail("put", f"r@main:/{dest}", str(src))
    assert code == 2 and "too long" in err and len(err.splitlines()) == 1, err
    assert lake.head("r", "main") is None
    # A commit made before the limits holds an over-long name: get restores the rest.
    ok = put_dir(lake, "r", "main", make_files(tmp_path / "e", {"ok.txt": b"ok"}))
    legacy = {
        long: dir_entry(long),
        f"{long}/inner.txt": Entry(f"{long}/inner.txt", EntryType.FILE),
    }
    lake.commit("r", "main", ChangeSet(puts=legacy))
    assert ok
    out = tmp_path / "out"
    code, err = lake_env.fail("get", "r@main", str(out))
    assert code == 1 and "name too long" in err, err
    assert (out / "ok.txt").read_bytes() == b"ok"


# --- item 12: sources that are not regular files, vanishing files, ref syntax in names --------


def test_special_sources_are_refused_at_once(lake_env: LakeEnv, tmp_path: Path) -> None:
    lake_env.run("repo", "create", "r")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    for source in (str(fifo), "/dev/zero"):
        code, err = lake_env.fail("put", "r@main:/x", source)
        assert code == 2 and "FIFOs, sockets and devices" in err
    d = tmp_path / "d"
    d.mkdir()
    (d / "f.txt").write_text("f")
    os.mkfifo(d / "pipe")
    proc = lake_env.run("put", "r@main", str(d))
    assert b"skipping" in proc.stderr
    assert [e["name"] for e in lake_env.json("ls", "r@main:/")] == ["f.txt"]


def test_a_file_vanishing_during_put_is_skipped(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    import cowfs.snapshot as snap

    src = make_files(tmp_path / "d", {"keep.txt": b"k", "gone.txt": b"g", "big.bin": b"b" * 2**21})
    real_scan = snap.scan

    def scan_then_remove(root: Path):  # noqa: ANN202
        found = list(real_scan(root))
        (root / "gone.txt").unlink()
        (root / "big.bin").unlink()
        return found

    monkeypatch.setattr(snap, "scan", scan_then_remove)
    lake.create_repo("r")
    put_dir(lake, "r", "main", src)
    assert sorted(files_of(lake, "r", "main")) == ["keep.txt"]
    assert capsys.readouterr().err.count("vanished during the put") == 2


def test_ref_syntax_is_refused_in_new_names(lake_env: LakeEnv) -> None:
    f = lake_env.root / "f.txt"
    f.write_text("f")
    lake_env.run("repo", "create", "bi")
    lake_env.run("put", "bi@main:/f", str(f))
    lake_env.run("put", "bi@main:/g", str(f))
    for args in (
        ["branch", "create", "bi@HEAD~1", "--from", "bi@main"],
        ["branch", "create", "bi@dev^", "--from", "bi@main"],
        ["put", "bi@main~1:/h", str(f)],
        ["rm", "bi@main^:/f"],
    ):
        assert lake_env.fail(*args)[0] == 2
    assert [b["branch"] for b in lake_env.json("branch", "list", "bi")] == ["main"]


# --- item 13: a branch whose ref was lost -----------------------------------------------------


def test_a_lost_ref_is_damage_not_a_new_branch(lake_env: LakeEnv, lake: Lake) -> None:
    f = lake_env.root / "f.txt"
    f.write_text("f")
    lake_env.run("repo", "create", "r")
    lake_env.run("put", "r@main:/f", str(f))
    head = lake_env.json("log", "r@main")[0]["id"]
    lake.objects.delete(layout.ref_key("r", "main"))
    for args in (["put", "r@main:/g", str(f)], ["log", "r@main"]):
        code, err = lake_env.fail(*args)
        assert code == 1 and "store damage" in err and head in err, err
    assert lake_env.run("stats", ok=False).returncode == 1
    lake_env.run("branch", "create", "r@main", "--from", f"r@{head}")
    lake_env.run("put", "r@main:/g", str(f))
    assert len(lake_env.json("log", "r@main")) == 2
    # A branch deleted on purpose is no damage: it starts afresh.
    lake_env.run("branch", "create", "r@dev", "--from", "r@main")
    lake_env.run("branch", "delete", "r@dev")
    lake_env.run("put", "r@dev:/f", str(f))
    assert len(lake_env.json("log", "r@dev")) == 1


def test_lost_branch_detection_in_process(lake: Lake, tmp_path: Path) -> None:
    lake.create_repo("r")
    put_dir(lake, "r", "main", make_files(tmp_path / "a", {"x": b"x"}))
    lake.objects.delete(layout.ref_key("r", "main"))
    with pytest.raises(Damaged):
        put_dir(lake, "r", "main", make_files(tmp_path / "b", {"y": b"y"}))
    assert lake.repo_damage("r") and "store damage" in lake.repo_damage("r")[0]


# --- item 16: a private local store -----------------------------------------------------------


def test_local_store_is_private_unless_configured(local_env: LakeEnv, tmp_path: Path) -> None:
    root = Path(local_env.url)
    f = tmp_path / "f.bin"
    f.write_bytes(os.urandom(10_000))
    local_env.run("repo", "create", "r")
    local_env.run("put", "r@main:/f.bin", str(f))
    modes = {(p.is_dir(), stat.S_IMODE(p.stat().st_mode)) for p in [root, *root.rglob("*")]}
    assert modes <= {(True, 0o700), (False, 0o600)}, modes
    shared = LakeEnv(str(tmp_path / "shared"), tmp_path, {**local_env.env})
    shared.env.update(COWFS_STORE=shared.url, COWFS_STORE_MODE="shared")
    shared.run("init")
    shared.run("repo", "create", "r")
    assert stat.S_IMODE(Path(shared.url).stat().st_mode) == 0o755
    assert stat.S_IMODE((Path(shared.url) / "repos" / "r").stat().st_mode) == 0o644
    cache = Path(local_env.env["COWFS_CACHE_DIR"])
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o700 for p in cache.iterdir() if p.is_dir())


# --- item 17: a stopped S3 endpoint fails within seconds --------------------------------------


def test_a_stopped_endpoint_fails_fast(tmp_path: Path) -> None:
    """A server that accepts connections and never answers (as a SIGSTOPped one does)."""
    from tests.lakeenv import make_env

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen(64)
        env = make_env(tmp_path, "s3://stopped/lake")
        env.env.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{srv.getsockname()[1]}",
            AWS_ACCESS_KEY_ID="k",
            AWS_SECRET_ACCESS_KEY="s",
            AWS_REGION="us-east-1",
        )
        for extra, bound in (
            ({}, 40.0),
            ({"COWFS_S3_READ_TIMEOUT": "1", "COWFS_S3_ATTEMPTS": "1"}, 15.0),
        ):
            env.env.update(extra)
            began = time.monotonic()
            code, err = env.fail("stats")
            took = time.monotonic() - began
            assert code == 1 and "cannot reach S3 endpoint" in err and took < bound, (took, err)
        env.env["COWFS_S3_ATTEMPTS"] = "zero"
        assert env.fail("stats")[0] == 2
