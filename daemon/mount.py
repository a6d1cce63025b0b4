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


def is_mounted(mountpoint: str) -> bool:
    """From /proc, never touching the mount itself (a dead FUSE mount hangs a stat)."""
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mountinfo") as f:
        for line in f:
            parts = line.split()
            if len(parts) > 4 and _unescape(parts[4]) == target:
                return True
    return False


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
            await nursery.start(serve_control, fs.control, lake.url, mountpoint)
            task_status.started()
            await pyfuse3.main(min_tasks=options.min_tasks, max_tasks=options.max_tasks)
            nursery.cancel_scope.cancel()
    finally:
        with contextlib.suppress(Exception):
            pyfuse3.close(unmount=is_mounted(mountpoint))
        fs.close()


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
