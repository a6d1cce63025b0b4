#!/usr/bin/env python3
"""Pipeline benchmark: 10,000 small files through a batching Python transform, then the local
runner against the Ray runner.

Measures the first (full) job, the job after adding one file, and the latency from `cowfs put`
returning to the output commit being finished through a running daemon. Prints datums/s and the
incremental-to-full ratio. Then (unless --no-ray) the same machine's two cores as a two-node Ray
cluster (`ray.cluster_utils.Cluster`, one CPU per node) against the local runner with
parallelism 2: 10,000 trivial datums (batching transform) and 200 datums of ~0.2 s CPU each,
printing datums/s, Ray's overhead per datum with and without batching (batch_size 1), and the
ratio to local. One command, no arguments needed:

    python scripts/bench/pipeline.py [--files 10000] [--store URL] [--keep] [--no-ray]
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
    ap.add_argument("--no-ray", action="store_true", help="skip the local-vs-Ray comparison")
    ap.add_argument("--only-ray", action="store_true", help="only the local-vs-Ray comparison")
    ap.add_argument("--trivial", type=int, default=10_000, help="trivial datums (Ray part)")
    ap.add_argument("--unbatched", type=int, default=100, help="of them, run one per task")
    ap.add_argument("--cpu-datums", type=int, default=200, help="~0.2 s CPU datums (Ray part)")
    args = ap.parse_args()
    if args.only_ray:
        compare_runners(args)
        return

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
    if not args.no_ray:
        compare_runners(args)


CPU_WORK = """
import time
from cowfs.pipelines import batch
for d in batch.datums():
    t = time.process_time() + 0.2
    n = 0
    while time.process_time() < t:
        n += 1
    for f in d.inputs["in"].iterdir():
        (d.out / f.name).write_text(str(n))
"""


def compare_runners(args: argparse.Namespace) -> None:
    """Local runner vs Ray (two nodes of one CPU each) on the same two cores, in-process."""
    try:
        from ray.cluster_utils import Cluster
    except ImportError:
        print("Ray is not installed: pip install 'cowfs[ray]' for the runner comparison")
        return
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    tmp = Path(tempfile.mkdtemp(prefix="cowfs-bench-runners-"))
    os.environ.update(COWFS_CACHE_DIR=str(tmp / "cache"), COWFS_STATE_DIR=str(tmp / "state"))
    from cowfs.lake import Lake
    from cowfs.pipelines import executor, records
    from cowfs.pipelines.spec import parse
    from cowfs.snapshot import snapshot
    from cowfs.tree import TreeView, empty_tree

    cluster = Cluster(
        initialize_head=True,
        connect=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes(timeout=300)
    rows: list[tuple[str, int, float]] = []
    try:
        lake = Lake.open(str(tmp / "store"), create=True)
        sets = {"trivial": args.trivial, "unbatched": args.unbatched, "cpu": args.cpu_datums}
        for repo, n in sets.items():
            src = tmp / repo
            src.mkdir()
            for i in range(n):
                (src / f"f{i:05d}.txt").write_text(f"datum {i}\n")
            lake.create_repo(repo)
            empty = TreeView(lake.store, empty_tree(lake.store))
            changes, _ = snapshot(lake.store, src, "", mirror=True, base=empty)
            lake.commit(repo, "main", changes, "inputs")

        def job(name: str, repo: str, code: str, runner: str, batch: int | None = None) -> None:
            spec = {
                "pipeline": name,
                "input": {"pfs": {"repo": repo, "glob": "/*", "name": "in"}},
                "transform": {"cmd": ["python3", "-c", code]},
                "datum_batching": True,
                "parallelism": 2,
            }
            if runner == "ray":
                spec["runner"] = {"ray": {"address": cluster.address}}
                if batch:
                    spec["runner"]["ray"]["batch_size"] = batch
            records.create_pipeline(lake, parse(spec))
            j = executor.run_job(lake, name, executor.RunOptions())
            assert j is not None and j.state == "success", j and j.error
            rows.append((name, j.processed, j.seconds() or 0.0))
            print(f"  {name:<22} {j.processed:>6} datums {j.seconds():8.2f} s", flush=True)

        job("trivial-local", "trivial", TRANSFORM, "local")
        job("trivial-ray-batched", "trivial", TRANSFORM, "ray")
        job("unbatched-local", "unbatched", TRANSFORM, "local")
        job("unbatched-ray-1-per-task", "unbatched", TRANSFORM, "ray", batch=1)
        job("cpu-local", "cpu", CPU_WORK, "local")
        job("cpu-ray", "cpu", CPU_WORK, "ray")
    finally:
        import ray

        ray.shutdown()  # the driver first: Ray refuses to remove the node it is connected to
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    t = {name: (n, secs) for name, n, secs in rows}

    def rate(name: str) -> float:
        return t[name][0] / t[name][1]

    def overhead_ms(ray: str, local: str) -> float:
        return (t[ray][1] - t[local][1]) / t[ray][0] * 1000

    print("\nlocal runner vs Ray, two nodes of one CPU on this machine's two cores")
    print(f"{'case':<34} {'datums/s':>10} {'Ray overhead/datum':>20} {'Ray/local':>10}")
    for ray, local, label in (
        ("trivial-ray-batched", "trivial-local", "trivial, batched"),
        ("unbatched-ray-1-per-task", "unbatched-local", "trivial, one datum per task"),
        ("cpu-ray", "cpu-local", "0.2 s CPU datums"),
    ):
        print(f"{label + ' (local)':<34} {rate(local):>10,.1f}")
        print(
            f"{label + ' (ray)':<34} {rate(ray):>10,.1f} {overhead_ms(ray, local):>17.2f} ms "
            f"{rate(ray) / rate(local):>9.2f}"
        )


if __name__ == "__main__":
    main()
