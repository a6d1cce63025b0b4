"""The daemon's life: config, startup order, sd_notify, signals, clean shutdown.

Startup: open the lake, serve /metrics, mount (if asked), start the watcher, and only then tell
systemd READY=1, so `systemctl start` returns with the mount usable. SIGTERM (systemd's stop)
says STOPPING=1, stops jobs (they record what finished and are marked interrupted, to restart
with the next daemon), and unmounts. A mount that disappears from under the daemon is an error
exit, so `Restart=on-failure` brings it back.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import uuid
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import trio

from cowfs.errors import UsageError
from cowfs.lake import Lake

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

log = logging.getLogger("cowfs.daemon")
_UNMOUNT_WAIT_S = 10.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _late_signal(signum: int, frame: object) -> None:
    log.info("%s while stopping: already on the way out", signal.Signals(signum).name)


_KEYS = {
    "store": str,
    "mount": str,
    "metrics": str,
    "poll_interval": (int, float),
    "watch": bool,
    "allow_other": bool,
    "read_ahead_kb": int,
    "cache_dir": str,
    "state_dir": str,
    "ray": str,
}
_POSITIVE = ("poll_interval",)
_NOT_NEGATIVE = ("read_ahead_kb",)
#: Tables of the same file that belong to others (the S3 gateway reads `[s3]`).
_OTHER_TABLES = ("s3",)


@dataclass(frozen=True)
class DaemonConfig:
    store: str | None = None
    mount: str | None = None
    metrics: str | None = None
    poll_interval: float = 0.5
    watch: bool = True
    allow_other: bool = False
    #: The mount's read-ahead (`cowfs mount --read-ahead-kb`); 0 keeps the kernel's.
    read_ahead_kb: int = 1024
    cache_dir: str | None = None
    state_dir: str | None = None
    #: HOST:PORT of the S3 gateway (`--s3`); its keys come from the config's `[s3]` table.
    s3: str | None = None
    #: Run pipelines whose spec names no runner on this Ray cluster ("auto", HOST:PORT, ...).
    ray: str | None = None

    def override(self, **kw: Any) -> DaemonConfig:
        """Command-line values win over the file; None means "not given"."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})


def load_config(path: Path) -> DaemonConfig:
    """Read a TOML config; unknown keys and wrong types are errors, not silently ignored."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"no config file {path}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path} does not parse: {e}") from None
    section = raw.get("daemon", raw)
    problems = []
    for key, value in section.items():
        if key == "daemon" or (key in _OTHER_TABLES and isinstance(value, dict)):
            continue
        want = _KEYS.get(key)
        if want is None:
            problems.append(f"unknown key {key!r} (known: {', '.join(_KEYS)})")
        elif not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            problems.append(f"{key} has the wrong type ({type(value).__name__})")
        elif (key in _POSITIVE and value <= 0) or (key in _NOT_NEGATIVE and value < 0):
            problems.append(f"{key} must be {'above' if key in _POSITIVE else 'at least'} 0")
    if problems:
        raise UsageError(f"config {path}: " + "; ".join(problems))
    known = {f.name for f in fields(DaemonConfig)}
    values = {k: v for k, v in section.items() if k in known and k not in _OTHER_TABLES}
    if "poll_interval" in values:
        values["poll_interval"] = float(values["poll_interval"])
    return DaemonConfig(**values)


def sd_notify(message: str) -> bool:
    """Tell systemd (or whoever set $NOTIFY_SOCKET) about our state; False when nobody asked."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.connect(addr)
            s.sendall(message.encode())
        except OSError as e:
            log.warning("sd_notify failed: %s", e)
            return False
    return True


def run_service(cfg: DaemonConfig, gateway: Any = None) -> None:
    """`gateway`: the S3 gateway's settings (a `GatewayConfig`) when `cfg.s3` asks for it."""
    logging.basicConfig(
        level=logging.INFO, format="cowfs daemon: %(message)s", stream=sys.stderr, force=True
    )
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack
    if cfg.cache_dir:
        os.environ["COWFS_CACHE_DIR"] = cfg.cache_dir
    if cfg.state_dir:
        os.environ["COWFS_STATE_DIR"] = cfg.state_dir
    lake = Lake.open(cfg.store)
    from daemon import metrics

    metrics.instrument(lake)
    code = 0
    # trio re-delivers signals its receiver had not consumed when the receiver closes; with
    # these as the handlers underneath, a second SIGTERM during shutdown cannot kill us
    # halfway through unmounting.
    for sig in _STOP_SIGNALS:
        signal.signal(sig, _late_signal)
    try:
        code = trio.run(_main, cfg, lake, gateway)
    finally:
        lake.close()
    if code:
        sys.exit(code)


