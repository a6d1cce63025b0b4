"""Running the mount: inside another trio program (`serve_mount`), or as a process of its own
(`run_mount`) that unmounts cleanly on SIGTERM, SIGINT and SIGHUP."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from typing import Any

import pyfuse3
import trio

from cowfs.lake import Lake
from daemon import fuseloop
from daemon.control import serve_control
from daemon.fs import CowFS

log = logging.getLogger("cowfs.mount")


@dataclass
class MountOptions:
    allow_other: bool = False
    #: Concurrent FUSE requests: reads that wait on the store must not hold up the others.
    max_tasks: int = 64
    min_tasks: int = 8
    debug: bool = False
    #: The mount's own read-ahead, its bdi's `read_ahead_kb` (0: the kernel's, 128). At 1024 a
    #: sequential reader sends one READ per MiB instead of four, each a Python request saved;
    #: see docs/mount.md. Setting it needs root; without, the mount keeps the kernel's and says
    #: so in its log.
    read_ahead_kb: int = 1024


def is_mounted(mountpoint: str) -> bool:
    """From /proc, never touching the mount itself (a dead FUSE mount hangs a stat)."""
    return mount_device(mountpoint) is not None


def mount_device(mountpoint: str, resolved: bool = False) -> str | None:
    """The `major:minor` of what is mounted at `mountpoint` (the last mount there), from /proc:
    a stat of a FUSE mount would wait for its own loop, or hang on a dead one. A `resolved`
    path is taken as it is (resolving it stats it)."""
    target = mountpoint if resolved else os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        return device_in_mountinfo(f.read(), target)


def device_in_mountinfo(mountinfo: str, target: str) -> str | None:
    found = None
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) > 4 and _unescape(parts[4]) == target:
            found = parts[2]
    return found


def set_read_ahead(mountpoint: str, kb: int) -> bool:
    """Set the read-ahead of the mount at `mountpoint`, a resolved path (resolving it would stat
    the mount, whose own loop may be the caller's); False where this process may not (not
    root, no sysfs)."""
    dev = mount_device(mountpoint, resolved=True)
    if dev is None:
        return False
    try:
        with open(f"/sys/class/bdi/{dev}/read_ahead_kb", "w") as f:
            f.write(f"{kb}\n")
    except OSError as e:
        log.info("read-ahead left at the kernel's: %s", e)
        return False
    return True


def _unescape(field: str) -> str:
    return (
        field.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


def unmount(mountpoint: str, lazy: bool = False) -> None:
    args = ["fusermount3", "-u"] + (["-z"] if lazy else []) + [mountpoint]
    subprocess.run(args, check=True, capture_output=True)


async def serve_mount(
    lake: Lake,
    mountpoint: str,
    options: MountOptions | None = None,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    """Mount `lake` at `mountpoint` and serve it until unmounted or cancelled.

    `task_status.started()` fires once the kernel has the mount, so a caller's
    `await nursery.start(serve_mount, ...)` returns with the filesystem usable.
    """
    options = options or MountOptions()
    mountpoint = os.path.realpath(mountpoint)
    fs = CowFS(lake)
    fuse_options = set(pyfuse3.default_options) | {"fsname=cowfs", "subtype=cowfs"}
    if options.allow_other:
        fuse_options.add("allow_other")
    if options.debug:
        fuse_options.add("debug")
    fuseloop.install()
    pyfuse3.init(fs, mountpoint, fuse_options)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(fs.poll_heads)
            if options.read_ahead_kb:
                nursery.start_soon(_tune_read_ahead, fs, mountpoint, options.read_ahead_kb)
            await nursery.start(serve_control, fs.control, lake.url, mountpoint)
            task_status.started()
            await pyfuse3.main(min_tasks=options.min_tasks, max_tasks=options.max_tasks)
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=is_mounted(mountpoint))
        fs.close()


async def _tune_read_ahead(fs: CowFS, mountpoint: str, kb: int) -> None:
    """After INIT: answering it lowers the bdi's read-ahead to what the kernel offered then."""
    await fs.initialized.wait()
    set_read_ahead(mountpoint, kb)


def run_mount(
    lake: Lake, mountpoint: str, options: MountOptions | None = None, ready: Any = None
) -> None:
    """Serve in the foreground until unmounted or signalled; `ready()` runs once mounted."""

    async def main() -> None:
        async with trio.open_nursery() as nursery:

            async def on_signal() -> None:
                with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as rx:
                    async for signum in rx:
                        log.info("signal %s: unmounting", signum)
                        nursery.cancel_scope.cancel()
                        return

            async def serve(task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
                await serve_mount(lake, mountpoint, options, task_status=task_status)
                nursery.cancel_scope.cancel()  # unmounted from outside: stop listening too

            nursery.start_soon(on_signal)
            await nursery.start(serve)
            if ready is not None:
                ready()

    trio.run(main)
