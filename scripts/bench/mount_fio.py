"""The mount over a local store, with fio and the tools a training job or a user would run:
random reads (4 KiB and 128 KiB; depth 1, depth 16, 4 processes; chunk cache cold and warm, page
cache always dropped), mmap random reads, `tar x` of small files into a writable view, and the
mount's resident memory after walking a generated commit. Each beside the local disk holding
the same data, the physical limit, in one run. Run through `scripts/bench/mount.py --suite
local`; needs root (drop_caches, mounts) and fio (`apt-get install -y fio`).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path

from daemon.mount import is_mounted

Log = Callable[[str], None]


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def fio(path: Path, bs: str, engine: str, depth: int, jobs: int, seconds: int) -> dict:
    """One fio random-read job over an existing file; IOPS and MiB/s summed over its jobs."""
    out = subprocess.run(
        [
            "fio",
            "--name=r",
            f"--filename={path}",
            "--rw=randread",
            f"--bs={bs}",
            f"--ioengine={engine}",
            f"--iodepth={depth}",
            f"--numjobs={jobs}",
            "--group_reporting",
            "--time_based",
            f"--runtime={seconds}",
            "--randrepeat=0",
            "--invalidate=1",
            "--output-format=json",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    job = json.loads(out[out.index("{") :])["jobs"][0]["read"]
    return {"iops": job["iops"], "mib_s": job["bw"] / 1024}


class Mount:
    """A `cowfs mount` process; `fuse_options` are added to pyfuse3's (an experiment: through a
    `sitecustomize` of the mount process), `read_ahead_kb` is the mount's `--read-ahead-kb`
    (None: its default)."""

    def __init__(
        self,
        work: Path,
        env: dict[str, str],
        fuse_options: list[str] | None = None,
        read_ahead_kb: int | None = None,
    ) -> None:
        self.mnt = work / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.env = dict(env)
        self.read_ahead_kb = read_ahead_kb
        self.proc: subprocess.Popen | None = None
        if fuse_options:
            site = work / "site"
            site.mkdir(exist_ok=True)
            (site / "sitecustomize.py").write_text(
                "import pyfuse3\n"
                "pyfuse3.default_options = frozenset(\n"
                f"    pyfuse3.default_options | {set(fuse_options)!r})\n"
            )
            self.env["PYTHONPATH"] = os.pathsep.join(
                filter(None, [str(site), env.get("PYTHONPATH")])
            )

    def cli(self, *a: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", *a],
            env=self.env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout

    def up(self) -> None:
        ra = [] if self.read_ahead_kb is None else ["--read-ahead-kb", str(self.read_ahead_kb)]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cowfs.cli.main", "mount", *ra, str(self.mnt)],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not is_mounted(str(self.mnt)):
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the mount did not come up")
            time.sleep(0.05)

    def down(self) -> None:
        subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
        if self.proc is not None:
            self.proc.wait(timeout=30)
            self.proc = None

    def cpu_s(self, system: bool = True) -> float:
        """The mount process's CPU time (user + system, or user only): per operation, a measure
        that a loaded machine disturbs less than wall time."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + (int(fields[12]) if system else 0)
        return ticks / os.sysconf("SC_CLK_TCK")

    def rss_mib(self) -> float:
        assert self.proc is not None
        # `cowfs mount` runs the mount in the same process.
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0


def make_tar(path: Path, files: int) -> None:
    src = path.parent / "tarsrc"
    shutil.rmtree(src, ignore_errors=True)
    for i in range(files):
        p = src / f"d{i // 100:02d}" / f"img{i:05d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(os.urandom(1024 + (i * 37) % 7000))
    with tarfile.open(path, "w") as t:
        t.add(src, arcname="set")


def seq_read(path: Path) -> float:
    """MiB/s of one `cat` of the whole file, page cache dropped first."""
    drop_caches()
    t0 = time.perf_counter()
    subprocess.run(["cat", str(path)], stdout=subprocess.DEVNULL, check=True)
    return path.stat().st_size / (1 << 20) / (time.perf_counter() - t0)


