"""Benchmark the cowfs mount against the local disk and other S3 filesystems, in one run.

    python scripts/bench/mount.py [--big-mib 1024] [--files 20000] [--peers weed,rclone,s3fs]
    python scripts/bench/mount.py --suite local [--file-mib 768] [--walk-files 200000]
    python scripts/bench/mount.py --suite walk --walk-files 2000000 [--work DIR]

One SeaweedFS (`weed mini`) serves a bucket holding the same data twice: as plain objects (for
`weed mount`, `rclone mount`, `s3fs`) and as a cowfs store. Measured, in seconds:
  1. sequential read (`cat`) of one large file: cold (page cache dropped, empty chunk cache,
     fresh mount), warm (fresh mount, chunk cache full: cowfs only), hot (page cache);
  2. `tar cf - | wc -c` of many 16 KiB files: cold, then again;
  3. `find -ls` (a stat of every file) over them on a fresh mount.
Each against the local disk, the physical limit. Needs root (drop_caches, mounts). Prints a
table and the ratio of every peer to cowfs, the CPU that each mount process and the SeaweedFS
server spent per MiB of the cold read (a figure that other load on the machine disturbs less
than seconds do), and the load average. `--read-ahead-kb N` sets every FUSE mount's
`read_ahead_kb` (the kernel then sends READs of up to N KiB); without it the cowfs mount sets
its own (1024 by default) and the peers keep the kernel's 128.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from cowfs.testing.seaweed import SeaweedServer
from daemon.mount import is_mounted

BUCKET = "bench"


def drop_caches() -> None:
    subprocess.run(["sync"], check=True)
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(cmd: str, cwd: Path | None = None) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, cwd=cwd, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def wait_mounted(mnt: Path, proc: subprocess.Popen | None, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not is_mounted(str(mnt)):
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not mount in {timeout} s")
        time.sleep(0.05)
    # Some mounts answer before their first listing works.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            os.listdir(mnt)
            return
        time.sleep(0.1)


def unmount(mnt: Path, proc: subprocess.Popen | None) -> None:
    for args in (["fusermount3", "-u"], ["fusermount", "-u"], ["fusermount3", "-uz"]):
        if not is_mounted(str(mnt)):
            break
        subprocess.run([*args, str(mnt)], capture_output=True)
        time.sleep(0.2)
    if proc is not None:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def make_data(root: Path, big_mib: int, files: int) -> None:
    root.mkdir(parents=True, exist_ok=True)
    big = root / "big" / "big.bin"
    if not big.exists() or big.stat().st_size != big_mib << 20:
        big.parent.mkdir(exist_ok=True)
        with open(big, "wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(1 << 20))
    small = root / "small"
    if not small.exists() or sum(1 for _ in small.rglob("*.bin")) != files:
        shutil.rmtree(small, ignore_errors=True)
        for i in range(files):
            d = small / f"d{i // 200:03d}"
            if i % 200 == 0:
                d.mkdir(parents=True)
            (d / f"f{i:05d}.bin").write_bytes(os.urandom(16 << 10))


def upload_raw(server: SeaweedServer, root: Path) -> None:
    client = server.client()
    paths = [p for p in root.rglob("*") if p.is_file()]

    def put(p: Path) -> None:
        client.upload_file(str(p), BUCKET, f"raw/{p.relative_to(root)}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, paths))


class Target:
    """A filesystem to measure: how to mount it fresh, and where the data appears in it."""

    name = ""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.mnt = work / f"mnt-{self.name}"
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    def big(self) -> Path:
        return self.mnt / "big/big.bin"

    def small(self) -> Path:
        return self.mnt / "small"

    def mount(self, fresh_cache: bool = True) -> None:
        raise NotImplementedError

    def umount(self) -> None:
        unmount(self.mnt, self.proc)
        self.proc = None


class Local(Target):
    name = "local"

    def __init__(self, work: Path, data: Path) -> None:
        super().__init__(work)
        self.data = data

    def big(self) -> Path:
        return self.data / "big/big.bin"

    def small(self) -> Path:
        return self.data / "small"

    def mount(self, fresh_cache: bool = True) -> None:
        pass

    def umount(self) -> None:
        pass


class Cowfs(Target):
    name = "cowfs"

    def __init__(self, work: Path, env: dict[str, str], read_ahead_kb: int | None = None) -> None:
        super().__init__(work)
        self.env = env
        self.read_ahead_kb = read_ahead_kb

    def big(self) -> Path:
        return self.mnt / "big/main/big.bin"

    def small(self) -> Path:
        return self.mnt / "small/main"

    def mount(self, fresh_cache: bool = True) -> None:
        if fresh_cache:
            shutil.rmtree(self.env["COWFS_CACHE_DIR"], ignore_errors=True)
        log = open(self.work / "cowfs-mount.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cowfs.cli.main", "mount", str(self.mnt)]
            + ([] if self.read_ahead_kb is None else ["--read-ahead-kb", str(self.read_ahead_kb)]),
            env=self.env,
            stdout=log,
            stderr=log,
        )
        wait_mounted(self.mnt, self.proc, "cowfs mount")


class WeedMount(Target):
    name = "weed"

    def __init__(self, work: Path, server: SeaweedServer) -> None:
        super().__init__(work)
        self.server = server

    def mount(self, fresh_cache: bool = True) -> None:
        cache = self.work / "weed-cache"
        shutil.rmtree(cache, ignore_errors=True)
        log = open(self.work / "weed-mount.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                shutil.which("weed") or "weed",
                "-logtostderr",
                "mount",
                # host:port.grpcPort: the test server's gRPC port is not port + 10000.
                f"-filer=127.0.0.1:{self.server.ports['filer.port']}"
                f".{self.server.ports['filer.port.grpc']}",
                f"-dir={self.mnt}",
                f"-filer.path=/buckets/{BUCKET}/raw",
                f"-cacheDir={cache}",
            ],
            stdout=log,
            stderr=log,
        )
        wait_mounted(self.mnt, self.proc, "weed mount")


class Rclone(Target):
    name = "rclone"

    def __init__(self, work: Path, server: SeaweedServer) -> None:
        super().__init__(work)
        self.server = server

    def mount(self, fresh_cache: bool = True) -> None:
        s = self.server
        remote = (
            f":s3,provider=Other,endpoint='{s.endpoint_url}',access_key_id={s.access_key},"
            f"secret_access_key={s.secret_key},region={s.region}:{BUCKET}/raw"
        )
        cache = self.work / "rclone-cache"
        shutil.rmtree(cache, ignore_errors=True)
        log = open(self.work / "rclone-mount.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["rclone", "mount", remote, str(self.mnt), "--read-only", "--cache-dir", str(cache)],
            env=_clean_env(),
            stdout=log,
            stderr=log,
        )
        wait_mounted(self.mnt, self.proc, "rclone mount")


class S3fs(Target):
    name = "s3fs"

    def __init__(self, work: Path, server: SeaweedServer) -> None:
        super().__init__(work)
        self.server = server

    def mount(self, fresh_cache: bool = True) -> None:
        s = self.server
        pw = self.work / "s3fs.passwd"
        pw.write_text(f"{s.access_key}:{s.secret_key}\n")
        pw.chmod(0o600)
        log = open(self.work / "s3fs-mount.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                "s3fs",
                f"{BUCKET}:/raw",
                str(self.mnt),
                "-f",
                "-o",
                f"url={s.endpoint_url},use_path_request_style,passwd_file={pw},ro",
            ],
            env=_clean_env(),
            stdout=log,
            stderr=log,
        )
        wait_mounted(self.mnt, self.proc, "s3fs")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def set_read_ahead(mnt: Path, kb: int) -> None:
    dev = os.stat(mnt).st_dev
    Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").write_text(f"{kb}\n")


def _clean_env() -> dict[str, str]:
    """Without the host's AWS_* and CA bundle settings, which would steer peers away."""
    return {
        k: v for k, v in os.environ.items() if not k.startswith("AWS_") and "CA_BUNDLE" not in k
    }


