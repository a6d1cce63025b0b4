"""Planning a job: which datums it has, which to run, which to reuse (docs/pipelines.md,
"Planning"). Runs on the job's runner only, never on workers.

Two ways: from the input diff since the job that made the output head (a one-file change costs
one datum), or a full walk of every input. Either way a datum whose hash the last job had, or
whose `datums/` record says success, is skipped and its output reused.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cowfs import tree
from cowfs.commits import Commit, Provenance
from cowfs.entries import Entry, EntryType
from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.pipelines import records
from cowfs.pipelines.datums import (
    Datum,
    InputFile,
    Under,
    datum_hash,
    plan,
    plan_delta,
    supports_delta,
    transform_hash,
)
from cowfs.pipelines.records import Job, Pipeline
from cowfs.pipelines.results import DatumRow


@dataclass
class JobPlan:
    """What a job runs and what it reuses, and what publishing needs to know about the last job."""

    head: Commit | None  # the output branch's head
    prev_root: str | None  # its datum tree, when the head is this pipeline's
    planned: dict[str, Datum]  # every datum planned (all of them, or only the delta's new ones)
    todo: list[tuple[str, Datum]]
    entries: dict[tuple[str, str], Entry]  # (input, path) -> entry, for materializing
    commits: dict[str, Commit]  # input name -> commit
    rows: dict[str, DatumRow] = field(default_factory=dict)
    #: Outputs reused from datum records (and, without previous hashes, from the datum tree).
    outputs: dict[str, list[Entry]] = field(default_factory=dict)
    #: True: merge from added and removed datums only (previous hashes known).
    fast: bool = False
    prev_outputs: dict[str, list[Entry]] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)  # the last job's datums this job lacks
    since: str | None = None  # the job a delta plan was made from
    skipped: int = 0
    total: int = 0

    def label(self, h: str) -> str:
        """A datum's label; a kept datum of a delta-planned job has only its datum-list row."""
        if h in self.planned:
            return self.planned[h].label()
        return self.rows[h].label if h in self.rows else "from an earlier job"


def current_inputs(lake: Lake, pipeline: Pipeline) -> list[dict]:
    """The head commit of each pfs input (None where the branch has no commit yet)."""
    return [
        {
            "name": inp.name,
            "repo": inp.repo,
            "branch": inp.branch,
            "commit": lake.head_id(inp.repo, inp.branch),
        }
        for inp in pipeline.spec.pfs_inputs()
    ]


def job_fields(pipeline: Pipeline, inputs: list[dict]) -> dict:
    """What makes two jobs the same job: the spec version and the input commits."""
    commits = {i["name"]: i["commit"] for i in inputs}
    key = f"{pipeline.version}:{pipeline.salt}:" + ",".join(
        f"{n}={c}" for n, c in sorted(commits.items())
    )
    return {"key": key, "version": pipeline.version, "inputs": commits}


def provenance(job: Job, commits: dict[str, Commit]) -> tuple[tuple[Provenance, ...], str]:
    seen: dict[tuple[str, str], Provenance] = {}
    for inp in job.inputs:
        c = commits.get(inp["name"])
        if c is not None:
            seen.setdefault((c.repo, c.id), Provenance(c.repo, c.id, inp["branch"]))
    # The newest input commit is the change that caused this job: its global ID travels on.
    newest = max(commits.values(), key=lambda c: c.created)
    return tuple(seen.values()), newest.global_id


def make_plan(lake: Lake, pipeline: Pipeline, job: Job) -> JobPlan:
    spec = pipeline.spec
    tid = transform_hash(spec.transform, pipeline.salt)
    head = lake.head(spec.name, spec.output_branch)
    prev_root = (
        head.extra.get("datums") if head and head.extra.get("pipeline") == spec.name else None
    )
    delta = delta_plan(lake, pipeline, job, head, tid) if head and prev_root else None
    prev_hashes: set[str]
    if delta is not None:
        # Only the datums the input diff touched are candidates; every other datum of the last
        # job is kept as it was, without being read, hashed or looked up.
        p = delta
        p.head, p.prev_root = head, prev_root
        prev_hashes = set()
    else:
        files, entries, commits = input_files(lake, job.inputs)
        planned = {datum_hash(tid, d): d for d in plan(spec.input, files)}
        p = JobPlan(head, prev_root, planned, [], entries, commits, total=len(planned))
        # Fast path: the last job's datum list says which datums it had, so unchanged datums are
        # skipped without reading their outputs, and only added and removed ones touch the trees.
        known = prev_datums(lake, spec.name, head) if prev_root else None
        p.fast = known is not None
        if known is None:
            p.prev_outputs = datum_tree_outputs(lake, prev_root)
            known = set(p.prev_outputs)
        prev_hashes = known
        p.gone = prev_hashes - planned.keys() if p.fast else set()
    for h, d in p.planned.items():
        if h in prev_hashes:
            if not p.fast:
                p.outputs[h] = p.prev_outputs[h]
        else:
            rec = records.get_datum(lake, spec.name, h)
            if rec is not None and rec.state == "success" and rec.output is not None:
                p.outputs[h] = rec.output
            else:
                p.todo.append((h, d))
                continue
        p.skipped += 1
        p.rows[h] = DatumRow.skipped(h, d.label())
    return p


