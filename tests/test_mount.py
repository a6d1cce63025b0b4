"""The mount, for real: ordinary tools and Python file I/O against a mounted lake, over the local
store and over SeaweedFS."""

from __future__ import annotations

import errno
import hashlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from daemon.mount import device_in_mountinfo, is_mounted, mount_device, set_read_ahead
from tests.mountutil import MountedLake, wait_for

pytestmark = pytest.mark.mount


@pytest.fixture(params=["local", "s3"])
def ml(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MountedLake]:
    url = str(tmp_path / "store") if request.param == "local" else request.getfixturevalue("s3_url")
    m = MountedLake(tmp_path, url)
    m.cli("init")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[MountedLake]:
    m = MountedLake(tmp_path, str(tmp_path / "store"))
    m.cli("init")
    try:
        yield m
    finally:
        m.close()


def make_tree(root: Path) -> dict[str, bytes]:
    """A small data set: packed small files, a multi-chunk file, nesting, odd names."""
    files = {
        "cats/a.jpg": b"cat a" * 100,
        "cats/b.jpg": os.urandom(20_000),
        "dogs/deep/er/c.txt": b"deep\n",
        "big.bin": os.urandom(5 << 20),
        "ünïcödé name ✓.txt": b"utf-8 names work\n",
        "empty.txt": b"",
    }
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    np.save(root / "x.npy", np.arange(100_000, dtype=np.float32))
    files["x.npy"] = (root / "x.npy").read_bytes()
    return files


def put_tree(m: MountedLake, repo: str = "images") -> tuple[str, dict[str, bytes]]:
    src = m.root / f"src-{repo}"
    files = make_tree(src)
    m.cli("repo", "create", repo)
    cid = m.cli("put", f"{repo}@main", str(src), "-m", "first").strip()
    return cid, files


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_read_views(ml: MountedLake) -> None:
    cid, files = put_tree(ml)
    ml.mount()
    mnt = ml.mnt
    assert sorted(os.listdir(mnt)) == [".ids", "images"]
    assert os.listdir(mnt / "images") == ["main"]
    for rel, data in files.items():
        assert (mnt / "images/main" / rel).read_bytes() == data, rel
    # sha256sum over the branch and cp -r of the commit, with ordinary tools.
    out = ml.sh("sha256sum images/main/cats/*.jpg").stdout.decode().split("\n")
    assert out[0].split()[0] == sha(files["cats/a.jpg"])
    ml.sh(f"cp -r images/@{cid}/ {ml.root}/old")
    for rel, data in files.items():
        assert (ml.root / "old" / rel).read_bytes() == data
    # Commit ids resolve on lookup (also by unique prefix) but are never listed.
    assert (mnt / f"images/@{cid[:8]}/big.bin").read_bytes() == files["big.bin"]
    assert f"@{cid}" not in os.listdir(mnt / "images")
    # find and tar see every file.
    found = ml.sh("find images/main -type f").stdout.decode().split("\n")
    assert sorted(f for f in found if f) == sorted(f"images/main/{r}" for r in files)
    tar = ml.sh("tar cf - images/main | wc -c").stdout.decode()
    assert int(tar) > sum(len(d) for d in files.values())
    # Which commit am I looking at.
    attr = ml.sh("getfattr --only-values -n user.cowfs.commit images/main").stdout.decode()
    assert attr == cid
    assert os.getxattr(mnt / "images/main/cats/a.jpg", "user.cowfs.commit").decode() == cid
    # numpy memory-maps a file under the mount.
    arr = np.load(mnt / "images/main/x.npy", mmap_mode="r")
    assert arr.shape == (100_000,) and float(arr[99_999]) == 99_999.0
    # One global ID across repos.
    gid = os.getxattr(mnt / "images/main", "user.cowfs.global_id").decode()
    assert os.listdir(mnt / ".ids" / gid) == ["images"]
    assert (mnt / ".ids" / gid / "images/cats/a.jpg").read_bytes() == files["cats/a.jpg"]
    # Sane ownership and permissions.
    st = os.stat(mnt / "images/main/big.bin")
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    assert st.st_mode & 0o400 and st.st_size == len(files["big.bin"])


def test_random_reads_fetch_what_they_touch(local: MountedLake) -> None:
    _, files = put_tree(local)
    local.mount()
    big = files["big.bin"]
    with open(local.mnt / "images/main/big.bin", "rb", buffering=0) as f:
        for off in (4_000_000, 17, 2_500_000, len(big) - 10):
            f.seek(off)
            assert f.read(1000) == big[off : off + 1000]


def _bdi_read_ahead() -> dict[str, str]:
    return {p.parent.name: p.read_text() for p in Path("/sys/class/bdi").glob("*/read_ahead_kb")}