def run(
    work: Path,
    file_mib: int,
    tar_files: int,
    walk_files: int,
    seconds: int,
    log: Log,
    fuse_options: list[str] | None = None,
    read_ahead_kb: int | None = None,
    only_reads: bool = False,
) -> dict:
    env = dict(os.environ)
    env.update(
        COWFS_STORE=str(work / "lstore"),
        COWFS_CACHE_DIR=str(work / "lcache"),
        COWFS_STATE_DIR=str(work / "lstate"),
    )
    for d in ("lstore", "lcache", "lstate"):
        shutil.rmtree(work / d, ignore_errors=True)
    data = work / "ldata"
    big = data / "rand" / "big.bin"
    if not big.exists() or big.stat().st_size != file_mib << 20:
        big.parent.mkdir(parents=True, exist_ok=True)
        with open(big, "wb") as f:
            for _ in range(file_mib):
                f.write(os.urandom(1 << 20))
    m = Mount(work, env, fuse_options, read_ahead_kb)
    m.cli("init")
    m.cli("repo", "create", "r")
    log(f"put {file_mib} MiB")
    m.cli("put", "r@main", str(data / "rand"))
    res: dict[str, float] = {}
    view = m.mnt / "r/main/big.bin"
    cases = [("4k", "psync", 1, 1), ("4k", "libaio", 16, 1), ("4k", "psync", 1, 4)]
    cases += [("128k", "psync", 1, 1), ("128k", "libaio", 16, 1), ("128k", "psync", 1, 4)]
    cases += [("4k", "mmap", 1, 1)]
    m.up()
    try:
        drop_caches()
        log("cold chunk cache: 4k depth 16 (each chunk verified whole on first touch)")
        res["cowfs 4k libaio qd16 cold-chunks"] = fio(view, "4k", "libaio", 16, 1, seconds)["iops"]
        res["cowfs seq MiB/s first read"] = seq_read(view)  # every chunk verified, located
        res["disk seq MiB/s"] = seq_read(big)
        res["cowfs seq MiB/s"] = seq_read(view)
        log(
            f"sequential: disk {res['disk seq MiB/s']:.0f} MiB/s, "
            f"cowfs {res['cowfs seq MiB/s']:.0f} MiB/s"
        )
        for bs, engine, depth, jobs in cases:
            label = f"{bs} {engine} qd{depth} x{jobs}"
            for name, path in (("disk", big), ("cowfs", view)):
                drop_caches()
                c0 = m.cpu_s()
                r = fio(path, bs, engine, depth, jobs, seconds)
                res[f"{name} {label}"] = r["iops"]
                cpu = ""
                if name == "cowfs":
                    us = (m.cpu_s() - c0) / max(r["iops"] * seconds, 1) * 1e6
                    res[f"cpu us/op {label}"] = us
                    cpu = f"  daemon CPU {us:6.0f} us/op"
                log(f"{name:5} {label:22} {r['iops']:10.0f} IOPS {r['mib_s']:8.1f} MiB/s{cpu}")
        if only_reads:
            return res
        # tar x of small files: ext4 (the work folder's filesystem) and a writable view.
        archive = work / "small.tar"
        make_tar(archive, tar_files)
        dst = work / "ext4dst"
        shutil.rmtree(dst, ignore_errors=True)
        dst.mkdir()
        t0 = time.perf_counter()
        subprocess.run(["tar", "xf", str(archive), "-C", str(dst)], check=True)
        res["disk tar x"] = time.perf_counter() - t0
        m.cli("write", "r@main")
        wv = m.mnt / "r/main"
        deadline = time.monotonic() + 10
        while os.getxattr(wv, "user.cowfs.writable") != b"1" and time.monotonic() < deadline:
            time.sleep(0.05)
        c0, u0, t0 = m.cpu_s(), m.cpu_s(system=False), time.perf_counter()
        subprocess.run(["tar", "xf", str(archive), "-C", str(wv)], check=True)
        res["cowfs tar x"] = time.perf_counter() - t0
        res["cpu us/file tar x"] = (m.cpu_s() - c0) / tar_files * 1e6
        res["user cpu us/file tar x"] = (m.cpu_s(system=False) - u0) / tar_files * 1e6
        t0 = time.perf_counter()
        m.cli("commit", "r@main", "-m", "tar")
        res["cowfs commit after tar x"] = time.perf_counter() - t0
        log(
            f"tar x {tar_files}: disk {res['disk tar x']:.2f} s, cowfs {res['cowfs tar x']:.2f} s"
            f", daemon CPU {res['cpu us/file tar x']:.0f} us/file"
        )
    finally:
        m.down()
    if walk_files and not only_reads:
        res.update(walk_rss(m, work, walk_files, log))
    return res


def walk_rss(m: Mount, work: Path, files: int, log: Log) -> dict[str, float]:
    src = work / "walksrc"
    if not src.exists() or sum(1 for _ in src.rglob("*.txt")) != files:
        shutil.rmtree(src, ignore_errors=True)
        for i in range(files):
            p = src / f"{i // 1000:04d}" / f"f{i:07d}.txt"
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"%d\n" % i)
    m.cli("repo", "create", "w")
    log(f"put {files} files")
    m.cli("put", "w@main", str(src))
    m.up()
    try:
        before = m.rss_mib()
        t0 = time.perf_counter()
        subprocess.run(
            ["find", str(m.mnt / "w/main"), "-ls"], stdout=subprocess.DEVNULL, check=True
        )
        took = time.perf_counter() - t0
        after = m.rss_mib()
    finally:
        m.down()
    per = (after - before) * (1 << 20) / files
    log(f"walk {files}: {took:.1f} s, RSS {before:.0f} -> {after:.0f} MiB ({per:.0f} B/file)")
    return {
        "walk s": took,
        "walk rss before MiB": before,
        "walk rss after MiB": after,
        "walk bytes per file": per,
        "walk 2M extrapolated MiB": before + per * 2_000_000 / (1 << 20),
    }


def report(res: dict[str, float]) -> None:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nlocal-store suite (IOPS unless seconds or MiB; load average now {load}):")
    for k, v in res.items():
        print(f"  {k:40} {v:12.2f}")
    print("\nratios cowfs / disk (IOPS; for tar x, disk time / cowfs time):")
    for k in res:
        if k.startswith("cowfs ") and not k.endswith("cold-chunks") and "tar" not in k:
            d = res.get("disk " + k[len("cowfs ") :])
            if d:
                print(f"  {k[6:]:34} {res[k] / d:6.2f}x")
    if res.get("cowfs tar x"):
        print(f"  {'tar x (cowfs/disk time)':34} {res['cowfs tar x'] / res['disk tar x']:6.1f}x")
