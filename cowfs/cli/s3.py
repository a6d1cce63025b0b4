"""`cowfs s3 serve`: the S3 gateway on its own (the daemon runs it with `--s3`)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

import click

from cowfs.cli.common import Context, pass_ctx
from cowfs.errors import UsageError


@click.group("s3")
def s3() -> None:
    """The S3 gateway: every repo, branch and commit through the S3 API (docs/s3.md)."""


def gateway_options(f):  # noqa: ANN001, ANN201 - a click decorator
    f = click.option(
        "--batch-window",
        type=float,
        default=None,
        metavar="S",
        help="Seconds a write waits for others to the same branch to share its commit [0].",
    )(f)
    f = click.option(
        "--allow-anonymous",
        is_flag=True,
        default=None,
        help="Let unsigned requests read every repo (never write).",
    )(f)
    return f


@s3.command("serve")
@click.option("--listen", default=None, metavar="HOST:PORT", help="Address [127.0.0.1:9000].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(path_type=Path),
    default=None,
    help="TOML config with an [s3] table of keys [/etc/cowfs/config.toml].",
)
@gateway_options
@pass_ctx
def serve(
    ctx: Context,
    listen: str | None,
    config_path: Path | None,
    allow_anonymous: bool | None,
    batch_window: float | None,
) -> None:
    """Serve the S3 API until SIGTERM or Ctrl-C."""
    import trio

    from cowfs.s3gateway.config import load_gateway_config
    from cowfs.s3gateway.server import parse_listen, serve_gateway

    cfg = load_gateway_config(config_path, required=config_path is not None).override(
        listen=listen, allow_anonymous=allow_anonymous, batch_window=batch_window
    )
    if cfg.batch_window < 0:
        raise UsageError("--batch-window must not be negative")
    parse_listen(cfg.listen)
    if not cfg.keys and not cfg.allow_anonymous:
        raise UsageError(
            "no S3 keys: add [s3] access_key and secret_key to the config "
            f"({config_path or '/etc/cowfs/config.toml'}) or pass --allow-anonymous"
        )
    logging.basicConfig(level=logging.INFO, format="cowfs s3: %(message)s", stream=sys.stderr)
    lake = ctx.lake()

    async def main() -> None:
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            addrs = await nursery.start(serve_gateway, lake, cfg, stop)
            mode = "anonymous read-only allowed" if cfg.allow_anonymous else "signed requests only"
            click.echo(
                f"cowfs s3: serving {lake.url} on http://{addrs[0].split('://')[-1]} "
                f"({len(cfg.keys)} key(s), {mode}, batch window {cfg.batch_window:g} s)",
                err=True,
            )
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as rx:
                async for _ in rx:
                    break
            stop.set()
        click.echo("cowfs s3: stopped", err=True)

    try:
        trio.run(main)
    except OSError as e:
        raise UsageError(f"cannot listen on {cfg.listen}: {e.strerror or e}") from None


COMMANDS = [s3]
