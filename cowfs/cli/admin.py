"""Commands that set things up: the store, repos, branches, and accounting."""

from __future__ import annotations

import sys

import click

from cowfs import revert as revert_mod
from cowfs.cli.common import Context, emit_json, human_bytes, json_option, pass_ctx, when
from cowfs.config import default_store_url
from cowfs.errors import CowfsError, UsageError
from cowfs.lake import Lake
from cowfs.refs import parse_branch_ref, parse_ref


@click.command()
@json_option
@pass_ctx
def init(ctx: Context, as_json: bool) -> None:
    """Create a store (a local folder by default) or check that it exists."""
    url = ctx.store_url or default_store_url()
    lake = Lake.open(url, create=True)
    ctx._lake = lake
    if as_json:
        emit_json({"store": lake.url})
    else:
        click.echo(f"cowfs store ready at {lake.url}")


@click.group()
def repo() -> None:
    """Create, list and delete repos."""


@repo.command("create")
@click.argument("name")
@click.option("-d", "--description", default="")
@pass_ctx
def repo_create(ctx: Context, name: str, description: str) -> None:
    ctx.lake().create_repo(name, description)
    click.echo(f"created repo {name}")


@repo.command("list")
@json_option
@pass_ctx
def repo_list(ctx: Context, as_json: bool) -> None:
    lake = ctx.lake()
    rows = []
    damaged: list[str] = []
    for r in lake.list_repos(damaged):
        try:
            branches = [b for b, _ in lake.branches(r["name"])]
        except CowfsError as e:
            damaged.append(f"repo {r['name']}: {e}")
            branches = []
        rows.append({**r, "branches": branches})
    if as_json:
        emit_json(rows)
    else:
        for r in rows:
            click.echo(
                f"{r['name']:<24} {when(r['created'])}  branches: {', '.join(r['branches']) or '-'}"
            )
    _report_damage(damaged)


def _report_damage(damaged: list[str]) -> None:
    """Store-wide commands report each repo's damage on its own line, then exit 1."""
    for line in damaged:
        click.echo(f"cowfs: damaged: {line}", err=True)
    if damaged:
        sys.exit(1)


@repo.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_ctx
def repo_delete(ctx: Context, name: str, yes: bool) -> None:
    """Delete a repo with all its branches and commits (or finish an interrupted delete)."""
    lake = ctx.lake()
    lake.repo_record(name, deleting_ok=True)
    if not yes:
        if not click.get_text_stream("stdin").isatty():
            raise UsageError(f"deleting repo {name} removes all its commits: add --yes to confirm")
        click.confirm(f"Delete repo {name} and all its commits?", abort=True)
    lake.delete_repo(name)
    click.echo(f"deleted repo {name}")


@click.group()
def branch() -> None:
    """Create, list and delete branches."""


@branch.command("create")
@click.argument("target")
@click.option("--from", "start", required=True, metavar="REF", help="Commit or branch to start at.")
@pass_ctx
def branch_create(ctx: Context, target: str, start: str) -> None:
    lake = ctx.lake()
    ref = parse_branch_ref(target, allow_path=False, what="create branch")
    if "@" not in target:
        raise UsageError(f"name the new branch as repo@branch, not {target!r}")
    src = parse_ref(start, allow_path=False)
    if src.repo != ref.repo:
        raise UsageError("a branch must start from a commit of its own repo")
    commit = lake.resolve(src)
    lake.create_branch(ref.repo, ref.rev, commit)
    click.echo(f"created branch {ref.repo}@{ref.rev} at {commit.id}")


@branch.command("list")
@click.argument("repo_name", metavar="REPO")
@json_option
@pass_ctx
def branch_list(ctx: Context, repo_name: str, as_json: bool) -> None:
    lake = ctx.lake()
    rows = [{"branch": b, "head": cid} for b, cid in lake.branches(repo_name)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(f"{r['branch']:<24} {r['head']}")


@branch.command("delete")
@click.argument("target")
@pass_ctx
def branch_delete(ctx: Context, target: str) -> None:
    ref = parse_branch_ref(target, allow_path=False, what="delete branch")
    ctx.lake().delete_branch(ref.repo, ref.rev)
    click.echo(f"deleted branch {ref.repo}@{ref.rev}")


@branch.command("reset")
@click.argument("target", metavar="REPO@BRANCH")
@click.argument("commit_id", metavar="COMMIT")
@json_option
@pass_ctx
def branch_reset(ctx: Context, target: str, commit_id: str, as_json: bool) -> None:
    """Move a branch to another commit (the commits it leaves stay until gc drops them)."""
    lake = ctx.lake()
    at = parse_branch_ref(target, allow_path=False, what="reset", spelled=True)
    repo, br = at.repo, at.rev
    ref = parse_ref(commit_id if "@" in commit_id else f"{repo}@{commit_id}", allow_path=False)
    to = lake.resolve(ref)
    old = revert_mod.reset(lake, repo, br, to)
    if as_json:
        emit_json({"branch": f"{repo}@{br}", "from": old.id if old else None, "to": to.id})
    else:
        click.echo(f"{repo}@{br} moved from {old.id if old else '-'} to {to.id}")


@click.command()
@json_option
@pass_ctx
def stats(ctx: Context, as_json: bool) -> None:
    """Logical bytes against stored bytes: how much deduplication saves."""
    s = ctx.lake().stats()
    if as_json:
        emit_json(s)
        _report_damage(s["damaged"])
        return
    click.echo(f"store          {s['store']}")
    click.echo(f"repos          {s['repos']}   commits {s['commits']}")
    click.echo(f"logical bytes  {human_bytes(s['logical_bytes'])}  (every commit counted whole)")
    click.echo(f"in branch heads {human_bytes(s['head_bytes'])} in {s['head_files']} files")
    click.echo(
        f"stored bytes   {human_bytes(s['stored_bytes'])}  in {s['chunks']} chunks "
        f"and {s['tree_nodes']} tree nodes"
    )
    click.echo(f"dedup ratio    {s['dedup_ratio'] or '-'}")
    _report_damage(s["damaged"])


COMMANDS = [init, repo, branch, stats]
