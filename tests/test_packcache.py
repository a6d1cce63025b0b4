"""The node's chunk cache as append-only pack files (cowfs.packcache, through cowfs.index)."""

from __future__ import annotations

import multiprocessing
import os
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cowfs import layout, packcache
from cowfs.chunkfiles import ChunkFiles
from cowfs.index import Index
from cowfs.objects import object_id
from cowfs.objectstore.s3 import S3Store
from cowfs.store import Store


def key(i: int) -> str:
    return layout.chunk_key(f"{i:064x}")


def pack_files(index: Index) -> dict[str, int]:
    root = index.path / "packs"
    return {p.name: p.stat().st_size for p in root.iterdir()} if root.exists() else {}


def test_chunks_are_appended_to_one_pack_and_read_back(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx", cache_bytes=1 << 30)
    chunks = {key(i): os.urandom(1000 + 37 * i) for i in range(60)}
    for k, data in chunks.items():
        index.put_blob(k, data)
    assert all(index.get_blob(k) == data for k, data in chunks.items())
    locs = sorted(index.chunk_location(k) for k in chunks)
    assert len({loc.pack for loc in locs}) == 1 and len(pack_files(index)) == 1
    ends = [loc.offset + loc.length for loc in locs]
    assert [loc.offset for loc in locs[1:]] == ends[:-1]  # back to back, no file per chunk
    assert index.cached_bytes() == sum(len(d) for d in chunks.values())
    assert not (index.path / "files").exists()
    index.forget_blob(key(3))  # found damaged: not served again
    assert index.get_blob(key(3)) is None and index.chunk_location(key(3)) is None
    index.close()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(1, 90_000), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_eviction_drops_whole_packs_within_the_cap(tmp_path_factory, ops) -> None:
    """Model: whatever the sequence of puts and reads, the cache stays within its cap (but for
    the pack still being written), serves only the bytes put, keeps the newest chunk, and
    its accounting matches the pack files on disk."""
    cap = 1 << 20  # packs of 64 KiB: chunks up to 90 KB span several packs each
    index = Index(tmp_path_factory.mktemp("idx"), cache_bytes=cap)
    model: dict[str, bytes] = {}
    try:
        for i, size, read in ops:
            k = key(i)
            if read:
                got = index.get_blob(k)
                assert got is None or got == model[k]
                continue
            data = model.get(k) or bytes([i]) * size  # a chunk's bytes never change
            model[k] = data
            index.put_blob(k, data)
            assert index.get_blob(k) == data
            on_disk = pack_files(index)
            assert index.cached_bytes() == sum(on_disk.values())
            assert index.cached_bytes() <= cap or len(on_disk) == 1
            for other in model:
                loc = index.chunk_location(other)
                assert loc is None or f"{loc.pack:08d}.pack" in on_disk
    finally:
        index.close()


def test_the_least_recently_used_pack_goes_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = [1_000_000]
    monkeypatch.setattr(packcache, "_now", lambda: clock[0])
    index = Index(tmp_path / "idx", cache_bytes=1 << 20)  # 64 KiB packs, two chunks each
    data = {i: bytes([i]) * 30_000 for i in range(40)}
    for i in range(4):
        index.put_blob(key(i), data[i])
        clock[0] += 1
    first, second = index.chunk_location(key(0)).pack, index.chunk_location(key(2)).pack
    assert first != second
    i = 4
    while index.cached_bytes() + 2 * 30_000 < index.cache_bytes:
        index.put_blob(key(i), data[i])
        clock[0] += 1
        i += 1
    clock[0] += packcache.TOUCH_EVERY_S + 1
    assert index.get_blob(key(1)) == data[1]  # the first pack is read again: now recent
    for j in range(i, 40):
        clock[0] += 1
        index.put_blob(key(j), data[j])
        if f"{second:08d}.pack" not in pack_files(index):  # looking must not count as a use
            break
    else:
        pytest.fail("nothing was evicted")
    assert index.get_blob(key(0)) == data[0]  # kept, the older pack went instead
    assert index.get_blob(key(2)) is None and index.get_blob(key(3)) is None
    index.close()


def _writer(root: str, start: int, n: int, barrier) -> None:
    index = Index(root, cache_bytes=1 << 30)
    index.put_blob(key(start), bytes([start % 256]) * 50_000)
    barrier.wait()  # both processes now hold a pack at once
    for i in range(start + 1, start + n):
        index.put_blob(key(i), bytes([i % 256]) * 50_000)
    for i in range(1000, 1010):  # the same chunks, written by both
        index.put_blob(key(i), bytes([i % 256]) * 20_000)
    index.close()


def test_two_processes_append_to_their_own_packs(tmp_path: Path) -> None:
    root = str(tmp_path / "idx")
    Index(root, cache_bytes=1 << 30).close()
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    procs = [ctx.Process(target=_writer, args=(root, s, 40, barrier)) for s in (0, 100)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    index = Index(root, cache_bytes=1 << 30)
    for i in [*range(40), *range(100, 140)]:
        assert index.get_blob(key(i)) == bytes([i % 256]) * 50_000
    for i in range(1000, 1010):
        assert index.get_blob(key(i)) == bytes([i % 256]) * 20_000
    a = {index.chunk_location(key(i)).pack for i in range(40)}
    b = {index.chunk_location(key(i)).pack for i in range(100, 140)}
    assert len(a) == len(b) == 1 and a != b  # never interleaved in one pack
    before = set(pack_files(index))
    index.put_blob(key(5000), b"later")  # a later process adopts a pack with room
    assert set(pack_files(index)) == before
    assert index.cached_bytes() == sum(pack_files(index).values())
    index.close()


def test_torn_or_garbage_cache_bytes_are_never_served_after_a_restart(
    tmp_path: Path, s3_url: str
) -> None:
    """As after a crash with the index unsynced: entries that point past a truncated pack or
    at garbage. Every read checks the blocks it returns against the sums the entry took from
    the verified bytes, so after the restart a sound chunk is read by block at once, and a
    damaged one is a miss, fetched again."""
    objects = S3Store(s3_url, create=True)
    store = Store(objects, Index(tmp_path / "idx", cache_bytes=1 << 30))
    chunks = [os.urandom(200_000) for _ in range(4)]
    oids = [store.put_chunk(c) for c in chunks]
    assert [store.get_chunk(o) for o in oids] == chunks  # fetched, verified, cached
    locs = [store.index.chunk_location(layout.chunk_key(o)) for o in oids]
    pack = store.index.packs.path(locs[0].pack)
    store.index.close()
    with open(pack, "r+b") as f:
        f.seek(locs[1].offset + 5000)
        f.write(b"\0" * 100)  # garbage inside chunk 1
        f.truncate(locs[3].offset + 1000)  # a torn tail: most of chunk 3 never written
    store = Store(objects, Index(tmp_path / "idx", cache_bytes=1 << 30))
    files = ChunkFiles(store)
    assert files.read(oids[0], 70_000, 100) == chunks[0][70_000:70_100]  # located, one block
    assert files.read(oids[1], 5000, 10) is None  # garbage there: never served
    assert files.read(oids[1], 100_000, 10) is None  # dropped whole, to be fetched again
    assert files.read(oids[3], 150_000, 10) is None  # torn off
    assert [files.fetch(o) for o in oids] == chunks
    for i in (1, 3):
        again = store.index.chunk_location(layout.chunk_key(oids[i]))
        assert again is not None and again != locs[i]  # dropped, fetched and cached anew
    assert files.read(oids[3], 150_000, 4096) == chunks[3][150_000:154_096]
    assert object_id(store.index.get_blob(layout.chunk_key(oids[1]))) == oids[1]
    files.close()
    store.close()


def test_old_per_chunk_cache_files_are_removed_on_open(tmp_path: Path) -> None:
    index = Index(tmp_path / "idx", cache_bytes=1 << 30)
    with index.env.begin(write=True) as txn:  # as the cache before pack files left it
        txn.put(key(1).encode(), struct.pack("<QQ", 1000, 1), db=index._atime)
        txn.put(b"cached_bytes", struct.pack("<Q", 1010), db=index._meta)
    index.close()
    old = tmp_path / "idx" / "files" / "chunks" / "00"
    old.mkdir(parents=True)
    (old / ("0" * 64)).write_bytes(b"x" * 1000)
    index = Index(tmp_path / "idx", cache_bytes=1 << 30)
    assert not (tmp_path / "idx" / "files").exists()
    assert index.cached_bytes() == 10 and index.get_blob(key(1)) is None
    index.close()


def test_threads_append_and_evict_at_once(tmp_path: Path) -> None:
    """Many threads of one process appending under a small cap: packs roll over and are
    dropped while other threads still write to them; no deadlock, only the bytes put are
    served, and the accounting matches the files."""
    from concurrent.futures import ThreadPoolExecutor

    index = Index(tmp_path / "idx", cache_bytes=2 << 20)  # 128 KiB packs

    def work(t: int) -> None:
        for i in range(t * 1000, t * 1000 + 120):
            data = bytes([i % 251]) * (5000 + (i * 7919) % 40_000)
            index.put_blob(key(i), data)
            got = index.get_blob(key(i - 3))
            assert got is None or got == bytes([(i - 3) % 251]) * len(got)

    with ThreadPoolExecutor(8) as pool:
        for f in [pool.submit(work, t) for t in range(8)]:
            f.result(timeout=120)
    assert index.cached_bytes() == sum(pack_files(index).values())
    index.put_blob(key(99_999), b"last")  # alone now: its eviction reaches every other pack
    assert index.cached_bytes() <= 2 << 20
    index.close()
