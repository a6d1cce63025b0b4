"""Filling the node's chunk cache ahead of use (`cowfs warmup`, as `juicefs warmup`): every chunk
under a path of a commit, fetched and verified in parallel, so an epoch over it reads from local
disk. A chunk already cached is not fetched again. Over a local store nothing is copied: each
chunk is read and verified once, which leaves its bytes in the page cache.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from cowfs.commits import Commit
from cowfs.lake import Lake
from cowfs.objects import Kind, object_key


@dataclass
class WarmupStats:
    files: int = 0
    chunks: int = 0
    bytes: int = 0
    #: Chunks that were in the cache already (remote stores only).
    cached: int = 0


def chunks_under(lake: Lake, commit: Commit, path: str) -> tuple[int, dict[str, int]]:
    """How many files lie under `path`, and their distinct chunks with each one's length."""
    files = 0
    sizes: dict[str, int] = {}
    for e in lake.walk(commit, path):
        if not e.is_file:
            continue
        files += 1
        for c in e.chunks:
            # A packed chunk is referenced in parts: keep the largest end seen as its size.
            sizes[c.id] = max(sizes.get(c.id, 0), c.offset + c.length)
    return files, sizes


def warmup(
    lake: Lake,
    commit: Commit,
    path: str,
    workers: int = 16,
    advance: Callable[[int], None] = lambda n: None,
    set_total: Callable[[int], None] = lambda n: None,
) -> WarmupStats:
    files, sizes = chunks_under(lake, commit, path)
    stats = WarmupStats(files=files, chunks=len(sizes))
    set_total(sum(sizes.values()))
    index = lake.store.index
    remote = not lake.objects.is_local

    def one(oid: str) -> tuple[int, bool]:
        if remote and index.chunk_location(object_key(Kind.CHUNK, oid)) is not None:
            return sizes[oid], True
        return len(lake.store.get_chunk(oid)), False

    with ThreadPoolExecutor(workers, thread_name_prefix="cowfs-warmup") as pool:
        for oid, (n, hit) in zip(sizes, pool.map(one, sizes), strict=True):
            stats.bytes += n
            stats.cached += hit
            advance(sizes[oid])
    return stats
