"""The control channel between `cowfs write/commit` and a running mount.

A commit must go through the mount when one runs: the mount holds the staging area open and
must show the new head right after. Each mount listens on an abstract Unix socket (no path-length
limit, nothing left behind by a kill -9) named `cowfs-<pid>-<12 hex>` and registers it in
`state_dir()/mounts/<pid>-<12 hex>.json` (the same 12 hex digits), so the CLI finds the mounts of
its store; a registration whose socket no longer answers is stale.
Requests and answers are one JSON object per line.

Abstract sockets have no file permissions, so every connection's peer credentials are checked:
only the mount's own user and root may commit, discard or open writes through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import struct
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import trio

from cowfs.config import state_dir
from cowfs.errors import CowfsError, StoreUnavailable

_MAX_REQUEST = 1 << 20


def registry() -> Path:
    return state_dir() / "mounts"


async def serve_control(
    handler: Callable[[dict], Awaitable[dict]],
    url: str,
    mountpoint: str,
    task_status: Any = trio.TASK_STATUS_IGNORED,
) -> None:
    name = f"cowfs-{os.getpid()}-{uuid.uuid4().hex[:12]}"
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind("\0" + name)
    sock.listen(32)
    reg = registry()
    reg.mkdir(parents=True, exist_ok=True)
    me = reg / f"{os.getpid()}-{name[-12:]}.json"
    me.write_text(
        json.dumps({"url": url, "socket": name, "mountpoint": mountpoint, "pid": os.getpid()})
    )
    try:
        async with trio.open_nursery() as nursery:
            task_status.started(name)
            while True:
                conn, _ = await sock.accept()
                if not peer_allowed(conn):
                    conn.close()
                    continue
                nursery.start_soon(_serve_one, trio.SocketStream(conn), handler)
    finally:
        sock.close()
        with contextlib.suppress(OSError):
            me.unlink()


def peer_allowed(conn: Any, me: int | None = None) -> bool:
    """Whether the process at the other end runs as this mount's user or as root."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, _ = struct.unpack("3i", creds)
    return uid in (0, os.geteuid() if me is None else me)


async def _serve_one(stream: trio.SocketStream, handler: Callable[[dict], Awaitable[dict]]) -> None:
    async with stream:
        buf = b""
        while b"\n" not in buf and len(buf) < _MAX_REQUEST:
            data = await stream.receive_some(65536)
            if not data:
                return
            buf += data
        try:
            answer = {"ok": True, **await handler(json.loads(buf.partition(b"\n")[0]))}
        except CowfsError as e:
            answer = {"ok": False, "error": str(e), "exit_code": e.exit_code}
        except Exception as e:  # the control channel must never take the mount down
            answer = {"ok": False, "error": f"{type(e).__name__}: {e}", "exit_code": 1}
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(json.dumps(answer).encode() + b"\n")


def mounts_of(url: str) -> list[dict]:
    """Registered mounts of the store at `url`, stale registrations removed."""
    out = []
    reg = registry()
    if not reg.is_dir():
        return out
    for f in sorted(reg.glob("*.json")):
        try:
            info = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if info.get("url") != url:
            continue
        if not _alive(info["socket"]):
            with contextlib.suppress(OSError):
                f.unlink()
            continue
        out.append(info)
    return out


def _alive(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect("\0" + name)
        except OSError:
            return False
    return True


def call(name: str, request: dict, timeout: float = 3600.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect("\0" + name)
            s.sendall(json.dumps(request).encode() + b"\n")
            buf = b""
            while b"\n" not in buf:
                data = s.recv(65536)
                if not data:
                    break
                buf += data
        except OSError as e:
            raise StoreUnavailable(f"the mount stopped answering: {e}") from None
    if not buf:
        raise StoreUnavailable("the mount closed the control connection without an answer")
    return json.loads(buf)
