"""Commands for the lake's life over time: tag, merge, revert, gc, check (`branch reset` is
with the other branch commands, in `cowfs.cli.admin`)."""

from __future__ import annotations

import re
import sys

import click

from cowfs import check as check_mod
from cowfs import gc as gc_mod
from cowfs import merge3
from cowfs import revert as revert_mod
from cowfs import tags as tags_mod
from cowfs.cli.common import Context, emit_json, human_bytes, json_option, pass_ctx, when
from cowfs.entries import Entry
from cowfs.errors import UsageError
from cowfs.refs import parse_branch_ref, parse_ref

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)")


def parse_duration(text: str, what: str) -> float:
    """`90d`, `24h`, `30m`, `10s`, `0` (a bare number is seconds)."""
    m = _DURATION.fullmatch(text.strip().lower())
    if not m:
        raise UsageError(f"{what} {text!r} is not a duration: use e.g. 24h, 90d, 30m or 0")
    return float(m.group(1)) * _UNITS[m.group(2) or "s"]


def parse_fraction(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)%", text.strip())
    if not m or not 0 < float(m.group(1)) <= 100:
        raise UsageError(f"--read-data-subset {text!r}: give a percentage such as 5%")
    return float(m.group(1)) / 100


# --- tags -------------------------------------------------------------------------------------


@click.group()
def tag() -> None:
    """Immutable names for commits: create, list, delete."""


@tag.command("create")
@click.argument("target", metavar="REPO@TAG")
@click.option("--from", "start", required=True, metavar="REF", help="Commit, branch or tag.")
@click.option("-m", "--message", default="")
@json_option
@pass_ctx
def tag_create(ctx: Context, target: str, start: str, message: str, as_json: bool) -> None:
    lake = ctx.lake()
    ref = parse_branch_ref(target, allow_path=False, what="create tag", spelled=True)
    repo, name = ref.repo, ref.rev
    src = parse_ref(start, allow_path=False)
    if src.repo != repo:
        raise UsageError("a tag must name a commit of its own repo")
    commit = lake.resolve(src)
    t = tags_mod.create_tag(lake, repo, name, commit.id, message)
    if as_json:
        emit_json(t.__dict__)
    else:
        click.echo(f"created tag {repo}@{name} at {commit.id}")


@tag.command("list")
@click.argument("repo_name", metavar="REPO")
@json_option
@pass_ctx
def tag_list(ctx: Context, repo_name: str, as_json: bool) -> None:
    lake = ctx.lake()
    lake.repo(repo_name)
    rows = tags_mod.list_tags(lake.objects, repo_name)
    if as_json:
        emit_json([t.__dict__ for t in rows])
        return
    for t in rows:
        click.echo(f"{t.name:<24} {t.commit}  {when(t.created)}  {t.message}")


@tag.command("delete")
@click.argument("target", metavar="REPO@TAG")
@pass_ctx
def tag_delete(ctx: Context, target: str) -> None:
    ref = parse_branch_ref(target, allow_path=False, what="delete tag", spelled=True)
    repo, name = ref.repo, ref.rev
    t = tags_mod.delete_tag(ctx.lake(), repo, name)
    click.echo(f"deleted tag {repo}@{name} (was {t.commit})")


# --- merge, revert, reset ---------------------------------------------------------------------


def _version(e: Entry | None) -> str:
    if e is None:
        return "absent"
    if e.is_dir:
        return "directory"
    if e.target is not None:
        return f"symlink -> {e.target}"
    return f"{human_bytes(e.size)} {e.digest.hex()[:12] if e.digest else ''}".strip()


def _conflict_json(c: merge3.MergeConflict) -> dict:
    return {
        "path": "/" + c.path,
        "base": _version(c.base),
        "dest": _version(c.dest),
        "source": _version(c.source),
    }


def _print_plan(plan: merge3.MergePlan, as_json: bool, extra: dict) -> None:
    if as_json:
        emit_json(
            {
                **extra,
                "changes": len(plan.edits),
                "conflicts": [_conflict_json(c) for c in plan.conflicts],
            }
        )
        return
    for c in plan.conflicts:
        j = _conflict_json(c)
        click.echo(f"C  {j['path']}  dest: {j['dest']}  source: {j['source']}  base: {j['base']}")


