"""The public Python API and the `cowfs://` filesystem, beyond fsspec's own suite: commits per
transaction and per call, read-only commit views, ranges that fetch only the chunks they touch,
digests as checksums, streaming writes, and the entry point that needs no import."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import blake3
import pytest

import cowfs
from cowfs.chunking import Chunker
from cowfs.filesystem import CowFileSystem
from cowfs.lake import Lake

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    url = request.getfixturevalue("s3_url") if request.param == "s3" else str(tmp_path / "store")
    with Lake.open(url, create=True) as lake:
        lake.create_repo("images")
    return url


@pytest.fixture
def lake(store: str) -> Iterator[cowfs.Client]:
    with cowfs.connect(store) as client:
        yield client


@pytest.fixture
def fs(store: str) -> Iterator[CowFileSystem]:
    fs = CowFileSystem(store=store, skip_instance_cache=True)
    yield fs
    fs.close()


def commits(lake: cowfs.Client, ref: str = "images@main") -> int:
    lake.invalidate()
    return sum(1 for _ in lake.log(ref))


def test_writer_lands_one_commit_and_nothing_on_error(lake: cowfs.Client, tmp_path: Path) -> None:
    local = tmp_path / "9.jpg"
    local.write_bytes(b"\xff\xd8jpeg")
    with lake.writer("images@main", message="add cats") as w:
        w.put_file("cats/9.jpg", local)
        w.put_bytes("labels.csv", b"path,label\ncats/9.jpg,cat\n")
        w.put_bytes("old/a.txt", b"a")
    c = lake.commit_of("images@main")
    assert (c.message, c.files, c.global_id) == ("add cats", 3, c.id)
    assert lake.read_bytes("images@main:/cats/9.jpg") == b"\xff\xd8jpeg"
    with lake.writer("images@main") as w:
        w.delete("old/")
    assert not lake.exists("images@main:/old") and commits(lake) == 2
    with pytest.raises(RuntimeError), lake.writer("images@main") as w:
        w.put_bytes("half.txt", b"x")
        raise RuntimeError("stop")
    assert not lake.exists("images@main:/half.txt") and commits(lake) == 2
    assert [i.name for i in lake.ls("images@main:/")] == ["cats", "labels.csv"]
    assert [i.path for i in lake.walk("images@main:/cats")] == ["/cats/9.jpg"]


def test_commits_are_read_only(lake: cowfs.Client, fs: CowFileSystem) -> None:
    with lake.writer("images@main") as w:
        w.put_bytes("a.txt", b"a")
    cid = lake.commit_of("images@main").id
    with pytest.raises(PermissionError, match="immutable"):
        lake.writer(f"images@{cid}")
    for write in (
        lambda: fs.pipe(f"cowfs://images@{cid}/b.txt", b"b"),
        lambda: fs.rm(f"cowfs://images@{cid}/a.txt"),
        lambda: fs.mv(f"images@{cid}/a.txt", f"images@{cid}/c.txt"),
        lambda: fs.open(f"images@{cid}/d.txt", "wb"),
    ):
        with pytest.raises(PermissionError):
            write()
    # Reading a commit is fine, and a move out of it into a branch is a copy that cannot rm.
    assert fs.cat(f"cowfs://images@{cid}/a.txt") == b"a"
    with pytest.raises(PermissionError):
        fs.mv(f"images@{cid}/a.txt", "images@main/moved.txt")
    assert not fs.exists("images@main/moved.txt")
    assert commits(lake) == 1


def test_transaction_is_one_commit_and_autocommit_one_per_call(
    lake: cowfs.Client, fs: CowFileSystem
) -> None:
    fs.pipe({"images@main/old.txt": b"old", "images@main/keep.txt": b"keep"})
    assert commits(lake) == 1
    with fs.transaction:
        fs.pipe("cowfs://images@main/new.txt", b"hi")
        fs.rm("cowfs://images@main/old.txt")
        with fs.open("images@main/w/big.bin", "wb") as f:
            f.write(b"z" * 100)
        fs.mv("images@main/keep.txt", "images@main/kept.txt")
        assert not fs.exists("images@main/new.txt")  # not before the transaction lands
    assert commits(lake) == 2
    assert sorted(fs.find("images@main")) == [
        "images@main/kept.txt",
        "images@main/new.txt",
        "images@main/w/big.bin",
    ]
    with pytest.raises(ValueError), fs.transaction:
        fs.pipe("images@main/never.txt", b"x")
        raise ValueError("abandon")
    assert not fs.exists("images@main/never.txt") and commits(lake) == 2
    fs.rm(["images@main/kept.txt", "images@main/new.txt"])
    assert commits(lake) == 3
    with pytest.raises(OSError), fs.open("images@main/broken.bin", "wb") as f:
        f.write(b"partial")
        raise OSError("disk gone")
    assert not fs.exists("images@main/broken.bin") and commits(lake) == 3


def test_ranges_fetch_only_the_chunks_they_touch(lake: cowfs.Client, fs: CowFileSystem) -> None:
    data = os.urandom(12 << 20)
    with lake.writer("images@main") as w:
        w.put_bytes("big.bin", data)
    entry = lake.entry("images@main:/big.bin")[1]
    assert len(entry.chunks) >= 4
    # A fresh filesystem with a cold chunk cache: count the chunks its reader fetches.
    fresh = CowFileSystem(store=fs.store, skip_instance_cache=True)
    fetched: list[str] = []
    store = fresh.client.lake.store
    real = store.get_chunk
    store.get_chunk = lambda oid: fetched.append(oid) or real(oid)  # type: ignore[method-assign]
    try:
        third = entry.chunks[2]
        start = sum(c.length for c in entry.chunks[:2]) + 10
        with fresh.open("images@main/big.bin", "rb") as f:
            f.seek(start)
            assert f.read(100) == data[start : start + 100]
        assert fetched == [third.id]
        assert fresh.cat_file("images@main/big.bin", start=-50) == data[-50:]
        assert fetched[-1] == entry.chunks[-1].id and len(fetched) == 2
        got = fresh.cat_ranges(["images@main/big.bin"] * 2, [0, start], [10, start + 5])
        assert got == [data[:10], data[start : start + 5]]
    finally:
        fresh.close()
    info = fs.info("cowfs://images@main/big.bin")
    assert info["size"] == len(data) and info["type"] == "file"
    assert fs.ukey("images@main/big.bin") == blake3.blake3(data).hexdigest()
    assert fs.checksum("images@main/big.bin") == int(blake3.blake3(data).hexdigest(), 16)
    assert fs.du("images@main") == len(data)
    assert fs.glob("images@main/*.bin") == ["images@main/big.bin"]


def test_streamed_write_cuts_like_a_put(lake: cowfs.Client, fs: CowFileSystem) -> None:
    """Bytes written piece by piece get the very chunks `cowfs put` would make, held a few
    chunks at a time."""
    data = os.urandom(21 << 20)
    with fs.open("images@main/stream.bin", "wb") as f:
        for i in range(0, len(data), 300_001):
            f.write(data[i : i + 300_001])
    entry = lake.entry("images@main:/stream.bin")[1]
    with Chunker(lake.lake.store) as chunker:
        expected = chunker.add_bytes(data).result()
    assert entry.chunks == expected.chunks and entry.digest == expected.digest
    assert fs.cat("images@main/stream.bin") == data


def test_small_writes_share_chunks(lake: cowfs.Client) -> None:
    with lake.writer("images@main:/many") as w:
        for i in range(500):
            w.put_bytes(f"{i:04}.bin", i.to_bytes(2, "big") * 2000)
    chunks = {
        c.id
        for i in lake.walk("images@main:/many")
        for c in lake.entry(f"images@main:{i.path}")[1].chunks
    }
    assert len(chunks) <= 4  # 2 MB of small files: a few packed chunks, not 500 objects
    assert lake.read_bytes("images@main:/many/0007.bin") == (7).to_bytes(2, "big") * 2000


def test_paths_keep_the_lakes_limits(lake: cowfs.Client, fs: CowFileSystem) -> None:
    with pytest.raises(cowfs.NameTooLong), lake.writer("images@main") as w:
        w.put_bytes("x" * 256, b"")
    with pytest.raises(OSError, match="too long"):
        fs.pipe("images@main/" + "/".join(["y" * 200] * 21), b"")
    with pytest.raises(ValueError, match="not allowed"):
        fs.pipe("images@main/a/../b", b"")
    with pytest.raises(FileNotFoundError):
        fs.cat("images@main/missing.txt")
    with pytest.raises(FileNotFoundError):
        fs.ls("nosuchrepo@main")


def test_entry_point_opens_cowfs_urls_without_an_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fsspec.open("cowfs://…")` in a fresh interpreter that never imports cowfs, through the
    `fsspec.specs` entry point exactly as pyproject.toml declares it (put on the path as its own
    distribution, so the test holds whether or not this checkout is the installed one)."""
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    store = str(tmp_path / "store")
    with Lake.open(store, create=True) as lake:
        lake.create_repo("images")
    with cowfs.connect(store) as client, client.writer("images@main") as w:
        w.put_bytes("hello.txt", b"hello")
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points."fsspec.specs"]' in text
    line = text.split('[project.entry-points."fsspec.specs"]')[1].strip().splitlines()[0]
    name, _, value = (part.strip().strip('"') for part in line.partition("="))
    dist = tmp_path / "ep" / "cowfs_ep-0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: cowfs-ep\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[fsspec.specs]\n{name} = {value}\n")
    code = (
        "import fsspec\n"
        "with fsspec.open('cowfs://images@main/hello.txt') as f: data = f.read()\n"
        "print(data.decode())\n"
    )
    env = dict(os.environ, COWFS_STORE=store)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(tmp_path / "ep")])
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, timeout=120, check=True
    )
    assert out.stdout.decode().strip() == "hello"
