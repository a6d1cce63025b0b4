"""The collector against writers on other machines, on the local store and on SeaweedFS.

Each writer here is a second `Lake` with its own index (another machine, as far as the protocol
can tell) whose cache believes the contested chunk is present, so it reuses it without
uploading. The collector is stepped by hand to force the worst interleavings; one test turns the
writer's guard off to show the loss the protocol prevents.
"""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest

from cowfs import gc, gcguard, layout
from cowfs.changes import ChangeSet
from cowfs.check import check
from cowfs.errors import Conflict
from cowfs.lake import Lake
from cowfs.objectstore import ObjectStore
from tests.historyutil import file_entry, lake_on, put, read_files

DATA = b"contested bytes " * 64
KEY = layout.chunk_key(__import__("cowfs.objects", fromlist=["object_id"]).object_id(DATA))
OPTS = gc.GcOptions(grace_s=0, keep_commits_since_s=0, window_s=0)


@pytest.fixture
def lakes(objectstore: ObjectStore, tmp_path: Path) -> tuple[Lake, Lake]:
    """(writer, collector): one store, two nodes. The writer put DATA on a branch it then
    deleted, so DATA is garbage that its warm cache still calls present."""
    from cowfs.objectstore import open_objectstore

    writer = lake_on(objectstore, tmp_path / "writer-cache")
    collector = lake_on(open_objectstore(objectstore.url), tmp_path / "gc-cache")
    writer.create_repo("r")
    put(writer, "r", "main", {"keep": b"kept"})
    put(writer, "r", "scratch", {"old": DATA})
    writer.delete_branch("r", "scratch")
    assert writer.store.index.is_present(KEY)
    return writer, collector


def _reusing_change(writer: Lake) -> ChangeSet:
    before = writer.store.put_stats.chunks_new
    change = ChangeSet(puts={"new": file_entry(writer, "new", DATA)})
    assert writer.store.put_stats.chunks_new == before, "the writer must reuse, not upload"
    return change


def _full_run(collector: Lake) -> None:
    gc.run_once(collector, OPTS, gc.GcReport())


def test_rescue_between_mark_and_sweep(lakes: tuple[Lake, Lake]) -> None:
    """Run 1 lists DATA as a candidate. The writer reuses DATA; run 2 marks (DATA unreferenced,
    so on its sweep list); only then does the writer swap. Its rescue record keeps DATA."""
    writer, collector = lakes
    _full_run(collector)
    change = _reusing_change(writer)
    plan = gc.plan_run(collector, OPTS)
    assert KEY in plan.sweep
    commit = writer.commit("r", "main", change)
    report = gc.GcReport()
    gc.sweep(collector, gc.publish(collector, plan), report, plan.listed)
    assert report.rescued == 1 and writer.objects.exists(KEY)
    assert read_files(writer, commit)["new"] == DATA
    _full_run(collector)
    _full_run(collector)
    assert check(collector, read_fraction=1.0).ok
    assert read_files(collector, collector.head("r", "main"))["new"] == DATA


