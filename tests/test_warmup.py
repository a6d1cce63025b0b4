"""`cowfs warmup`: every chunk under a path fetched into the node's cache, once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from tests.mountutil import MountedLake


@pytest.mark.parametrize("backend", ["local", "s3"])
def test_warmup_fills_the_cache_once(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    url = str(tmp_path / "store") if backend == "local" else request.getfixturevalue("s3_url")
    m = MountedLake(tmp_path, url)
    m.cli("init")
    m.cli("repo", "create", "w")
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a/big.bin").write_bytes(os.urandom(3 << 20))
    (src / "a/small.txt").write_bytes(b"small")
    (src / "b.txt").write_bytes(b"outside the path")
    m.cli("put", "w@main", str(src))
    shutil.rmtree(tmp_path / "cache")  # a fresh node
    first = json.loads(m.cli("warmup", "w@main:/a", "--json"))
    assert first["files"] == 2 and first["chunks"] >= 2 and first["cached"] == 0
    assert first["bytes"] >= (3 << 20)
    again = json.loads(m.cli("warmup", "w@main:/a", "--json"))
    assert again["chunks"] == first["chunks"]
    assert again["cached"] == (first["chunks"] if backend == "s3" else 0)
