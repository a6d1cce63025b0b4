"""Real frameworks reading real files from `cowfs://`: pandas, PyArrow's dataset API over a
Parquet directory, Hugging Face `datasets`, and a PyTorch DataLoader with worker processes."""

from __future__ import annotations

import io
import os
import random
import runpy
import sys
from pathlib import Path

import blake3
import fsspec
import pytest

import cowfs
from cowfs.filesystem import CowFileSystem
from cowfs.lake import Lake

# No hub exists here; `datasets` must never try one. Set before `datasets` is first imported.
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"

REPO_ROOT = Path(__file__).resolve().parents[1]

if "cowfs" not in fsspec.available_protocols():
    # A checkout run without being pip-installed has no entry point (tests/test_api.py checks
    # the entry point itself); register the same class by hand.
    fsspec.register_implementation("cowfs", CowFileSystem)


def _lake_at(url: str) -> str:
    with Lake.open(url, create=True) as lake:
        lake.create_repo("tab")
    return url


@pytest.fixture
def local_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return _lake_at(str(tmp_path / "store"))


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.s3)])
def any_store(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
    url = request.getfixturevalue("s3_url") if request.param == "s3" else str(tmp_path / "store")
    return _lake_at(url)


def _frame():  # noqa: ANN202 - pandas is imported lazily
    import pandas as pd

    rng = random.Random(7)
    return pd.DataFrame(
        {
            "path": [f"cats/{i}.jpg" for i in range(300)],
            "label": [rng.choice(["cat", "dog"]) for _ in range(300)],
            "score": [rng.random() for _ in range(300)],
        }
    )


def test_pandas_reads_and_writes_cowfs_urls(any_store: str) -> None:
    import pandas as pd

    df = _frame()
    with cowfs.connect(any_store) as lake, lake.writer("tab@main") as w:
        w.put_bytes("labels.csv", df.to_csv(index=False).encode())
        buf = io.BytesIO()
        df.to_parquet(buf)
        w.put_bytes("feats/part-0.parquet", buf.getvalue())
    opts = {"store": any_store}
    got = pd.read_csv("cowfs://tab@main/labels.csv", storage_options=opts)
    pd.testing.assert_frame_equal(got, df)
    cid = cowfs.connect(any_store).commit_of("tab@main").id
    got = pd.read_parquet(f"cowfs://tab@{cid}/feats/part-0.parquet", storage_options=opts)
    pd.testing.assert_frame_equal(got, df)
    df.head(10).to_csv("cowfs://tab@main/head.csv", index=False, storage_options=opts)
    got = pd.read_csv("cowfs://tab@main/head.csv", storage_options=opts)
    pd.testing.assert_frame_equal(got, df.head(10))
    with pytest.raises(PermissionError):
        df.to_csv(f"cowfs://tab@{cid}/nope.csv", storage_options=opts)


def test_pyarrow_dataset_reads_a_parquet_directory(local_store: str) -> None:
    import pyarrow as pa
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    parts = []
    with cowfs.connect(local_store) as lake, lake.writer("tab@main") as w:
        for i in range(3):
            t = pa.table({"part": [i] * 1000, "x": list(range(i * 1000, (i + 1) * 1000))})
            buf = io.BytesIO()
            pq.write_table(t, buf)
            w.put_bytes(f"feats/part-{i}.parquet", buf.getvalue())
            parts.append(t)
    fs = fsspec.filesystem("cowfs", store=local_store)
    dset = pads.dataset("tab@main/feats", filesystem=fs, format="parquet")
    table = dset.to_table().sort_by("x")
    assert table.equals(pa.concat_tables(parts))
    assert dset.to_table(filter=pads.field("part") == 2).num_rows == 1000


def test_hugging_face_datasets_load_from_cowfs(
    local_store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offline (`HF_DATASETS_OFFLINE=1`, as here) `datasets` refuses to download any remote
    file, so it streams; with only the hub offline it loads and caches a copy as usual."""
    from datasets import load_dataset

    df = _frame()
    with cowfs.connect(local_store) as lake, lake.writer("tab@main") as w:
        w.put_bytes("labels.csv", df.to_csv(index=False).encode())
        w.put_bytes("labels.jsonl", df.to_json(orient="records", lines=True).encode())
        buf = io.BytesIO()
        df.to_parquet(buf)
        w.put_bytes("feats/part-0.parquet", buf.getvalue())
    opts = {"store": local_store}
    for kind, name in (("csv", "labels.csv"), ("json", "labels.jsonl")):
        ds = load_dataset(
            kind,
            data_files=f"cowfs://tab@main/{name}",
            storage_options=opts,
            streaming=True,
            split="train",
        )
        rows = list(ds)
        assert [r["path"] for r in rows] == list(df["path"])
        assert [r["label"] for r in rows] == list(df["label"])
    # `datasets` refuses every remote file while its own offline switch is on; turn just that
    # off for one plain (non-streaming) load. The hub stays unreachable: huggingface_hub itself
    # keeps HF_HUB_OFFLINE=1 and refuses any request to it.
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    ds = load_dataset(
        "parquet",
        data_files="cowfs://tab@main/feats/*.parquet",
        storage_options=opts,
        cache_dir=str(tmp_path / "hf-cache"),
        split="train",
    )
    assert ds.num_rows == len(df) and ds[7]["path"] == "cats/7.jpg"


def _images(n: int) -> dict[str, bytes]:
    rng = random.Random(11)
    return {
        f"train/{rng.choice(['cats', 'dogs'])}/{i:05}.img": rng.randbytes(rng.randint(2048, 12288))
        for i in range(n)
    }


def test_dataloader_workers_see_exactly_the_pinned_commit(local_store: str) -> None:
    """2,000 images through DataLoader(num_workers=2): every worker reads the commit the
    dataset was made on, even after the branch moves on."""
    from torch.utils.data import DataLoader

    from cowfs.torch import Dataset

    images = _images(2000)
    with cowfs.connect(local_store) as lake:
        with lake.writer("tab@main") as w:
            for path, data in images.items():
                w.put_bytes(path, data)
        ds = Dataset("tab@main:/train", pattern="*/*.img", store=local_store)
        first = sorted(images)[0]
        with lake.writer("tab@main") as w:
            w.put_bytes(first, b"changed after the dataset was made")
        assert ds.commit_id != lake.commit_of("tab@main").id
        assert len(ds) == 2000 and ds.lineage["commit"] == ds.commit_id
        # The parent keeps its connection (and so the node's index) open while workers fork.
        seen: dict[str, str] = {}
        loader = DataLoader(ds, batch_size=64, num_workers=2, shuffle=True)
        for paths, datas in loader:
            for p, d in zip(paths, datas, strict=True):
                seen[p] = blake3.blake3(d).hexdigest()
    assert seen == {p: blake3.blake3(d).hexdigest() for p, d in images.items()}


@pytest.mark.mount
def test_dataset_reads_through_the_mount(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.data import DataLoader

    from cowfs.torch import Dataset
    from tests.mountutil import MountedLake

    m = MountedLake(tmp_path, str(tmp_path / "store"))
    try:
        m.cli("init")
        m.cli("repo", "create", "tab")
        images = _images(60)
        monkeypatch.setenv("COWFS_CACHE_DIR", str(tmp_path / "cache"))
        with cowfs.connect(m.url) as lake, lake.writer("tab@main") as w:
            for path, data in images.items():
                w.put_bytes(path, data)
        m.mount()
        ds = Dataset("tab@main:/train", pattern="*/*.img", store=m.url, mount=m.mnt)
        got = {}
        for paths, datas in DataLoader(ds, batch_size=16, num_workers=2):
            got.update(zip(paths, datas, strict=True))
        assert got == images
    finally:
        m.close()


def test_training_example_runs_over_cowfs(
    local_store: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "argv", ["make_images.py", "tab@main", "--n", "200"])
    monkeypatch.setenv("COWFS_STORE", local_store)
    runpy.run_path(str(REPO_ROOT / "examples" / "make_images.py"), run_name="__main__")
    out = tmp_path / "model.pt"
    train = ["train.py", "tab@main:/train", "--epochs", "1", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", train)
    runpy.run_path(str(REPO_ROOT / "examples" / "train.py"), run_name="__main__")
    text = capsys.readouterr().out
    assert "200 images" in text and "epoch 1" in text
    import torch

    saved = torch.load(out)
    with cowfs.connect(local_store) as lake:
        assert saved["lineage"]["commit"] == lake.commit_of("tab@main").id
