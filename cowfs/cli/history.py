"""Commands that read history: log, diff, inspect."""

from __future__ import annotations

import click

from cowfs.cli.common import Context, emit_json, human_bytes, json_option, pass_ctx, when
from cowfs.commits import Commit
from cowfs.errors import NotFound, UsageError
from cowfs.refs import parse_ref


def commit_json(c: Commit) -> dict:
    d = c.to_record()
    d.pop("format", None)
    return d


@click.command()
@click.argument("target", metavar="REPO[@REF]")
@click.option("-n", "--limit", type=int, default=None, help="Show at most this many commits.")
@json_option
@pass_ctx
def log(ctx: Context, target: str, limit: int | None, as_json: bool) -> None:
    """The commits of a branch, newest first."""
    lake = ctx.lake()
    ref = parse_ref(target, allow_path=False)
    commits = []
    for i, c in enumerate(lake.log(ref.repo, lake.resolve(ref))):
        if limit is not None and i >= limit:
            break
        commits.append(c)
    if as_json:
        emit_json([commit_json(c) for c in commits])
        return
    for c in commits:
        gid = "" if c.global_id == c.id else f"  global {c.global_id}"
        click.echo(f"commit {c.id}{gid}")
        click.echo(
            f"  {when(c.created)}  {c.origin}  {c.files} files, {human_bytes(c.bytes)}  {c.state}"
        )
        if c.message:
            click.echo(f"  {c.message}")
        click.echo("")


@click.command()
@click.argument("old", metavar="REPO@REF")
@click.argument("new", metavar="REPO@REF")
@json_option
@pass_ctx
def diff(ctx: Context, old: str, new: str, as_json: bool) -> None:
    """Paths added, modified and deleted between two commits, with sizes."""
    lake = ctx.lake()
    a = lake.resolve(parse_ref(old, allow_path=False))
    b = lake.resolve(parse_ref(new, allow_path=False))
    out: dict[str, list[dict]] = {"added": [], "modified": [], "deleted": []}
    for ch in lake.diff(a, b):
        if (ch.old is None or ch.old.is_dir) and (ch.new is None or ch.new.is_dir):
            continue  # directories appear through the files in them
        row: dict = {"path": "/" + ch.path}
        if ch.old is None or ch.old.is_dir:
            row["size"] = ch.new.size
            out["added"].append(row)
        elif ch.new is None or ch.new.is_dir:
            row["size"] = ch.old.size
            out["deleted"].append(row)
        else:
            row.update(old_size=ch.old.size, size=ch.new.size)
            out["modified"].append(row)
    if as_json:
        emit_json({"from": a.id, "to": b.id, **out})
        return
    rows = (
        [("A", r) for r in out["added"]]
        + [("M", r) for r in out["modified"]]
        + [("D", r) for r in out["deleted"]]
    )
    rows.sort(key=lambda t: t[1]["path"])
    for tag, r in rows:
        size = (
            human_bytes(r["size"])
            if tag != "M"
            else f"{human_bytes(r['old_size'])} -> {human_bytes(r['size'])}"
        )
        click.echo(f"{tag}  {r['path']}  ({size})")
    click.echo(
        f"{len(out['added'])} added, {len(out['modified'])} modified, "
        f"{len(out['deleted'])} deleted",
        err=True,
    )


@click.command()
@click.argument("ident", metavar="ID")
@json_option
@pass_ctx
def inspect(ctx: Context, ident: str, as_json: bool) -> None:
    """Every commit, in every repo, that carries a global ID."""
    lake = ctx.lake()
    if not ident or not all(ch in "0123456789abcdef" for ch in ident):
        raise UsageError(f"{ident!r} is not a commit or global ID (32 hex digits)")
    commits = lake.inspect(ident)
    if not commits:
        raise NotFound(f"no commit carries global ID {ident}")
    if as_json:
        emit_json({"global_id": ident, "commits": [commit_json(c) for c in commits]})
        return
    click.echo(f"global ID {ident}")
    for c in commits:
        click.echo(f"  {c.repo}@{c.id}  {c.state:<9} {c.origin:<9} {when(c.created)}  {c.message}")


COMMANDS = [log, diff, inspect]