def _conflicts_exit(e: merge3.MergeConflicts, as_json: bool, extra: dict) -> None:
    plan = merge3.MergePlan(conflicts=e.conflicts)
    _print_plan(plan, as_json, {**extra, "committed": None})
    click.echo(f"cowfs: error: {e}", err=True)
    sys.exit(e.exit_code)


_strategy = click.option(
    "--strategy",
    type=click.Choice(merge3.STRATEGIES),
    default="fail",
    show_default=True,
    help="What a path both sides changed differently becomes.",
)


@click.command()
@click.argument("source", metavar="REPO@REF")
@click.argument("dest", metavar="REPO@BRANCH")
@_strategy
@click.option("--dry-run", is_flag=True, help="Show what would change; commit nothing.")
@click.option("-m", "--message", default="")
@json_option
@pass_ctx
def merge(
    ctx: Context, source: str, dest: str, strategy: str, dry_run: bool, message: str, as_json: bool
) -> None:
    """Three-way merge of SOURCE into branch DEST: a commit with both as parents."""
    lake = ctx.lake()
    src = parse_ref(source, allow_path=False)
    dst = parse_branch_ref(dest, allow_path=False, what="merge into", spelled=True)
    dst_repo, dst_branch = dst.repo, dst.rev
    if src.repo != dst_repo:
        raise UsageError("merge works within one repo: source and destination differ")
    src_commit = lake.resolve(src)
    info = {"source": src_commit.id, "dest": f"{dst_repo}@{dst_branch}", "dry_run": dry_run}
    try:
        res = merge3.merge(
            lake, dst_repo, src_commit, dst_branch, strategy, dry_run, message, str(src)
        )
    except merge3.MergeConflicts as e:
        _conflicts_exit(e, as_json, {**info, "base": e.base})
        return
    info.update(
        base=res.base.id if res.base else None,
        committed=res.commit.id if res.commit else None,
        up_to_date=res.up_to_date,
        strategy=strategy,
    )
    _print_plan(res.plan, as_json, info)
    if as_json:
        return
    if res.up_to_date:
        click.echo(f"{dst_repo}@{dst_branch} already contains {src_commit.id}")
    elif dry_run:
        click.echo(
            f"would merge {len(res.plan.edits)} changes, {len(res.plan.conflicts)} conflicts "
            f"(base {info['base']})"
        )
    else:
        click.echo(
            f"merged {src} into {dst_repo}@{dst_branch}: commit {info['committed']} "
            f"({len(res.plan.edits)} changes, "
            + (
                f"{len(res.plan.conflicts)} conflicts resolved {strategy})"
                if res.plan.conflicts
                else "no conflicts)"
            )
        )


@click.command()
@click.argument("target", metavar="REPO@BRANCH")
@click.argument("commit_id", metavar="COMMIT")
@click.option("-m", "--message", default="")
@_strategy
@click.option("--dry-run", is_flag=True, help="Show what would change; commit nothing.")
@json_option
@pass_ctx
def revert(
    ctx: Context,
    target: str,
    commit_id: str,
    message: str,
    strategy: str,
    dry_run: bool,
    as_json: bool,
) -> None:
    """A new commit on BRANCH that undoes what COMMIT changed."""
    lake = ctx.lake()
    at = parse_branch_ref(target, allow_path=False, what="revert on", spelled=True)
    repo, br = at.repo, at.rev
    ref = parse_ref(commit_id if "@" in commit_id else f"{repo}@{commit_id}", allow_path=False)
    undo = lake.resolve(ref)
    info = {"reverts": undo.id, "branch": f"{repo}@{br}", "dry_run": dry_run}
    try:
        plan, commit = revert_mod.revert(lake, repo, br, undo, message, strategy, dry_run)
    except merge3.MergeConflicts as e:
        _conflicts_exit(e, as_json, info)
        return
    info["committed"] = commit.id if commit else None
    _print_plan(plan, as_json, info)
    if not as_json:
        verb = "would revert" if dry_run else "reverted"
        click.echo(f"{verb} {undo.id} on {repo}@{br}: {len(plan.edits)} changes")