def measure(
    t: Target,
    results: dict[str, dict[str, float]],
    log: Callable[[str], None],
    server_pid: int | None = None,
    read_ahead_kb: int | None = None,
) -> None:
    r = results.setdefault(t.name, {})

    def step(key: str, fn: Callable[[], float]) -> None:
        try:
            r[key] = fn()
            log(f"{t.name:7s} {key:18s} {r[key]:8.2f} s")
        except Exception as e:  # a peer that fails is reported, not fatal
            log(f"{t.name:7s} {key:18s} failed: {e}")

    def mount(fresh_cache: bool = True) -> None:
        t.mount(fresh_cache)
        if read_ahead_kb is not None and not isinstance(t, (Local, Cowfs)):
            set_read_ahead(t.mnt, read_ahead_kb)

    def big_cold() -> float:
        drop_caches()
        mount()
        pids = {"client": t.proc.pid if t.proc else None, "server": server_pid}
        if isinstance(t, Local):
            pids = {}
        before = {k: cpu_seconds(p) for k, p in pids.items() if p is not None}
        took = timed(f"cat '{t.big()}' > /dev/null")
        mib = os.path.getsize(t.big()) / (1 << 20)
        for k, c in before.items():
            r[f"cold cpu {k}"] = (cpu_seconds(pids[k] or 0) - c) * 1000 / mib
        return took

    step("read cold", big_cold)
    if isinstance(t, Cowfs):
        t.umount()

        def big_warm() -> float:
            drop_caches()
            mount(fresh_cache=False)
            return timed(f"cat '{t.big()}' > /dev/null")

        step("read warm", big_warm)
    step("read hot", lambda: timed(f"cat '{t.big()}' > /dev/null"))
    t.umount()

    def tar_cold() -> float:
        drop_caches()
        mount()
        return timed(f"tar cf - -C '{t.small()}' . 2>/dev/null | wc -c")

    step("tar cold", tar_cold)
    step("tar again", lambda: timed(f"tar cf - -C '{t.small()}' . 2>/dev/null | wc -c"))
    t.umount()

    def find_stat() -> float:
        drop_caches()
        mount(fresh_cache=False)
        return timed(f"find '{t.small()}' -ls > /dev/null")

    step("find+stat", find_stat)
    step("find+stat again", lambda: timed(f"find '{t.small()}' -ls > /dev/null"))
    t.umount()


