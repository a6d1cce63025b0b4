"""Helpers for tests that mount for real: a store, a mount process, and the CLI beside it.

Every mount is started as its own `cowfs mount` process (as users run it) and is always
unmounted in teardown, falling back to a lazy unmount, so a failing test never leaves a stale
mount behind.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from cowfs.lake import Lake
from daemon.mount import is_mounted

MOUNT_WAIT_S = 30.0


class MountedLake:
    """One store with its own cache and state folders, and (while mounted) a mount of it."""

    def __init__(self, root: Path, url: str, name: str = "mnt") -> None:
        self.root = root
        self.url = url
        self.mnt = root / name
        self.mnt.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.log = root / f"{name}.log"
        self._lake: Lake | None = None
        #: Extra environment of the mount process only (see `customize_mount`).
        self.mount_env: dict[str, str] = {}

    @property
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            COWFS_STORE=self.url,
            COWFS_CACHE_DIR=str(self.root / "cache"),
            COWFS_STATE_DIR=str(self.root / "state"),
        )
        return env

    def cli(self, *args: str, check: bool = True, input: bytes | None = None) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "cowfs.cli.main", *args],
            env=self.env,
            capture_output=True,
            input=input,
            timeout=300,
        )
        if check and p.returncode != 0:
            raise AssertionError(f"cowfs {' '.join(args)} failed: {p.stderr.decode()}")
        return p.stdout.decode()

    def another_mount(self, name: str = "mnt2") -> MountedLake:
        """A second mount point of the same store and state (as a second `cowfs mount` on the
        same box would be); close it as well as this one."""
        return MountedLake(self.root, self.url, name)

    def lake(self) -> Lake:
        if self._lake is None:
            os.environ.update(
                COWFS_CACHE_DIR=str(self.root / "cache"), COWFS_STATE_DIR=str(self.root / "state")
            )
            self._lake = Lake.open(self.url)
        return self._lake

    def sh(self, cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run(
            cmd, shell=True, cwd=self.mnt, env=self.env, capture_output=True, timeout=300
        )
        if check and p.returncode != 0:
            raise AssertionError(f"{cmd!r} failed ({p.returncode}): {p.stderr.decode()}")
        return p

    def customize_mount(self, code: str) -> None:
        """Run `code` at start-up of the next mount process (as its `sitecustomize`), e.g. to
        shorten a timer or to watch its system calls."""
        site = self.root / f"site-{self.mnt.name}"
        site.mkdir(exist_ok=True)
        (site / "sitecustomize.py").write_text(code)
        self.mount_env["PYTHONPATH"] = os.pathsep.join(
            [str(site), *filter(None, [os.environ.get("PYTHONPATH")])]
        )

    def mount(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cowfs.cli.main", "mount", str(self.mnt)],
                env={**self.env, **self.mount_env},
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not is_mounted(str(self.mnt)):
            if self.proc.poll() is not None:
                raise AssertionError(f"mount exited: {self.log.read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"mount did not come up: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def unmount(self) -> None:
        if is_mounted(str(self.mnt)):
            r = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True)
            if r.returncode != 0:
                subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        subprocess.run(["fusermount3", "-uz", str(self.mnt)], capture_output=True)

    def close(self) -> None:
        try:
            self.unmount()
        finally:
            if self._lake is not None:
                self._lake.close()
                self._lake = None


def wait_for(pred, timeout: float = 5.0, every: float = 0.05) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return pred()
