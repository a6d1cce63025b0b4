"""The put path: the same bytes always make the same chunks and the same tree.

Chunk boundaries and digests are part of the format (dedup across puts and across machines
depends on them), so the roots below are pinned: they were computed by the put path before
it was pipelined, and any change to how bytes are read, cut, hashed or packed that moves a
boundary or a digest fails here.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import hypothesis.strategies as st
import pytest
from hypothesis import given, settings
from pyfastcdc.cy import FastCDC

from cowfs import tree
from cowfs.changes import resolve
from cowfs.chunking import AVG_CHUNK, BLOCK, MAX_CHUNK, MIN_CHUNK, SMALL_FILE, _windows
from cowfs.entries import Entry, EntryType
from cowfs.errors import UsageError
from cowfs.index import Index
from cowfs.objectstore import LocalStore
from cowfs.readahead import read_blocks
from cowfs.snapshot import snapshot
from cowfs.store import Store
from cowfs.tree import Graft, TreeView
from tests.memnodes import MemNodes

MiB = 1024 * 1024
#: Sizes around the small-file limit (1 MiB), the chunk limits and a file of several chunks.
SIZES = [0, 1, 100, 4096, 300_000, MiB - 1, MiB, MiB + 1, 4 * MiB + 7, 9 * MiB + 3]


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(LocalStore(tmp_path / "store", create=True), Index(tmp_path / "index"))
    yield s
    s.close()


def make_tree(root: Path, seed: int) -> None:
    """A deterministic directory: files of `SIZES` and 300 small ones in nested dirs, with
    names whose path order differs from a depth-first walk (`a`, `a!`, `a/...`)."""
    rnd = random.Random(seed)
    for i, n in enumerate(SIZES):
        (root / "big").mkdir(exist_ok=True)
        (root / "big" / f"f{i:02d}.bin").write_bytes(rnd.randbytes(n))
    for i in range(300):
        d = root / "small" / f"d{i % 7}" / ("a" if i % 2 else "a!")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"s{i:03d}.txt").write_bytes(rnd.randbytes(rnd.randrange(0, 40_000)))
    (root / "small" / "a").write_bytes(b"a file next to a! and a/")
    os.symlink("big/f01.bin", root / "link")
    for p in sorted(root.rglob("*"), key=lambda p: -len(p.parts)):
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
        os.utime(
            p, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000), follow_symlinks=False
        )


def put_root(store: Store, src: Path, base_root: str) -> str:
    base = TreeView(store, base_root)
    changes, _ = snapshot(store, src, "", mirror=True, base=base)
    return tree.apply(store, base_root, resolve(store, base_root, changes), changes.graft)


PINNED_FIRST = "5826f7cf2a38281339aa330cfe5476dedadeaab1e7c146fc83ad054baa2bd00b"
PINNED_SECOND = "efe94eeb0eb8475965ef16214155ba12bd35786e2e8d276dc7e064af4c9f17e1"


def test_put_makes_the_pinned_tree(store: Store, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    make_tree(src, 7)
    empty = tree.empty_tree(store)
    first = put_root(store, src, empty)
    # An edit in the middle of the 9 MiB file and a new small file: a second put reuses
    # the stat cache and the old slices of unchanged small files.
    big = src / "big" / f"f{len(SIZES) - 1:02d}.bin"
    with open(big, "r+b") as f:
        f.seek(4 * MiB)
        f.write(b"edited" * 1000)
    (src / "small" / "new.txt").write_bytes(b"new")
    for p in (big, src / "small" / "new.txt", src / "small"):
        os.utime(p, ns=(1_600_000_001_000_000_000, 1_600_000_001_000_000_000))
    second = put_root(store, src, first)
    assert (first, second) == (PINNED_FIRST, PINNED_SECOND)


@settings(max_examples=30, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(st.tuples(st.booleans(), st.integers(0, 3 * MiB)), min_size=0, max_size=8),
    st.sampled_from([MiB // 2, MiB, 3 * MiB, 5 * MiB, BLOCK]),
)
def test_cutting_blocks_finds_the_cuts_of_the_whole_stream(
    seed: int, runs: list[tuple[bool, int]], block: int
) -> None:
    """Runs of random bytes and of zeros (which force maximum-size chunks), read in blocks of
    any size: the cuts are those FastCDC finds over the whole stream at once."""
    rnd = random.Random(seed)
    data = b"".join(bytes(n) if zeros else rnd.randbytes(n) for zeros, n in runs)
    cdc = FastCDC(AVG_CHUNK, min_size=MIN_CHUNK, max_size=MAX_CHUNK)
    want = [(c.offset, c.length) for c in cdc.cut_buf(data)]
    got = []
    pos = 0  # stream offset of each window's first byte
    for window, cuts in _windows(cdc, read_blocks(io.BytesIO(data), block, MAX_CHUNK)):
        for off, n in cuts:
            assert bytes(window[off : off + n]) == data[pos + off : pos + off + n]
            got.append((pos + off, n))
        pos += cuts[-1][0] + cuts[-1][1] if cuts else 0
    assert got == want


_names = st.sampled_from(["a", "a!", "a.b", "b", "z"])
_paths = st.lists(_names, min_size=1, max_size=3).map("/".join) | st.integers(0, 20_000).map(
    lambda i: f"a/{i % 3}/{i}"  # enough paths beneath one prefix for whole subtrees
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(_paths, max_size=2000, unique=True),
    st.lists(_paths, max_size=2000, unique=True),
    st.sampled_from(["", "a", "a!", "a/b", "q"]),
)
def test_a_graft_lands_as_the_same_tree_as_mirrored_puts(
    base_paths: list[str], put_paths: list[str], prefix: str
) -> None:
    """Grafting a tree beneath `prefix` equals putting its entries and deleting every other
    path beneath `prefix`, whatever the base holds there."""
    nodes = MemNodes()
    base = tree.build(nodes, [Entry(p, EntryType.FILE, size=1) for p in sorted(base_paths)])
    under = [p if not prefix else f"{prefix}/{p}" for p in put_paths]
    puts = {p: Entry(p, EntryType.FILE, size=2, mtime_ns=5) for p in under}
    want_edits: dict[str, Entry | None] = {
        e.path: None for e in tree.iter_all(nodes, base) if Graft(prefix, "").covers(e.path)
    }
    top = {prefix: Entry(prefix, EntryType.DIR, 0o755)} if prefix else {}
    want_edits.update(puts)
    want_edits.update(top)
    graft_root = tree.build(nodes, [puts[p] for p in sorted(puts)])
    got = tree.apply(nodes, base, top, Graft(prefix, graft_root))
    assert got == tree.apply(nodes, base, want_edits)


def test_a_small_file_that_outgrew_the_limit_fails_the_put(
    store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read by the size the scan saw, a file that grew past the small-file limit since is
    refused (nothing lands) rather than cut short."""
    import cowfs.snapshot as snap

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_bytes(b"a")
    (src / "b.txt").write_bytes(b"b")
    real_scan = snap.scan

    def scan_then_grow(root: Path):  # noqa: ANN202
        found = list(real_scan(root))
        (root / "b.txt").write_bytes(b"b" * (SMALL_FILE + 1))
        return found

    monkeypatch.setattr(snap, "scan", scan_then_grow)
    with pytest.raises(UsageError, match="grew while it was being put"):
        put_root(store, src, tree.empty_tree(store))
