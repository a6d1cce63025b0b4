"""The crash-and-race harness (tests/crashrace.py), bounded for CI: kill -9 of `put`, of
`cowfs commit` and of the mount at random points, racing writers, deletes and branch creates,
and after every round a full verification of every finished commit and of the store.

`COWFS_HARNESS_SEED` replays a failure (the seed is in its message); `COWFS_HARNESS_SECONDS`
sets each test's budget. scripts/soak.py runs the same harness for hours.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.crashrace import Harness

SEED = int(os.environ.get("COWFS_HARNESS_SEED", "8"))
SECONDS = float(os.environ.get("COWFS_HARNESS_SECONDS", "30"))


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "COWFS_CACHE_DIR": str(tmp_path / "cache"),
        "COWFS_STATE_DIR": str(tmp_path / "state"),
    }


@pytest.mark.mount
def test_crash_and_race_local_store_with_mount(tmp_path: Path) -> None:
    h = Harness(tmp_path, str(tmp_path / "store"), _env(tmp_path), SEED, mount=True)
    t = h.run(SECONDS)
    assert t.rounds >= 2 and t.verified_commits > 0
    print(t.line())


@pytest.mark.s3
def test_crash_and_race_seaweedfs(s3_url: str, tmp_path: Path) -> None:
    h = Harness(tmp_path, s3_url, _env(tmp_path), SEED + 1)
    t = h.run(SECONDS * 0.6)
    assert t.rounds >= 2 and t.verified_commits > 0
    print(t.line())
