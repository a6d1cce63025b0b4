"""The `cowfs` command line. Every failure a user can cause ends as one line and exit 1 or 2."""

from __future__ import annotations

import sys

import click

from cowfs.cli.common import Context
from cowfs.errors import CowfsError


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except CowfsError as e:
            click.echo(f"cowfs: error: {e}", err=True)
            sys.exit(e.exit_code)
        except BrokenPipeError:
            sys.stderr.close()
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("cowfs: interrupted", err=True)
            sys.exit(130)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--store",
    envvar="COWFS_STORE",
    metavar="URL",
    help="Store: a folder, file:///path or s3://bucket/prefix [env COWFS_STORE; "
    "default ~/.local/share/cowfs/store].",
)
@click.version_option(package_name="cowfs")
@click.pass_context
def cli(ctx: click.Context, store: str | None) -> None:
    """cowfs: a versioned, copy-on-write data lake, mounted as an ordinary filesystem."""
    obj = Context(store)
    ctx.obj = obj
    ctx.call_on_close(obj.close)


def _register() -> None:
    from cowfs.cli import admin, daemon, data, history, lifecycle, pipeline

    for module in (admin, data, history, pipeline, daemon, lifecycle):
        for command in module.COMMANDS:
            cli.add_command(command)
    cli.add_command(__import__("cowfs.cli.s3", fromlist=["s3"]).s3)  # the S3 gateway (docs/s3.md)
    try:
        from cowfs.cli import mount as mount_cmds
    except ImportError:  # the mount's dependencies are optional at import time
        return
    for command in mount_cmds.COMMANDS:
        cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="cowfs")


if __name__ == "__main__":
    main()