def test_mount_sets_its_read_ahead(local: MountedLake) -> None:
    """On its own bdi only: 1 MiB READs for sequential readers, other devices untouched."""
    before = _bdi_read_ahead()
    put_tree(local)
    local.mount()
    dev = mount_device(str(local.mnt))
    st = os.stat(local.mnt)
    assert dev == f"{os.major(st.st_dev)}:{os.minor(st.st_dev)}"
    # Set once the kernel's INIT is answered, which the mount's first stat waits for.
    assert wait_for(lambda: _bdi_read_ahead()[dev] == "1024\n", timeout=30)
    now = _bdi_read_ahead()
    del now[dev]
    assert now == {k: v for k, v in before.items() if k in now}
    local.unmount()
    out = subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", "mount", "--background"]
        + ["--read-ahead-kb", "512", str(local.mnt)],
        env=local.env,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    try:
        dev = mount_device(str(local.mnt))
        assert (local.mnt / "images/main/cats/a.jpg").exists()
        assert wait_for(lambda: _bdi_read_ahead()[dev or ""] == "512\n", timeout=30)
    finally:
        local.cli("umount", str(local.mnt))


def test_device_of_the_last_mount_at_a_path() -> None:
    info = (
        "22 1 8:1 / / rw - ext4 /dev/vda rw\n"
        "40 22 0:41 / /pfs rw - fuse.cowfs cowfs rw\n"
        "41 40 0:52 / /pfs rw - fuse.cowfs cowfs rw\n"
        "42 22 0:53 / /with\\040space rw - fuse.cowfs cowfs rw\n"
    )
    assert device_in_mountinfo(info, "/pfs") == "0:52"
    assert device_in_mountinfo(info, "/with space") == "0:53"
    assert device_in_mountinfo(info, "/elsewhere") is None


def test_read_ahead_of_nothing_mounted_is_refused(tmp_path: Path) -> None:
    assert set_read_ahead(str(tmp_path), 1024) is False


def test_branch_follows_head(ml: MountedLake) -> None:
    cid, files = put_tree(ml)
    ml.mount()
    main = ml.mnt / "images/main"
    old = open(main / "cats/a.jpg", "rb")  # noqa: SIM115 - held across the head move
    assert "new.txt" not in os.listdir(main)
    src = ml.root / "src-images"
    (src / "new.txt").write_bytes(b"new")
    (src / "cats/a.jpg").write_bytes(b"changed")
    new = ml.cli("put", "images@main", str(src), "-m", "second").strip()
    assert new != cid
    assert wait_for(lambda: "new.txt" in os.listdir(main), timeout=5)
    assert (main / "cats/a.jpg").read_bytes() == b"changed"
    assert os.getxattr(main, "user.cowfs.commit").decode() == new
    # The open handle keeps reading the commit it was opened on.
    assert old.read() == files["cats/a.jpg"]
    old.close()
    assert (ml.mnt / f"images/@{cid}/cats/a.jpg").read_bytes() == files["cats/a.jpg"]


def test_write_and_commit(ml: MountedLake) -> None:
    cid, files = put_tree(ml)
    ml.mount()
    main = ml.mnt / "images/main"
    with pytest.raises(OSError) as e:
        (main / "nope.txt").write_bytes(b"x")
    assert e.value.errno == errno.EROFS
    ml.cli("write", "images@main")
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    new_src = ml.root / "new.jpg"
    new_src.write_bytes(os.urandom(3000))
    ml.sh(f"cp {new_src} images/main/cats/")
    ml.sh("rm images/main/cats/a.jpg")
    ml.sh("mv images/main/dogs images/main/hounds")
    ml.sh("mv images/main/empty.txt images/main/was-empty.txt")
    os.mkdir(main / "made")
    os.mkdir(main / "made/empty-inside")
    os.symlink("cats/b.jpg", main / "link")
    with open(main / "big.bin", "r+b") as f:
        f.seek(1 << 20)
        f.write(b"EDIT" * 1000)
    os.truncate(main / "x.npy", 100)
    os.chmod(main / "cats/b.jpg", 0o600)
    os.utime(main / "hounds/deep/er/c.txt", ns=(1_000_000_000, 1_000_000_000))
    (main / "ünïcödé name ✓.txt").write_bytes(b"rewritten")
    # Before the commit the mount shows the staged state, the commit is untouched.
    assert sorted(os.listdir(main / "cats")) == ["b.jpg", "new.jpg"]
    assert os.readlink(main / "link") == "cats/b.jpg"
    assert (main / "link").read_bytes() == files["cats/b.jpg"]
    assert (ml.mnt / f"images/@{cid}/cats/a.jpg").exists()
    new = ml.cli("commit", "images@main", "-m", "relabel").strip()
    assert new and new != cid
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.commit").decode() == new)
    assert os.getxattr(main, "user.cowfs.writable") == b"0"
    lake = ml.lake()
    c = lake.get_commit("images", new)
    paths = {e.path: e for e in lake.walk(c)}
    assert "cats/a.jpg" not in paths and "dogs" not in paths
    assert paths["hounds/deep/er/c.txt"].mtime_ns == 1_000_000_000
    assert paths["made/empty-inside"].is_dir
    assert paths["link"].target == "cats/b.jpg"
    assert paths["cats/b.jpg"].mode & 0o777 == 0o600
    assert paths["x.npy"].size == 100
    expect = bytearray(files["big.bin"])
    expect[1 << 20 : (1 << 20) + 4000] = b"EDIT" * 1000
    assert (main / "big.bin").read_bytes() == bytes(expect)
    assert hashlib.sha256(
        b"".join(
            lake.store.get_chunk(r.id)[r.offset : r.offset + r.length]
            for r in paths["big.bin"].chunks
        )
    ).hexdigest() == sha(bytes(expect))
    assert (main / "was-empty.txt").read_bytes() == b""
    assert (main / "cats/new.jpg").read_bytes() == new_src.read_bytes()
    assert (main / "ünïcödé name ✓.txt").read_bytes() == b"rewritten"
    # Reading the new head without the mount gives the same bytes.
    ml.cli("get", "images@main", str(ml.root / "restored"))
    assert (ml.root / "restored/big.bin").read_bytes() == bytes(expect)
    assert (ml.root / "restored/made/empty-inside").is_dir()


