"""Commands for pipelines: specs, jobs, datums, logs, lineage, and waiting for a global ID."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import click

from cowfs.cli.common import Context, emit_json, json_option, pass_ctx, when
from cowfs.errors import NotFound, UsageError
from cowfs.pipelines import lineage as lineage_mod
from cowfs.pipelines import records
from cowfs.pipelines import spec as spec_mod
from cowfs.pipelines.executor import RunOptions, run_job
from cowfs.refs import parse_ref

_spec_file = click.option(
    "-f",
    "--file",
    "spec_file",
    required=True,
    metavar="FILE",
    help="Spec in YAML or JSON ('-' reads standard input).",
)


def _read_spec(path: str) -> spec_mod.PipelineSpec:
    if path == "-":
        return spec_mod.parse_text(sys.stdin.read(), "stdin")
    p = Path(path)
    if not p.is_file():
        raise NotFound(f"no spec file {path}")
    return spec_mod.parse_text(p.read_text(), p.name)


def _warn_image(spec: spec_mod.PipelineSpec) -> None:
    if spec.transform.image and not (shutil.which("podman") or shutil.which("docker")):
        click.echo(
            f"cowfs: warning: {spec.name} runs image {spec.transform.image}, but neither podman "
            "nor docker is installed here: its jobs will fail on this machine",
            err=True,
        )


def _pipeline_row(lake, p: records.Pipeline) -> dict:
    st = records.get_state(lake, p.name)
    return {
        "name": p.name,
        "version": p.version,
        "inputs": [f"{i.repo}@{i.branch}:{i.glob}" for i in p.spec.pfs_inputs()],
        "output": f"{p.name}@{p.spec.output_branch}",
        "last_job": st.job if st else None,
        "state": st.state if st else "idle",
        "created": p.created,
        "updated": p.updated,
    }


@click.group()
def pipeline() -> None:
    """Create, inspect, update, delete and run pipelines."""


@pipeline.command("create")
@_spec_file
@pass_ctx
def pipeline_create(ctx: Context, spec_file: str) -> None:
    """Validate a spec, store it, and create its output repo (named after the pipeline)."""
    spec = _read_spec(spec_file)
    p = records.create_pipeline(ctx.lake(), spec)
    _warn_image(spec)
    click.echo(f"created pipeline {p.name} (output repo {p.name})")


@pipeline.command("update")
@_spec_file
@click.option("--reprocess", is_flag=True, help="Process every datum again, even unchanged ones.")
@pass_ctx
def pipeline_update(ctx: Context, spec_file: str, reprocess: bool) -> None:
    """Replace a pipeline's spec; a changed transform reprocesses everything by itself."""
    spec = _read_spec(spec_file)
    p = records.update_pipeline(ctx.lake(), spec, reprocess)
    _warn_image(spec)
    click.echo(
        f"updated pipeline {p.name} to version {p.version}" + (" (reprocess)" if reprocess else "")
    )


@pipeline.command("list")
@json_option
@pass_ctx
def pipeline_list(ctx: Context, as_json: bool) -> None:
    lake = ctx.lake()
    rows = [_pipeline_row(lake, p) for p in records.list_pipelines(lake)]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['name']:<20} v{r['version']:<3} {r['state']:<12} <- {', '.join(r['inputs'])}"
        )


@pipeline.command("inspect")
@click.argument("name")
@json_option
@pass_ctx
def pipeline_inspect(ctx: Context, name: str, as_json: bool) -> None:
    lake = ctx.lake()
    p = records.get_pipeline(lake, name)
    row = {**_pipeline_row(lake, p), "spec": p.spec.to_dict()}
    if as_json:
        emit_json(row)
        return
    import yaml

    click.echo(f"pipeline {p.name}  version {p.version}  state {row['state']}")
    click.echo(
        f"created {when(p.created)}  updated {when(p.updated)}  last job {row['last_job'] or '-'}"
    )
    click.echo(yaml.safe_dump(row["spec"], sort_keys=False).rstrip())


@pipeline.command("delete")
@click.argument("name")
@click.option("--keep-repo", is_flag=True, help="Keep the output repo and its commits.")
@pass_ctx
def pipeline_delete(ctx: Context, name: str, keep_repo: bool) -> None:
    """Delete a pipeline with its jobs, datums and logs (and its output repo)."""
    records.delete_pipeline(ctx.lake(), name, keep_repo)
    click.echo(f"deleted pipeline {name}")


