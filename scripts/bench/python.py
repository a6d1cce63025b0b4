"""Benchmark reading the lake from Python: `cowfs://` against the mount, s3fs and the local disk.

    python scripts/bench/python.py [--files 20000] [--big-mib 1024] [--work DIR]

One SeaweedFS (`weed mini`) holds the same data twice: as a cowfs store (put with `cowfs put`)
and as plain objects (for the `s3fs` fsspec package). Read, each cold (page cache dropped, a
fresh chunk cache, a fresh process), by each path:
  1. every one of `--files` 16 KiB files, with one `fs.cat(paths)` call for the fsspec paths
     (s3fs then runs its GETs concurrently) and `open().read()` for the mount and the disk;
  2. one `--big-mib` file, read sequentially in 8 MiB pieces;
  3. the small files through `DataLoader(num_workers=2, batch_size=64)`: `cowfs.torch.Dataset`
     from the store and through the mount, a dataset of `fs.cat_file` calls over s3fs, and of
     `open().read()` over the local disk.
Prints files/s and MB/s for each, with each path's ratio to `cowfs://`. The local disk is the
physical limit. Needs root (drop_caches, the mount).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mount import BUCKET, Cowfs, drop_caches, make_data  # noqa: E402

from cowfs.testing.seaweed import SeaweedServer  # noqa: E402

PATHS = ("cowfs", "mount", "s3fs", "local")
PIECE = 8 << 20


# --- in a child process: one cold measurement ---------------------------------------------------


def _fs(path: str, cfg: dict[str, Any]):  # noqa: ANN202 - an fsspec filesystem
    import fsspec

    if path == "cowfs":
        from cowfs.filesystem import CowFileSystem

        return CowFileSystem(store=cfg["store"])
    return fsspec.filesystem(
        "s3",
        key=cfg["key"],
        secret=cfg["secret"],
        client_kwargs={"endpoint_url": cfg["endpoint"], "region_name": "us-east-1"},
    )


def _small_paths(path: str, cfg: dict[str, Any]) -> list[str]:
    if path == "cowfs":
        return [p for p in _fs(path, cfg).find("small@main") if p.endswith(".bin")]
    if path == "s3fs":
        return [p for p in _fs(path, cfg).find(f"{BUCKET}/raw/small") if p.endswith(".bin")]
    return sorted(str(p) for p in Path(cfg["small_root"]).rglob("*.bin"))


def _read_local(p: str) -> bytes:
    with open(p, "rb") as f:
        return f.read()


def child(path: str, kind: str, cfg: dict[str, Any]) -> dict[str, float]:
    if kind == "big":
        n = 0
        fs = _fs(path, cfg) if path in ("cowfs", "s3fs") else None
        if fs is not None:  # connecting is not reading: done before the clock starts
            fs.ls("big@main" if path == "cowfs" else f"{BUCKET}/raw/big")
        t0 = time.perf_counter()
        if fs is not None:
            name = "big@main/big.bin" if path == "cowfs" else f"{BUCKET}/raw/big/big.bin"
            f = fs.open(name, "rb")
        else:
            f = open(cfg["big_file"], "rb")  # noqa: SIM115
        with f:
            while piece := f.read(PIECE):
                n += len(piece)
        return {"seconds": time.perf_counter() - t0, "files": 1, "bytes": n}
    paths = _small_paths(path, cfg)
    if kind == "small":
        t0 = time.perf_counter()
        if path in ("cowfs", "s3fs"):
            n = sum(len(v) for v in _fs(path, cfg).cat(paths).values())
        else:
            n = sum(len(_read_local(p)) for p in paths)
        return {"seconds": time.perf_counter() - t0, "files": len(paths), "bytes": n}
    return _loader(path, paths, cfg)


def _loader(path: str, paths: list[str], cfg: dict[str, Any]) -> dict[str, float]:
    from torch.utils.data import DataLoader
    from torch.utils.data import Dataset as TorchDataset

    if path in ("cowfs", "mount"):
        from cowfs.torch import Dataset

        mount = cfg["mount_root"] if path == "mount" else None
        ds: Any = Dataset("small@main", pattern="*.bin", store=cfg["store"], mount=mount)
    else:

        class Files(TorchDataset):
            def __len__(self) -> int:
                return len(paths)

            def __getitem__(self, i: int) -> bytes:
                if path == "s3fs":
                    return _fs(path, cfg).cat_file(paths[i])
                return _read_local(paths[i])

        ds = Files()
    n = files = 0
    t0 = time.perf_counter()
    loader = DataLoader(ds, batch_size=64, num_workers=2, collate_fn=lambda b: b)
    for batch in loader:
        for item in batch:
            n += len(item[1] if isinstance(item, tuple) else item)
            files += 1
    return {"seconds": time.perf_counter() - t0, "files": files, "bytes": n}


# --- the parent: data, servers, one child per measurement ---------------------------------------


def upload_raw(server: SeaweedServer, root: Path) -> None:
    """The data as plain objects, with a client patient enough for a loaded 2-core box."""
    import boto3
    from botocore.config import Config

    client = boto3.session.Session().client(
        "s3",
        endpoint_url=server.endpoint_url,
        aws_access_key_id=server.access_key,
        aws_secret_access_key=server.secret_key,
        region_name=server.region,
        config=Config(read_timeout=300, retries={"mode": "standard", "total_max_attempts": 5}),
    )
    paths = [p for p in root.rglob("*") if p.is_file()]
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(
                lambda p: client.upload_file(str(p), BUCKET, f"raw/{p.relative_to(root)}"), paths
            )
        )


def run_child(path: str, kind: str, cfg: dict[str, Any], env: dict[str, str]) -> dict[str, float]:
    drop_caches()
    cache = Path(cfg["work"]) / "child-cache"
    shutil.rmtree(cache, ignore_errors=True)
    out = subprocess.run(
        [sys.executable, __file__, "--child", path, kind, json.dumps(cfg)],
        env={**env, "COWFS_CACHE_DIR": str(cache)},
        capture_output=True,
        timeout=3600,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode()[-1500:])
    return json.loads(out.stdout.decode().strip().splitlines()[-1])


def report(results: dict[str, dict[str, dict[str, float]]], args: argparse.Namespace) -> None:
    rows = [
        ("small files", "small", "files/s"),
        ("small files", "small", "MB/s"),
        (f"{args.big_mib} MiB file", "big", "MB/s"),
        ("DataLoader(2)", "loader", "files/s"),
    ]
    print()
    print(f"{'':26s}" + "".join(f"{p:>10s}" for p in PATHS))
    for label, kind, unit in rows:
        vals = []
        for p in PATHS:
            r = results.get(p, {}).get(kind)
            if r is None:
                vals.append(f"{'-':>10s}")
                continue
            v = r["files"] / r["seconds"] if unit == "files/s" else r["bytes"] / r["seconds"] / 1e6
            vals.append(f"{v:10.0f}" if v >= 100 else f"{v:10.1f}")
        print(f"{label + ' ' + unit:26s}" + "".join(vals))
    print("\nratio cowfs:// / peer (above 1: cowfs:// is faster)")
    for kind in ("small", "big", "loader"):
        cow = results.get("cowfs", {}).get(kind)
        if cow is None:
            continue
        parts = [
            f"{p} {results[p][kind]['seconds'] / cow['seconds']:.2f}"
            for p in PATHS
            if p != "cowfs" and kind in results.get(p, {})
        ]
        print(f"  {kind:8s} " + ", ".join(parts))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(sys.argv[2], sys.argv[3], json.loads(sys.argv[4]))))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--big-mib", type=int, default=1024)
    ap.add_argument("--paths", default=",".join(PATHS))
    ap.add_argument("--work", type=Path, default=None, help="Scratch folder (kept if given).")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root: the benchmark drops the page cache and mounts the lake")
    work = args.work or Path(tempfile.mkdtemp(prefix="cowfs-bench-py-"))
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    data = work / "data"
    log(f"making {args.big_mib} MiB + {args.files} x 16 KiB in {data}")
    make_data(data, args.big_mib, args.files)
    for stale in ("seaweed", "cowfs-cache", "cowfs-state", "child-cache"):
        shutil.rmtree(work / stale, ignore_errors=True)
    results: dict[str, dict[str, dict[str, float]]] = {}
    with SeaweedServer(data_dir=work / "seaweed") as server:
        server.make_bucket(BUCKET)
        env = dict(os.environ)
        env.update(server.env())
        store = f"s3://{BUCKET}/cowfs"
        env.update(
            COWFS_STORE=store,
            COWFS_CACHE_DIR=str(work / "cowfs-cache"),
            COWFS_STATE_DIR=str(work / "cowfs-state"),
        )
        log("putting the data into cowfs on SeaweedFS, and as plain objects")
        for a in (("init",), ("repo", "create", "big"), ("repo", "create", "small")):
            subprocess.run([sys.executable, "-m", "cowfs.cli.main", *a], env=env, check=True)
        for repo in ("big", "small"):
            subprocess.run(
                [sys.executable, "-m", "cowfs.cli.main", "put", f"{repo}@main", str(data / repo)],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        upload_raw(server, data)
        mnt = Cowfs(work, env)
        cfg = {
            "store": store,
            "small_root": str(data / "small"),
            "big_file": str(data / "big/big.bin"),
            "mount_root": str(mnt.mnt),
            "work": str(work),
            "endpoint": server.endpoint_url,
            "key": server.access_key,
            "secret": server.secret_key,
        }
        for path in args.paths.split(","):
            for kind in ("small", "big", "loader"):
                c = dict(cfg)
                if path == "mount":
                    mnt.mount(fresh_cache=True)
                    c.update(small_root=str(mnt.small()), big_file=str(mnt.big()))
                try:
                    r = run_child(path, kind, c, env)
                    results.setdefault(path, {})[kind] = r
                    log(f"{path:6s} {kind:7s} {r['seconds']:8.2f} s  {r['files']} files")
                except Exception as e:  # a path that fails is reported, not fatal
                    log(f"{path:6s} {kind:7s} failed: {e}")
                finally:
                    if path == "mount":
                        mnt.umount()
    report(results, args)


if __name__ == "__main__":
    main()