def input_files(
    lake: Lake, inputs: list[dict]
) -> tuple[dict[str, list[InputFile]], dict[tuple[str, str], Entry], dict[str, Commit]]:
    files: dict[str, list[InputFile]] = {}
    entries: dict[tuple[str, str], Entry] = {}
    commits: dict[str, Commit] = {}
    for inp in inputs:
        if inp["commit"] is None:
            files[inp["name"]] = []
            continue
        commit = lake.get_commit(inp["repo"], inp["commit"])
        commits[inp["name"]] = commit
        rows = []
        for e in lake.walk(commit):
            rows.append(InputFile(e.path, digest_string(e)))
            entries[(inp["name"], e.path)] = e
        files[inp["name"]] = rows
    return files, entries, commits


def prev_datums(lake: Lake, pipeline: str, head: Commit | None) -> set[str] | None:
    """The datums of the job that made the output head, from its datum list (one small
    object, parsed far faster than the datum tree). None when that list is missing."""
    job = head.extra.get("job") if head else None
    if not job:
        return None
    rows = records.get_datum_list(lake, pipeline, job)
    if not rows and head.files:
        return None
    return {r.hash for r in rows if r.state in ("processed", "skipped")}


def delta_plan(lake: Lake, pipeline: Pipeline, job: Job, head: Commit, tid: str) -> JobPlan | None:
    """Plan from `tree.diff` between the input trees of the job that made the output head and
    this job's, so a one-file change costs one datum rather than a walk of every input.

    None sends the caller to full planning: the head's job ran another spec version, its
    records are missing, the input is a cross, join or group, or what the diff says the last
    job had disagrees with its datum list (never trust a delta over an inconsistent base).
    """
    spec = pipeline.spec
    since = head.extra.get("job")
    if not since or head.extra.get("version") != pipeline.version:
        return None
    if not supports_delta(spec.input):
        return None
    try:
        prev = records.get_job(lake, spec.name, since)
    except CowfsError:
        return None
    before = {i["name"]: (i["repo"], i["commit"]) for i in prev.inputs}
    now = {i["name"]: (i["repo"], i["commit"]) for i in job.inputs}
    if prev.state != "success" or prev.output_commit != head.id or before.keys() != now.keys():
        return None
    if any(before[n][0] != now[n][0] for n in now):
        return None
    rows = records.get_datum_list(lake, spec.name, since)
    if len(rows) != prev.total or any(r.state not in ("processed", "skipped") for r in rows):
        return None

    commits: dict[str, Commit] = {}
    entries: dict[tuple[str, str], Entry] = {}
    changed: dict[str, list[str]] = {}
    old_side: dict[str, Under] = {}
    new_side: dict[str, Under] = {}
    empty: list[str] = []

    def root_of(repo: str, cid: str | None) -> str:
        if cid is None:
            if not empty:
                empty.append(tree.empty_tree(lake.store))
            return empty[0]
        return lake.get_commit(repo, cid).tree

    for name, (repo, cid) in now.items():
        if cid is not None:
            commits[name] = lake.get_commit(repo, cid)
        if cid == before[name][1]:
            continue
        old_root, new_root = root_of(repo, before[name][1]), root_of(repo, cid)
        changed[name] = [c.path for c in tree.diff(lake.store, old_root, new_root)]
        old_side[name] = _under(lake, old_root, name, None)
        new_side[name] = _under(lake, new_root, name, entries)
    removed, added = plan_delta(spec.input, changed, old_side, new_side)
    gone = {datum_hash(tid, d) for d in removed}
    had = {r.hash for r in rows}
    new = {datum_hash(tid, d): d for d in added}
    if not gone <= had or not new.keys().isdisjoint(had - gone):
        return None
    kept = {r.hash: DatumRow.skipped(r.hash, r.label) for r in rows if r.hash not in gone}
    return JobPlan(
        head,
        None,
        new,
        [],
        entries,
        commits,
        rows=kept,
        fast=True,
        gone=gone,
        since=since,
        skipped=len(kept),
        total=len(kept) + len(new),
    )


def _under(lake: Lake, root: str, name: str, keep: dict[tuple[str, str], Entry] | None) -> Under:
    """`datums.Under` over one input tree; remembers the entries it reads in `keep`, which is
    how the new side collects the entries that materializing the new datums needs."""

    def under(path: str) -> list[InputFile]:
        out = []
        for e in tree.iter_under(lake.store, root, path):
            out.append(InputFile(e.path, digest_string(e)))
            if keep is not None:
                keep[(name, e.path)] = e
        return out

    return under


def digest_string(e: Entry) -> str:
    """What a datum's hash sees of an entry: its content, or "" for a directory."""
    if e.is_dir:
        return ""
    if e.type is EntryType.SYMLINK:
        return "link:" + (e.target or "")
    return e.digest.hex() if e.digest else "empty"


def datum_tree_outputs(lake: Lake, root: str | None) -> dict[str, list[Entry]]:
    """hash -> output entries (paths relative to /pfs/out) of every datum in a datum tree."""
    out: dict[str, list[Entry]] = {}
    if not root:
        return out
    for e in tree.iter_all(lake.store, root):
        h, _, rest = e.path.partition("/")
        if not rest:
            out.setdefault(h, [])
        else:
            out.setdefault(h, []).append(e.with_path(rest))
    return out
