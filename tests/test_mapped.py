"""Large files cut through a map under a read lease (`cowfs.mapped`): the same chunks as any
other way of reading them, and a writer that comes while the map is read waits, then the
file is read again the ordinary way, instead of the put dying by SIGBUS."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from cowfs.chunking import MAX_CHUNK, Chunker, FileData
from cowfs.index import Index
from cowfs.mapped import LeasedFile
from cowfs.objectstore import LocalStore
from cowfs.store import Store

MiB = 1024 * 1024


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(LocalStore(tmp_path / "store", create=True), Index(tmp_path / "index"))
    yield s
    s.close()


def _stored(store: Store, data: bytes) -> FileData:
    with Chunker(store) as ch:
        pending = ch.add_bytes(data)
        ch.wait()
        return pending.result()


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.integers(0, 2**32),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3 * MiB)), min_size=1, max_size=5),
    st.sampled_from([4096 + 1, MiB // 2 + 7, MiB, 3 * MiB]),
)
def test_a_mapped_file_makes_the_chunks_of_its_bytes(
    store: Store, tmp_path: Path, seed: int, runs: list[tuple[bool, int]], window: int
) -> None:
    """Runs of random bytes and of zeros (maximum-size chunks), mapped in windows that do not
    fall on pages or chunks: the chunks and digest of the same bytes cut in memory."""
    rnd = random.Random(seed)
    data = b"".join(bytes(n) if zeros else rnd.randbytes(n) for zeros, n in runs)
    if not data:
        data = b"x"
    path = tmp_path / f"f{seed}"
    path.write_bytes(data)
    leased = LeasedFile.open(path)
    assert leased is not None  # a local file nobody writes can be leased
    with Chunker(store) as ch:
        pending = ch._cut_mapped(leased, window)
        ch.wait()
        assert pending is not None
        got = pending.result()
    assert got == _stored(store, data)
    assert max(c.length for c in got.chunks) <= MAX_CHUNK


def _lease_state(path: Path) -> list[str]:
    ino = os.stat(path).st_ino
    with open("/proc/locks") as f:
        return [line for line in f if "LEASE" in line and f":{ino} " in line]


def test_a_truncate_waits_for_the_lease_and_the_file_is_read_again(
    store: Store, tmp_path: Path
) -> None:
    """A truncate that comes while the map is being read is held back by the kernel, the
    cutter gives way between windows, and the file is read the ordinary way: one consistent
    version of it lands (the whole or the truncated), and the process is not killed."""
    data = random.Random(7).randbytes(40 * MiB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    seen: list[int] = []
    truncated = threading.Event()

    def truncate() -> None:
        os.truncate(path, 3 * MiB)
        truncated.set()

    def progress(n: int) -> None:
        seen.append(n)
        if len(seen) == 1:
            threading.Thread(target=truncate, daemon=True).start()
            deadline = time.monotonic() + 30
            while not any("BREAKING" in line for line in _lease_state(path)):
                assert time.monotonic() < deadline, "the truncate was never held back"
                time.sleep(0.005)
            assert not truncated.is_set()

    with Chunker(store, progress) as ch:
        pending = ch.add_file(path)
        ch.wait()
        got = pending.result()
    assert truncated.wait(30)
    assert min(seen) < 0  # the mapped bytes were taken back from the progress count
    assert got in (_stored(store, data), _stored(store, data[: 3 * MiB]))
    assert not _lease_state(path)


def test_a_file_open_for_writing_is_read_without_a_map(store: Store, tmp_path: Path) -> None:
    data = random.Random(3).randbytes(6 * MiB + 5)
    path = tmp_path / "open.bin"
    path.write_bytes(data)
    with open(path, "r+b"):
        assert LeasedFile.open(path) is None
        with Chunker(store) as ch:
            pending = ch.add_file(path)
            ch.wait()
            got = pending.result()
    assert got == _stored(store, data)


def test_the_lease_is_given_up_once_the_chunks_are_stored(store: Store, tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(random.Random(5).randbytes(5 * MiB))
    with Chunker(store) as ch:
        ch.add_file(path)
        ch.wait()
    # Closing the chunker waits for its pool, and so for the callback that gives the lease up.
    assert not _lease_state(path)
    with open(path, "r+b") as f:  # a writer is not held back
        f.write(b"y")


def test_only_files_of_local_file_systems_are_mapped(tmp_path: Path) -> None:
    """A lease is only local: a file system that another machine can change is never mapped
    (sysfs stands in here for one that is not known to be local)."""
    path = tmp_path / "local.bin"
    path.write_bytes(b"z" * 5000)
    local = LeasedFile.open(path)
    assert local is not None
    local.release_after([])
    sysfs = Path("/sys/devices/system/cpu/online")
    assert sysfs.stat().st_size > 0
    assert LeasedFile.open(sysfs) is None