def test_without_the_guard_the_chunk_is_lost(
    lakes: tuple[Lake, Lake], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same interleaving with the writer's guard off: the sweep deletes a chunk of a
    finished commit, and `check` names that commit and path."""
    writer, collector = lakes
    _full_run(collector)
    change = _reusing_change(writer)
    plan = gc.plan_run(collector, OPTS)
    monkeypatch.setattr(gcguard, "ENABLED", False)
    commit = writer.commit("r", "main", change)
    gc.sweep(collector, gc.publish(collector, plan), gc.GcReport(), plan.listed)
    assert not writer.objects.exists(KEY)
    problems = [p for p in check(collector).problems if p.key == KEY]
    assert [p.kind for p in problems] == ["chunk-missing"]
    assert problems[0].commits == [f"r@{commit.id}"] and problems[0].paths == ["/new"]


def test_writer_refused_while_its_chunk_is_being_swept(lakes: tuple[Lake, Lake]) -> None:
    writer, collector = lakes
    _full_run(collector)
    change = _reusing_change(writer)
    plan = gc.plan_run(collector, OPTS)
    rec = gc.publish(collector, plan)
    head = writer.head_id("r", "main")
    with pytest.raises(gcguard.SweptUnderWriter, match="sweeping"):
        writer.commit("r", "main", change)
    assert writer.head_id("r", "main") == head
    gc.sweep(collector, rec, gc.GcReport(), plan.listed)
    assert not writer.objects.exists(KEY)
    commit = writer.commit("r", "main", ChangeSet(puts={"new": file_entry(writer, "new", DATA)}))
    assert read_files(writer, commit)["new"] == DATA


def test_chunk_swept_between_upload_check_and_swap(lakes: tuple[Lake, Lake]) -> None:
    """The writer's cache says present; two whole runs delete the chunk before the writer's
    swap. The guard finds it gone, commits nothing, and the retry uploads it again."""
    writer, collector = lakes
    change = _reusing_change(writer)
    _full_run(collector)
    _full_run(collector)
    assert not writer.objects.exists(KEY)
    head = writer.head_id("r", "main")
    with pytest.raises(gcguard.SweptUnderWriter, match="garbage-collected"):
        writer.commit("r", "main", change)
    assert writer.head_id("r", "main") == head
    assert not writer.store.index.is_present(KEY)
    commit = writer.commit("r", "main", ChangeSet(puts={"new": file_entry(writer, "new", DATA)}))
    assert read_files(writer, commit)["new"] == DATA
    assert check(collector, read_fraction=1.0).ok


def test_writers_while_gc_runs(
    objectstore: ObjectStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two writers with warm caches put shared contents (and drop scratch branches, making
    garbage of them) while the collector runs back to back; every finished commit reads back
    and `check --read-data` is clean afterwards."""
    from cowfs.objectstore import open_objectstore

    monkeypatch.setenv("COWFS_GC_WINDOW", "1")
    pool = [bytes([i]) * (200 + i) for i in range(6)]
    collector = lake_on(objectstore, tmp_path / "gc-cache")
    collector.create_repo("r")
    stop = threading.Event()
    expected: dict[str, dict[str, bytes]] = {}
    errors: list[BaseException] = []
    refused = [0, 0]

    def write(n: int) -> None:
        lake = lake_on(open_objectstore(objectstore.url), tmp_path / f"cache-{n}")
        rng = random.Random(n)
        files: dict[str, bytes] = {}
        try:
            i = 0
            while not stop.is_set() or i < 4:
                i += 1
                path, data = f"f{rng.randrange(4)}", rng.choice(pool)
                scratch = f"s{n}-{i}"
                for _ in range(500):
                    try:
                        put(lake, "r", scratch, {"x": rng.choice(pool)})
                        lake.delete_branch("r", scratch)
                        put(lake, "r", f"w{n}", {path: data})
                        break
                    except Conflict:
                        # Swept under the writer: nothing landed. Wait for the sweep to end.
                        refused[n] += 1
                        stop.wait(0.02)
                else:
                    raise AssertionError(f"writer {n} never landed its commit")
                files[path] = data
            expected[f"w{n}"] = files
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)
        finally:
            lake.close()

    threads = [threading.Thread(target=write, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    swept = 0
    try:
        for _ in range(2):
            opts = gc.GcOptions(grace_s=0, keep_commits_since_s=0, window_s=1)
            swept += gc.collect(collector, opts).swept
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=300)
    assert not errors, errors
    assert swept > 0, "the collector deleted garbage while the writers ran"
    gc.collect(collector, gc.GcOptions(grace_s=0, keep_commits_since_s=0, window_s=0))
    report = check(collector, read_fraction=1.0)
    assert report.ok, report.problems
    for branch, files in expected.items():
        assert read_files(collector, collector.head("r", branch)) == files
    for key, _ in collector.objects.list(layout.COMMITS):
        repo, cid = layout.parse_commit_key(key)
        read_files(collector, collector.get_commit(repo, cid))
