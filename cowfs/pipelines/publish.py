"""Publishing a job: merge the datums' outputs, check for collisions, and commit under the
claim (docs/pipelines.md, "Merging", "Commit", "Failure"). Runs on the job's runner only.

Every result is fenced: a compare-and-swap of the claim that refreshes its heartbeat only if it
still names this job and runner, right before the output commit (or the failure) is written.
"""

from __future__ import annotations

import logging
import time

from cowfs import tree
from cowfs.changes import ChangeSet
from cowfs.commits import Commit, Provenance
from cowfs.entries import Entry, dir_entry
from cowfs.lake import Lake
from cowfs.pipelines import records
from cowfs.pipelines.merge import Collision, merge
from cowfs.pipelines.planning import JobPlan
from cowfs.pipelines.records import Job, Pipeline

log = logging.getLogger("cowfs.pipelines")


def lost(
    lake: Lake,
    name: str,
    job: Job,
    when: str,
    then: str = "abandoned without moving the output branch or recording a result",
) -> records.ClaimLost:
    st = records.get_state(lake, name)
    return records.ClaimLost(
        f"pipeline {name}: job {job.id} lost its claim {when} (the pipeline's state now names "
        f"job {st.job if st else None} of runner {st.owner.get('instance') if st else None}): "
        f"{then}"
    )


def fence(lake: Lake, name: str, job: Job, instance: str, when: str) -> None:
    """Check, and keep, this runner's claim before it writes a result: one compare-and-swap
    that refreshes the heartbeat only if the state record still names this job and runner.
    Raises `ClaimLost` otherwise.

    What remains is the window between this swap and the output branch's own swap inside
    `lake.commit` (two keys, no multi-key transaction). The swap has just refreshed the
    heartbeat and the heartbeat thread keeps it fresh, so a runner elsewhere takes over only
    if this runner then stalls past `records.STALE_AFTER_S` without beating (or a writer
    ignores the claim, e.g. `pipeline delete`). A takeover that lands there is seen by the
    final state swap, which then records nothing (the commit stays, with this job's id in
    its `extra`)."""
    now = time.time()
    if not records.set_state(lake, name, job.id, instance, heartbeat=now):
        raise lost(lake, name, job, when)
    job.heartbeat = now


def output_change(
    lake: Lake, plan: JobPlan, outputs: dict[str, list[Entry]]
) -> tuple[ChangeSet, str]:
    """The output branch's change and the new datum tree root; raises `Collision`."""
    if plan.fast:
        assert plan.head is not None and plan.prev_root is not None
        removed = {h: datum_outputs(lake, plan.prev_root, h) for h in plan.gone}
        changes = delta_changes(lake, plan.head, outputs, removed, plan.prev_root)
        return changes, update_datum_tree(lake, plan.prev_root, removed, outputs)
    changes = full_changes(lake, plan.head, merge(outputs))
    return changes, update_datum_tree(lake, plan.prev_root, plan.prev_outputs, outputs)


def commit_success(
    lake: Lake, pipeline: Pipeline, job: Job, instance: str, changes: ChangeSet, datum_root: str
) -> Commit:
    spec = pipeline.spec
    provenance = tuple(Provenance(**p) for p in job.extra.get("provenance", ()))
    fence(lake, spec.name, job, instance, "before its output commit")
    commit = lake.commit(
        spec.name,
        spec.output_branch,
        changes,
        f"pipeline {spec.name} job {job.id}",
        origin="pipeline",
        global_id=job.global_id,
        provenance=provenance,
        allow_empty=True,
        extra={"pipeline": spec.name, "job": job.id, "datums": datum_root, "version": job.version},
    )
    job.state = "success"
    job.finished = time.time()
    job.output_commit = commit.id
    job.datum_tree = datum_root
    if not records.set_state(
        lake, spec.name, job.id, instance, state="success", finished=job.finished
    ):
        raise lost(
            lake, spec.name, job, f"after its output commit {commit.id} landed",
            "its result is not recorded",
        )  # fmt: skip
    records.put_job(lake, job)
    return commit