def test_errnos(ml: MountedLake) -> None:
    cid, _ = put_tree(ml)
    put_tree(ml, "other")
    ml.mount()
    mnt = ml.mnt
    view = mnt / f"images/@{cid}"

    def errno_of(fn, *args) -> int:  # noqa: ANN001
        try:
            fn(*args)
        except OSError as e:
            return e.errno
        return 0

    assert errno_of(open, view / "cats/a.jpg", "r+b") == errno.EROFS
    assert errno_of(os.mkdir, view / "d") == errno.EROFS
    assert errno_of(os.unlink, view / "cats/a.jpg") == errno.EROFS
    assert errno_of(os.mkdir, mnt / "newrepo") == errno.EROFS
    assert errno_of(os.stat, mnt / "images/main/missing") == errno.ENOENT
    assert errno_of(os.stat, mnt / "no-such-repo") == errno.ENOENT
    assert errno_of(os.stat, mnt / "bad name!") == errno.ENOENT
    assert errno_of(os.stat, mnt / "images/@ffffffffffff") == errno.ENOENT
    assert errno_of(os.stat, mnt / "images/@x y") == errno.ENOENT
    assert errno_of(os.stat, mnt / ".ids/nope") == errno.ENOENT
    assert errno_of(os.listdir, mnt / "images/main/big.bin") == errno.ENOTDIR
    assert errno_of(os.getxattr, view, "user.nope") == errno.ENODATA
    assert errno_of(os.setxattr, view, "user.x", b"1") == errno.EROFS
    ml.cli("write", "images@main")
    ml.cli("write", "other@main")
    main = mnt / "images/main"
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    assert errno_of(os.rename, main / "big.bin", mnt / "other/main/big2.bin") == errno.EXDEV
    assert errno_of(os.rename, main / "big.bin", view / "big2.bin") == errno.EXDEV
    assert errno_of(os.link, main / "big.bin", main / "hard") == errno.ENOTSUP
    assert errno_of(os.setxattr, main / "big.bin", "user.x", b"1") == errno.ENOTSUP
    assert errno_of(os.mkfifo, main / "fifo") == errno.ENOTSUP
    assert errno_of(os.rmdir, main / "cats") == errno.ENOTEMPTY
    assert errno_of(os.mkdir, main / "cats") == errno.EEXIST
    assert errno_of(os.unlink, main / "missing") == errno.ENOENT
    assert errno_of(open, main / "missing/x", "wb") == errno.ENOENT
    # The mv tool falls back to copy + delete on EXDEV: the delete in a commit view is EROFS.
    r = ml.sh(f"mv images/@{cid}/cats/a.jpg other/main/", check=False)
    assert r.returncode != 0 and b"Read-only" in r.stderr
    # After all of that the mount still answers.
    assert (main / "cats/a.jpg").exists()


