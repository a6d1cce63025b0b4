"""Serving the gateway with hypercorn on trio: alone (`cowfs s3 serve`) or inside the daemon."""

from __future__ import annotations

import trio
from hypercorn.config import Config
from hypercorn.trio import serve

from cowfs.errors import UsageError
from cowfs.lake import Lake
from cowfs.s3gateway.app import S3App
from cowfs.s3gateway.config import GatewayConfig


def parse_listen(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UsageError(f"--listen must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def hypercorn_config(listen: str) -> Config:
    host, port = parse_listen(listen)
    cfg = Config()
    cfg.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    cfg.accesslog = None
    cfg.errorlog = None
    cfg.keep_alive_timeout = 75
    # Uploads are streamed into chunks as they arrive; the body size is not capped here.
    cfg.h11_max_incomplete_size = 64 * 1024
    return cfg


async def serve_gateway(
    lake: Lake,
    cfg: GatewayConfig,
    shutdown: trio.Event | None = None,
    task_status=trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until `shutdown` is set (or the task is cancelled); `task_status.started` gets the
    bound addresses once the socket listens."""
    app = S3App(lake, cfg)
    trigger = shutdown.wait if shutdown is not None else trio.sleep_forever
    try:
        await serve(
            app, hypercorn_config(cfg.listen), shutdown_trigger=trigger, task_status=task_status
        )
    finally:
        app.close()