# --- gc and check -----------------------------------------------------------------------------


@click.command()
@click.option("--dry-run", is_flag=True, help="Mark and count; publish and delete nothing.")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="How long an object must stay unreferenced before it is deleted (0: now, in two runs).",
)
@click.option(
    "--keep-commits-since",
    "keep",
    default=None,
    metavar="AGE",
    help="Also drop commits no branch, tag or pipeline reaches and older than AGE.",
)
@json_option
@pass_ctx
def gc(ctx: Context, dry_run: bool, grace: str, keep: str | None, as_json: bool) -> None:
    """Reclaim the chunks, tree nodes and dropped commits nothing live references."""
    opts = gc_mod.GcOptions(
        grace_s=parse_duration(grace, "--grace"),
        keep_commits_since_s=parse_duration(keep, "--keep-commits-since") if keep else None,
        dry_run=dry_run,
    )
    lake = ctx.lake()
    with _counter("marking", not as_json) as tick:
        report = gc_mod.collect(lake, opts, lambda _phase, n: tick(n))
    if as_json:
        emit_json(report.to_json())
        return
    verb = "would delete" if dry_run else "deleted"
    click.echo(
        f"{report.live} live objects of {report.listed}; {report.candidates} unreferenced "
        f"({human_bytes(report.candidate_bytes)}); {verb} {report.swept} "
        f"({human_bytes(report.swept_bytes)}), {report.commits_dropped} commits dropped"
        f"{f', {report.rescued} rescued by writers' if report.rescued else ''}"
        f"  [{report.seconds:.1f}s, "
        f"{'dry run' if dry_run else 'runs ' + ','.join(map(str, report.runs))}]"
    )
    if report.candidates and not report.swept and not dry_run:
        click.echo(
            "unreferenced objects are deleted by the next gc at least --grace from now", err=True
        )


class _counter:
    """A tqdm counter (nodes per second) on a terminal, nothing elsewhere."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(desc=desc, unit=" nodes", file=sys.stderr, leave=False)

    def __enter__(self):  # noqa: ANN204
        return self.bar.update if self.bar else (lambda n: None)

    def __exit__(self, *exc: object) -> None:
        if self.bar:
            self.bar.close()


@click.command()
@click.option("--read-data", is_flag=True, help="Also read every chunk and verify its hash.")
@click.option(
    "--read-data-subset",
    "subset",
    default=None,
    metavar="PCT",
    help="Read this share of chunks (e.g. 5%), chosen by id.",
)
@json_option
@pass_ctx
def check(ctx: Context, read_data: bool, subset: str | None, as_json: bool) -> None:
    """Verify the store; exit 1 when anything is damaged. Repairs nothing."""
    if read_data and subset:
        raise UsageError("give --read-data or --read-data-subset, not both")
    fraction = 1.0 if read_data else parse_fraction(subset) if subset else 0.0
    lake = ctx.lake()
    from cowfs.cli.common import progress_bar

    with progress_bar("reading chunks", fraction > 0 and not as_json) as (advance, _):
        report = check_mod.check(lake, fraction, advance)
    if as_json:
        emit_json(report.to_json())
    else:
        for p in report.problems:
            click.echo(f"{p.kind}  {p.key}: {p.message}")
            if p.commits:
                click.echo(f"    commits: {', '.join(p.commits[:10])}")
            if p.paths:
                extra = p.path_count - len(p.paths)
                more = f" (+{extra} more)" if extra > 0 else ""
                click.echo(f"    paths: {', '.join(p.paths)}{more}")
        click.echo(
            f"checked {report.refs} branches, {report.tags} tags, {report.commits} commits, "
            f"{report.trees} tree nodes, {report.chunks} chunks ({report.chunks_read} read, "
            f"{human_bytes(report.bytes_read)}), {report.markers} markers: "
            f"{'ok' if report.ok else f'{len(report.problems)} problems'}"
        )
    if not report.ok:
        if not as_json:
            click.echo(f"cowfs: error: the store has {len(report.problems)} problems", err=True)
        sys.exit(1)


COMMANDS = [tag, merge, revert, gc, check]
