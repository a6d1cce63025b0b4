#!/usr/bin/env python3
"""Ingest benchmark: `cowfs put` against `cp` (the physical limit) on one machine, in one run.

Puts a 1 GiB file and 20,000 files of 16 KiB into a local store and into SeaweedFS, then changes
5 MiB in the middle of the 1 GiB file and puts it again, counting the chunks that were uploaded.
Then the memory of a large put: tiny files in directories of 1,000 (`--many`, on /dev/shm when
it has room, so the disk's speed does not matter), put once into a fresh local store with the
peak RSS of the `cowfs put` process taken; with `--many` given twice or more (e.g.
`--many 100000,400000`) the per-file cost shows whether memory stays flat as files grow.
Prints a markdown table with MB/s, files/s and ratios to `cp`; paste it into docs/benchmarks.md.

    python3 scripts/bench/ingest.py [--dir /tmp/cowfs-bench] [--big-mib 1024] [--small 20000]
        [--many 200000[,500000]] [--no-s3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

MiB = 1024 * 1024


def drop_caches() -> bool:
    subprocess.run(["sync"], check=True)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


#: CPU seconds (user + system) of the last `timed` command: on a shared 2-core machine the wall
#: time follows the load, the CPU a put spends much less.
last_cpu = 0.0


def timed(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, str]:
    global last_cpu
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    last_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed: {proc.stderr.strip()}")
    return dt, proc.stdout


def make_data(root: Path, big_mib: int, small: int) -> tuple[Path, Path]:
    root.mkdir(parents=True, exist_ok=True)
    big = root / "big.bin"
    if not big.exists() or big.stat().st_size != big_mib * MiB:
        with open(big, "wb") as f:
            for _ in range(big_mib):
                f.write(os.urandom(MiB))
    smalldir = root / "small"
    if not smalldir.exists() or sum(1 for _ in smalldir.rglob("*.bin")) != small:
        shutil.rmtree(smalldir, ignore_errors=True)
        for i in range(small):
            d = smalldir / f"d{i // 1000:03d}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"f{i:06d}.bin").write_bytes(os.urandom(16 * 1024))
    return big, smalldir


_PEAK = (
    "import atexit, resource, runpy, sys\n"
    "atexit.register(lambda: print('peak-rss-kib', "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr))\n"
    "sys.argv = ['cowfs', *sys.argv[1:]]\n"
    "runpy.run_module('cowfs.cli.main', run_name='__main__')\n"
)


def make_many(root: Path, n: int) -> Path:
    """`n` files of a few bytes in directories of 1,000 (reused when already there)."""
    top = root / f"many-{n}"
    if (top / "done").exists():
        return top
    shutil.rmtree(top, ignore_errors=True)
    for i in range(n):
        d = top / f"d{i // 1000:05d}"
        if i % 1000 == 0:
            d.mkdir(parents=True)
        (d / f"f{i:07d}").write_bytes(b"%d\n" % i)
    (top / "done").write_text("")
    return top


def bench_many(root: Path, counts: list[int]) -> list[str]:
    """Peak RSS of one `cowfs put` of many tiny files into a fresh local store."""
    shm = Path("/dev/shm")
    need = max(counts) * 5000  # a tmpfs page and an inode per file, with room to spare
    base = shm / "cowfs-bench-many" if shm.is_dir() and shutil.disk_usage(shm).free > need else root
    rows = []
    for n in counts:
        src = make_many(base, n)
        work = root / f"many-store-{n}"
        shutil.rmtree(work, ignore_errors=True)
        env = dict(
            os.environ,
            COWFS_STORE=str(work / "store"),
            COWFS_CACHE_DIR=str(work / "cache"),
            COWFS_STATE_DIR=str(work / "state"),
        )
        cowfs(env, "init")
        subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", "repo", "create", "many"],
            env=env,
            check=True,
            capture_output=True,
        )
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", _PEAK, "put", "many@main:/m", str(src), "--json"],
            env=env,
            capture_output=True,
            text=True,
        )
        dt = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"put of {n:,} files failed: {proc.stderr.strip()}")
        peak = int(proc.stderr.split("peak-rss-kib")[-1].split()[0]) / 1024
        rows.append(
            f"| put {n:,} tiny files, local | {dt:.1f} s | {n / dt:,.0f} files/s "
            f"| peak RSS {peak:,.0f} MiB ({peak * 1024 * 1024 / n:,.0f} B per file) |"
        )
        shutil.rmtree(work, ignore_errors=True)
    return rows


def cowfs(env: dict[str, str], *args: str) -> tuple[float, dict]:
    dt, out = timed([sys.executable, "-m", "cowfs.cli.main", *args, "--json"], env)
    return dt, json.loads(out)


def bench_store(
    name: str,
    env: dict[str, str],
    big: Path,
    small: Path,
    n_small: int,
    cp_big: float,
    cp_small: float,
) -> list[str]:
    rows = []
    cowfs(env, "init")
    subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", "repo", "create", "bench"],
        env=env,
        check=True,
        capture_output=True,
    )
    size = big.stat().st_size
    drop_caches()
    dt, _ = cowfs(env, "put", "bench@main:/big.bin", str(big))
    rows.append(
        f"| put 1 GiB file, {name} | {dt:.2f} s (CPU {last_cpu:.2f} s) "
        f"| {size / dt / 1e6:.0f} MB/s | {cp_big / dt:.2f} |"
    )
    drop_caches()
    dt, _ = cowfs(env, "put", "bench@main:/small", str(small))
    rows.append(
        f"| put {n_small:,} x 16 KiB, {name} | {dt:.2f} s (CPU {last_cpu:.2f} s) "
        f"| {n_small / dt:,.0f} files/s | {cp_small / dt:.2f} |"
    )
    dt, out = cowfs(env, "put", "bench@main:/small", str(small))
    rows.append(f"| put again, unchanged ({out['files_read']} read), {name} | {dt:.2f} s | - | - |")
    _, s1 = cowfs(env, "stats")
    with open(big, "r+b") as f:
        f.seek(size // 2)
        f.write(os.urandom(5 * MiB))
    dt, out = cowfs(env, "put", "bench@main:/big.bin", str(big))
    _, s2 = cowfs(env, "stats")
    grown = (s2["stored_bytes"] - s1["stored_bytes"]) / MiB
    rows.append(
        f"| 5 MiB changed in 1 GiB, {name} | {dt:.2f} s | stored {grown:.1f} MiB, "
        f"{out['chunks_new']} chunks + {out['tree_nodes_new']} tree nodes uploaded | - |"
    )
    rows.append(
        f"| stats, {name} | logical {s2['logical_bytes'] / MiB:,.0f} MiB | stored "
        f"{s2['stored_bytes'] / MiB:,.0f} MiB in {s2['chunks']:,} chunks | dedup "
        f"{s2['dedup_ratio']} |"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cowfs-bench"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--no-s3", action="store_true", help="skip SeaweedFS")
    ap.add_argument(
        "--many",
        default="200000",
        help="comma-separated counts of tiny files for the memory of a large put ('' skips)",
    )
    args = ap.parse_args()
    load_start = os.getloadavg()[0]
    root: Path = args.dir
    root.mkdir(parents=True, exist_ok=True)
    big, small = make_data(root / "data", args.big_mib, args.small)

    dropped = drop_caches()
    out = root / "cp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    cp_big, _ = timed(["sh", "-c", f"cp {big} {out}/ && sync"])
    drop_caches()
    cp_small, _ = timed(["sh", "-c", f"cp -r {small} {out}/small && sync"])
    shutil.rmtree(out)
    size = big.stat().st_size
    rows = [
        "| case | time | rate | ratio to cp (higher is better) |",
        "| --- | --- | --- | --- |",
        f"| cp 1 GiB file + sync (physical limit) | {cp_big:.2f} s "
        f"| {size / cp_big / 1e6:.0f} MB/s | 1.00 |",
        f"| cp -r {args.small:,} x 16 KiB + sync | {cp_small:.2f} s "
        f"| {args.small / cp_small:,.0f} files/s | 1.00 |",
    ]

    for store_name in ("local",) + (() if args.no_s3 else ("seaweedfs",)):
        work = root / store_name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        env = dict(
            os.environ, COWFS_CACHE_DIR=str(work / "cache"), COWFS_STATE_DIR=str(work / "state")
        )
        # The 5 MiB edit changes the file: start each store from the same bytes.
        big_copy = work / "big.bin"
        shutil.copyfile(big, big_copy)
        if store_name == "local":
            env["COWFS_STORE"] = str(work / "store")
            rows += bench_store("local", env, big_copy, small, args.small, cp_big, cp_small)
        else:
            sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
            from cowfs.testing.seaweed import SeaweedServer

            with SeaweedServer() as server:
                server.make_bucket("bench")
                env.update(server.env())
                env["COWFS_STORE"] = "s3://bench/lake"
                rows += bench_store("SeaweedFS", env, big_copy, small, args.small, cp_big, cp_small)
        big_copy.unlink()
    counts = [n for n in (int(x) for x in args.many.split(",") if x) if n > 0]
    if counts:
        rows += bench_many(root, counts)
    print(
        f"\ncaches dropped between runs: {'yes' if dropped else 'no (not permitted here)'}; "
        f"{os.cpu_count()} cores; load average {load_start:.1f} at the start, "
        f"{os.getloadavg()[0]:.1f} at the end\n"
    )
    print("\n".join(rows))


if __name__ == "__main__":
    main()
