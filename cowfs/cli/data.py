"""Commands that move data: put, get, cat, ls, rm."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from cowfs.changes import ChangeSet
from cowfs.cli.common import (
    Context,
    emit_json,
    human_bytes,
    json_option,
    pass_ctx,
    progress_bar,
    when,
)
from cowfs.commits import Commit
from cowfs.entries import Entry, EntryType
from cowfs.errors import CowfsError, NotFound, UsageError
from cowfs.export import export
from cowfs.reader import ChunkReader
from cowfs.refs import parse_branch_ref, parse_ref
from cowfs.snapshot import destination, snapshot
from cowfs.tree import TreeView, empty_tree


def _raw_path(target: str) -> str | None:
    """The path part exactly as typed (keeping a trailing `/`), or None when there is none."""
    _, _, rest = target.partition("@") if "@" in target else ("", "", target)
    _, colon, path = rest.partition(":")
    return path if colon else None


@click.command()
@click.argument("target", metavar="REPO@BRANCH[:/PATH]")
@click.argument("source", type=click.Path(path_type=Path))
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--keep", is_flag=True, help="Keep files the directory no longer has (no mirroring).")
@json_option
@pass_ctx
def put(ctx: Context, target: str, source: Path, message: str, keep: bool, as_json: bool) -> None:
    """Snapshot a local directory or file into a branch as one new commit.

    A directory makes the destination mirror it; a file lands at the path. Files whose size
    and mtime have not changed since the last put are not read again. Prints the commit id last.
    """
    ref = parse_branch_ref(target, what="put into")
    if "@" not in target.partition(":")[0]:
        raise UsageError(f"name the branch to put into, e.g. {ref.repo}@main")
    if not source.exists() and not source.is_symlink():
        raise NotFound(f"{source} does not exist")
    lake = ctx.lake()
    lake.repo(ref.repo)
    head = lake.head(ref.repo, ref.rev)
    if head is None and lake.find_commit(ref.repo, ref.rev) is not None:
        raise UsageError(
            f"{ref.repo}@{ref.rev} is a commit; commits are immutable, put to a branch"
        )
    base = TreeView(lake.store, head.tree if head else empty_tree(lake.store))
    dest = destination(_raw_path(target), source, base)
    with progress_bar(f"put {source}", not as_json) as (advance, set_total):
        changes, report = snapshot(
            lake.store,
            source,
            dest,
            mirror=not keep,
            base=base,
            progress=advance,
            on_total=set_total,
        )
    commit = lake.commit(ref.repo, ref.rev, changes, message)
    created = head is None or commit.id != head.id
    if as_json:
        emit_json(
            {
                "commit": commit.id,
                "repo": ref.repo,
                "branch": ref.rev,
                "created": created,
                "files": report.files,
                "bytes": report.bytes,
                "files_read": report.files_read,
                "bytes_read": report.bytes_read,
                "chunks_new": lake.store.put_stats.chunks_new,
                "tree_nodes_new": lake.store.put_stats.trees_new,
                "bytes_stored_new": lake.store.put_stats.bytes_stored_new,
            }
        )
        return
    click.echo(
        f"{report.files} files, {human_bytes(report.bytes)}; read {report.files_read} changed "
        f"({human_bytes(report.bytes_read)}), "
        f"stored {human_bytes(lake.store.put_stats.bytes_stored_new)} new"
        + ("" if created else "; nothing changed, branch head kept"),
        err=True,
    )
    click.echo(commit.id)


def _resolve(ctx: Context, target: str) -> tuple[Commit, str, TreeView]:
    ref = parse_ref(target)
    lake = ctx.lake()
    commit = lake.resolve(ref)
    return commit, ref.path, TreeView(lake.store, commit.tree)


@click.command()
@click.argument("source", metavar="REPO@REF[:/PATH]")
@click.argument("dest", type=click.Path(path_type=Path))
@json_option
@pass_ctx
def get(ctx: Context, source: str, dest: Path, as_json: bool) -> None:
    """Restore a commit (or a path in it) to a local directory, byte for byte."""
    commit, path, view = _resolve(ctx, source)
    reader = ChunkReader(ctx.lake().store)
    try:
        with progress_bar(f"get {source}", not as_json) as (advance, set_total):
            top = view.lookup(path) if path else None
            set_total(
                top.size
                if top and not top.is_dir
                else sum(e.size for e in view.walk(path) if e.is_file)
                if path
                else view.totals()[1]
            )
            report = export(view, reader, path, dest, advance)
    finally:
        reader.close()
    if as_json:
        emit_json(
            {
                "commit": commit.id,
                "files": report.files,
                "dirs": report.dirs,
                "bytes": report.bytes,
                "damaged": report.damaged,
            }
        )
    else:
        click.echo(
            f"restored {report.files} files ({human_bytes(report.bytes)}) from "
            f"{commit.repo}@{commit.id} to {dest}",
            err=True,
        )
    if report.damaged:
        for line in report.damaged:
            click.echo(f"cowfs: {line}", err=True)
        raise CowfsError(
            f"{len(report.damaged)} path(s) could not be restored (listed above); "
            "everything else was"
        )


@click.command()
@click.argument("source", metavar="REPO@REF:/PATH")
@pass_ctx
def cat(ctx: Context, source: str) -> None:
    """Write one file's bytes to standard output."""
    _, path, view = _resolve(ctx, source)
    entry = view.lookup(path)
    if entry is None:
        raise NotFound(f"no such file /{path} in {source.partition(':')[0]}")
    if entry.is_dir:
        raise UsageError(f"/{path} is a directory: use `cowfs ls` or `cowfs get`")
    reader = ChunkReader(ctx.lake().store)
    out = sys.stdout.buffer
    try:
        for piece in reader.iter_file(entry):
            out.write(piece)
        out.flush()
    finally:
        reader.close()