def test_kill9_keeps_staged_writes(ml: MountedLake) -> None:
    put_tree(ml)
    ml.mount()
    main = ml.mnt / "images/main"
    ml.cli("write", "images@main")
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    (main / "staged.txt").write_bytes(b"survives")
    with open(main / "big.bin", "r+b") as f:
        f.seek(100)
        f.write(b"patched")
    os.mkdir(main / "newdir")
    ml.kill9()
    assert not is_mounted(str(ml.mnt))
    ml.mount()
    assert (main / "staged.txt").read_bytes() == b"survives"
    assert (main / "big.bin").read_bytes()[100:107] == b"patched"
    cid = ml.cli("commit", "images@main", "-m", "after crash").strip()
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.commit").decode() == cid)
    assert (main / "staged.txt").read_bytes() == b"survives"
    assert (main / "newdir").is_dir()


def test_commit_without_mount(local: MountedLake) -> None:
    put_tree(local)
    local.mount()
    main = local.mnt / "images/main"
    local.cli("write", "images@main")
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    (main / "offline.txt").write_bytes(b"committed by the CLI alone")
    local.unmount()
    cid = local.cli("commit", "images@main", "-m", "no mount").strip()
    lake = local.lake()
    assert lake.head_id("images", "main") == cid
    assert lake.lookup(lake.get_commit("images", cid), "offline.txt").size == 26
    # A write opened without a mount shows up writable at the next mount.
    local.cli("write", "images@main")
    local.mount()
    (main / "second.txt").write_bytes(b"2")
    local.cli("commit", "images@main", "-m", "two")
    assert wait_for(lambda: (local.mnt / "images/main/second.txt").exists())


def _chunk_bytes(m: MountedLake) -> int:
    return sum(size for _, size in m.lake().objects.list("chunks/"))


def test_editing_a_big_file_stores_little(local: MountedLake) -> None:
    local.cli("repo", "create", "big")
    src = local.root / "src"
    src.mkdir()
    data = os.urandom(64 << 20)
    (src / "f.bin").write_bytes(data)
    local.cli("put", "big@main", str(src))
    before = _chunk_bytes(local)
    local.mount()
    local.cli("write", "big@main")
    f = local.mnt / "big/main/f.bin"
    assert wait_for(lambda: os.getxattr(f.parent, "user.cowfs.writable") == b"1")
    patch = os.urandom(1 << 20)
    with open(f, "r+b") as fh:
        fh.seek(30 << 20)
        fh.write(patch)
    local.cli("commit", "big@main", "-m", "1 MiB edit")
    grown = _chunk_bytes(local) - before
    # The edit plus the chunks it falls into, not the 64 MiB file.
    assert grown < 8 << 20, grown
    expect = data[: 30 << 20] + patch + data[(31 << 20) :]
    got = f.read_bytes()
    assert hashlib.sha256(got).digest() == hashlib.sha256(expect).digest()


def test_sigterm_unmounts(local: MountedLake) -> None:
    put_tree(local)
    local.mount()
    assert local.proc is not None
    local.proc.send_signal(signal.SIGTERM)
    assert local.proc.wait(timeout=15) == 0
    local.proc = None
    assert not is_mounted(str(local.mnt))


def test_background_and_umount(local: MountedLake) -> None:
    put_tree(local)
    out = subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", "mount", "--background", str(local.mnt)],
        env=local.env,
        capture_output=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert is_mounted(str(local.mnt))
    assert (local.mnt / "images/main/cats/a.jpg").exists()
    local.cli("umount", str(local.mnt))
    assert not is_mounted(str(local.mnt))


