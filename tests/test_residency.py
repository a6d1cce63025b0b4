"""The index's LMDB pages a reader touched leave the process's RSS when released, and the data
reads back intact (the pages were only unmapped)."""

from __future__ import annotations

import os
from pathlib import Path

import lmdb

from daemon.residency import release_maps, shared_file_maps


def rss_file_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    return 0


def test_released_pages_leave_rss_and_read_back(tmp_path: Path) -> None:
    env = lmdb.open(str(tmp_path / "db"), map_size=1 << 28, readahead=False)
    values = {b"%04d" % i: os.urandom(64 << 10) for i in range(256)}  # 16 MiB
    with env.begin(write=True) as txn:
        for k, v in values.items():
            txn.put(k, v)
    with env.begin() as txn:
        for k in values:
            txn.get(k)
    assert shared_file_maps(tmp_path)
    before = rss_file_kib()
    assert release_maps(tmp_path) > 0
    assert rss_file_kib() < before - (8 << 10)  # at least 8 of the 16 MiB were resident
    with env.begin() as txn:
        assert all(txn.get(k) == v for k, v in values.items())
    env.close()
