"""Sub-chunk reads: a chunk verified once, then read by 16 KiB block with per-block checks that
still catch damage done after it was verified."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cowfs import layout
from cowfs.chunkfiles import BLOCK, ChunkFiles
from cowfs.entries import ChunkRef, Entry, EntryType
from cowfs.errors import CorruptObject
from cowfs.lake import Lake
from cowfs.objects import HEADER_SIZE
from cowfs.openfiles import OpenFiles, open_for_blocks
from cowfs.reader import ChunkReader


@pytest.fixture
def lake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Lake]:
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    lk = Lake.open(str(tmp_path / "store"), create=True)
    try:
        yield lk
    finally:
        lk.close()


def flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        b = f.read(1)
        f.seek(at)
        f.write(bytes([b[0] ^ 0xFF]))


def test_raw_chunk_is_read_in_place_by_block(lake: Lake) -> None:
    plain = os.urandom(10 * BLOCK + 123)  # incompressible: stored raw
    oid = lake.store.put_chunk(plain)
    files = ChunkFiles(lake.store)
    assert files.read(oid, 0, 10) is None  # not verified yet
    assert files.fetch(oid) == plain
    loc = files._locs[oid]
    assert loc.offset == HEADER_SIZE and loc.path.is_relative_to(Path(lake.objects.root))
    for off, n in [(0, 4096), (BLOCK - 10, 20), (3 * BLOCK + 5, 2 * BLOCK), (10 * BLOCK, 123)]:
        assert files.read(oid, off, n) == plain[off : off + n]
    # Damage after verification: reads of other blocks go on; the damaged block is caught.
    flip(loc.path, HEADER_SIZE + 7 * BLOCK + 1)
    assert files.read(oid, 0, 4096) == plain[:4096]
    assert files.read(oid, 7 * BLOCK, 10) is None
    assert not files.has(oid)
    with pytest.raises(CorruptObject):
        files.fetch(oid)  # fetched whole again: the store's copy itself is bad


def test_compressed_chunk_is_cached_plain_and_healed(lake: Lake) -> None:
    plain = b"compressible " * 100_000
    oid = lake.store.put_chunk(plain)
    files = ChunkFiles(lake.store)
    assert files.fetch(oid) == plain
    loc = files._locs[oid]
    pack = lake.store.index.packs.path(loc.pack)
    assert loc.path is None  # in a pack of the chunk cache, as plain bytes
    assert pack.read_bytes()[loc.offset : loc.offset + len(plain)] == plain
    assert files.read(oid, 500_000, 4096) == plain[500_000:504_096]
    flip(pack, loc.offset + 2 * BLOCK)
    assert files.read(oid, 2 * BLOCK, 1) is None  # the cache's copy is damaged: dropped
    assert files.fetch(oid) == plain  # and fetched again from the store, verified
    assert files.read(oid, 2 * BLOCK, 1) == plain[2 * BLOCK : 2 * BLOCK + 1]


def test_reader_serves_small_reads_without_loading_the_chunk(lake: Lake) -> None:
    plain = os.urandom(1 << 20)
    oid = lake.store.put_chunk(plain)
    files = ChunkFiles(lake.store)
    files.fetch(oid)
    reader = ChunkReader(lake.store, files=files)
    e = Entry("f", EntryType.FILE, 0o644, len(plain), 0, None, (ChunkRef(oid, 0, len(plain)),))
    assert reader.read(e, 300_000, 4096) == plain[300_000:304_096]
    assert oid not in reader._lru  # a block read, not the chunk into memory
    assert reader.read(e, 0, len(plain)) == plain  # whole reads still go through memory
    reader.close()


def _fds(under: Path) -> int:
    """Descriptors of this process open on files under `under` (a count of all of them moves
    with whatever else the test process opens and closes meanwhile)."""
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.startswith(str(under) + "/")
    return n


def test_open_files_close_a_descriptor_only_after_its_last_reader(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"A" * 100)
    b.write_bytes(b"B" * 100)
    files: OpenFiles[Path] = OpenFiles(1, open_for_blocks)
    held = files._take(a)  # a reader in the middle of a pread of `a`
    assert files.pread(b, 4, 0) == b"BBBB"  # evicts `a` from the LRU...
    assert os.pread(held.fd, 3, 0) == b"AAA"  # ...but its descriptor stays valid while used
    files._give(held)
    assert _fds(tmp_path) == 1  # `a` closed on its last give; `b` open
    files.close()
    assert _fds(tmp_path) == 0


def test_open_files_under_concurrent_readers_read_the_right_file(tmp_path: Path) -> None:
    paths = []
    for i in range(40):
        p = tmp_path / f"f{i}"
        p.write_bytes(bytes([i]) * 8192)
        paths.append(p)
    files: OpenFiles[Path] = OpenFiles(
        8, open_for_blocks
    )  # far fewer than the files: constant eviction under reads

    def work(seed: int) -> None:
        for k in range(400):
            i = (seed * 7 + k * 13) % len(paths)
            assert files.pread(paths[i], 16, (k * 64) % 8000) == bytes([i]) * 16

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert _fds(tmp_path) <= 8
    files.close()
    assert _fds(tmp_path) == 0


def test_unlinked_pack_still_reads_and_a_forgotten_chunk_is_not_served(lake: Lake) -> None:
    plain = b"compressible " * 100_000
    oid = lake.store.put_chunk(plain)
    files = ChunkFiles(lake.store)
    files.fetch(oid)
    loc = files._locs[oid]
    assert files.read(oid, 4096, 100) == plain[4096:4196]  # the pack's descriptor is now open
    lake.store.index.packs.path(loc.pack).unlink()  # the open descriptor still has the bytes
    assert files.read(oid, 9000, 50) == plain[9000:9050]
    files._forget(oid)  # its location forgotten in memory: found again in the index
    assert files.read(oid, 9000, 50) == plain[9000:9050]
    files._damaged(oid, files._locs[oid])  # as after a block failed its check
    assert files.read(oid, 0, 1) is None
    assert lake.store.index.chunk_location(layout.chunk_key(oid)) is None
    files.close()
