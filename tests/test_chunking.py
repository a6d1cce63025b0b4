"""Chunking and object framing: bytes in, the same bytes out, shared where they are equal."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import blake3
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from cowfs.chunking import AVG_CHUNK, MAX_CHUNK, Chunker
from cowfs.entries import Entry, EntryType
from cowfs.errors import CorruptObject
from cowfs.index import Index
from cowfs.objects import Codec, Kind, decode, encode, object_id
from cowfs.objectstore import LocalStore
from cowfs.reader import ChunkReader
from cowfs.store import Store


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(LocalStore(tmp_path / "store", create=True), Index(tmp_path / "index"))
    yield s
    s.close()


def as_entry(data) -> Entry:  # noqa: ANN001
    return Entry("f", EntryType.FILE, 0o644, data.size, 0, data.digest, data.chunks)


def blobs(seed: int, sizes: list[int]) -> list[bytes]:
    rnd = random.Random(seed)
    return [rnd.randbytes(n) for n in sizes]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.integers(0, 2**32), st.lists(st.integers(0, 600_000), min_size=1, max_size=40))
def test_packed_small_files_read_back_exactly(store: Store, seed: int, sizes: list[int]) -> None:
    files = blobs(seed, sizes)
    with Chunker(store) as ch:
        pendings = ch.add_small_files(iter(files))
        ch.wait()
        datas = [p.result() for p in pendings]
    reader = ChunkReader(store)
    for data, want in zip(datas, files, strict=True):
        assert data.size == len(want)
        assert data.digest == blake3.blake3(want).digest()
        e = as_entry(data)
        assert b"".join(reader.iter_file(e)) == want
        if want:
            off = len(want) // 3
            assert reader.read(e, off, 1000) == want[off : off + 1000]
    reader.close()
    # Many small files share chunks: far fewer chunks than files once they are small.
    total = sum(sizes)
    chunks = {c.id for d in datas for c in d.chunks}
    assert len(chunks) <= total // (AVG_CHUNK // 8) + 2


def test_an_insertion_changes_only_nearby_chunks(store: Store) -> None:
    data = random.Random(1).randbytes(24 * 1024 * 1024)
    edited = data[: 12 * 1024 * 1024] + b"inserted!" + data[12 * 1024 * 1024 :]
    with Chunker(store) as ch:
        a = ch.add_bytes(data)
        b = ch.add_bytes(edited)
        ch.wait()
        ra, rb = a.result(), b.result()
    ids_a = {c.id for c in ra.chunks}
    new = [c for c in rb.chunks if c.id not in ids_a]
    assert sum(c.length for c in new) <= 2 * MAX_CHUNK
    assert len(new) <= 3
    assert all(c.length <= MAX_CHUNK for c in ra.chunks)


def test_large_file_chunks_and_reads(store: Store, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024 + 123)
    p = tmp_path / "f"
    p.write_bytes(data)
    with Chunker(store) as ch:
        pend = ch.add_file(p)
        ch.wait()
        d = pend.result()
    e = as_entry(d)
    reader = ChunkReader(store)
    assert b"".join(reader.iter_file(e)) == data
    for off, n in [(0, 10), (AVG_CHUNK - 5, 10), (len(data) - 3, 100), (len(data), 5)]:
        assert reader.read(e, off, n) == data[off : off + n]
    reader.close()


def test_compression_only_where_it_pays() -> None:
    text = b"the same line again\n" * 10000
    framed = encode(Kind.CHUNK, text)
    assert framed[6] == Codec.ZSTD and len(framed) < len(text) // 10
    noise = os.urandom(100_000)
    framed = encode(Kind.CHUNK, noise)
    assert framed[6] == Codec.RAW
    assert decode(object_id(noise), framed, Kind.CHUNK) == noise
    assert decode(object_id(text), encode(Kind.CHUNK, text)) == text


@pytest.mark.parametrize("damage", ["flip", "truncate", "magic", "wrong-id"])
def test_damaged_objects_are_refused_by_id(damage: str) -> None:
    data = b"payload " * 1000
    oid = object_id(data)
    framed = bytearray(encode(Kind.CHUNK, data))
    if damage == "flip":
        framed[-1] ^= 1
    elif damage == "truncate":
        framed = framed[:10]
    elif damage == "magic":
        framed[0:4] = b"XXXX"
    else:
        oid = object_id(b"other")
    with pytest.raises(CorruptObject, match=oid):
        decode(oid, bytes(framed), Kind.CHUNK)


class _FlakyStore:
    """Fails the first fetch of every chunk, as a store with a transient error would."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failed: set[str] = set()
        self.fetches = 0

    def get_chunk(self, oid: str) -> bytes:
        self.fetches += 1
        if oid not in self.failed:
            self.failed.add(oid)
            raise OSError("transient store error")
        return self.inner.get_chunk(oid)


def test_a_failed_fetch_is_retried_and_concurrent_readers_share_one(store: Store) -> None:
    data = random.Random(3).randbytes(3 * 1024 * 1024)
    with Chunker(store) as ch:
        pend = ch.add_bytes(data)
        ch.wait()
        e = as_entry(pend.result())
    flaky = _FlakyStore(store)
    reader = ChunkReader(flaky)  # type: ignore[arg-type]
    first = e.chunks[0].id
    reader.prefetch([first])
    reader._pool.submit(lambda: None).result()
    for fut in list(reader._inflight.values()):
        with contextlib.suppress(OSError):
            fut.result()
    assert reader.read(e, 0, 100) == data[:100]  # the failed prefetch did not stick
    import threading

    second = e.chunks[1]
    start = sum(c.length for c in e.chunks[:1])
    flaky.failed.add(second.id)  # this one succeeds at once
    before = flaky.fetches
    barrier = threading.Barrier(4)
    results: list[bytes] = []

    def read() -> None:
        barrier.wait()
        results.append(reader.read(e, start, 10))

    threads = [threading.Thread(target=read) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [data[start : start + 10]] * 4
    assert flaky.fetches - before <= 2  # shared, not one fetch per reader
    reader.close()
