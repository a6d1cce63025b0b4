"""The mount's namespace without FUSE: names to views and entries, write sessions and the
control requests, on a trio loop, with no /dev/fuse and no kernel in the way."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cowfs.changes import ChangeSet
from cowfs.entries import dir_entry
from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.reader import ChunkReader
from daemon.inodes import ROOT
from daemon.namespace import Namespace


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lake]:
    monkeypatch.setenv("COWFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    lk = Lake.open(str(tmp_path / "store"), create=True)
    lk.create_repo("r")
    lk.commit("r", "main", ChangeSet(puts={"d": dir_entry("d")}), "base")
    try:
        yield lk
    finally:
        lk.close()


def errno_of(coro_fn, *args) -> int:  # noqa: ANN001
    async def go() -> int:
        try:
            await coro_fn(*args)
        except CowfsError as e:
            return e.errno
        return 0

    return trio.run(go)


def test_names_resolve_to_views_and_entries(lake: Lake) -> None:
    invalidated: list[tuple[int, bytes]] = []
    ns = Namespace(lake, ChunkReader(lake.store), lambda p, n: invalidated.append((p, n)))
    root = ns.node(ROOT)

    async def walk() -> None:
        repo, _ = await ns.resolve(root, b"r")
        assert repo.kind == "repo"
        main, _ = await ns.resolve(repo, b"main")
        assert main.kind == "view" and not main.view.writable
        d, e = await ns.resolve(main, b"d")
        assert e is not None and e.is_dir and d.path == "d"
        cid = lake.head_id("r", "main")
        assert cid is not None
        at, _ = await ns.resolve(repo, f"@{cid[:8]}".encode())
        assert at.view.key == ("c", "r", cid)
        # A write session turns the branch writable, and a commit back.
        assert (await ns.control({"op": "write", "repo": "r", "branch": "main"}))["base"] == cid
        main, _ = await ns.resolve(repo, b"main")
        assert main.view.writable
        await trio.to_thread.run_sync(main.view.staging.create, "d/new", 0o644)
        done = await ns.control({"op": "commit", "repo": "r", "branch": "main", "message": "m"})
        head = lake.head("r", "main")
        assert head is not None and done["commit"] == head.id
        assert lake.lookup(head, "d/new") is not None
        status = await ns.control({"op": "status"})
        assert status["writes"] == [] and status["inodes"] >= 4

    trio.run(walk)
    assert any(name == b"main" for _, name in invalidated)  # the dentry was dropped
    ns.close()


def test_bad_names_answer_errnos(lake: Lake) -> None:
    ns = Namespace(lake, ChunkReader(lake.store))
    root = ns.node(ROOT)
    assert errno_of(ns.resolve, root, b"x" * 256) == errno.ENAMETOOLONG
    assert errno_of(ns.resolve, root, b"nope") == errno.ENOENT
    assert errno_of(ns.resolve, root, b"..") == errno.ENOENT
    assert errno_of(ns.resolve, root, b"\xff") == errno.ENOENT
    repo = trio.run(ns.resolve, root, b"r")[0]
    assert errno_of(ns.resolve, repo, b"@ffffffffff") == errno.ENOENT
    assert errno_of(ns.resolve, repo, b"no-such-branch") == errno.ENOENT
    ns.close()