@pipeline.command("run")
@click.argument("name")
@click.option(
    "--runner",
    type=click.Choice(["local", "ray"]),
    default=None,
    help="Where the datums run [the spec's runner, else local].",
)
@click.option(
    "--ray-address",
    default=None,
    metavar="ADDRESS",
    help="The Ray cluster when the spec names none [auto: RAY_ADDRESS or the local one].",
)
@json_option
@pass_ctx
def pipeline_run(
    ctx: Context, name: str, runner: str | None, ray_address: str | None, as_json: bool
) -> None:
    """Run one job now, in the foreground, without the daemon. Exits 1 if the job fails."""
    lake = ctx.lake()
    opts = RunOptions(
        force=True, say=lambda s: click.echo(s, err=True), runner=runner, ray_address=ray_address
    )
    job = run_job(lake, name, opts)
    if job is None:
        raise UsageError(f"pipeline {name} has no input commits yet: put data into its inputs")
    if as_json:
        emit_json(job.to_record())
    else:
        click.echo(job.id)
    if job.state != "success":
        if not as_json:
            click.echo(f"cowfs: error: job {job.id} failed: {job.error}", err=True)
        sys.exit(1)


# --- jobs, datums, logs ------------------------------------------------------------------------


def _job_row(j: records.Job) -> dict:
    secs = j.seconds()
    return {
        "id": j.id,
        "pipeline": j.pipeline,
        "state": j.state,
        "total": j.total,
        "processed": j.processed,
        "skipped": j.skipped,
        "failed": j.failed,
        "started": j.started,
        "finished": j.finished,
        "seconds": round(secs, 3) if secs is not None else None,
        "global_id": j.global_id,
        "output_commit": j.output_commit,
        "error": j.error,
    }


@click.group()
def job() -> None:
    """List and inspect jobs."""


@job.command("list")
@click.option("--pipeline", "name", default=None, help="Only this pipeline's jobs.")
@json_option
@pass_ctx
def job_list(ctx: Context, name: str | None, as_json: bool) -> None:
    """Jobs, newest first: state, datums processed/skipped/failed, times."""
    lake = ctx.lake()
    names = [name] if name else [p.name for p in records.list_pipelines(lake)]
    if name:
        records.get_pipeline(lake, name)
    jobs = [j for n in names for j in records.list_jobs(lake, n)]
    jobs.sort(key=lambda j: j.id, reverse=True)
    rows = [_job_row(j) for j in jobs]
    if as_json:
        emit_json(rows)
        return
    click.echo(
        f"{'JOB':<32} {'PIPELINE':<16} {'STATE':<11} {'PROC':>6} {'SKIP':>6} {'FAIL':>4}  "
        f"{'STARTED':<19}  SECONDS"
    )
    for r in rows:
        secs = f"{r['seconds']:.2f}" if r["seconds"] is not None else "-"
        click.echo(
            f"{r['id']:<32} {r['pipeline']:<16} {r['state']:<11} {r['processed']:>6} "
            f"{r['skipped']:>6} {r['failed']:>4}  {when(r['started'])}  {secs}"
        )


@job.command("inspect")
@click.argument("job_id", metavar="JOB")
@json_option
@pass_ctx
def job_inspect(ctx: Context, job_id: str, as_json: bool) -> None:
    j = records.find_job(ctx.lake(), job_id)
    if as_json:
        emit_json(j.to_record())
        return
    for k, v in _job_row(j).items():
        click.echo(f"{k:<14} {v if v is not None else '-'}")


@click.group()
def datum() -> None:
    """List the datums of a job."""


@datum.command("list")
@click.argument("job_id", metavar="JOB")
@json_option
@pass_ctx
def datum_list(ctx: Context, job_id: str, as_json: bool) -> None:
    """Each datum of a job: id, inputs, state, time, tries."""
    lake = ctx.lake()
    j = records.find_job(lake, job_id)
    rows = [
        {
            "id": r.hash,
            "state": r.state,
            "tries": r.tries,
            "seconds": r.seconds,
            "inputs": r.label,
            "node": r.node or None,
        }
        for r in records.get_datum_list(lake, j.pipeline, j.id)
    ]
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        click.echo(
            f"{r['id'][:16]}  {r['state']:<9} tries {r['tries']}  "
            f"{r['seconds']:>8.3f} s  {r['inputs']}"
        )


