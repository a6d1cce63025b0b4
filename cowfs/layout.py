"""The store's key layout: every key and prefix, built and parsed here and nowhere else.

A second implementation reads a cowfs store through this table (docs/architecture.md has the
same table with what each object holds). Deletes, garbage collection, `cowfs check` and every
reader use these functions; the question "what does repo R own" is answered once, by
`repo_owned_prefixes`, so that a delete cannot forget a kind of key that a later feature adds.

| key | what |
| --- | --- |
| `cowfs.json` | store marker |
| `chunks/<id[:2]>/<id>` | a framed chunk |
| `trees/<id[:2]>/<id>` | a framed tree node |
| `repos/<repo>` | repo record |
| `refs/<repo>/<branch>` | branch head (compare-and-swap) |
| `branches/<repo>/<branch>` | record that the branch was created (so a lost ref is damage) |
| `tags/<repo>/<tag>` | tag: an immutable name for a commit (create-only) |
| `commits/<repo>/<commit>` | commit record |
| `globals/<global id>/<repo>/<commit>` | marker: this commit carries this global ID |
| `downstream/<repo>/<commit>/<out repo>/<out commit>` | marker: provenance, reversed |
| `pipelines/<name>` | pipeline spec and version |
| `pipeline-state/<name>` | the job running or run last (compare-and-swap) |
| `jobs/<pipeline>/<job>` | one job |
| `datum-lists/<pipeline>/<job>` | every datum of a job |
| `datums/<pipeline>/<hash>` | a processed datum |
| `logs/<pipeline>/<job>/<hash>` | a datum's stdout and stderr |
| `gc/runs/<run>` | a collector run: its candidates and its sweep set |
| `gc/swept/<run>` | a finished sweep: what it deleted |
| `gc/rescues/<run>/<writer>` | candidates of that run a writer's commit references |
| `gc/holds/<holder>` | a commit kept alive from outside the refs (a staging area's base) |
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

MARKER = "cowfs.json"

CHUNKS = "chunks/"
TREES = "trees/"
REPOS = "repos/"
REFS = "refs/"
BRANCHES = "branches/"
TAGS = "tags/"
COMMITS = "commits/"
GLOBALS = "globals/"
DOWNSTREAM = "downstream/"
PIPELINES = "pipelines/"
PIPELINE_STATE = "pipeline-state/"
JOBS = "jobs/"
DATUM_LISTS = "datum-lists/"
DATUMS = "datums/"
LOGS = "logs/"
GC = "gc/"


# --- content-addressed objects ---------------------------------------------------------------


def chunk_key(oid: str) -> str:
    return f"{CHUNKS}{oid[:2]}/{oid}"


def tree_key(oid: str) -> str:
    return f"{TREES}{oid[:2]}/{oid}"


def oid_of(key: str) -> str:
    """The object id at the end of a chunk or tree key."""
    return key.rpartition("/")[2]


# --- repos, refs, commits --------------------------------------------------------------------


def repo_key(repo: str) -> str:
    return f"{REPOS}{repo}"


def repo_of_key(key: str) -> str:
    return key[len(REPOS) :]


def ref_key(repo: str, branch: str) -> str:
    return f"{REFS}{repo}/{branch}"


def refs_prefix(repo: str) -> str:
    return f"{REFS}{repo}/"


def branch_record_key(repo: str, branch: str) -> str:
    return f"{BRANCHES}{repo}/{branch}"


def branch_records_prefix(repo: str) -> str:
    return f"{BRANCHES}{repo}/"


def tag_key(repo: str, tag: str) -> str:
    return f"{TAGS}{repo}/{tag}"


def tags_prefix(repo: str) -> str:
    return f"{TAGS}{repo}/"


def commit_key(repo: str, cid: str) -> str:
    return f"{COMMITS}{repo}/{cid}"


def commits_prefix(repo: str, id_prefix: str = "") -> str:
    return f"{COMMITS}{repo}/{id_prefix}"


def last_part(key: str) -> str:
    """The branch, tag or commit id a ref, tag or commit key ends with."""
    return key.rpartition("/")[2]


class CommitAt(NamedTuple):
    repo: str
    commit: str


def global_key(gid: str, repo: str, cid: str) -> str:
    return f"{GLOBALS}{gid}/{repo}/{cid}"


def globals_prefix(gid: str = "") -> str:
    return f"{GLOBALS}{gid}/" if gid else GLOBALS


def parse_global_key(key: str) -> tuple[str, CommitAt]:
    _, gid, repo, cid = key.split("/")
    return gid, CommitAt(repo, cid)


def downstream_key(src_repo: str, src_commit: str, repo: str, cid: str) -> str:
    return f"{DOWNSTREAM}{src_repo}/{src_commit}/{repo}/{cid}"


def downstream_prefix(src_repo: str = "", src_commit: str = "") -> str:
    if not src_repo:
        return DOWNSTREAM
    if not src_commit:
        return f"{DOWNSTREAM}{src_repo}/"
    return f"{DOWNSTREAM}{src_repo}/{src_commit}/"


def parse_downstream_key(key: str) -> tuple[CommitAt, CommitAt]:
    """(input commit, output commit) of a provenance marker."""
    _, src_repo, src_commit, repo, cid = key.split("/")
    return CommitAt(src_repo, src_commit), CommitAt(repo, cid)


def commit_marker_keys(
    repo: str, cid: str, global_id: str, inputs: Iterable[tuple[str, str]]
) -> list[str]:
    """The markers a commit writes outside its repo's prefixes: its global ID's, and the
    reversed provenance marker under each input `(repo, commit)`. Written with the commit,
    deleted with it (a repo delete reads its commit records to find them)."""
    keys = [global_key(global_id or cid, repo, cid)]
    keys.extend(downstream_key(r, c, repo, cid) for r, c in inputs)
    return keys


def repo_owned_prefixes(repo: str) -> list[str]:
    """Every prefix whose keys belong to `repo` alone (deleted with it), refs first so that a
    half-done delete leaves no branch pointing at a deleted commit.

    Markers that name the repo from elsewhere (`globals/<gid>/<repo>/…` and the output side of
    `downstream/…`) are not under one prefix; `commit_marker_keys` finds those from its commits.
    """
    return [
        refs_prefix(repo),
        tags_prefix(repo),
        branch_records_prefix(repo),
        downstream_prefix(repo),
        commits_prefix(repo),
    ]


# --- pipelines -------------------------------------------------------------------------------


def pipeline_key(name: str) -> str:
    return f"{PIPELINES}{name}"


def pipeline_state_key(name: str) -> str:
    return f"{PIPELINE_STATE}{name}"


def job_key(pipeline: str, job: str) -> str:
    return f"{JOBS}{pipeline}/{job}"


def jobs_prefix(pipeline: str = "") -> str:
    return f"{JOBS}{pipeline}/" if pipeline else JOBS


def parse_job_key(key: str) -> tuple[str, str]:
    """(pipeline, job id)."""
    _, pipeline, job = key.split("/", 2)
    return pipeline, job


def datum_key(pipeline: str, datum: str) -> str:
    return f"{DATUMS}{pipeline}/{datum}"


def datum_list_key(pipeline: str, job: str) -> str:
    return f"{DATUM_LISTS}{pipeline}/{job}"


def log_key(pipeline: str, job: str, datum: str) -> str:
    return f"{LOGS}{pipeline}/{job}/{datum}"


def logs_prefix(pipeline: str, job: str = "") -> str:
    return f"{LOGS}{pipeline}/{job}/" if job else f"{LOGS}{pipeline}/"


def pipeline_owned_prefixes(name: str) -> list[str]:
    """Every prefix of records that belong to pipeline `name` (its output repo is a repo)."""
    return [
        f"{JOBS}{name}/",
        f"{DATUM_LISTS}{name}/",
        f"{DATUMS}{name}/",
        f"{LOGS}{name}/",
    ]


def pipeline_owned_keys(name: str) -> list[str]:
    return [pipeline_key(name), pipeline_state_key(name)]


# --- garbage collection (docs/architecture.md, "Garbage collection") ---------------------------

GC_RUNS = f"{GC}runs/"
GC_SWEPT = f"{GC}swept/"
GC_RESCUES = f"{GC}rescues/"
GC_HOLDS = f"{GC}holds/"


def gc_run_key(run: int) -> str:
    """A collector run's published candidates and sweep set (create-only, immutable)."""
    return f"{GC_RUNS}{run:012d}"


def gc_swept_key(run: int) -> str:
    """Written once a run's sweep has finished: what it deleted."""
    return f"{GC_SWEPT}{run:012d}"


def gc_run_of_key(key: str) -> int:
    return int(key.rpartition("/")[2])


def gc_rescue_key(run: int, writer: str) -> str:
    """A writer's list of the candidates of `run` that its commit references."""
    return f"{GC_RESCUES}{run:012d}/{writer}"


def gc_rescues_prefix(run: int | None = None) -> str:
    return GC_RESCUES if run is None else f"{GC_RESCUES}{run:012d}/"


def gc_hold_key(holder: str) -> str:
    """A commit kept alive by something outside the store's refs (an open staging area)."""
    return f"{GC_HOLDS}{holder}"


def parse_commit_key(key: str) -> CommitAt:
    _, repo, cid = key.split("/")
    return CommitAt(repo, cid)


def object_kind_of_key(key: str) -> str:
    """ "chunk", "tree", "commit" or "" for a key the collector does not collect."""
    for prefix, kind in ((CHUNKS, "chunk"), (TREES, "tree"), (COMMITS, "commit")):
        if key.startswith(prefix):
            return kind
    return ""
