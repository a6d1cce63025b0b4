"""The writable view with ordinary tools, where they used to break it (issue 8, items 1-6):
renames of long trees, paths past LMDB's key size, the lake's name limits, mknod (GNU tar),
synthetic xattrs that copy tools must not copy, directory mtime and st_nlink."""

from __future__ import annotations

import errno
import os
import stat
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mountutil import MountedLake, wait_for

pytestmark = pytest.mark.mount

XATTRS = {
    "user.cowfs.commit",
    "user.cowfs.global_id",
    "user.cowfs.repo",
    "user.cowfs.branch",
    "user.cowfs.writable",
}


@pytest.fixture
def wv(tmp_path: Path) -> Iterator[tuple[MountedLake, Path]]:
    """A mounted local store with `r@main` (one commit) open for writing."""
    m = MountedLake(tmp_path, str(tmp_path / "store"))
    m.cli("init")
    m.cli("repo", "create", "r")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d/base.txt").write_bytes(b"base\n")
    m.cli("put", "r@main", str(src), "-m", "base")
    m.mount()
    m.cli("write", "r@main")
    root = m.mnt / "r/main"
    assert wait_for(lambda: os.getxattr(root, "user.cowfs.writable") == b"1")
    try:
        yield m, root
    finally:
        m.close()


def errno_of(fn, *args) -> int:  # noqa: ANN001
    try:
        fn(*args)
    except OSError as e:
        return e.errno or 0
    return 0


def tree_of(root: Path) -> dict[str, bytes | None]:
    """Every path under `root` (None for a directory, else the bytes), walked by directory fd:
    absolute paths this deep would pass the kernel's PATH_MAX."""
    out: dict[str, bytes | None] = {}
    for dirpath, dirs, files, dfd in os.fwalk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirs:
            out[os.path.normpath(os.path.join(rel, d))] = None
        for f in files:
            fd = os.open(f, os.O_RDONLY, dir_fd=dfd)
            with os.fdopen(fd, "rb") as h:
                out[os.path.normpath(os.path.join(rel, f))] = h.read()
    return out


