#!/usr/bin/env python3
"""Soak the store: the crash-and-race harness of the test suite (tests/crashrace.py), for as
long as asked, on a local store (optionally with a mount) or on a private SeaweedFS.

    python scripts/soak.py --minutes 60 --seed 1 [--mount] [--s3]

Prints a tally after every round; a failure names the seed and round that replay it
(`COWFS_HARNESS_SEED=<seed> pytest tests/test_store_crash.py`, or this script with --seed).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.crashrace import Harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=int.from_bytes(os.urandom(4), "little"))
    ap.add_argument("--mount", action="store_true", help="also write and commit via a mount")
    ap.add_argument("--s3", action="store_true", help="on a private SeaweedFS instead")
    ap.add_argument("--keep", action="store_true", help="keep the work folder afterwards")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cowfs-soak-"))
    env = {
        **os.environ,
        "COWFS_CACHE_DIR": str(work / "cache"),
        "COWFS_STATE_DIR": str(work / "state"),
    }
    print(f"soak: seed {args.seed}, {args.minutes} min, work folder {work}", flush=True)
    server = None
    if args.s3:
        from cowfs.testing.seaweed import SeaweedServer

        server = SeaweedServer().start()
        server.make_bucket("soak")
        env.update(server.env())
        os.environ.update(server.env())
        url = "s3://soak/lake"
    else:
        url = str(work / "store")
    try:
        h = Harness(work, url, env, args.seed, mount=args.mount, say=lambda s: print(s, flush=True))
        tally = h.run(args.minutes * 60)
    finally:
        if server is not None:
            server.stop()
        if not args.keep:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    print(f"soak passed: {tally.line()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
