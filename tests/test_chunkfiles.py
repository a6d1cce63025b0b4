"""Sub-chunk reads: a chunk verified once, then read by 64 KiB block with per-block checks that
still catch damage done after it was verified."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.chunkfiles import BLOCK, ChunkFiles
from cowfs.entries import ChunkRef, Entry, EntryType
from cowfs.errors import CorruptObject
from cowfs.lake import Lake
from cowfs.objects import HEADER_SIZE
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
    assert loc.offset == 0 and loc.path.read_bytes() == plain  # the chunk cache's plain copy
    assert files.read(oid, 500_000, 4096) == plain[500_000:504_096]
    flip(loc.path, 2 * BLOCK)
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
