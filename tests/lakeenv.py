"""A cowfs environment for one test: its own store (local or S3), caches and state, and a way
to run the real `cowfs` command line against it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


@dataclass
class LakeEnv:
    url: str
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    def run(
        self, *args: str, ok: bool = True, input: bytes | None = None, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[bytes]:
        proc = subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", *args],
            env=self.env,
            input=input,
            capture_output=True,
            cwd=cwd or self.root,
            timeout=300,
        )
        if ok and proc.returncode != 0:
            raise AssertionError(
                f"cowfs {' '.join(args)} exited {proc.returncode}: {proc.stderr.decode()}"
            )
        return proc

    def out(self, *args: str) -> str:
        return self.run(*args).stdout.decode()

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "--json").stdout)

    def fail(self, *args: str) -> tuple[int, str]:
        """Run a command that must fail; returns (exit code, its one-line error)."""
        proc = self.run(*args, ok=False)
        assert proc.returncode != 0, f"cowfs {' '.join(args)} should have failed"
        err = proc.stderr.decode().strip()
        assert "Traceback" not in err, err
        return proc.returncode, err

    def lake(self):  # noqa: ANN201 - imported lazily so collection stays cheap
        from cowfs.lake import Lake

        old = {k: os.environ.get(k) for k in self.env}
        os.environ.update(self.env)
        try:
            return Lake.open(self.url)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def make_env(tmp_path: Path, url: str | None) -> LakeEnv:
    root = tmp_path
    env = dict(os.environ)
    url = url or str(tmp_path / "store")
    env.update(
        COWFS_STORE=url,
        COWFS_CACHE_DIR=str(tmp_path / "cache"),
        COWFS_STATE_DIR=str(tmp_path / "state"),
        PYTHONUNBUFFERED="1",
    )
    return LakeEnv(url, root, env)


@pytest.fixture(params=["local", "s3"])
def lake_env(request: pytest.FixtureRequest, tmp_path: Path) -> LakeEnv:
    """An initialised, empty lake on each backend."""
    url = request.getfixturevalue("s3_url") if request.param == "s3" else None
    env = make_env(tmp_path, url)
    if request.param == "s3":
        env.env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    env.run("init")
    return env


@pytest.fixture
def local_env(tmp_path: Path) -> LakeEnv:
    env = make_env(tmp_path, None)
    env.run("init")
    return env
