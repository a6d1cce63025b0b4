"""The collector's records in the store, read by collectors and writers alike.

A run record (`gc/runs/<run>`) is published once and never changes: the keys the run found
unreferenced (`candidates`) and the subset it is about to delete (`sweep`). `gc/swept/<run>`
appears when that run's sweep has finished and says what it deleted. Writers leave
`gc/rescues/<run>/<writer>` naming the candidates their commit references. All three are
zstd-compressed JSON: a candidate list can hold millions of keys.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import zstandard

from cowfs import layout
from cowfs.errors import ObjectMissing
from cowfs.objectstore import ObjectStore


@dataclass(frozen=True)
class RunRecord:
    run: int
    published: float
    grace_s: float
    candidates: frozenset[str]
    sweep: frozenset[str]


@dataclass(frozen=True)
class Swept:
    run: int
    finished: float
    deleted: frozenset[str]


def _pack(record: dict) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(json.dumps(record).encode())


def _unpack(data: bytes) -> dict:
    return json.loads(zstandard.ZstdDecompressor().decompress(data, max_output_size=1 << 34))


def encode_run(rec: RunRecord) -> bytes:
    return _pack(
        {
            "run": rec.run,
            "published": rec.published,
            "grace_s": rec.grace_s,
            "candidates": sorted(rec.candidates),
            "sweep": sorted(rec.sweep),
        }
    )


def encode_swept(s: Swept) -> bytes:
    return _pack({"run": s.run, "finished": s.finished, "deleted": sorted(s.deleted)})


# Run and swept records never change once written, so every process keeps what it has read.
_cache_lock = threading.Lock()
_runs: dict[tuple[str, int], RunRecord] = {}
_swept: dict[tuple[str, int], Swept] = {}


def list_runs(objects: ObjectStore) -> list[int]:
    return [layout.gc_run_of_key(k) for k, _ in objects.list(layout.GC_RUNS)]


def load_run(objects: ObjectStore, run: int) -> RunRecord | None:
    with _cache_lock:
        hit = _runs.get((objects.url, run))
    if hit is not None:
        return hit
    try:
        d = _unpack(objects.get(layout.gc_run_key(run)))
    except ObjectMissing:
        return None
    rec = RunRecord(
        d["run"], d["published"], d["grace_s"], frozenset(d["candidates"]), frozenset(d["sweep"])
    )
    with _cache_lock:
        _runs[(objects.url, run)] = rec
    return rec


def load_swept(objects: ObjectStore, run: int) -> Swept | None:
    with _cache_lock:
        hit = _swept.get((objects.url, run))
    if hit is not None:
        return hit
    try:
        d = _unpack(objects.get(layout.gc_swept_key(run)))
    except ObjectMissing:
        return None
    s = Swept(d["run"], d["finished"], frozenset(d["deleted"]))
    with _cache_lock:
        _swept[(objects.url, run)] = s
    return s


def publish_run(objects: ObjectStore, rec: RunRecord) -> bool:
    """Create-only: False when another collector published this run number first."""
    return objects.swap(layout.gc_run_key(rec.run), encode_run(rec), None)


def publish_swept(objects: ObjectStore, s: Swept) -> None:
    objects.put(layout.gc_swept_key(s.run), encode_swept(s))


def put_rescue(objects: ObjectStore, run: int, writer: str, keys: set[str]) -> None:
    objects.put(layout.gc_rescue_key(run, writer), _pack({"keys": sorted(keys)}))


def read_rescues(objects: ObjectStore, run: int) -> set[str]:
    out: set[str] = set()
    for key, _ in objects.list(layout.gc_rescues_prefix(run)):
        try:
            out.update(_unpack(objects.get(key))["keys"])
        except ObjectMissing:
            continue
    return out


def drop_run(objects: ObjectStore, run: int) -> None:
    for key, _ in objects.list(layout.gc_rescues_prefix(run)):
        objects.delete(key)
    objects.delete(layout.gc_swept_key(run))
    objects.delete(layout.gc_run_key(run))
    with _cache_lock:
        _runs.pop((objects.url, run), None)
        _swept.pop((objects.url, run), None)


# --- holds: commits kept alive from outside the refs --------------------------------------------


@dataclass(frozen=True)
class Hold:
    holder: str
    repo: str
    commit: str
    created: float


def put_hold(objects: ObjectStore, holder: str, repo: str, commit: str) -> None:
    """Keep `repo@commit` (and all it reaches) from the collector until `release_hold`.

    For an open staging area, whose base commit lives only on its node: the mount writes one
    when it opens a branch for writing and removes it when the area is sealed or dropped.
    """
    record = {"repo": repo, "commit": commit, "created": time.time()}
    objects.put(layout.gc_hold_key(holder), json.dumps(record).encode())


def release_hold(objects: ObjectStore, holder: str) -> None:
    objects.delete(layout.gc_hold_key(holder))


def list_holds(objects: ObjectStore) -> list[Hold]:
    out = []
    for key, _ in objects.list(layout.GC_HOLDS):
        try:
            d = json.loads(objects.get(key))
        except ObjectMissing:
            continue
        out.append(Hold(layout.last_part(key), d["repo"], d["commit"], d.get("created", 0.0)))
    return out
