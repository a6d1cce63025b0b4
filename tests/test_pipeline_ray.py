"""The Ray runner on a real multi-node cluster (tests/raycluster.py): datums spread over nodes,
GPU datums only where a GPU is, a node removed mid-job, the same incremental skipping and
deletes as the local runner, and one clear line when Ray cannot be reached."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cowfs.pipelines import executor, records
from cowfs.pipelines.spec import parse
from tests.lakeenv import LakeEnv, make_env
from tests.raycluster import RayCluster

COPY = 'for f in "$PFS_IN"/*; do tr a-z A-Z < "$f" > "$PFS_OUT/$(basename "$f")"; done'


@pytest.fixture
def env(tmp_path: Path) -> Iterator[LakeEnv]:
    e = make_env(tmp_path, None)
    e.run("init")
    e.run("repo", "create", "data")
    yield e
    if e.url in _lakes:
        _lakes.pop(e.url).close()


_lakes: dict = {}


def _lake(env: LakeEnv):  # noqa: ANN202
    """One open lake per test (its cache may be opened once per process)."""
    if env.url not in _lakes:
        _lakes[env.url] = env.lake()
    return _lakes[env.url]


def _files(d: Path, n: int) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (d / f"f{i:04d}.txt").write_text(f"file number {i}\n")
    return d


def _pipeline(env: LakeEnv, name: str, cmd: str, runner: object = None, **extra: object) -> None:
    spec: dict = {
        "pipeline": name,
        "input": {"pfs": {"repo": "data", "glob": "/*", "name": "in"}},
        "transform": {"cmd": ["sh", "-c", cmd]},
        "parallelism": 2,
        **extra,
    }
    if runner is not None:
        spec["runner"] = runner
    records.create_pipeline(_lake(env), parse(spec))


def _content(env: LakeEnv, repo: str) -> dict[str, bytes]:
    lake = _lake(env)
    head = lake.head(repo, "main")
    return {e.path: e.digest for e in lake.walk(head) if not e.is_dir}


def _nodes(env: LakeEnv, job_id: str) -> list[str]:
    return [r["node"] for r in env.json("datum", "list", job_id) if r["state"] == "processed"]


def test_ray_jobs_use_every_node_and_skip_like_the_local_runner(
    env: LakeEnv, ray_cluster: RayCluster
) -> None:
    src = _files(env.root / "src", 200)
    gid = env.out("put", "data@main", str(src)).strip()
    ray = {"ray": {"address": ray_cluster.address, "batch_size": 10}}
    _pipeline(env, "up", COPY, ray)
    _pipeline(env, "twin", COPY)  # the local runner, for comparison
    job = executor.run_job(_lake(env), "up", executor.RunOptions())
    assert job is not None and job.state == "success", job and job.error
    assert (job.processed, job.skipped, job.total) == (200, 0, 200)
    assert set(_nodes(env, job.id)) == {ray_cluster.head_id, ray_cluster.gpu_id}
    twin = executor.run_job(_lake(env), "twin", executor.RunOptions())
    assert twin is not None and twin.state == "success"
    assert _content(env, "up") == _content(env, "twin") and len(_content(env, "up")) == 200
    assert env.out("cat", "up@main:/f0007.txt") == "FILE NUMBER 7\n"
    ids = {c["repo"] for c in env.json("inspect", gid)["commits"]}
    assert ids == {"data", "up", "twin"}

    # One file added, one deleted: the same incremental job on both runners, through the CLI.
    (src / "new.txt").write_text("brand new\n")
    (src / "f0003.txt").unlink()
    env.out("put", "data@main", str(src))
    for name, extra in (("up", ["--ray-address", ray_cluster.address]), ("twin", [])):
        j = json.loads(env.run("pipeline", "run", name, "--json", *extra).stdout)
        assert (j["state"], j["processed"], j["skipped"]) == ("success", 1, 199), j
    assert _content(env, "up") == _content(env, "twin")
    assert "f0003.txt" not in _content(env, "up")
    assert env.out("cat", "up@main:/new.txt") == "BRAND NEW\n"


def test_gpu_datums_run_only_on_the_gpu_node(env: LakeEnv, ray_cluster: RayCluster) -> None:
    env.out("put", "data@main", str(_files(env.root / "src", 6)))
    cmd = (
        'for f in "$PFS_IN"/*; do '
        'echo "gpu=${CUDA_VISIBLE_DEVICES-unset}" > "$PFS_OUT/$(basename "$f")"; done'
    )
    ray = {"ray": {"address": ray_cluster.address, "batch_size": 1}}
    _pipeline(env, "gpu", cmd, ray, resources={"gpu": 1, "cpu": 0.5, "memory": "10M"})
    job = json.loads(env.run("pipeline", "run", "gpu", "--json").stdout)
    assert job["state"] == "success", job["error"]
    assert set(_nodes(env, job["id"])) == {ray_cluster.gpu_id}
    assert {v for v in _cat_all(env, "gpu").values()} == {"gpu=0\n"}


def _cat_all(env: LakeEnv, repo: str) -> dict[str, str]:
    return {p: env.out("cat", f"{repo}@main:/{p}") for p in _content(env, repo)}


def test_a_node_removed_mid_job_loses_nothing_and_counts_nothing_twice(
    env: LakeEnv, ray_cluster: RayCluster
) -> None:
    n = 24
    env.out("put", "data@main", str(_files(env.root / "src", n)))
    extra = ray_cluster.cluster.add_node(num_cpus=1, resources={"extra_node": 1})
    ray_cluster.cluster.wait_for_nodes(timeout=120)
    # Tasks of 2 s: the one on the removed node is still running when its node goes (a task
    # that ends within a moment of its raylet can still hand its result back, and then
    # nothing is retried, which is correct but not what this test is about).
    cmd = "sleep 1; " + COPY
    _pipeline(env, "slow", cmd, {"ray": {"address": ray_cluster.address, "batch_size": 2}},
              parallelism=3, datum_tries=3)  # fmt: skip
    said: list[str] = []
    out: dict = {}

    def go() -> None:
        out["job"] = executor.run_job(_lake(env), "slow", executor.RunOptions(say=said.append))

    t = threading.Thread(target=go)
    t.start()
    lake = _lake(env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:  # some datums recorded: every node is busy now
        jobs = records.list_jobs(lake, "slow")
        if jobs and jobs[0].processed >= 4:
            break
        time.sleep(0.2)
    ray_cluster.cluster.remove_node(extra, allow_graceful=False)
    t.join(300)
    job = out["job"]
    assert job is not None and job.state == "success", job and job.error
    assert (job.processed, job.total) == (n, n)
    rows = env.json("datum", "list", job.id)
    assert len(rows) == n and {r["state"] for r in rows} == {"processed"}
    # A task on the removed node is retried elsewhere and counts the lost try. (A task that
    # ends within a moment of its node's removal can still hand its result back; then nothing
    # is retried and nothing needs to be: the outputs below are checked either way.)
    if any("a Ray task died" in s for s in said):
        retried = [r for r in rows if r["tries"] >= 2]
        assert retried and extra.node_id not in {r["node"] for r in retried}, rows
    else:
        assert {r["tries"] for r in rows} == {1}, rows
    got = _cat_all(env, "slow")
    assert got == {f"f{i:04d}.txt": f"FILE NUMBER {i}\n" for i in range(n)}


def test_ray_missing_or_unreachable_is_one_line(env: LakeEnv, tmp_path: Path) -> None:
    env.out("put", "data@main", str(_files(env.root / "src", 2)))
    _pipeline(env, "up", COPY)
    t0 = time.monotonic()
    code, err = env.fail("pipeline", "run", "up", "--runner", "ray", "--ray-address", "127.0.0.1:9")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "cannot connect to the Ray cluster at 127.0.0.1:9" in err
    assert time.monotonic() - t0 < 120  # never a hang
    # The spec's address is named the same way; and nothing was claimed for the job.
    _pipeline(env, "far", COPY, {"ray": {"address": "ray://127.0.0.1:9"}})
    code, err = env.fail("pipeline", "run", "far")
    assert "cannot connect to the Ray cluster at ray://127.0.0.1:9" in err
    assert records.get_state(_lake(env), "far") is None
    # Without Ray installed (a `ray` that cannot be imported shadows the real one).
    fake = tmp_path / "noray" / "ray"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no ray here')\n")
    env.env["PYTHONPATH"] = f"{fake.parent}:{env.env.get('PYTHONPATH', '')}"
    code, err = env.fail("pipeline", "run", "up", "--runner", "ray")
    assert code == 2 and "Ray is not installed here: pip install 'cowfs[ray]'" in err
    assert "address auto" in err
