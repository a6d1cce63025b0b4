"""Failures in the middle of work lose nothing that was committed before."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cowfs.index import Index
from tests.lakeenv import LakeEnv, make_env


def test_killed_put_leaves_earlier_commits_intact(lake_env: LakeEnv, tmp_path: Path) -> None:
    small = tmp_path / "small.txt"
    small.write_text("committed before")
    lake_env.run("repo", "create", "r")
    first = lake_env.out("put", "r@main:/small.txt", str(small)).split()[-1]
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:
        for _ in range(256):
            f.write(os.urandom(1024 * 1024))
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowfs.cli.main", "put", "r@main:/big.bin", str(big)],
        env=lake_env.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    time.sleep(1.0)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    log = lake_env.json("log", "r@main")
    if len(log) == 2:  # the put was quicker than the kill: it must then be whole
        assert lake_env.run("cat", "r@main:/big.bin").stdout == big.read_bytes()
    else:
        assert [c["id"] for c in log] == [first]
    assert lake_env.run("cat", f"r@{first}:/small.txt").stdout == b"committed before"
    # And the next put completes normally.
    lake_env.run("put", "r@main:/big.bin", str(big))
    assert lake_env.run("cat", "r@main:/big.bin").stdout == big.read_bytes()


@pytest.fixture
def tiny_disk(tmp_path: Path):  # noqa: ANN201
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_is_a_clear_error_and_loses_nothing(tmp_path: Path, tiny_disk: Path) -> None:
    env = make_env(tmp_path, str(tiny_disk / "store"))
    env.run("init")
    env.run("repo", "create", "r")
    ok = tmp_path / "ok.bin"
    ok.write_bytes(os.urandom(4 * 1024 * 1024))
    first = env.out("put", "r@main:/ok.bin", str(ok)).split()[-1]
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(40 * 1024 * 1024))
    code, err = env.fail("put", "r@main:/big.bin", str(big))
    assert code == 1
    assert "full" in err and len(err.splitlines()) == 1, err
    assert [c["id"] for c in env.json("log", "r@main")] == [first]
    assert env.run("cat", "r@main:/ok.bin").stdout == ok.read_bytes()


def test_index_cache_is_capped(tmp_path: Path) -> None:
    idx = Index(tmp_path / "idx", cache_bytes=1024 * 1024)
    for i in range(40):
        idx.put_blob(f"chunks/{i}", bytes([i]) * 100_000)
    assert idx.cached_bytes() <= 1024 * 1024
    assert idx.get_blob("chunks/39") == bytes([39]) * 100_000
    assert idx.get_blob("chunks/0") is None
    idx.close()


def test_a_zero_cap_caches_nothing(tmp_path: Path) -> None:
    idx = Index(tmp_path / "idx", cache_bytes=0)
    idx.put_blob("chunks/ab", b"x" * 1000)
    idx.put_blob("trees/ab", b"y" * 10)
    assert idx.get_blob("chunks/ab") is None and idx.get_blob("trees/ab") is None
    assert idx.cached_bytes() == 0
    idx.close()
