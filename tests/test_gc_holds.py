"""An open staging area's base commit is a root for the collector, on whatever machine it runs.

The area lives on its node, so the mount records a hold in the store (`gc/holds/`) while writes
sit on a base; retention must not drop that base even when no branch or tag reaches it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cowfs import gc, gcstate
from cowfs.errors import NotFound
from cowfs.objectstore.local import LocalStore
from cowfs.staging_commit import open_write, seal
from tests.historyutil import lake_on, put, read_files


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COWFS_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("COWFS_GC_WINDOW", "0")
    lk = lake_on(LocalStore(tmp_path / "store", create=True), tmp_path / "cache")
    lk.create_repo("r")
    yield lk
    lk.close()


def test_a_staging_base_survives_retention_and_its_hold_follows_the_area(lake) -> None:
    first = put(lake, "r", "main", {"a": b"first" * 100})
    area = open_write(lake, "r", "main")
    assert [(h.repo, h.commit) for h in gcstate.list_holds(lake.objects)] == [("r", first.id)]

    second = put(lake, "r", "main", {"a": b"second" * 100})
    put(lake, "r", "side", {"b": b"unrelated"})  # a root commit of its own
    lake.delete_branch("r", "main")  # now only the hold reaches `first`, and nothing `second`
    gc.collect(lake, gc.GcOptions(grace_s=0, keep_commits_since_s=0, window_s=0))
    assert read_files(lake, lake.get_commit("r", first.id)) == {"a": b"first" * 100}
    with pytest.raises(NotFound):
        lake.get_commit("r", second.id)

    lake.create_branch("r", "main", lake.get_commit("r", first.id))
    head = seal(lake, area, "sealed", keep_open=True)
    assert head is not None
    assert [(h.repo, h.commit) for h in gcstate.list_holds(lake.objects)] == [("r", head.id)]
    seal(lake, area, "again")
    assert gcstate.list_holds(lake.objects) == []
