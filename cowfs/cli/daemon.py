"""`cowfs daemon`: the mount, the pipeline watcher and /metrics in one long-lived process."""

from __future__ import annotations

from pathlib import Path

import click

from cowfs.cli.common import Context, pass_ctx
from cowfs.errors import UsageError


@click.command("daemon")
@click.option(
    "--mount",
    "mountpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="Mount the lake here (FUSE); without it, watcher and metrics only.",
)
@click.option(
    "--metrics",
    "metrics",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus /metrics here (e.g. 127.0.0.1:9464).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config (e.g. /etc/cowfs/config.toml); flags override it.",
)
@click.option(
    "--poll-interval",
    type=float,
    default=None,
    help="Seconds between looks at the pipelines' input branches [0.5].",
)
@click.option(
    "--s3",
    "s3_listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve the S3 gateway here too (keys from the config's [s3] table; docs/s3.md).",
)
@click.option("--no-watch", is_flag=True, help="Do not run pipelines (mount and metrics only).")
@click.option(
    "--ray",
    "ray_address",
    default=None,
    metavar="ADDRESS",
    help="Run pipelines that name no runner on this Ray cluster (auto, HOST:PORT, ray://...).",
)
@click.option(
    "--cleanup",
    is_flag=True,
    help="Only unmount a mount a dead daemon left behind, then exit (ExecStopPost).",
)
@pass_ctx
def daemon(
    ctx: Context,
    mountpoint: Path | None,
    metrics: str | None,
    config_path: Path | None,
    poll_interval: float | None,
    s3_listen: str | None,
    no_watch: bool,
    ray_address: str | None,
    cleanup: bool,
) -> None:
    """Run the watcher (jobs start when input branches move), /metrics, and optionally the mount.

    Tells systemd READY=1 once everything is up and STOPPING=1 on SIGTERM, then unmounts.
    """
    from daemon.service import DaemonConfig, load_config, run_service
    from daemon.service import cleanup as cleanup_mount

    cfg = load_config(config_path) if config_path else DaemonConfig()
    cfg = cfg.override(
        store=ctx.store_url,
        mount=str(mountpoint) if mountpoint else None,
        metrics=metrics,
        poll_interval=poll_interval,
        watch=False if no_watch else None,
        s3=s3_listen,
        ray=ray_address,
    )
    if cfg.poll_interval <= 0:
        raise UsageError("--poll-interval must be positive")
    if cleanup:
        cleanup_mount(cfg)
        return

    gateway = None
    if cfg.s3:
        from cowfs.s3gateway.config import load_gateway_config
        from cowfs.s3gateway.server import parse_listen

        parse_listen(cfg.s3)
        gateway = load_gateway_config(config_path).override(listen=cfg.s3)
        if not gateway.keys and not gateway.allow_anonymous:
            raise UsageError("--s3: no S3 keys in the config's [s3] table (see docs/s3.md)")
    run_service(cfg, gateway)


COMMANDS = [daemon]