def _entry_json(e: Entry) -> dict:
    return {
        "path": "/" + e.path,
        "name": e.path.rpartition("/")[2],
        "type": e.type.name.lower(),
        "size": e.size,
        "mode": oct(e.mode),
        "mtime": e.mtime_ns / 1e9,
        "digest": e.digest.hex() if e.digest else None,
        "target": e.target,
    }


@click.command()
@click.argument("target", metavar="REPO@REF[:/PATH]")
@click.option("-r", "--recursive", is_flag=True, help="List everything beneath, not only children.")
@json_option
@pass_ctx
def ls(ctx: Context, target: str, recursive: bool, as_json: bool) -> None:
    """List a directory of a commit or branch."""
    _, path, view = _resolve(ctx, target)
    top = view.lookup(path) if path else None
    if path and top is None:
        raise NotFound(f"no such file or directory /{path}")
    if top is not None and not top.is_dir:
        entries = [top]
    elif recursive:
        entries = [e for e in view.walk(path) if e.path != path]
    else:
        entries = list(view.list_dir(path))
    if as_json:
        emit_json([_entry_json(e) for e in entries])
        return
    for e in entries:
        name = e.path if recursive else e.path.rpartition("/")[2]
        suffix = "/" if e.is_dir else (f" -> {e.target}" if e.type is EntryType.SYMLINK else "")
        size = "-" if e.is_dir else human_bytes(e.size)
        click.echo(f"{e.type.name.lower():<8}{size:>11}  {when(e.mtime_ns / 1e9)}  {name}{suffix}")


@click.command()
@click.argument("targets", nargs=-1, required=True, metavar="REPO@BRANCH:/PATH...")
@click.option("-m", "--message", default="", help="Commit message.")
@json_option
@pass_ctx
def rm(ctx: Context, targets: tuple[str, ...], message: str, as_json: bool) -> None:
    """Delete paths (directories with everything beneath) as one new commit."""
    refs = [parse_branch_ref(t, what="remove from") for t in targets]
    first = refs[0]
    for r in refs:
        if not r.has_path or not r.path:
            raise UsageError(f"{r} names no path to remove: use repo@branch:/path")
        if (r.repo, r.rev) != (first.repo, first.rev):
            raise UsageError("all paths removed in one commit must be on the same branch")
    lake = ctx.lake()
    if lake.head(first.repo, first.rev) is None:
        raise NotFound(f"no branch {first.repo}@{first.rev}")
    changes = ChangeSet(deletes=[r.path for r in refs], strict_deletes=True)
    commit = lake.commit(first.repo, first.rev, changes, message)
    if as_json:
        emit_json({"commit": commit.id, "removed": ["/" + r.path for r in refs]})
    else:
        click.echo(commit.id)


COMMANDS = [put, get, cat, ls, rm]
