"""`cowfs check` finds each injected fault and names the commits and paths it breaks."""

from __future__ import annotations

from pathlib import Path

import pytest

from cowfs import layout
from cowfs.check import check
from cowfs.lake import Lake
from cowfs.objectstore import ObjectStore
from cowfs.objectstore.local import LocalStore
from tests.historyutil import lake_on, put
from tests.lakeenv import make_env


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    lake = lake_on(LocalStore(tmp_path / "store", create=True), tmp_path / "cache")
    lake.create_repo("r")
    return lake


def _chunk_of(lake: Lake, commit, path: str) -> str:  # noqa: ANN001
    return layout.chunk_key(lake.lookup(commit, path).chunks[0].id)


def _file(lake: Lake, key: str) -> Path:
    return lake.objects.root / key


def test_clean_store_is_ok(lake: Lake) -> None:
    put(lake, "r", "main", {"a": b"1", "d/b": b"2"})
    report = check(lake, read_fraction=1.0)
    assert report.ok and report.commits == 1 and report.chunks == 2 and report.chunks_read == 2


def test_deleted_chunk(objectstore: ObjectStore, tmp_path: Path) -> None:
    lake = lake_on(objectstore, tmp_path / "cache")
    lake.create_repo("r")
    c1 = put(lake, "r", "main", {"a": b"shared", "b": b"other"})
    c2 = put(lake, "r", "main", {"c": b"shared"})
    key = _chunk_of(lake, c1, "a")
    lake.objects.delete(key)
    (p,) = [p for p in check(lake).problems]
    assert (p.kind, p.key) == ("chunk-missing", key)
    assert sorted(p.commits) == sorted([f"r@{c1.id}", f"r@{c2.id}"])
    assert sorted(p.paths) == ["/a", "/c"]


def test_flipped_byte_needs_read_data(lake: Lake) -> None:
    c = put(lake, "r", "main", {"x/y": b"payload " * 50})
    path = _file(lake, _chunk_of(lake, c, "x/y"))
    raw = bytearray(path.read_bytes())
    raw[-3] ^= 0x01
    path.write_bytes(bytes(raw))
    assert check(lake).ok, "without --read-data chunks are only listed"
    (p,) = check(lake, read_fraction=1.0).problems
    assert p.kind == "chunk-corrupt" and "do not match its hash" in p.message
    assert p.commits == [f"r@{c.id}"] and p.paths == ["/x/y"]


def test_truncated_tree_node(lake: Lake) -> None:
    c1 = put(lake, "r", "main", {"a": b"1"})
    lake.create_branch("r", "other", c1)
    key = layout.tree_key(c1.tree)
    path = _file(lake, key)
    path.write_bytes(path.read_bytes()[:10])
    (p,) = check(lake).problems
    assert (p.kind, p.key) == ("tree-corrupt", key)
    assert p.commits == [f"r@{c1.id}"] and p.paths == [f"paths after / in node {c1.tree}"]


def test_ref_to_missing_commit(lake: Lake) -> None:
    c = put(lake, "r", "main", {"a": b"1"})
    lake.objects.delete(layout.commit_key("r", c.id))
    lake.objects.delete(layout.global_key(c.global_id, "r", c.id))
    (p,) = check(lake).problems
    assert (p.kind, p.key) == ("branch-missing-commit", layout.ref_key("r", "main"))
    assert p.commits == [f"r@{c.id}"]


def test_lost_ref(lake: Lake) -> None:
    put(lake, "r", "main", {"a": b"1"})
    lake.objects.delete(layout.ref_key("r", "main"))
    (p,) = check(lake).problems
    assert (p.kind, p.key) == ("branch-lost", layout.branch_record_key("r", "main"))


def test_dangling_marker(lake: Lake) -> None:
    put(lake, "r", "main", {"a": b"1"})
    ghost = "f" * 32
    lake.objects.put(layout.downstream_key("r", ghost, "out", ghost), b"")
    kinds = sorted((p.kind, p.key) for p in check(lake).problems)
    assert kinds == [("marker-dangling", layout.downstream_key("r", ghost, "out", ghost))] * 2


def test_cli_exit_codes(tmp_path: Path) -> None:
    env = make_env(tmp_path, None)
    env.run("init")
    env.run("repo", "create", "r")
    (tmp_path / "f.txt").write_bytes(b"hello")
    env.run("put", "r@main:/f.txt", str(tmp_path / "f.txt"))
    assert env.json("check", "--read-data")["ok"] is True
    lake = env.lake()
    key = layout.chunk_key(lake.lookup(lake.head("r", "main"), "f.txt").chunks[0].id)
    lake.close()
    (Path(env.url) / key).unlink()
    proc = env.run("check", "--json", ok=False)
    assert proc.returncode == 1
    code, err = env.fail("check")
    assert code == 1 and err.splitlines()[-1] == "cowfs: error: the store has 1 problems"
    code, err = env.fail("check", "--read-data-subset", "150%")
    assert code == 2 and len(err.splitlines()) == 1
