"""Train a tiny classifier on one commit of a repo, over `cowfs://` or over a mount.

    python examples/train.py images@main:/train                 # straight from the store
    python examples/train.py images@main:/train --mount /pfs    # through `cowfs mount /pfs`

The dataset is pinned to the commit `images@main` names when it starts, so both epochs and both
DataLoader workers see the same files, and the saved model records that commit (its lineage).
"""

from __future__ import annotations

import argparse
import io

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from cowfs.torch import Dataset

LABELS = {"cats": 0, "dogs": 1}


def decode(data: bytes, path: str) -> tuple[torch.Tensor, int]:
    pixels = np.load(io.BytesIO(data))
    return torch.from_numpy(pixels).float().flatten() / 255.0, LABELS[path.split("/")[-2]]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data", help="repo@ref:/dir holding <label>/<name>.npy files")
    ap.add_argument("--mount", default=None, help="read through this cowfs mount (e.g. /pfs)")
    ap.add_argument("--store", default=None, help="store URL (default: COWFS_STORE)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="model.pt")
    args = ap.parse_args()

    ds = Dataset(args.data, pattern="*/*.npy", transform=decode, store=args.store, mount=args.mount)
    print(f"{len(ds)} images from {ds.repo} commit {ds.commit_id}")
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=args.workers)
    model = nn.Linear(8 * 8 * 3, len(LABELS))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for epoch in range(1, args.epochs + 1):
        total, right, loss_sum = 0, 0, 0.0
        for x, y in loader:
            opt.zero_grad()
            out = model(x)
            loss = nn.functional.cross_entropy(out, y)
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(y)
            right += (out.argmax(1) == y).sum().item()
            total += len(y)
        print(f"epoch {epoch}: loss {loss_sum / total:.3f}, accuracy {right / total:.2%}")
    torch.save({"model": model.state_dict(), "lineage": ds.lineage}, args.out)
    print(f"saved {args.out} (trained on commit {ds.commit_id})")


if __name__ == "__main__":
    main()