def make_deep(top: Path, names: list[str]) -> None:
    """`top/names[0]/names[1]/…/leaf`, made one directory fd at a time."""
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for n in names:
            os.mkdir(n, dir_fd=fd)
            nfd = os.open(n, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        leaf = os.open("leaf", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(leaf, b"leaf")
        os.close(leaf)
    finally:
        os.close(fd)


def test_rename_of_a_long_tree_is_whole(wv: tuple[MountedLake, Path]) -> None:
    m, root = wv
    # The repro (paths past 511 bytes used to fail half-way and lose `A`).
    m.sh(f"cd {root} && mkdir -p A/{'b' * 250}/{'c' * 250} && echo keep > A/small.txt")
    before = tree_of(root / "A")
    m.sh(f"cd {root} && mv A {'A' * 20}")
    assert not (root / "A").exists()
    assert tree_of(root / ("A" * 20)) == before
    # One that must fail (a moved path would pass 4,096 bytes) fails whole.
    make_deep(root / "B", [ch * 250 for ch in "bcdefghijklmnopq"])  # 4,022 bytes to the leaf
    whole = tree_of(root)
    rfd = os.open(root, os.O_RDONLY)
    try:
        refused = errno_of(
            lambda: os.rename("B", "B" * 255, src_dir_fd=rfd, dst_dir_fd=rfd)  # 4,276 bytes
        )
    finally:
        os.close(rfd)
    assert refused == errno.ENAMETOOLONG
    assert errno_of(os.rename, root / "B", root / "B/inside") == errno.EINVAL
    assert tree_of(root) == whole
    cid = m.cli("commit", "r@main", "-m", "moves").strip()
    lake = m.lake()
    committed = {e.path for e in lake.walk(lake.get_commit("r", cid))}
    assert committed == set(whole)
    assert f"{'A' * 20}/small.txt" in committed and "A/small.txt" not in committed


def test_paths_past_lmdb_keys(wv: tuple[MountedLake, Path]) -> None:
    m, root = wv
    deep = root / "/".join(ch * 200 for ch in "abc")  # 602 bytes
    deep.mkdir(parents=True)
    f = deep / "file.txt"
    f.write_bytes(b"long")
    with open(f, "r+b") as h:
        h.seek(4)
        h.write(b" path")
    os.symlink("file.txt", deep / "ln")
    os.rename(f, deep / "moved.txt")
    os.unlink(deep / "ln")
    cid = m.cli("commit", "r@main", "-m", "long", "--keep-open").strip()
    lake = m.lake()
    rel = str((deep / "moved.txt").relative_to(root))
    assert lake.lookup(lake.get_commit("r", cid), rel).size == 9  # type: ignore[union-attr]
    # Committed long paths can be changed and removed through the mount as well.
    os.unlink(deep / "moved.txt")
    os.removedirs(deep)
    assert not (root / ("a" * 200)).exists()
    cid = m.cli("commit", "r@main", "-m", "gone").strip()
    assert lake.lookup(lake.get_commit("r", cid), "a" * 200) is None


def test_lake_name_limits_on_the_mount(wv: tuple[MountedLake, Path]) -> None:
    m, root = wv
    assert os.statvfs(root).f_namemax == 255
    long = "n" * 256
    for fn, args in (
        (os.mkdir, (root / long,)),
        (open, (root / long, "wb")),
        (os.symlink, ("t", root / long)),
        (os.rename, (root / "d", root / long)),
        (os.stat, (root / long,)),
        (os.mknod, (root / long, stat.S_IFREG | 0o644)),
    ):
        assert errno_of(fn, *args) == errno.ENAMETOOLONG, fn
    (root / ("n" * 255)).write_bytes(b"ok")
    assert sorted(os.listdir(root)) == ["d", "n" * 255]


def test_mknod_and_gnu_tar_with_xattrs(wv: tuple[MountedLake, Path], tmp_path: Path) -> None:
    m, root = wv
    os.mknod(root / "made", stat.S_IFREG | 0o640)
    st_ = os.stat(root / "made")
    assert stat.S_ISREG(st_.st_mode) and st_.st_size == 0
    assert errno_of(os.mknod, root / "made", stat.S_IFREG | 0o640) == errno.EEXIST
    assert errno_of(os.mkfifo, root / "fifo") == errno.ENOTSUP
    src = tmp_path / "tarsrc"
    (src / "sub").mkdir(parents=True)
    for i in range(5):
        (src / "sub" / f"{i}.bin").write_bytes(os.urandom(1000 + i))
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as t:
        t.add(src / "sub", arcname="sub")
    m.sh(f"cd {root} && tar --xattrs -xf {archive}")
    assert tree_of(root / "sub") == tree_of(src / "sub")


def test_synthetic_xattrs_are_not_copied(wv: tuple[MountedLake, Path], tmp_path: Path) -> None:
    m, root = wv
    for p in (root, root / "d/base.txt", root / "d"):
        assert os.listxattr(p) == []  # never listed, so never copied
    assert {x: os.getxattr(root, x) for x in XATTRS}["user.cowfs.branch"] == b"main"
    assert os.getxattr(root / "d/base.txt", "user.cowfs.repo") == b"r"  # asked by name
    out = m.sh(f"getfattr -n user.cowfs.writable {root / 'd/base.txt'}").stdout
    assert b'user.cowfs.writable="1"' in out
    dest = tmp_path / "copies"
    dest.mkdir()
    m.sh(f"cp -a {root / 'd'} {dest / 'cp'}")
    m.sh(f"rsync -aX {root / 'd'}/ {dest / 'rsync'}/")
    m.sh(f"cd {root} && tar --xattrs -cf {dest / 'd.tar'} d")
    for copy in (dest / "cp/base.txt", dest / "rsync/base.txt"):
        assert copy.read_bytes() == b"base\n"
        assert not [x for x in os.listxattr(copy) if x.startswith("user.cowfs")]
    assert b"cowfs" not in (dest / "d.tar").read_bytes()
    # rsync -aX into a view (subdirectory and root) succeeds.
    src = tmp_path / "rsrc"
    (src / "x").mkdir(parents=True)
    (src / "x/f.txt").write_bytes(b"f")
    assert m.sh(f"rsync -aX {src}/x/ {root}/d/x/", check=False).returncode == 0
    r = m.sh(f"rsync -aX {src}/ {root}/", check=False)
    assert r.returncode == 0, r.stderr
    assert (root / "d/x/f.txt").read_bytes() == b"f" and (root / "x/f.txt").read_bytes() == b"f"


def test_directory_mtime_and_nlink(wv: tuple[MountedLake, Path]) -> None:
    m, root = wv
    d = root / "d"
    t0 = os.stat(d).st_mtime_ns
    (d / "new.txt").write_bytes(b"1")
    t1 = os.stat(d).st_mtime_ns
    assert t1 > t0 and os.stat(d).st_ctime_ns == t1
    with open(d / "new.txt", "ab") as f:
        f.write(b"2")
    assert os.stat(d).st_mtime_ns == t1  # writing a file leaves its directory's mtime alone
    os.rename(d / "new.txt", root / "moved.txt")
    t2 = os.stat(d).st_mtime_ns
    assert t2 > t1
    os.unlink(root / "moved.txt")
    os.mkdir(d / "sub")
    t3 = os.stat(d).st_mtime_ns
    assert t3 > t2
    # Directories report st_nlink 1 ("not counted", as btrfs), files 1.
    assert os.stat(d).st_nlink == 1 and os.stat(d / "base.txt").st_nlink == 1
    cid = m.cli("commit", "r@main", "-m", "mtimes").strip()
    lake = m.lake()
    assert lake.lookup(lake.get_commit("r", cid), "d").mtime_ns == t3  # type: ignore[union-attr]
    assert subprocess.run(["find", str(root), "-name", "base.txt"], capture_output=True).stdout


def test_write_only_handles_and_readers_agree(wv: tuple[MountedLake, Path]) -> None:
    """Write-only handles bypass the page cache (`direct_io`, which spares a getxattr per
    write): a reader that had the file open and cached sees what they append, a read-write
    handle and its mmap see each other, and fstat follows the size."""
    import mmap

    _, root = wv
    p = root / "log"
    w = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    r = os.open(p, os.O_RDONLY)
    try:
        os.write(w, b"a" * 100)
        assert os.pread(r, 4096, 0) == b"a" * 100
        os.write(w, b"b" * 5000)
        assert os.pread(r, 8192, 0) == b"a" * 100 + b"b" * 5000
        assert os.fstat(w).st_size == os.fstat(r).st_size == 5100
    finally:
        os.close(r)
        os.close(w)
    with open(p, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        mm[:3] = b"xyz"
        mm.flush()
        f.seek(4000)
        f.write(b"Q")
        f.flush()
        assert mm[4000:4001] == b"Q"
    assert p.read_bytes()[:3] == b"xyz" and p.read_bytes()[4000:4001] == b"Q"
