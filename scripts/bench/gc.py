#!/usr/bin/env python3
"""Garbage-collection and `cowfs check` benchmark, on a local store and on SeaweedFS, in one run.

Builds a store of 20 commits that together add 1 GiB in large files and 20,000 files of 16 KiB,
resets the branch 5 commits back (so 5 commits are unreachable), then times `gc --dry-run`,
`gc` (with `--keep-commits-since 0`, so the 5 commits go), `gc` of the unchanged store, and
`check` with and without `--read-data`. Bytes reclaimed are compared with the ideal (the stored
bytes only the dropped commits reference), and times with the floor for each: listing every
key (a sweep cannot do less) and reading every chunk (what `--read-data` must do).
`COWFS_GC_WINDOW=0` here: the collector's wait for writers (60 s by default, twice with
`--grace 0`) is a wait, not work, and would only hide the figures.

    python3 scripts/bench/gc.py [--dir /tmp/cowfs-gc-bench] [--big-mib 1024] [--small 20000]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MiB = 1024 * 1024
COMMITS = 20
DROPPED = 5


def cowfs(env: dict[str, str], *args: str) -> tuple[float, dict]:
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
    )
    dt = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"cowfs {' '.join(args)} failed: {proc.stderr.strip()}")
    return dt, json.loads(proc.stdout) if proc.stdout.strip() else {}


def build(env: dict[str, str], work: Path, big_mib: int, small: int) -> list[str]:
    cowfs(env, "init")
    subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", "repo", "create", "bench"],
        env=env,
        check=True,
        capture_output=True,
    )
    ids = []
    for i in range(COMMITS):
        d = work / f"c{i:02d}"
        d.mkdir(parents=True)
        with open(d / "big.bin", "wb") as f:
            for _ in range(big_mib // COMMITS):
                f.write(os.urandom(MiB))
        for j in range(small // COMMITS):
            (d / f"f{j:05d}.bin").write_bytes(os.urandom(16 * 1024))
        out = subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", "put", f"bench@main:/c{i:02d}", str(d)],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        ids.append(out.stdout.strip())
        shutil.rmtree(d)
    return ids


def ideal_bytes(env: dict[str, str], keep: str, dropped: list[str]) -> tuple[int, int]:
    """(stored bytes only the dropped commits reach, seconds to list every key: the floor)."""
    os.environ.update(env)
    from cowfs import gc, layout
    from cowfs.lake import Lake

    with Lake.open(env["COWFS_STORE"]) as lake:
        t0 = time.perf_counter()
        sizes = {}
        for prefix in (layout.COMMITS, layout.TREES, layout.CHUNKS, layout.REFS):
            sizes.update(dict(lake.objects.list(prefix)))
        list_s = time.perf_counter() - t0
        live, _ = gc.mark(lake, {layout.commit_key("bench", keep)})
        gone, _ = gc.mark(lake, {layout.commit_key("bench", c) for c in dropped})
        only = gone - live
        return sum(sizes.get(k, 0) for k in only), list_s


def read_floor(env: dict[str, str]) -> tuple[float, int]:
    """Seconds to GET every chunk's bytes, unverified: what `check --read-data` cannot beat."""
    os.environ.update(env)
    from concurrent.futures import ThreadPoolExecutor

    from cowfs import layout
    from cowfs.objectstore import open_objectstore

    objects = open_objectstore(env["COWFS_STORE"])
    keys = [k for k, _ in objects.list(layout.CHUNKS)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(16) as pool:
        total = sum(len(b) for b in pool.map(objects.get, keys))
    return time.perf_counter() - t0, total


def bench_store(name: str, env: dict[str, str], work: Path, big_mib: int, small: int) -> list[str]:
    t0 = time.perf_counter()
    ids = build(env, work, big_mib, small)
    built = time.perf_counter() - t0
    keep = ids[COMMITS - DROPPED - 1]
    cowfs(env, "branch", "reset", "bench@main", keep)
    ideal, list_s = ideal_bytes(env, keep, ids[COMMITS - DROPPED :])
    rows = [f"| build ({COMMITS} puts), {name} | {built:.1f} s | | |"]
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cowfs.cli.main", "--help"], env=env, capture_output=True)
    startup = time.perf_counter() - t0
    rows.append(f"| cowfs start-up alone (in every row below) | {startup:.2f} s | | |")
    rows.append(f"| list every key (floor for gc), {name} | {list_s:.2f} s | | 1.00 |")
    gc_args = ("gc", "--grace", "0", "--keep-commits-since", "0")
    dt, out = cowfs(env, *gc_args, "--dry-run")
    rows.append(
        f"| gc --dry-run, {name} | {dt:.2f} s | {out['live']:,} live of {out['listed']:,}; "
        f"would free {out['swept_bytes'] / MiB:,.1f} MiB (ideal {ideal / MiB:,.1f}) | "
        f"{list_s / dt:.2f} |"
    )
    dt, out = cowfs(env, *gc_args)
    rows.append(
        f"| gc (two runs), {name} | {dt:.2f} s | freed {out['swept_bytes'] / MiB:,.1f} MiB = "
        f"{out['swept_bytes'] / ideal:.3f} x ideal; {out['commits_dropped']} commits dropped | "
        f"{2 * list_s / dt:.2f} |"
    )
    dt, out = cowfs(env, "gc", "--grace", "0")
    rows.append(
        f"| gc, unchanged store, {name} | {dt:.2f} s | {out['listed']:,} objects listed, "
        f"freed {out['swept']} | {2 * list_s / dt:.2f} |"
    )
    dt, out = cowfs(env, "check")
    ok = "ok" if out["ok"] else "PROBLEMS"
    rows.append(
        f"| check, {name} | {dt:.2f} s | {out['commits']} commits, {out['trees']:,} nodes, "
        f"{out['chunks']:,} chunks: {ok} | {list_s / dt:.2f} |"
    )
    floor_s, floor_bytes = read_floor(env)
    rows.append(
        f"| read every chunk, unverified (floor for --read-data), {name} | {floor_s:.2f} s | "
        f"{floor_bytes / floor_s / 1e6:,.0f} MB/s | 1.00 |"
    )
    dt, out = cowfs(env, "check", "--read-data")
    ok = "ok" if out["ok"] else "PROBLEMS"
    rows.append(
        f"| check --read-data, {name} | {dt:.2f} s | {out['bytes_read'] / dt / 1e6:,.0f} MB/s: "
        f"{ok} | {floor_s / dt:.2f} |"
    )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--dir", type=Path, default=Path("/tmp/cowfs-gc-bench"))
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--small", type=int, default=20000)
    ap.add_argument("--no-s3", action="store_true", help="skip SeaweedFS")
    args = ap.parse_args()
    rows = [
        "| case | time | result | ratio to floor (1.00 = at the floor) |",
        "| --- | --- | --- | --- |",
    ]
    for store_name in ("local",) + (() if args.no_s3 else ("seaweedfs",)):
        work = args.dir / store_name
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        env = dict(
            os.environ,
            COWFS_CACHE_DIR=str(work / "cache"),
            COWFS_STATE_DIR=str(work / "state"),
            COWFS_GC_WINDOW="0",
        )
        if store_name == "local":
            env["COWFS_STORE"] = str(work / "store")
            rows += bench_store("local", env, work / "data", args.big_mib, args.small)
        else:
            from cowfs.testing.seaweed import SeaweedServer

            with SeaweedServer() as server:
                server.make_bucket("bench")
                env.update(server.env())
                env["COWFS_STORE"] = "s3://bench/lake"
                rows += bench_store("SeaweedFS", env, work / "data", args.big_mib, args.small)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{os.cpu_count()} cores; {COMMITS} commits, {DROPPED} made unreachable by a reset\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