@click.command()
@click.argument("job_id", metavar="JOB")
@click.option("--datum", "datum_id", default=None, help="Only this datum (id or prefix).")
@pass_ctx
def logs(ctx: Context, job_id: str, datum_id: str | None) -> None:
    """The user code's stdout and stderr, datum by datum."""
    lake = ctx.lake()
    j = records.find_job(lake, job_id)
    found = records.list_logs(lake, j.pipeline, j.id)
    if datum_id:
        found = [(h, d) for h, d in found if h.startswith(datum_id)]
        if not found:
            raise NotFound(f"job {j.id} has no log for datum {datum_id}")
    out = sys.stdout.buffer
    for h, data in found:
        if not datum_id:
            out.write(f"=== datum {h[:16]} ===\n".encode())
        out.write(data)
        if data and not data.endswith(b"\n"):
            out.write(b"\n")
    out.flush()


@click.command()
@click.argument("target", metavar="REPO@REF")
@click.option("--upstream", is_flag=True, help="What made this commit.")
@click.option("--downstream", is_flag=True, help="What was computed from this commit.")
@json_option
@pass_ctx
def lineage(ctx: Context, target: str, upstream: bool, downstream: bool, as_json: bool) -> None:
    """Walk provenance across chains of pipelines: upstream, downstream, or both."""
    lake = ctx.lake()
    start = lake.resolve(parse_ref(target, allow_path=False))
    if not upstream and not downstream:
        upstream = downstream = True
    result: dict[str, list] = {}
    if upstream:
        result["upstream"] = lineage_mod.upstream(lake, start)[1:]
    if downstream:
        result["downstream"] = lineage_mod.downstream(lake, start)[1:]
    if as_json:
        emit_json(
            {
                "commit": f"{start.repo}@{start.id}",
                **{
                    k: [
                        {
                            "repo": s.commit.repo,
                            "commit": s.commit.id,
                            "depth": s.depth,
                            "via": s.via,
                            "state": s.commit.state,
                            "global_id": s.commit.global_id,
                            "origin": s.commit.origin,
                        }
                        for s in steps
                    ]
                    for k, steps in result.items()
                },
            }
        )
        return
    click.echo(f"{start.repo}@{start.id}  {start.state}  {start.origin}")
    for k, steps in result.items():
        click.echo(f"{k}:")
        if not steps:
            click.echo("  (none)")
        for s in steps:
            c = s.commit
            click.echo(f"{'  ' * s.depth}{c.repo}@{c.id}  {c.state}  {c.origin}  {when(c.created)}")


@click.command()
@click.argument("global_id", metavar="GLOBAL-ID")
@click.option("--timeout", type=float, default=None, help="Give up after this many seconds.")
@click.option("--interval", type=float, default=0.2, show_default=True, help="Poll interval.")
@json_option
@pass_ctx
def wait(
    ctx: Context, global_id: str, timeout: float | None, interval: float, as_json: bool
) -> None:
    """Block until every pipeline downstream of a global ID has a finished or failed commit.

    Exits 1 if any commit of the ID failed, 3 on timeout.
    """
    lake = ctx.lake()
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        commits, pending = lineage_mod.wait_pending(lake, global_id)
        if not pending:
            break
        if deadline is not None and time.monotonic() > deadline:
            click.echo(f"cowfs: error: timed out waiting for {', '.join(pending)}", err=True)
            sys.exit(3)
        time.sleep(interval)
    failed = [c for c in commits if c.state == "failed"]
    if as_json:
        emit_json(
            {
                "global_id": global_id,
                "commits": [
                    {
                        "repo": c.repo,
                        "commit": c.id,
                        "state": c.state,
                        "origin": c.origin,
                        "error": c.error,
                    }
                    for c in commits
                ],
            }
        )
    else:
        for c in commits:
            click.echo(f"{c.repo}@{c.id}  {c.state}")
            if c.error:
                click.echo(f"  {c.error.splitlines()[0]}")
    if failed:
        sys.exit(1)


COMMANDS = [pipeline, job, datum, logs, lineage, wait]