def test_serve_mount_in_process(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`serve_mount` runs inside another trio program (as `cowfs daemon` does) and counts."""
    import threading

    import trio
    from prometheus_client import REGISTRY

    from cowfs.lake import Lake
    from daemon.mount import serve_mount

    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("COWFS_STATE_DIR", str(tmp_path / "state"))
    lake = Lake.open(str(tmp_path / "store"), create=True)
    lake.create_repo("r")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    started = threading.Event()
    token: list = []

    async def main() -> None:
        token.append(trio.lowlevel.current_trio_token())
        async with trio.open_nursery() as n:
            await n.start(serve_mount, lake, str(mnt))
            started.set()

    t = threading.Thread(target=trio.run, args=(main,), daemon=True)
    t.start()
    try:
        assert started.wait(20)

        def count(op: str) -> float:
            v = REGISTRY.get_sample_value("cowfs_fuse_operations_total", {"op": op})
            return v or 0.0

        before = count("readdir")
        assert os.listdir(mnt) == [".ids", "r"]
        assert os.path.isdir(mnt / "r")
        assert count("readdir") > before
        assert REGISTRY.get_sample_value("cowfs_fuse_operation_seconds_count", {"op": "readdir"})
    finally:
        subprocess.run(["fusermount3", "-u", str(mnt)], capture_output=True)
        t.join(15)
        if is_mounted(str(mnt)):
            subprocess.run(["fusermount3", "-uz", str(mnt)], capture_output=True)
        lake.close()
    assert not t.is_alive()


def test_status_over_control_channel(local: MountedLake) -> None:
    put_tree(local)
    local.mount()
    from daemon.control import call, mounts_of

    os.environ["COWFS_STATE_DIR"] = str(local.root / "state")
    mounts = mounts_of(local.lake().url)
    assert len(mounts) == 1
    status = call(mounts[0]["socket"], {"op": "status"})
    assert status["ok"] and status["writes"] == []
    assert not call(mounts[0]["socket"], {"op": "bogus"})["ok"]


def _commit_files(m: MountedLake, repo: str) -> dict[str, bytes]:
    """Every file of the branch head, read from the store without the mount."""
    from cowfs.reader import ChunkReader

    lake = m.lake()
    head = lake.head(repo, "main")
    assert head is not None
    reader = ChunkReader(lake.store)
    try:
        return {e.path: b"".join(reader.iter_file(e)) for e in lake.walk(head) if e.is_file}
    finally:
        reader.close()


def test_writes_during_a_commit_are_kept(local: MountedLake) -> None:
    """A writer busy through several `commit --keep-open`s: every write(2) that returned is in
    a commit or still staged, and handles open across a commit keep working."""
    import threading

    put_tree(local)
    local.mount()
    main = local.mnt / "images/main"
    local.cli("write", "images@main")
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    made: list[int] = []
    appended: list[bytes] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:
        try:
            with open(main / "log.bin", "ab", buffering=0) as log:
                i = 0
                while not stop.is_set():
                    (main / f"w/{i}.txt").write_bytes(b"%d" % i * 50)
                    made.append(i)
                    line = b"line %d\n" % i
                    log.write(line)
                    appended.append(line)
                    i += 1
        except BaseException as e:  # noqa: BLE001 (reported below)
            errors.append(e)

    os.mkdir(main / "w")
    t = threading.Thread(target=writer)
    t.start()
    try:
        for n in range(4):
            want = 200 * (n + 1)
            assert wait_for(lambda w=want: len(made) > w or bool(errors), timeout=30)
            local.cli("commit", "images@main", "-m", f"while writing {n}", "--keep-open")
    finally:
        stop.set()
        t.join(30)
    assert not errors, errors
    local.cli("commit", "images@main", "-m", "last")
    files = _commit_files(local, "images")
    lost = [i for i in made if files.get(f"w/{i}.txt") != b"%d" % i * 50]
    assert not lost, f"{len(lost)} of {len(made)} acknowledged files lost, e.g. {lost[:5]}"
    assert files["log.bin"] == b"".join(appended)


def test_file_deleted_while_open(local: MountedLake) -> None:
    """POSIX: an unlinked file lives on for its open handles (st_nlink 0), reads and writes
    through them work, and the commit does not have it."""
    cid, files = put_tree(local)
    local.mount()
    main = local.mnt / "images/main"
    local.cli("write", "images@main")
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    (main / "tmp.txt").write_bytes(b"hello")
    fd = os.open(main / "tmp.txt", os.O_RDWR)
    base = os.open(main / "cats/a.jpg", os.O_RDONLY)
    replaced = os.open(main / "cats/b.jpg", os.O_RDWR)
    try:
        os.unlink(main / "tmp.txt")
        os.unlink(main / "cats/a.jpg")
        (main / "new-b").write_bytes(b"the new b")
        os.rename(main / "new-b", main / "cats/b.jpg")
        st = os.fstat(fd)
        assert st.st_nlink == 0 and st.st_size == 5
        assert os.pwrite(fd, b" world, still here", 5) == 18
        assert os.pread(fd, 100, 0) == b"hello world, still here"
        assert os.fstat(fd).st_size == 23
        assert os.pread(base, 1 << 20, 0) == files["cats/a.jpg"]
        assert os.fstat(base).st_nlink == 0
        assert os.pread(replaced, 1 << 20, 0) == files["cats/b.jpg"]
        os.pwrite(replaced, b"OLD", 0)
        assert (main / "cats/b.jpg").read_bytes() == b"the new b"
        assert not (main / "tmp.txt").exists()
        # A commit that keeps the branch open leaves the unlinked files usable.
        local.cli("commit", "images@main", "-m", "without them", "--keep-open")
        os.ftruncate(fd, 5)
        assert os.pread(fd, 100, 0) == b"hello"
        assert os.pread(replaced, 3, 0) == b"OLD"
    finally:
        for f in (fd, base, replaced):
            os.close(f)
    committed = _commit_files(local, "images")
    assert "tmp.txt" not in committed and "cats/a.jpg" not in committed
    assert committed["cats/b.jpg"] == b"the new b"
    assert os.listdir(main / "cats") == ["b.jpg"]


def test_two_mounts_one_writer(local: MountedLake) -> None:
    """Two mounts of one store: one holds the branch open for writing, the other refuses writes
    (EROFS) rather than take writes a commit would not see; commits go to the holder."""
    put_tree(local)
    other = local.another_mount()
    try:
        local.mount()
        other.mount()
        out = subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", "write", "images@main"],
            env=local.env,
            capture_output=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        mains = [local.mnt / "images/main", other.mnt / "images/main"]
        assert wait_for(
            lambda: sum(os.getxattr(p, "user.cowfs.writable") == b"1" for p in mains) == 1
        )
        holds = os.getxattr(mains[0], "user.cowfs.writable") == b"1"
        writer, reader = mains if holds else mains[::-1]
        assert str(writer.parent.parent) in out.stderr.decode()
        (writer / "from-holder.txt").write_bytes(b"kept")
        with pytest.raises(OSError) as e:
            (reader / "from-other.txt").write_bytes(b"would be lost")
        assert e.value.errno == errno.EROFS
        # Asking again (through either mount's CLI) keeps the same holder.
        local.cli("write", "images@main")
        assert os.getxattr(reader, "user.cowfs.writable") == b"0"
        cid = local.cli("commit", "images@main", "-m", "two mounts").strip()
        assert _commit_files(local, "images")["from-holder.txt"] == b"kept"
        for p in mains:
            assert wait_for(lambda p=p: os.getxattr(p, "user.cowfs.commit").decode() == cid)
            assert (p / "from-holder.txt").read_bytes() == b"kept"
    finally:
        other.close()


def test_chunker_cuts_a_stream(tmp_path: Path) -> None:
    """`Chunker.add_stream` cuts any readable as `add_bytes` cuts the same bytes."""
    import io

    from cowfs.chunking import Chunker, Pending
    from cowfs.lake import Lake

    lake = Lake.open(str(tmp_path / "store"), create=True)
    try:
        data = os.urandom(5 << 20)
        with Chunker(lake.store) as chunker:
            streamed = chunker.add_stream(io.BytesIO(data))
            whole = chunker.add_bytes(data)
            chunker.wait()
        assert isinstance(streamed, Pending)
        assert streamed.result() == whole.result()
        got = b"".join(lake.store.get_chunk(r.id) for r in streamed.result().chunks)
        assert got == data
    finally:
        lake.close()


def _status(m: MountedLake) -> dict:
    from daemon.control import call, mounts_of

    os.environ["COWFS_STATE_DIR"] = str(m.root / "state")
    (mount,) = mounts_of(m.lake().url)
    return call(mount["socket"], {"op": "status"})


def _open_writable(m: MountedLake, repo: str = "images") -> Path:
    m.cli("write", f"{repo}@main")
    main = m.mnt / repo / "main"
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.writable") == b"1")
    return main


def test_touch_and_chmod_branch_root(local: MountedLake) -> None:
    """The owner may touch and chmod the root of a writable branch, as on any filesystem (a
    commit records nothing for its root, so the change is accepted and not kept)."""
    cid, _ = put_tree(local)
    local.mount()
    assert local.sh(f"chmod 755 images/@{cid}", check=False).returncode != 0  # read-only
    _open_writable(local)
    local.sh("touch images/main && chmod 755 images/main && touch -d 2001-01-01 images/main")
    os.utime(local.mnt / "images/main")
    os.chmod(local.mnt / "images/main", 0o700)
    assert (local.mnt / "images/main").is_dir()
    with pytest.raises(OSError) as e:
        os.truncate(local.mnt / "images/main", 0)
    assert e.value.errno == errno.EISDIR


def _area(m: MountedLake, repo: str, branch: str) -> Path:
    (area,) = (m.root / "state" / "staging").glob(f"*/{repo}@{branch}")
    return area


def test_half_destroyed_area_is_absent(local: MountedLake) -> None:
    """A crash while an area was being removed (older versions removed it in place) leaves
    `recs/` without `meta.json`: that is no area, the mount starts and the branch can be
    opened for writing again; what a crash after the rename-aside left is swept."""
    put_tree(local)
    local.cli("write", "images@main")
    area = _area(local, "images", "main")
    (area / "meta.json").unlink()
    aside = area.parent / ".removing-1-0123456789ab"
    (aside / "recs").mkdir(parents=True)
    local.mount()
    main = local.mnt / "images/main"
    assert os.getxattr(main, "user.cowfs.writable") == b"0"
    assert (main / "cats/a.jpg").exists()
    _open_writable(local)
    assert not aside.exists()
    (main / "after.txt").write_bytes(b"fresh area")
    cid = local.cli("commit", "images@main", "-m", "after").strip()
    assert _commit_files(local, "images")["after.txt"] == b"fresh area"
    assert wait_for(lambda: os.getxattr(main, "user.cowfs.commit").decode() == cid)
    # A commit or discard removes the whole area and leaves nothing aside.
    assert not list((local.root / "state" / "staging").glob("*/*"))


_SYNC_SPY = """
import os

_LOG = os.environ["COWFS_TEST_SYNC_LOG"]


def _spy(fn):
    def synced(fd):
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = "?"
        with open(_LOG, "a") as f:
            f.write(path + "\\n")
        return fn(fd)

    return synced


os.fsync = _spy(os.fsync)
os.fdatasync = _spy(os.fdatasync)
"""


def test_fsync_makes_a_staged_file_durable(local: MountedLake) -> None:
    """fsync(2) on a staged file syncs its overlay (even one whose fd the area no longer holds
    open) and the overlay directory; a small file's bytes, kept in its record, reach the
    synced records (the journal is checkpointed)."""
    from cowfs.staging_records import INLINE_MAX

    put_tree(local)
    log = local.root / "synced.log"
    local.customize_mount(_SYNC_SPY)
    local.mount_env["COWFS_TEST_SYNC_LOG"] = str(log)
    local.mount()
    main = _open_writable(local)
    big = b"must survive" * (INLINE_MAX // 12 + 1)  # past the inline limit: an overlay file
    with open(main / "target.bin", "wb", buffering=0) as f:
        f.write(big)
        # Many more overlays since: the area's fd cache has let go of this one.
        for i in range(300):
            (main / f"other-{i}").write_bytes(b"x" * (INLINE_MAX + 1))
        log.write_text("")
        os.fsync(f.fileno())
    synced = log.read_text().split()
    area = _area(local, "images", "main")
    assert str(area / "data" / "1") in synced  # target.bin's overlay, the area's first
    assert str(area / "data") in synced
    assert (main / "target.bin").read_bytes() == big
    with open(main / "small.txt", "wb", buffering=0) as f:
        f.write(b"small")
        os.fsync(f.fileno())
        assert (area / "journal").stat().st_size == 0
    assert (main / "small.txt").read_bytes() == b"small"


def test_ids_show_each_repo_once_finished_first(local: MountedLake) -> None:
    """A repo holding several commits of one global ID (failed pipeline runs carry it too) is
    listed once under `/.ids/<gid>` and shows its newest finished commit."""
    from cowfs.changes import ChangeSet
    from cowfs.entries import dir_entry

    cid, _ = put_tree(local)
    lake = local.lake()
    gid = lake.get_commit("images", cid).global_id
    lake.create_repo("other")

    def commit(name: str, state: str = "finished") -> str:
        changes = ChangeSet(puts={name: dir_entry(name, 0o755)})
        return lake.commit("other", "main", changes, global_id=gid, state=state).id

    commit("old")
    newest = commit("newest")
    failed = [commit("failed", "failed")]
    while min(failed) > newest:  # make a failed one come first in key order
        failed.append(commit("failed", "failed"))
    local.mount()
    ids = local.mnt / ".ids" / gid
    assert sorted(os.listdir(ids)) == ["images", "other"]
    assert os.getxattr(ids / "other", "user.cowfs.commit").decode() == newest
    assert (ids / "other/newest").is_dir() and not (ids / "other/failed").exists()


_SHORT_TIMERS = """
import daemon.namespace

daemon.namespace.VIEW_IDLE_S = 0.5
daemon.namespace.SWEEP_S = 0.5
daemon.namespace.WATCH_IDLE_S = 1.0
"""


def test_views_and_watches_are_bounded(local: MountedLake) -> None:
    """A long-running mount forgets views nothing uses any more and stops polling branches
    nobody looks at; a commit's id and its prefixes share one view."""
    cid, files = put_tree(local)
    gid = local.lake().get_commit("images", cid).global_id
    local.customize_mount(_SHORT_TIMERS)
    local.mount()
    mnt = local.mnt
    assert os.stat(mnt / f"images/@{cid}").st_ino == os.stat(mnt / f"images/@{cid[:8]}").st_ino
    assert (mnt / f"images/@{cid[:10]}/cats/a.jpg").read_bytes() == files["cats/a.jpg"]
    assert (mnt / ".ids" / gid / "images/cats/a.jpg").read_bytes() == files["cats/a.jpg"]
    assert (mnt / "images/main/cats/a.jpg").read_bytes() == files["cats/a.jpg"]
    status = _status(local)
    assert status["views"] == 3 and status["watched"] == 1  # c (shared), g, b
    with open(mnt / f"images/@{cid}/big.bin", "rb") as held:
        Path("/proc/sys/vm/drop_caches").write_text("2")  # the kernel forgets what it can
        assert wait_for(lambda: _status(local)["watched"] == 0, timeout=10)
        # Only the open handle's view stays.
        assert wait_for(lambda: _status(local)["views"] == 1, timeout=10)
        time.sleep(1.0)
        assert _status(local)["views"] == 1
        assert held.read(10) == files["big.bin"][:10]
    Path("/proc/sys/vm/drop_caches").write_text("2")
    assert wait_for(lambda: _status(local)["views"] == 0, timeout=10)
    assert (mnt / "images/main/cats/a.jpg").read_bytes() == files["cats/a.jpg"]
    assert _status(local)["watched"] == 1


def test_old_write_view_reads_after_commit(local: MountedLake) -> None:
    """When a write session ends (commit without --keep-open, or discard), what was open in it
    (handles, a shell's working directory) goes on reading the branch head; writes get EROFS."""
    _, files = put_tree(local)
    local.mount()
    main = _open_writable(local)
    (main / "cats/staged.txt").write_bytes(b"staged")
    ro = os.open(main / "cats/a.jpg", os.O_RDONLY)
    staged = os.open(main / "cats/staged.txt", os.O_RDONLY)
    rw = os.open(main / "cats/staged.txt", os.O_RDWR)
    cats = os.open(main / "cats", os.O_RDONLY | os.O_DIRECTORY)
    shell = subprocess.Popen(
        "read go; ls; cat a.jpg | wc -c",
        shell=True,
        cwd=main / "cats",
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        local.cli("commit", "images@main", "-m", "closed")
        assert os.pread(ro, 100, 0) == files["cats/a.jpg"][:100]
        assert os.fstat(ro).st_size == len(files["cats/a.jpg"])
        assert os.pread(staged, 100, 0) == b"staged"
        assert os.fstat(staged).st_size == 6
        assert os.pread(rw, 100, 0) == b"staged"
        assert sorted(os.listdir(cats)) == ["a.jpg", "b.jpg", "staged.txt"]
        assert os.stat("b.jpg", dir_fd=cats).st_size == len(files["cats/b.jpg"])
        out, err = shell.communicate(b"\n", timeout=30)
        assert shell.returncode == 0, err
        assert out.split() == [b"a.jpg", b"b.jpg", b"staged.txt", b"500"]
        with pytest.raises(OSError) as e:
            os.pwrite(rw, b"late", 0)
        assert e.value.errno == errno.EROFS
        with pytest.raises(OSError) as e:
            os.open("new.txt", os.O_CREAT | os.O_WRONLY, dir_fd=cats)
        assert e.value.errno == errno.EROFS
    finally:
        for fd in (ro, staged, rw, cats):
            os.close(fd)
        if shell.poll() is None:
            shell.kill()
    # A discard: what was staged goes, the head shows through the old directory.
    main = _open_writable(local)
    (main / "cats/dropped.txt").write_bytes(b"dropped")
    cats = os.open(main / "cats", os.O_RDONLY | os.O_DIRECTORY)
    try:
        local.cli("write", "--discard", "images@main")
        again = os.open(".", os.O_RDONLY | os.O_DIRECTORY, dir_fd=cats)  # the same directory
        try:
            assert sorted(os.listdir(again)) == ["a.jpg", "b.jpg", "staged.txt"]
        finally:
            os.close(again)
        with pytest.raises(FileNotFoundError):
            os.stat("dropped.txt", dir_fd=cats)
    finally:
        os.close(cats)


def test_control_channel_refuses_other_users() -> None:
    import socket as socket_mod
    import threading

    from daemon.control import peer_allowed

    server = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    name = f"\0cowfs-test-{os.getpid()}"
    server.bind(name)
    server.listen(1)
    seen: list[tuple[bool, bool]] = []

    def accept() -> None:
        conn, _ = server.accept()
        # The test runs as root: root is always allowed; a mount of user 4242 must refuse a
        # peer that is neither root nor 4242 (here, we pretend the peer is someone else by
        # asking on behalf of a mount owned by a different user than the peer).
        seen.append((peer_allowed(conn), peer_allowed(conn, me=4242)))
        conn.close()

    t = threading.Thread(target=accept)
    t.start()
    client = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    if os.geteuid() == 0:
        # Connect as an unprivileged user so the peer is neither root nor the mount's owner.
        pid = os.fork()
        if pid == 0:
            try:
                os.setuid(65534)
                c = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
                c.connect(name)
                c.recv(1)
            finally:
                os._exit(0)
        t.join(timeout=10)
        os.waitpid(pid, 0)
        assert seen == [(False, False)]
    else:
        client.connect(name)
        t.join(timeout=10)
        assert seen == [(True, False)]
    client.close()
    server.close()
