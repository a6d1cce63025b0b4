"""The `cowfs` command line. Every failure a user can cause ends as one line and exit 1 or 2."""

from __future__ import annotations

import importlib
import sys

import click

from cowfs.cli.common import Context
from cowfs.errors import CowfsError

#: Which module of `cowfs.cli` defines each command: a command imports only its own module, so
#: `cowfs repo list` does not pay for the pipeline, gateway and mount code at start-up.
#: tests/test_store_cli.py checks this table against every module's `COMMANDS`; a group's
#: subcommands live in the group's own module.
COMMAND_MODULES: dict[str, str] = {
    **dict.fromkeys(("init", "repo", "branch", "stats"), "admin"),
    **dict.fromkeys(("put", "get", "cat", "ls", "rm"), "data"),
    **dict.fromkeys(("log", "diff", "inspect"), "history"),
    **dict.fromkeys(("pipeline", "job", "datum", "logs", "lineage", "wait"), "pipeline"),
    "daemon": "daemon",
    **dict.fromkeys(("tag", "merge", "revert", "gc", "check"), "lifecycle"),
    **dict.fromkeys(("mount", "umount", "write", "commit", "warmup"), "mount"),
    "s3": "s3",  # the S3 gateway (docs/s3.md)
}


def module_commands(module: str) -> dict[str, click.Command]:
    """The commands `cowfs.cli.<module>` defines; none where the mount's optional dependencies
    are missing at import time."""
    try:
        mod = importlib.import_module(f"cowfs.cli.{module}")
    except ImportError:
        if module != "mount":
            raise
        return {}
    commands = getattr(mod, "COMMANDS", None) or [getattr(mod, module)]
    return {c.name: c for c in commands if c.name}


class _Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMAND_MODULES)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = COMMAND_MODULES.get(cmd_name)
        return None if module is None else module_commands(module).get(cmd_name)

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


def main() -> None:
    cli(prog_name="cowfs")


if __name__ == "__main__":
    main()
