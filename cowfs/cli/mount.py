"""Commands of the mount: mount, umount, write, commit, warmup.

`write` and `commit` work with or without a running mount: when one serves this store they go
through its control socket (it holds the staging area and must show the new head at once),
otherwise they use the durable staging area directly.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import click

from cowfs.cli.common import Context, emit_json, json_option, pass_ctx
from cowfs.config import state_dir
from cowfs.errors import CowfsError, StoreUnavailable, UsageError
from cowfs.refs import parse_branch_ref, parse_ref

_MOUNT_WAIT_S = 60.0


def _holder(mounts: list[dict], repo: str, branch: str) -> dict | None:
    """The mount that has `repo@branch` open for writing. Only one may (the staging area's lock
    sees to it), and only that one holds every staged write, so commits must go there."""
    from daemon.control import call

    want = f"{repo}@{branch}"
    for m in mounts:
        info = call(m["socket"], {"op": "status"})
        if info.get("ok") and want in info.get("writes", ()):
            return m
    return None


def _reload(mounts: list[dict], but: dict | None = None) -> None:
    """Tell the other mounts the staging areas changed (one may now open the branch)."""
    from daemon.control import call

    for m in mounts:
        if m is not but:
            call(m["socket"], {"op": "reload"})


def _answer(info: dict) -> dict:
    if not info.get("ok"):
        err = CowfsError(info.get("error", "the mount refused the request"))
        err.exit_code = int(info.get("exit_code", 1))
        raise err
    return info


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--background", is_flag=True, help="Detach; return once the mount is up.")
@click.option("--allow-other", is_flag=True, help="Let other users see the mount (shared boxes).")
@click.option("--debug", is_flag=True, help="Log every FUSE request.")
@click.option("--log-file", type=click.Path(path_type=Path), help="Where --background logs go.")
@click.option(
    "--read-ahead-kb",
    type=click.IntRange(0, 1 << 20),
    default=1024,
    show_default=True,
    help="The mount's read-ahead (needs root; 0 keeps the kernel's).",
)
@pass_ctx
def mount(
    ctx: Context,
    mountpoint: Path,
    background: bool,
    allow_other: bool,
    debug: bool,
    log_file: Path | None,
    read_ahead_kb: int,
) -> None:
    """Mount the lake at MOUNTPOINT: /MNT/<repo>/<branch>, /MNT/<repo>/@<commit>, /MNT/.ids/<id>."""
    import logging

    from daemon.mount import MountOptions, is_mounted, run_mount

    if not mountpoint.is_dir():
        raise UsageError(f"mount point {mountpoint} is not a directory")
    if is_mounted(str(mountpoint)):
        raise UsageError(f"{mountpoint} is already mounted: `cowfs umount {mountpoint}` first")
    lake = ctx.lake()
    if background:
        _spawn(ctx, mountpoint, allow_other, debug, log_file, read_ahead_kb)
        return
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
    )
    options = MountOptions(allow_other=allow_other, debug=debug, read_ahead_kb=read_ahead_kb)
    run_mount(
        lake,
        str(mountpoint),
        options,
        ready=lambda: click.echo(f"cowfs: {lake.url} mounted at {mountpoint}", err=True),
    )


def _spawn(
    ctx: Context,
    mountpoint: Path,
    allow_other: bool,
    debug: bool,
    log_file: Path | None,
    read_ahead_kb: int,
) -> None:
    from daemon.mount import is_mounted

    log_file = log_file or state_dir() / "mount.log"
    log_file.parent.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "cowfs.cli.main"]
    if ctx.store_url:
        args += ["--store", ctx.store_url]
    args += ["mount", str(mountpoint)]
    args += ["--allow-other"] if allow_other else []
    args += ["--debug"] if debug else []
    args += ["--read-ahead-kb", str(read_ahead_kb)]
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
        )
    deadline = time.monotonic() + _MOUNT_WAIT_S
    while time.monotonic() < deadline:
        if is_mounted(str(mountpoint)):
            click.echo(f"cowfs: mounted at {mountpoint} (pid {proc.pid}, log {log_file})", err=True)
            return
        if proc.poll() is not None:
            raise StoreUnavailable(f"the mount exited with {proc.returncode}: see {log_file}")
        time.sleep(0.05)
    proc.terminate()
    raise StoreUnavailable(f"the mount did not come up in {_MOUNT_WAIT_S:.0f} s: see {log_file}")


@click.command()
@click.argument("mountpoint", type=click.Path(path_type=Path))
@click.option("--lazy", is_flag=True, help="Detach now even if busy (fusermount3 -uz).")
def umount(mountpoint: Path, lazy: bool) -> None:
    """Unmount a cowfs mount cleanly; the mount process then exits."""
    from daemon.mount import is_mounted, unmount

    if not is_mounted(str(mountpoint)):
        raise UsageError(f"{mountpoint} is not mounted")
    try:
        unmount(str(mountpoint), lazy=lazy)
    except subprocess.CalledProcessError as e:
        msg = (e.stderr or b"").decode(errors="replace").strip()
        raise CowfsError(f"cannot unmount {mountpoint}: {msg} (busy? try --lazy)") from None


@click.command()
@click.argument("target", metavar="REPO@BRANCH")
@click.option("--discard", is_flag=True, help="Drop the staged writes and close the branch.")
@json_option
@pass_ctx
def write(ctx: Context, target: str, discard: bool, as_json: bool) -> None:
    """Open a branch for writing under the mount (copy-on-write over its head).

    With several mounts of the store, one of them holds the branch open for writing (the one
    that had it already, else the first); under the others it stays read-only."""
    from cowfs.staging import Staging
    from cowfs.staging_commit import open_write
    from daemon.control import call, mounts_of

    at = parse_branch_ref(target, allow_path=False, what="open for writing", spelled=True)
    repo, branch = at.repo, at.rev
    lake = ctx.lake()
    mounts = mounts_of(lake.url)
    if discard:
        if mounts:
            for m in mounts:
                call(m["socket"], {"op": "discard", "repo": repo, "branch": branch})
        if Staging.exists(lake.url, repo, branch):
            Staging.open(lake.store, lake.url, repo, branch).destroy()
        _reload(mounts)
        result = {"repo": repo, "branch": branch, "discarded": True}
    elif mounts:
        holder = _holder(mounts, repo, branch) or mounts[0]
        result = _answer(call(holder["socket"], {"op": "write", "repo": repo, "branch": branch}))
        _reload(mounts, but=holder)
        mounts = [holder]
    else:
        st = open_write(lake, repo, branch)
        result = {"repo": repo, "branch": branch, "base": st.base}
        st.close()
    if as_json:
        emit_json(result)
    elif discard:
        click.echo(f"cowfs: discarded staged writes of {repo}@{branch}", err=True)
    else:
        where = ", ".join(m["mountpoint"] for m in mounts) or "the next mount"
        click.echo(f"cowfs: {repo}@{branch} open for writing under {where}", err=True)


@click.command()
@click.argument("target", metavar="REPO@BRANCH")
@click.option("-m", "--message", default="", help="Commit message.")
@click.option("--keep-open", is_flag=True, help="Stay open for writing on the new head.")
@json_option
@pass_ctx
def commit(ctx: Context, target: str, message: str, keep_open: bool, as_json: bool) -> None:
    """Seal the writes staged on a branch into one new commit; prints the commit id."""
    from cowfs.staging import Staging
    from cowfs.staging_commit import seal
    from daemon.control import call, mounts_of

    at = parse_branch_ref(target, allow_path=False, what="commit to", spelled=True)
    repo, branch = at.repo, at.rev
    lake = ctx.lake()
    mounts = mounts_of(lake.url)
    req = {
        "op": "commit",
        "repo": repo,
        "branch": branch,
        "message": message,
        "keep_open": keep_open,
    }
    holder = _holder(mounts, repo, branch)
    if holder is not None:
        cid = _answer(call(holder["socket"], req))["commit"]
    else:
        if not Staging.exists(lake.url, repo, branch):
            raise UsageError(f"{repo}@{branch} is not open for writing: run `cowfs write` first")
        st = Staging.open(lake.store, lake.url, repo, branch)
        head = seal(lake, st, message, keep_open=keep_open)
        st.close()
        cid = head.id if head else None
    _reload(mounts, but=holder)
    if as_json:
        emit_json({"commit": cid, "repo": repo, "branch": branch})
    else:
        click.echo(cid or "")


@click.command()
@click.argument("target", metavar="REPO@REF[:/PATH]")
@click.option("-j", "--jobs", type=click.IntRange(1, 256), default=16, help="Parallel fetches.")
@json_option
@pass_ctx
def warmup(ctx: Context, target: str, jobs: int, as_json: bool) -> None:
    """Fetch every chunk under a path into this node's chunk cache, in parallel (before an
    epoch over it)."""
    from cowfs.cli.common import human_bytes, progress_bar
    from cowfs.warmup import warmup as run

    ref = parse_ref(target)
    lake = ctx.lake()
    commit = lake.resolve(ref)
    with progress_bar(f"warmup {target}", not as_json) as (advance, set_total):
        stats = run(lake, commit, ref.path, jobs, advance, set_total)
    if as_json:
        emit_json({"commit": commit.id, "path": "/" + ref.path, **stats.__dict__})
    else:
        click.echo(
            f"{stats.files} files, {stats.chunks} chunks, {human_bytes(stats.bytes)} "
            f"({stats.cached} chunks were cached already)"
        )


COMMANDS = [mount, umount, write, commit, warmup]
