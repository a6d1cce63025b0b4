"""`cowfs daemon`: the watcher running real pipelines, a real mount, a real S3 server, crash
recovery, metrics, and the systemd unit."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cowfs.errors import UsageError
from daemon.service import DaemonConfig, load_config
from daemon.watcher import why_run
from tests.lakeenv import LakeEnv, make_env
from tests.test_pipeline import make_files, put, spec, write_spec

REPO_ROOT = Path(__file__).resolve().parent.parent
UNIT = REPO_ROOT / "systemd" / "cowfs.service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(pred, timeout: float, what: str) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def is_mounted(path: Path) -> bool:
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def metrics_text(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        return r.read().decode()


class Daemon:
    """A `cowfs daemon` subprocess that is always stopped, whatever the test does."""

    def __init__(self, env: LakeEnv, *args: str, argv: list[str] | None = None) -> None:
        self.log = env.root / f"daemon-{time.monotonic_ns()}.log"
        self.argv = argv or [sys.executable, "-m", "cowfs.cli.main", "daemon", *args]
        self.env = env.env
        self.proc: subprocess.Popen | None = None

    def start(self) -> Daemon:
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT
            )
        return self

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: "ready:" in self.text() or self.proc.poll() is not None, timeout, "ready")
        assert self.proc.poll() is None, self.text()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill9()
            raise AssertionError("daemon did not stop on SIGTERM:\n" + self.text()) from None

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def daemons():
    started: list[Daemon] = []
    yield started
    for d in started:
        d.kill9()


@pytest.fixture
def env(tmp_path: Path) -> LakeEnv:
    e = make_env(tmp_path, None)
    e.run("init")
    return e


def test_why_run_decides_from_the_claim_record() -> None:
    from cowfs.pipelines.records import ClaimState

    def st(key: str, state: str, owner: str = "") -> ClaimState:
        return ClaimState(key, 1, {}, "j", state, {"instance": owner})

    alive = lambda s: s.owner["instance"] == "me"  # noqa: E731
    assert why_run("k", None, alive) == "first job"
    assert why_run("k", st("k", "success"), alive) is None
    assert why_run("k", st("k", "failed"), alive) is None
    assert why_run("k2", st("k", "success"), alive) == "inputs or spec changed"
    assert why_run("k2", st("k", "running", "me"), alive) is None
    assert "died" in why_run("k", st("k", "running", "gone"), alive)
    assert "interrupted" in why_run("k", st("k", "interrupted"), alive)


def test_config_is_checked_and_flags_override(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text('store = "/s"\nmount = "/pfs"\nmetrics = "127.0.0.1:9464"\npoll_interval = 1\n')
    cfg = load_config(path)
    assert cfg == DaemonConfig(
        store="/s", mount="/pfs", metrics="127.0.0.1:9464", poll_interval=1.0
    )
    assert cfg.override(mount="/other", metrics=None).mount == "/other"
    example = load_config(REPO_ROOT / "systemd" / "config.toml.example")
    assert example.mount == "/pfs" and example.metrics == "127.0.0.1:9464"
    path.write_text('mountpoint = "/pfs"\npoll_interval = "fast"\n')
    with pytest.raises(UsageError, match="unknown key 'mountpoint'.*poll_interval has the wrong"):
        load_config(path)
    path.write_text("read_ahead_kb = 512\n")
    assert load_config(path).read_ahead_kb == 512
    path.write_text("read_ahead_kb = -1\npoll_interval = 0\n")
    with pytest.raises(UsageError, match="read_ahead_kb must be at least 0.*poll_interval must"):
        load_config(path)


@pytest.mark.s3
@pytest.mark.mount
def test_daemon_runs_a_chain_over_s3_with_a_mount(
    tmp_path: Path, s3_url: str, daemons: list[Daemon]
) -> None:
    env = make_env(tmp_path, s3_url)
    env.env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    env.run("init")
    env.run("repo", "create", "data")
    env.run("pipeline", "create", "-f", write_spec(env, spec()))
    count = spec(
        "count", "up", transform={"cmd": ["sh"], "stdin": ["ls /pfs/in | wc -l > /pfs/out/n"]}
    )
    count["input"]["pfs"]["glob"] = "/"
    env.run("pipeline", "create", "-f", write_spec(env, count, "count.json"))
    mnt = tmp_path / "mnt"
    port = free_port()
    d = Daemon(env, "--mount", str(mnt), "--metrics", f"127.0.0.1:{port}", "--poll-interval", "0.2")
    daemons.append(d.start())
    d.wait_ready()
    assert is_mounted(mnt)

    src = make_files(tmp_path / "src", 10)
    gid = put(env, "data@main", src)
    env.run("wait", gid, "--timeout", "60")
    assert (mnt / "up" / "main" / "f0004.txt").read_text() == "FILE NUMBER 4\n"
    assert (mnt / "count" / "main" / "n").read_text().strip() == "10"
    commits = env.json("inspect", gid)["commits"]
    assert sorted((c["repo"], c["state"]) for c in commits) == [
        ("count", "finished"),
        ("data", "finished"),
        ("up", "finished"),
    ]

    (src / "more.txt").write_text("more\n")
    gid = put(env, "data@main", src)
    env.run("wait", gid, "--timeout", "60")
    newest = env.json("job", "list", "--pipeline", "up")[0]
    assert (newest["processed"], newest["skipped"]) == (1, 10)
    wait_for(lambda: (mnt / "count" / "main" / "n").read_text().strip() == "11", 10, "mount")

    text = metrics_text(port)
    assert 'cowfs_jobs_total{pipeline="up",state="success"} 2.0' in text
    assert 'cowfs_datums_total{pipeline="up",state="skipped"} 10.0' in text
    assert 'cowfs_datums_total{pipeline="up",state="processed"} 11.0' in text
    for family in (
        "cowfs_job_seconds_bucket",
        "cowfs_fuse_operations_total",
        "cowfs_fuse_operation_seconds",
        "cowfs_chunk_cache_hits_total",
        "cowfs_chunk_cache_misses_total",
        "cowfs_store_read_bytes_total",
        'cowfs_store_bytes_total{direction="read"}',
    ):
        assert family in text, family
    assert d.stop() == 0
    assert not is_mounted(mnt)


def test_daemon_killed_mid_job_restarts_it_and_skips_finished_datums(
    env: LakeEnv, daemons: list[Daemon]
) -> None:
    n = 30
    env.run("repo", "create", "data")
    slow = spec(
        transform={"cmd": ["sh"], "stdin": ["sleep 0.15; cp /pfs/in/* /pfs/out/"]},
        parallelism=1,
    )
    env.run("pipeline", "create", "-f", write_spec(env, slow))
    d1 = Daemon(env, "--poll-interval", "0.2")
    daemons.append(d1.start())
    d1.wait_ready()
    gid = put(env, "data@main", make_files(env.root / "src", n))
    datums_dir = Path(env.url) / "datums" / "up"
    wait_for(lambda: datums_dir.is_dir() and len(os.listdir(datums_dir)) >= 5, 30, "datums")
    d1.kill9()
    running = env.json("job", "list")
    assert [j["state"] for j in running] == ["running"]

    d2 = Daemon(env, "--poll-interval", "0.2")
    daemons.append(d2.start())
    env.run("wait", gid, "--timeout", "60")
    jobs = env.json("job", "list")
    assert [j["state"] for j in jobs] == ["success", "restarted"]
    done = jobs[0]
    assert done["skipped"] >= 5 and done["processed"] + done["skipped"] == n
    assert len(env.json("ls", "up@main")) == n
    assert "restarting" in d2.text()
    assert d2.stop() == 0


def _root_for_verify(tmp_path: Path) -> Path:
    """A root with the unit, its binary and systemd's own units, so `verify` checks ours alone
    without installing anything on the machine running the tests."""
    root = tmp_path / "root"
    (root / "etc/systemd/system").mkdir(parents=True)
    (root / "usr/local/bin").mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    shutil.copy(UNIT, root / "etc/systemd/system/cowfs.service")
    fake = root / "usr/local/bin/cowfs"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    return root


@pytest.mark.mount
def test_systemd_unit_verifies_and_its_command_line_notifies_ready(
    env: LakeEnv, tmp_path: Path, daemons: list[Daemon]
) -> None:
    root = _root_for_verify(tmp_path)
    r = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", "cowfs.service"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr

    unit = UNIT.read_text()
    assert "Type=notify" in unit and "Restart=on-failure" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    argv = shlex.split(exec_start.partition("=")[2])
    assert argv[0] == "/usr/local/bin/cowfs" and argv[1:3] == ["daemon", "--config"]
    config = tmp_path / "config.toml"
    mnt = tmp_path / "mnt"
    port = free_port()
    config.write_text(
        f'store = "{env.url}"\nmount = "{mnt}"\nmetrics = "127.0.0.1:{port}"\n'
        f'poll_interval = 0.2\ncache_dir = "{tmp_path / "cache"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n'
    )
    argv = [sys.executable, "-m", "cowfs.cli.main"] + [
        str(config) if a == "/etc/cowfs/config.toml" else a for a in argv[1:]
    ]
    env.run("repo", "create", "data")
    put(env, "data@main", make_files(tmp_path / "src", 2))

    notify = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(notify))
    sock.settimeout(60)
    env.env.pop("COWFS_STORE")
    env.env["NOTIFY_SOCKET"] = str(notify)
    d = Daemon(env, argv=argv)
    daemons.append(d.start())
    try:
        msg = sock.recv(4096).decode()
        assert "READY=1" in msg, d.text()
        assert is_mounted(mnt)  # READY=1 comes only once the mount is up
        assert sorted(os.listdir(mnt / "data" / "main")) == ["f0000.txt", "f0001.txt"]
        text = metrics_text(port)
        for family in ("cowfs_jobs_total", "cowfs_datums_total", "cowfs_fuse_operations_total"):
            assert f"# TYPE {family} counter" in text
        d.proc.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in sock.recv(4096).decode()
        assert d.stop() == 0
        assert not is_mounted(mnt)
    finally:
        sock.close()
    # ExecStopPost's cleanup is harmless when nothing is left mounted.
    cleanup = subprocess.run(argv + ["--cleanup"], env=env.env, capture_output=True)
    assert cleanup.returncode == 0, cleanup.stderr


def test_wait_json_and_job_records_live_in_the_store(env: LakeEnv, daemons: list[Daemon]) -> None:
    """A second 'machine' (another cache dir) sees the same pipelines and jobs."""
    env.run("repo", "create", "data")
    env.run("pipeline", "create", "-f", write_spec(env, spec()))
    d = Daemon(env, "--poll-interval", "0.2")
    daemons.append(d.start())
    d.wait_ready()
    gid = put(env, "data@main", make_files(env.root / "src", 3))
    waited = json.loads(env.run("wait", gid, "--timeout", "60", "--json").stdout)
    assert {c["repo"]: c["state"] for c in waited["commits"]} == {
        "data": "finished",
        "up": "finished",
    }
    other = dict(env.env, COWFS_CACHE_DIR=str(env.root / "cache2"))
    proc = subprocess.run(
        [sys.executable, "-m", "cowfs.cli.main", "job", "list", "--json"],
        env=other,
        capture_output=True,
        check=True,
    )
    assert [j["processed"] for j in json.loads(proc.stdout)] == [3]
    assert d.stop() == 0


CLOCK_CMD = 'ls "$PFS_TICK" > "$PFS_OUT/ticks"; cp "$PFS_DATA"/* "$PFS_OUT"/'


def test_cron_ticks_drive_jobs_and_a_restart_neither_loses_nor_replays_ticks(
    env: LakeEnv, daemons: list[Daemon]
) -> None:
    """`@every 2s` ticks crossed with a pfs input. The daemon commits ticks to `clock_tick`,
    each tick's job carries the tick commit's global ID; while no daemon runs ticks are missed
    and, after the restart, only the latest missed one is made (docs/pipelines.md)."""
    from cowfs.pipelines import records
    from cowfs.pipelines.cron import tick_name

    src = env.root / "src"
    src.mkdir()
    (src / "a.txt").write_text("data\n")
    env.run("repo", "create", "data")
    env.run("put", "data@main", str(src))
    spec = {
        "pipeline": "clock",
        "input": {"cross": [{"cron": {"name": "tick", "spec": "@every 2s"}},
                            {"pfs": {"repo": "data", "glob": "/"}}]},
        "transform": {"cmd": ["sh", "-c", CLOCK_CMD]},
    }  # fmt: skip
    path = env.root / "clock.json"
    path.write_text(json.dumps(spec))
    env.run("pipeline", "create", "-f", str(path))
    assert "clock_tick" in {r["name"] for r in env.json("repo", "list")}
    lake = env.lake()

    def done_jobs() -> list:
        return [j for j in records.list_jobs(lake, "clock") if j.state == "success"]

    def tick_times() -> list[float]:
        head = lake.head("clock_tick", "main")
        return sorted(float(lake_cat(e.path).split()[1]) for e in lake.walk(head)) if head else []

    def lake_cat(p: str) -> str:
        return env.out("cat", f"clock_tick@main:/{p}")

    first = Daemon(env, "--poll-interval", "0.2").start()
    daemons.append(first)
    first.wait_ready(60)
    wait_for(lambda: len(done_jobs()) >= 2, 180, "two tick jobs")
    assert first.stop() == 0
    stopped = time.time()
    before = tick_times()
    time.sleep(5)  # the subject is time passing with no daemon: two ticks or more are missed
    restarted = time.time()
    second = Daemon(env, "--poll-interval", "0.2").start()
    daemons.append(second)
    second.wait_ready(60)
    wait_for(lambda: len(tick_times()) > len(before), 120, "a tick after the restart")
    n = len(done_jobs())
    wait_for(lambda: len(done_jobs()) > n, 120, "its job")
    assert second.stop() == 0

    ticks = tick_times()
    assert ticks[: len(before)] == before and len(set(ticks)) == len(ticks)  # none lost or twice
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert all(g >= 2.0 - 1e-6 and abs(g / 2.0 - round(g / 2.0)) < 1e-6 for g in gaps), gaps
    assert len([t for t in ticks if stopped < t < restarted]) <= 1, (stopped, restarted, ticks)
    # Each tick's job's output carries the tick commit's global ID, and sees every tick so far.
    # (A job may run before the first tick, for the data input alone: it has no datums.)
    ticked = [j for j in done_jobs() if next(i["commit"] for i in j.inputs if i["name"] == "tick")]
    assert len(ticked) >= 3
    for job in ticked:
        tick_commit = next(i["commit"] for i in job.inputs if i["name"] == "tick")
        assert lake.get_commit("clock", job.output_commit).global_id == (
            lake.get_commit("clock_tick", tick_commit).global_id
        )
    listed = env.out("cat", "clock@main:/ticks").split()
    assert listed == [tick_name(t) for t in ticks[: len(listed)]] and len(listed) >= len(before)