async def _main(cfg: DaemonConfig, lake: Lake, gateway: Any = None) -> int:
    from daemon import metrics
    from daemon.watcher import Watcher

    stop = threading.Event()
    server = None
    exit_code = 0
    parts = []
    if cfg.metrics:
        try:
            server = metrics.serve(cfg.metrics)
        except (OSError, ValueError) as e:
            log.error("cannot serve metrics on %s: %s", cfg.metrics, e)
            return 2
        parts.append(f"metrics on http://{cfg.metrics}/metrics")
    try:
        async with trio.open_nursery() as nursery:
            mount_done = trio.Event()
            stopping = trio.Event()
            exit_code_box: list[int] = []
            if cfg.mount:
                mountpoint = str(Path(cfg.mount).resolve())
                await nursery.start(
                    _mount,
                    lake,
                    cfg,
                    mountpoint,
                    stopping,
                    mount_done,
                    exit_code_box,
                    nursery.cancel_scope,
                )
                parts.append(f"mounted {lake.url} at {mountpoint}")
            if cfg.s3 and gateway is not None:
                from cowfs.s3gateway.server import serve_gateway

                addrs = await nursery.start(serve_gateway, lake, gateway, stopping)
                parts.append(f"S3 gateway on {addrs[0]}")
            if cfg.watch:
                watcher = Watcher(
                    lake, cfg.poll_interval, uuid.uuid4().hex, stop, log.info, ray=cfg.ray
                )
                await nursery.start(watcher.run)
                parts.append(f"watching pipelines every {cfg.poll_interval:g} s")
            status = "; ".join(parts) or "idle"
            log.info("ready: %s", status)
            sd_notify(f"READY=1\nSTATUS={status}\nMAINPID={os.getpid()}")
            with trio.open_signal_receiver(*_STOP_SIGNALS) as rx:
                async for signum in rx:
                    log.info("%s: stopping", signal.Signals(signum).name)
                    break
                sd_notify("STOPPING=1")
                stopping.set()
                stop.set()
                if cfg.mount:
                    # Unmount while the filesystem still answers: once its loop is cancelled,
                    # any lookup of the mountpoint (even realpath) would wait on it forever.
                    await trio.to_thread.run_sync(_unmount, mountpoint)
                    with trio.move_on_after(_UNMOUNT_WAIT_S):
                        await mount_done.wait()
                nursery.cancel_scope.cancel()
        if exit_code_box:
            exit_code = exit_code_box[0]
    finally:
        stop.set()
        if server is not None:
            server.shutdown()
    log.info("stopped")
    return exit_code


async def _mount(
    lake: Lake,
    cfg: DaemonConfig,
    mountpoint: str,
    stopping: trio.Event,
    done: trio.Event,
    exit_code: list[int],
    everything: trio.CancelScope,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the mount; if it ends while the daemon is not stopping, exit with an error so
    systemd restarts us."""
    from daemon.mount import MountOptions, is_mounted, serve_mount, unmount

    if is_mounted(mountpoint):  # left behind by a crashed daemon
        log.info("unmounting a stale mount at %s", mountpoint)
        unmount(mountpoint, lazy=True)
    Path(mountpoint).mkdir(parents=True, exist_ok=True)
    try:
        options = MountOptions(allow_other=cfg.allow_other, read_ahead_kb=cfg.read_ahead_kb)
        await serve_mount(lake, mountpoint, options, task_status=task_status)
    finally:
        done.set()
    if not stopping.is_set():
        log.error("the mount at %s went away: exiting", mountpoint)
        exit_code.append(1)
        everything.cancel()


def _unmount(mountpoint: str) -> None:
    """Unmount cleanly; lazily when something still holds files open in it."""
    from daemon.mount import unmount

    try:
        unmount(mountpoint)
    except (subprocess.CalledProcessError, OSError) as e:
        log.warning("unmount of %s failed (%s): detaching it lazily", mountpoint, e)
        try:
            unmount(mountpoint, lazy=True)
        except (subprocess.CalledProcessError, OSError) as e2:
            log.error("cannot unmount %s: %s", mountpoint, e2)


def cleanup(cfg: DaemonConfig) -> None:
    """Lazily unmount a mount a dead daemon left behind (systemd's ExecStopPost)."""
    if not cfg.mount:
        return
    from daemon.mount import is_mounted, unmount

    mountpoint = str(Path(cfg.mount).resolve())
    if is_mounted(mountpoint):
        unmount(mountpoint, lazy=True)
        log.info("unmounted %s", mountpoint)