def report(results: dict[str, dict[str, float]], big_mib: int) -> None:
    keys = [
        "read cold",
        "read warm",
        "read hot",
        "tar cold",
        "tar again",
        "find+stat",
        "find+stat again",
    ]
    names = list(results)
    print()
    print(f"{'seconds':18s}" + "".join(f"{n:>10s}" for n in names))
    for k in keys:
        row = [results[n].get(k) for n in names]
        if all(v is None for v in row):
            continue
        print(f"{k:18s}" + "".join(f"{v:10.2f}" if v is not None else f"{'-':>10s}" for v in row))
    cow = results.get("cowfs", {})
    print()
    print("ratio peer / cowfs (above 1: cowfs is faster)")
    for k in keys:
        if k not in cow:
            continue
        parts = [
            f"{n} {results[n][k] / cow[k]:.2f}"
            for n in names
            if n != "cowfs" and k in results[n] and cow[k] > 0
        ]
        print(f"  {k:18s} " + ", ".join(parts))
    for k in ("read cold", "read warm", "read hot"):
        if k in cow:
            print(f"cowfs {k}: {big_mib / 1024 * 1.073741824 / cow[k]:.2f} GB/s")
    print("cold read, CPU ms per MiB: mount process / SeaweedFS server")
    for n in names:
        if "cold cpu client" in results[n]:
            srv = results[n].get("cold cpu server")
            print(f"  {n:8s} {results[n]['cold cpu client']:6.2f} / {srv or 0:6.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--peers", default="weed,rclone,s3fs")
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (kept if given).")
    ap.add_argument(
        "--suite",
        choices=["s3", "local", "walk"],
        default="s3",
        help="s3: the SeaweedFS comparison above; local: fio random reads, mmap, tar x and\n"
        "the walk's memory over a local store (scripts/bench/mount_fio.py); walk: the\n"
        "mount's memory and speed walking a generated commit of --walk-files files\n"
        "(scripts/bench/mount_walk.py; COWFS_BENCH_CODE=DIR mounts another checkout)",
    )
    ap.add_argument("--file-mib", type=int, default=768, help="local: the random-read file")
    ap.add_argument("--tar-files", type=int, default=2000, help="local: files in the tar")
    ap.add_argument("--walk-files", type=int, default=200_000, help="local: files walked")
    ap.add_argument("--seconds", type=int, default=6, help="local: seconds per fio job")
    ap.add_argument("--fuse-option", action="append", default=[], help="local: e.g. max_read=N")
    ap.add_argument("--read-ahead-kb", type=int, default=None, help="the FUSE mounts' bdi")
    ap.add_argument("--only-reads", action="store_true", help="local: skip tar x and the walk")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark drops the page cache and mounts filesystems")
    work = args.work or Path(tempfile.mkdtemp(prefix="cowfs-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if args.suite == "walk":
        sys.path.insert(0, str(Path(__file__).parent))
        import mount_walk

        for k, v in mount_walk.run(work, args.walk_files, log).items():
            print(f"  {k:24} {v:14,.1f}")
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return

    if args.suite == "local":
        sys.path.insert(0, str(Path(__file__).parent))
        import mount_fio

        res = mount_fio.run(
            work,
            args.file_mib,
            args.tar_files,
            args.walk_files,
            args.seconds,
            log,
            args.fuse_option,
            args.read_ahead_kb,
            args.only_reads,
        )
        mount_fio.report(res)
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
        return

    log(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    data = work / "data"
    log(f"making {args.big_mib} MiB + {args.files} x 16 KiB in {data}")
    make_data(data, args.big_mib, args.files)
    targets: list[Target] = []
    for stale in ("seaweed", "cowfs-cache", "cowfs-state"):
        shutil.rmtree(work / stale, ignore_errors=True)
    with SeaweedServer(data_dir=work / "seaweed") as server:
        server.make_bucket(BUCKET)
        env = dict(os.environ)
        env.update(server.env())
        env.update(
            COWFS_STORE=f"s3://{BUCKET}/cowfs",
            COWFS_CACHE_DIR=str(work / "cowfs-cache"),
            COWFS_STATE_DIR=str(work / "cowfs-state"),
        )

        def cli(*a: str) -> None:
            subprocess.run(
                [sys.executable, "-m", "cowfs.cli.main", *a],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )

        log("putting the data into cowfs on SeaweedFS")
        cli("init")
        for repo in ("big", "small"):
            cli("repo", "create", repo)
            cli("put", f"{repo}@main", str(data / repo))
        peers = [p for p in args.peers.split(",") if p]
        if peers:
            log("uploading the same data as plain objects for the peers")
            upload_raw(server, data)
        targets.append(Local(work, data))
        targets.append(Cowfs(work, env, args.read_ahead_kb))
        for p in peers:
            cls = {"weed": WeedMount, "rclone": Rclone, "s3fs": S3fs}[p]
            tool = "weed" if p == "weed" else p
            if shutil.which(tool) is None:
                log(f"skipping {p}: {tool} is not installed")
                continue
            targets.append(cls(work, server))
        results: dict[str, dict[str, float]] = {}
        try:
            for t in targets:
                log(f"measuring {t.name}")
                try:
                    measure(t, results, log, server.pid, args.read_ahead_kb)
                finally:
                    t.umount()
        finally:
            for t in targets:
                with contextlib.suppress(Exception):
                    t.umount()
    report(results, args.big_mib)
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
