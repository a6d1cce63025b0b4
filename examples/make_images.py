"""Put a small labelled image set into a branch, for `train.py` to learn from.

    python examples/make_images.py images@main [--n 2000] [--store URL]

Each "image" is an 8x8 RGB array saved with `np.save`, under `train/<label>/`; cats are
brighter than dogs, so even a linear model learns the difference. One commit, written through
`lake.writer` (many small files packed into a few chunks).
"""

from __future__ import annotations

import argparse
import io

import numpy as np

import cowfs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("branch", help="repo@branch to write, e.g. images@main")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--store", default=None, help="store URL (default: COWFS_STORE)")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    lake = cowfs.connect(args.store)
    repo = args.branch.partition("@")[0]
    if repo not in lake.repos():
        lake.lake.create_repo(repo)
    with lake.writer(args.branch, message=f"{args.n} training images") as w:
        for i in range(args.n):
            label = "cats" if i % 2 else "dogs"
            base = 170 if label == "cats" else 80
            pixels = np.clip(rng.normal(base, 40, (8, 8, 3)), 0, 255).astype(np.uint8)
            buf = io.BytesIO()
            np.save(buf, pixels)
            w.put_bytes(f"train/{label}/{i:05}.npy", buf.getvalue())
    print(f"commit {w.result.id if w.result else '-'}")


if __name__ == "__main__":
    main()
