"""Running the real `cowfs s3 serve` (or `cowfs daemon --s3`) for a test, and real clients."""

from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import venv
from dataclasses import dataclass
from pathlib import Path

from tests.lakeenv import LakeEnv

KEY, SECRET = "cowfs-test", "cowfs-test-secret"
RO_KEY, RO_SECRET = "cowfs-reader", "cowfs-reader-secret"
CONFIG = f"""
[s3]
[[s3.keys]]
access_key = "{KEY}"
secret_key = "{SECRET}"
read_write = ["*"]

[[s3.keys]]
access_key = "{RO_KEY}"
secret_key = "{RO_SECRET}"
read_only = ["*"]
"""
_SERVING = re.compile(r"(?:serving .* on|S3 gateway on) (http://\S+?)[;)\s]")


@dataclass
class Gateway:
    env: LakeEnv
    endpoint: str
    proc: subprocess.Popen
    lines: list[str]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)

    def client(self, key: str = KEY, secret: str = SECRET, **config):  # noqa: ANN003, ANN201
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=key,
            aws_secret_access_key=secret,
            region_name="us-east-1",
            config=Config(signature_version="s3v4", retries={"max_attempts": 1}, **config),
        )


def start(env: LakeEnv, *args: str, config: str = CONFIG, timeout: float = 60) -> Gateway:
    """Start a gateway command and wait (on its own output, not a sleep) until it listens."""
    cfg = env.root / "gateway.toml"
    cfg.write_text(config)
    argv = list(args) or ["s3", "serve", "--listen", "127.0.0.1:0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "cowfs.cli.main", *argv, "--config", str(cfg)],
        env=env.env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    found: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in proc.stderr:
            lines.append(line)
            m = _SERVING.search(line + " ")
            if m:
                found.put(m.group(1))
        found.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        url = found.get(timeout=timeout)
    except queue.Empty:
        url = None
    if url is None:
        proc.kill()
        raise AssertionError("gateway did not start:\n" + "".join(lines))
    return Gateway(env, url, proc, lines)


def awscli_venv() -> Path:
    """The AWS CLI in a venv of its own (it pins its own botocore), made once per machine."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cowfs-tests"
    aws = base / "awscli-venv" / "bin" / "aws"
    if aws.exists():
        return aws
    base.mkdir(parents=True, exist_ok=True)
    tmp = base / f"awscli-venv.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    venv.create(tmp, with_pip=True)
    subprocess.run(
        [str(tmp / "bin" / "python"), "-m", "pip", "install", "-q", "awscli"],
        check=True,
        timeout=900,
    )
    try:
        tmp.rename(base / "awscli-venv")
    except OSError:  # another session made it first
        shutil.rmtree(tmp, ignore_errors=True)
    return aws


def client_env(gw: Gateway, tmp: Path) -> dict[str, str]:
    """Environment for a CLI client: our keys, nothing inherited that could steer it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
    env.update(
        AWS_ACCESS_KEY_ID=KEY,
        AWS_SECRET_ACCESS_KEY=SECRET,
        AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(tmp / "aws-config"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "aws-credentials"),
        RCLONE_CONFIG_GW_TYPE="s3",
        RCLONE_CONFIG_GW_PROVIDER="Other",
        RCLONE_CONFIG_GW_ACCESS_KEY_ID=KEY,
        RCLONE_CONFIG_GW_SECRET_ACCESS_KEY=SECRET,
        RCLONE_CONFIG_GW_ENDPOINT=gw.endpoint,
        RCLONE_CONFIG_GW_REGION="us-east-1",
    )
    return env