def commit_failure(
    lake: Lake,
    pipeline: Pipeline,
    job: Job,
    instance: str,
    msg: str,
    datum: str | None,
    log_key: str | None,
) -> None:
    """Record the failure on the job and as a failed output commit; the branch stays put."""
    spec = pipeline.spec
    provenance = tuple(Provenance(**p) for p in job.extra.get("provenance", ()))
    fence(lake, spec.name, job, instance, "before recording its failure")
    job.state = "failed"
    job.finished = time.time()
    job.error = msg
    job.failed_datum = datum
    try:
        if job.global_id:
            commit = lake.commit(
                spec.name,
                spec.output_branch,
                ChangeSet(),
                f"pipeline {spec.name} job {job.id} failed",
                origin="pipeline",
                global_id=job.global_id,
                provenance=provenance,
                state="failed",
                error=msg,
                allow_empty=True,
                extra={"pipeline": spec.name, "job": job.id, "datum": datum, "log": log_key},
            )
            job.output_commit = commit.id
    finally:
        if not records.set_state(
            lake, spec.name, job.id, instance, state="failed", finished=job.finished
        ):
            raise lost(lake, spec.name, job, "while recording its failure")
        records.put_job(lake, job)


def datum_outputs(lake: Lake, root: str, h: str) -> list[Entry]:
    found = tree.iter_under(lake.store, root, h)
    return [e.with_path(e.path[len(h) + 1 :]) for e in found if e.path != h]


def _owner(lake: Lake, root: str, path: str) -> str:
    """Which datum of a datum tree wrote `path` (or something beneath it): the slow search
    only a collision pays for."""
    for e in tree.iter_all(lake.store, root):
        h, _, rest = e.path.partition("/")
        if rest == path or rest.startswith(path + "/"):
            return h
    return "?"


def delta_changes(
    lake: Lake,
    head: Commit,
    added: dict[str, list[Entry]],
    removed: dict[str, list[Entry]],
    prev_root: str,
) -> ChangeSet:
    """The output change from added and removed datums alone, checked against the head for
    paths a kept datum already writes; raises `Collision` naming both datums."""
    view = tree.TreeView(lake.store, head.tree)
    new = merge(added)
    owner = {e.path: h for h, es in added.items() for e in es}
    gone = {e.path for es in removed.values() for e in es if not e.is_dir}
    gone_dirs = {e.path for es in removed.values() for e in es if e.is_dir}
    changes = ChangeSet()

    def kept_under(d: str) -> str | None:
        for e in view.walk(d):
            if e.path != d and e.path not in gone and not e.is_dir:
                return e.path
        return None

    for path, e in new.items():
        cur = view.lookup(path)
        if cur is None or path in gone:
            changes.puts[path] = e
        elif e.is_dir and cur.is_dir:
            continue
        elif e.is_dir:  # a kept datum's file where an added datum makes a directory
            raise Collision(path, _owner(lake, prev_root, path), owner[path])
        elif cur.is_dir:
            other = kept_under(path)
            if other is None:
                changes.puts[path] = e
            else:
                raise Collision(path, _owner(lake, prev_root, other), owner[path])
        else:
            raise Collision(path, _owner(lake, prev_root, path), owner[path])
    changes.deletes = sorted(p for p in gone if p not in new)
    for d in sorted(gone_dirs, reverse=True):
        if d in new or any(p.startswith(d + "/") for p in new):
            continue
        if kept_under(d) is None:
            changes.deletes.append(d)
    return changes


def update_datum_tree(
    lake: Lake,
    prev_root: str | None,
    prev: dict[str, list[Entry]],
    outputs: dict[str, list[Entry]],
) -> str:
    """The datum tree without the datums of `prev` that `outputs` lacks and with those of
    `outputs` that `prev` lacks: edits to the last tree, so its cost follows the change."""
    edits: dict[str, Entry | None] = {}
    for h, es in prev.items():
        if h not in outputs:
            edits[h] = None
            for e in es:
                edits[f"{h}/{e.path}"] = None
    for h, es in outputs.items():
        if h not in prev:
            edits[h] = dir_entry(h)
            for e in es:
                edits[f"{h}/{e.path}"] = e.with_path(f"{h}/{e.path}")
    base = prev_root or tree.empty_tree(lake.store)
    return tree.apply(lake.store, base, edits)


def full_changes(lake: Lake, head: Commit | None, merged: dict[str, Entry]) -> ChangeSet:
    """What turns the output branch's head into exactly the merged outputs."""
    changes = ChangeSet()
    current: dict[str, Entry] = {}
    if head is not None:
        current = {e.path: e for e in lake.walk(head)}
    for path, e in merged.items():
        if current.get(path) != e:
            changes.puts[path] = e
    changes.deletes = [p for p in current if p not in merged]
    return changes
