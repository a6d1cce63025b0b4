"""Benchmark the cowfs S3 gateway against SeaweedFS's own S3 endpoint, in one run.

    python scripts/bench/s3.py [--large-mib 256] [--small 5000] [--small-kib 16] [--threads 16]
    python scripts/bench/s3.py --full       # the issue's sizes: 1 GiB and 20,000 x 16 KiB

One SeaweedFS (`weed mini`) holds the same data twice: as plain objects (`plain/...`) and as a
cowfs store (`s3://bench/lake`), with `cowfs s3 serve` in front of the store. Measured, each both
ways in the same run: reading the large file with boto3 (16 threads of ranged GETs) and with
`aws s3 cp`; reading every small file with boto3 (16 threads) and `aws s3 cp --recursive`;
listing every small key (ListObjectsV2, 1,000 a page); writing the large file with one streamed
PutObject and with a 16-thread multipart upload, and the gateway's peak memory over the run (a
large upload is streamed into chunks, never held whole). The gateway's first read pass starts
with an empty chunk cache (cold), its second is warm.

The defaults are scaled to what a loaded 2-core machine does in a few minutes (256 MiB and
5,000 files); `--full` runs the issue's sizes. Prints MB/s, objects/s and the gateway's ratio to
SeaweedFS (the peer; the physical limit here is the loopback and the shared CPUs, which both
sides use). The AWS CLI runs from its own venv (tests/s3gwutil.py makes it).
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from cowfs.testing.seaweed import SeaweedServer  # noqa: E402
from tests.lakeenv import LakeEnv  # noqa: E402
from tests.s3gwutil import KEY, SECRET, awscli_venv, start  # noqa: E402

BUCKET = "bench"
MB = 1e6


class Sink(io.RawIOBase):
    def writable(self) -> bool:
        return True

    def write(self, b) -> int:  # noqa: ANN001
        return len(b)


def client(endpoint: str, key: str, secret: str, pool: int):  # noqa: ANN201
    import boto3
    import botocore.handlers
    from botocore.config import Config

    c = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        region_name="us-east-1",
        config=Config(
            signature_version="s3v4", max_pool_connections=pool, retries={"max_attempts": 2}
        ),
    )
    c.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
    return c


def timed(fn: Callable[..., object], *args: object, **kw: object) -> float:
    t0 = time.perf_counter()
    fn(*args, **kw)
    return time.perf_counter() - t0


def get_all(c, bucket: str, keys: list[str], threads: int) -> None:  # noqa: ANN001
    def one(k: str) -> None:
        c.get_object(Bucket=bucket, Key=k)["Body"].read()

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, keys))


def list_all(c, bucket: str, prefix: str, want: int) -> None:  # noqa: ANN001
    n = 0
    for page in c.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        n += len(page.get("Contents", []))
    assert n == want, n


def peak_rss(pid: int) -> int:
    """The process's peak resident memory in KiB (VmHWM)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def make_data(root: Path, large_mib: int, small: int, small_kib: int) -> tuple[Path, Path]:
    large = root / "large.bin"
    with open(large, "wb") as f:
        for _ in range(large_mib):
            f.write(os.urandom(1 << 20))
    smalldir = root / "small"
    smalldir.mkdir()
    for i in range(small):
        (smalldir / f"{i:06d}.bin").write_bytes(os.urandom(small_kib << 10))
    return large, smalldir


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--large-mib", type=int, default=256)
    ap.add_argument("--small", type=int, default=5000)
    ap.add_argument("--small-kib", type=int, default=16)
    ap.add_argument("--threads", type=int, default=16)
    ap.add_argument("--full", action="store_true", help="1 GiB and 20,000 x 16 KiB")
    ap.add_argument("--no-awscli", action="store_true")
    args = ap.parse_args()
    if args.full:
        args.large_mib, args.small = 1024, 20000
    from boto3.s3.transfer import TransferConfig

    tmp = Path(tempfile.mkdtemp(prefix="cowfs-bench-s3-"))
    results: list[tuple[str, str, float, float, str]] = []  # what, side, seconds, rate, unit
    peak_rss_mib = 0.0
    try:
        with SeaweedServer(data_dir=tmp / "weed") as weed:
            weed.make_bucket(BUCKET)
            print(f"data: {args.large_mib} MiB + {args.small} x {args.small_kib} KiB", flush=True)
            large, smalldir = make_data(tmp, args.large_mib, args.small, args.small_kib)
            small_keys = sorted(p.name for p in smalldir.iterdir())
            small_bytes = args.small * (args.small_kib << 10)
            large_bytes = args.large_mib << 20

            plain = client(weed.endpoint_url, weed.access_key, weed.secret_key, args.threads + 4)
            cfg = TransferConfig(max_concurrency=args.threads, multipart_chunksize=8 << 20)
            plain.upload_file(str(large), BUCKET, "plain/large.bin", Config=cfg)
            with ThreadPoolExecutor(args.threads) as pool:
                list(
                    pool.map(
                        lambda k: plain.put_object(
                            Bucket=BUCKET, Key=f"plain/small/{k}", Body=(smalldir / k).read_bytes()
                        ),
                        small_keys,
                    )
                )
            env = dict(os.environ)
            env.update(weed.env())
            env.pop("AWS_CA_BUNDLE", None)
            env.update(
                COWFS_STORE=f"s3://{BUCKET}/lake",
                COWFS_CACHE_DIR=str(tmp / "cache"),
                COWFS_STATE_DIR=str(tmp / "state"),
                PYTHONUNBUFFERED="1",
            )
            lake = LakeEnv(env["COWFS_STORE"], tmp, env)
            lake.run("init")
            lake.run("repo", "create", "data")
            t_put = timed(lambda: lake.run("put", "data@main:/small", str(smalldir), "-m", "small"))
            lake.run("put", "data@main:/large.bin", str(large), "-m", "large")
            print(f"cowfs put of the small files: {t_put:.1f} s", flush=True)
            shutil.rmtree(tmp / "cache")  # the gateway starts cold
            gw = start(lake)
            try:
                cow = client(gw.endpoint, KEY, SECRET, args.threads + 4)
                sides = [("seaweed", plain, BUCKET, "plain/"), ("cowfs", cow, "main.data", "")]
                passes = [
                    ("seaweed", *sides[0][1:]),
                    ("cowfs cold", *sides[1][1:]),
                    ("cowfs warm", *sides[1][1:]),
                ]

                boto = f"boto3 x{args.threads}"
                for side, c, bucket, pre in passes:
                    t = timed(c.download_fileobj, bucket, f"{pre}large.bin", Sink(), Config=cfg)
                    results.append((f"large, {boto}", side, t, large_bytes / MB / t, "MB/s"))
                for side, c, bucket, pre in passes:
                    keys = [f"{pre}small/{k}" for k in small_keys]
                    t = timed(get_all, c, bucket, keys, args.threads)
                    results.append((f"small, {boto}", side, t, args.small / t, "obj/s"))
                for side, c, bucket, pre in passes[:2]:
                    t = timed(list_all, c, bucket, f"{pre}small/", args.small)
                    results.append((f"list {args.small} keys", side, t, args.small / t, "keys/s"))
                # writes: one streamed PUT and one multipart upload of the large file
                for side, c, bucket, pre in passes[:2]:
                    side = side.split()[0]
                    with open(large, "rb") as f:
                        t = timed(c.put_object, Bucket=bucket, Key=f"{pre}put.bin", Body=f)
                    results.append(("large, one PutObject", side, t, large_bytes / MB / t, "MB/s"))
                    t = timed(c.upload_file, str(large), bucket, f"{pre}mpu.bin", Config=cfg)
                    results.append(
                        (f"large, multipart x{args.threads}", side, t, large_bytes / MB / t, "MB/s")
                    )
                peak_rss_mib = peak_rss(gw.proc.pid) / 1024
                if not args.no_awscli:
                    aws = str(awscli_venv())
                    clis = [
                        ("seaweed", weed.endpoint_url, weed.access_key, weed.secret_key, BUCKET),
                        ("cowfs warm", gw.endpoint, KEY, SECRET, "main.data"),
                    ]
                    for side, endpoint, key, secret, bucket in clis:
                        pre = "plain/" if side == "seaweed" else ""
                        cenv = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
                        cenv.update(
                            AWS_ACCESS_KEY_ID=key,
                            AWS_SECRET_ACCESS_KEY=secret,
                            AWS_DEFAULT_REGION="us-east-1",
                            AWS_CONFIG_FILE="/dev/null",
                        )
                        out = tmp / f"cli-{side.split()[0]}"
                        cp = [aws, "--endpoint-url", endpoint, "s3", "cp", "--quiet"]
                        src = f"s3://{bucket}/{pre}"
                        large_cmd = [*cp, f"{src}large.bin", str(out / "large.bin")]
                        t = timed(subprocess.run, large_cmd, env=cenv, check=True)
                        results.append(("large, aws s3 cp", side, t, large_bytes / MB / t, "MB/s"))
                        small_cmd = [*cp, "--recursive", f"{src}small/", str(out / "small")]
                        t = timed(subprocess.run, small_cmd, env=cenv, check=True)
                        results.append(
                            ("small, aws s3 cp --recursive", side, t, args.small / t, "obj/s")
                        )
            finally:
                gw.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\n{'what':32} {'side':12} {'seconds':>8} {'rate':>10}  {'vs seaweed':>10}")
    base: dict[str, float] = {}
    for what, side, t, rate, unit in results:
        if side == "seaweed":
            base[what] = rate
        ratio = f"{rate / base[what]:.2f}x" if what in base and side != "seaweed" else ""
        print(f"{what:32} {side:12} {t:8.2f} {rate:8.1f} {unit:6} {ratio:>8}")
    print(f"gateway peak RSS over the whole run (uploads included): {peak_rss_mib:.0f} MiB")
    print(
        f"(small files: {small_bytes / MB:.0f} MB; large: {large_bytes / MB:.0f} MB; "
        f"{os.cpu_count()} CPUs shared by client, gateway and SeaweedFS)"
    )


if __name__ == "__main__":
    main()
