"""The mount's memory and speed over a walk of one generated commit of N files: the commit is
built directly as a tree (every file shares one tiny chunk, 1,000 files a directory, 100
directories a group), so 2,000,000 files take a minute, not a put of 2,000,000 files. Reports
the mount's resident memory before and after `find -ls` (the kernel then holds an inode per
file), bytes per file, and files/s of the walk. Run through `scripts/bench/mount.py --suite
walk`; needs root (mounts). `COWFS_BENCH_CODE=DIR` runs the mount from another checkout (old
against new in one run).
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from mount_fio import Mount

Log = Callable[[str], None]
PER_DIR = 1000
#: Past one sweep of the mount's poller (`namespace.SWEEP_S`), which gives back mapped LMDB pages.
SETTLE_S = 12
DIRS_PER_GROUP = 100


def _paths(files: int) -> Iterator[tuple[str, bool]]:
    """(path, is a directory) in tree order."""
    dirs = (files + PER_DIR - 1) // PER_DIR
    for g in range((dirs + DIRS_PER_GROUP - 1) // DIRS_PER_GROUP):
        yield f"g{g:03d}", True
        for d in range(g * DIRS_PER_GROUP, min(dirs, (g + 1) * DIRS_PER_GROUP)):
            yield f"g{g:03d}/d{d:05d}", True
            for i in range(d * PER_DIR, min(files, (d + 1) * PER_DIR)):
                yield f"g{g:03d}/d{d:05d}/f{i:08d}.txt", False


def make_commit(files: int, log: Log) -> None:
    """In this process, with the store in `COWFS_STORE`: `w@main` becomes a commit of `files`
    files, each a copy of the seed file `w@seed:/seed.txt`."""
    from cowfs import tree
    from cowfs.commits import new_id
    from cowfs.entries import dir_entry
    from cowfs.lake import Lake

    with Lake.open() as lake:
        seed = lake.head("w", "seed")
        assert seed is not None
        proto = lake.lookup(seed, "seed.txt")
        assert proto is not None
        t0 = time.perf_counter()

        def entries() -> Iterator:
            for path, is_dir in _paths(files):
                yield dir_entry(path) if is_dir else proto.with_path(path)

        root = tree.build(lake.store, entries())
        commit = dataclasses.replace(
            seed, id=new_id(), tree=root, parents=(seed.id,), files=files, bytes=0
        )
        # Written as `Lake.commit` writes one, without resolving 2,000,000 edits first.
        lake._write_commit(commit)
        lake.set_branch("w", "main", commit)
        log(f"built a {files}-file tree in {time.perf_counter() - t0:.1f} s")


def rss_split(m: Mount) -> tuple[float, float]:
    """MiB resident (anonymous, file-backed): the file-backed part is mostly LMDB pages of the
    index (tree node bytes) mapped while read, which the kernel reclaims like page cache."""
    assert m.proc is not None
    got = {}
    for line in Path(f"/proc/{m.proc.pid}/status").read_text().splitlines():
        if line.startswith(("RssAnon:", "RssFile:")):
            got[line.split(":")[0]] = int(line.split()[1]) / 1024
    return got.get("RssAnon", 0.0), got.get("RssFile", 0.0)


def held_inodes(m: Mount) -> int:
    """The inodes the mount holds (its `status`): the kernel may have forgotten some."""
    code = (
        "import json, sys\n"
        "from daemon.control import call, registry\n"
        "for f in registry().glob('*.json'):\n"
        "    info = json.loads(f.read_text())\n"
        "    if info['mountpoint'] == sys.argv[1]:\n"
        "        print(call(info['socket'], {'op': 'status'})['inodes'])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(m.mnt)],
        env=m.env,
        check=True,
        capture_output=True,
        text=True,
    )
    return int(out.stdout.split()[0]) if out.stdout.strip() else 0


def run(work: Path, files: int, log: Log) -> dict[str, float]:
    env = dict(os.environ)
    env.update(
        COWFS_STORE=str(work / "wstore"),
        COWFS_CACHE_DIR=str(work / "wcache"),
        COWFS_STATE_DIR=str(work / "wstate"),
    )
    code = os.environ.get("COWFS_BENCH_CODE")
    # `python -m` puts the working directory first on sys.path: run from one holding no code.
    os.chdir(work)
    m = Mount(work, env)
    marker = work / f"wstore-{files}"
    if not marker.exists():
        subprocess.run(["rm", "-rf", env["COWFS_STORE"], env["COWFS_CACHE_DIR"]], check=True)
        seed = work / "seed"
        seed.mkdir(exist_ok=True)
        (seed / "seed.txt").write_bytes(b"cowfs walk\n")
        m.cli("init")
        m.cli("repo", "create", "w")
        m.cli("put", "w@seed", str(seed))
        subprocess.run(
            [sys.executable, __file__, str(files)],
            env=env,
            check=True,
        )
        marker.write_text("")
    if code:
        m.env["PYTHONPATH"] = code
    m.up()
    try:
        before = m.rss_mib()
        t0 = time.perf_counter()
        subprocess.run(
            ["find", str(m.mnt / "w/main"), "-ls"], stdout=subprocess.DEVNULL, check=True
        )
        took = time.perf_counter() - t0
        after = m.rss_mib()
        anon, filed = rss_split(m)
        held = held_inodes(m)
        time.sleep(SETTLE_S)
        settled, (s_anon, s_file) = m.rss_mib(), rss_split(m)
        t0 = time.perf_counter()
        subprocess.run(["find", str(m.mnt / "w/main"), "-ls"], stdout=subprocess.DEVNULL)
        again = time.perf_counter() - t0
    finally:
        m.down()
    per = (after - before) * (1 << 20) / files
    per_held = (after - before) * (1 << 20) / max(held, 1)
    log(
        f"walk {files} ({code or 'this checkout'}): {took:.1f} s ({files / took:,.0f} files/s),"
        f" RSS {before:.0f} -> {after:.0f} MiB ({per:.0f} B/file); {held} inodes held"
        f" ({per_held:.0f} B each); after: anon {anon:.0f} MiB, file {filed:.0f} MiB;"
        f" {SETTLE_S} s later {settled:.0f} MiB (anon {s_anon:.0f}, file {s_file:.0f});"
        f" again {again:.1f} s"
    )
    return {
        "walk files": files,
        "walk s": took,
        "walk files/s": files / took,
        "walk again s": again,
        "walk rss before MiB": before,
        "walk rss after MiB": after,
        "walk bytes per file": per,
        "walk rss anon after MiB": anon,
        "walk rss file after MiB": filed,
        "walk rss settled MiB": settled,
        "walk rss file settled MiB": s_file,
        "walk inodes held": held,
        "walk bytes per held inode": per_held,
    }


if __name__ == "__main__":
    make_commit(int(sys.argv[1]), lambda msg: print(msg, flush=True))
