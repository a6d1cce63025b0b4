#!/usr/bin/env python3
"""Pipeline benchmark: 10,000 small files through a batching Python transform.

Measures the first (full) job, the job after adding one file, and the latency from `cowfs put`
returning to the output commit being finished through a running daemon. Prints datums/s and the
incremental-to-full ratio. One command, no arguments needed:

    python scripts/bench/pipeline.py [--files 10000] [--store URL] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TRANSFORM = """
from cowfs.pipelines import batch
for d in batch.datums():
    for f in d.inputs["in"].iterdir():
        (d.out / f.name).write_bytes(f.read_bytes()[::-1])
"""


def cowfs(env: dict, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", *args], env=env, capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise SystemExit(f"cowfs {' '.join(args)} failed: {proc.stderr}")
    return proc.stdout


def timed_run(env: dict, name: str) -> tuple[dict, float]:
    t0 = time.perf_counter()
    job = json.loads(cowfs(env, "pipeline", "run", name, "--json"))
    job["seconds"] = job["finished"] - job["started"]
    return job, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=10_000)
    ap.add_argument("--store", default=None, help="store URL (default: a temporary folder)")
    ap.add_argument("--parallelism", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="cowfs-bench-pipeline-"))
    env = dict(
        os.environ,
        COWFS_STORE=args.store or str(tmp / "store"),
        COWFS_CACHE_DIR=str(tmp / "cache"),
        COWFS_STATE_DIR=str(tmp / "state"),
    )
    daemon = None
    try:
        src = tmp / "src"
        src.mkdir()
        for i in range(args.files):
            (src / f"f{i:05d}.txt").write_text(f"small file {i}\n" * 4)
        cowfs(env, "init")
        cowfs(env, "repo", "create", "data")
        t0 = time.perf_counter()
        cowfs(env, "put", "data@main", str(src))
        put_s = time.perf_counter() - t0
        spec = {
            "pipeline": "rev",
            "input": {"pfs": {"repo": "data", "glob": "/*", "name": "in"}},
            "transform": {"cmd": ["python3", "-c", TRANSFORM]},
            "datum_batching": True,
            "parallelism": args.parallelism,
        }
        (tmp / "spec.json").write_text(json.dumps(spec))
        cowfs(env, "pipeline", "create", "-f", str(tmp / "spec.json"))

        full, full_wall = timed_run(env, "rev")
        assert full["processed"] == args.files, full
        (src / "extra-1.txt").write_text("one more\n")
        cowfs(env, "put", "data@main", str(src))
        inc, inc_wall = timed_run(env, "rev")
        assert (inc["processed"], inc["skipped"]) == (1, args.files), inc

        # End to end through the daemon: put returns -> output commit finished.
        daemon = subprocess.Popen(
            [sys.executable, "-m", "cowfs.cli.main", "daemon", "--poll-interval", "0.1"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        while "ready:" not in (daemon.stderr.readline() or "ready:"):
            pass
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
        os.environ.update({k: env[k] for k in ("COWFS_STORE", "COWFS_CACHE_DIR")})
        from cowfs.lake import Lake
        from cowfs.pipelines.lineage import wait_pending

        (src / "extra-2.txt").write_text("and another\n")
        gid = cowfs(env, "put", "data@main", str(src)).strip()
        t_put = time.perf_counter()
        with Lake.open(env["COWFS_STORE"]) as lake:
            while wait_pending(lake, gid)[1]:
                time.sleep(0.01)
            latency = time.perf_counter() - t_put
            out = [c for c in lake.inspect(gid) if c.repo == "rev"]
        assert out and out[0].state == "finished", out

        n = args.files
        print(f"files                         {n}")
        print(f"put of the inputs             {put_s:8.2f} s")
        print(
            f"first job (full)              {full_wall:8.2f} s wall, {full['seconds']:.2f} s in "
            f"the job: {n / full['seconds']:,.0f} datums/s ({n / full_wall:,.0f} end to end)"
        )
        print(
            f"job after adding one file     {inc_wall:8.2f} s wall, {inc['seconds']:.3f} s in "
            f"the job (1 processed, {inc['skipped']} skipped)"
        )
        print(
            f"incremental / full            {inc_wall / full_wall:8.2%} wall, "
            f"{inc['seconds'] / full['seconds']:.2%} in the job"
        )
        print(f"put returned -> output commit {latency:8.2f} s (daemon polling every 0.1 s)")
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
