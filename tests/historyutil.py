"""Small helpers for the history tests: a lake on a given object store, files as entries."""

from __future__ import annotations

from pathlib import Path

import blake3

from cowfs import layout
from cowfs.changes import ChangeSet
from cowfs.commits import Commit
from cowfs.entries import ChunkRef, Entry, EntryType
from cowfs.index import Index
from cowfs.lake import Lake
from cowfs.objectstore import ObjectStore
from cowfs.store import Store
from cowfs.tree import iter_all


def lake_on(objects: ObjectStore, cache: Path) -> Lake:
    return Lake(Store(objects, Index(cache, cache_bytes=64 << 20)))


def file_entry(lake: Lake, path: str, data: bytes) -> Entry:
    """A file stored as one chunk: contents shared between files share their chunk."""
    oid = lake.store.put_chunk(data)
    return Entry(
        path,
        EntryType.FILE,
        0o644,
        len(data),
        0,
        blake3.blake3(data).digest(),
        (ChunkRef(oid, 0, len(data)),),
    )


def put(lake: Lake, repo: str, branch: str, files: dict[str, bytes]) -> Commit:
    changes = ChangeSet(puts={p: file_entry(lake, p, d) for p, d in files.items()})
    return lake.commit(repo, branch, changes, allow_empty=True)


def read_files(lake: Lake, commit: Commit, from_store: bool = True) -> dict[str, bytes]:
    """Every file of a commit, read back chunk by chunk from the store itself."""
    out = {}
    for e in iter_all(lake.store, commit.tree):
        if not e.is_file:
            continue
        parts = []
        for c in e.chunks:
            if from_store:
                from cowfs.objects import Kind, decode

                plain = decode(c.id, lake.objects.get(layout.chunk_key(c.id)), Kind.CHUNK)
            else:
                plain = lake.store.get_chunk(c.id)
            parts.append(plain[c.offset : c.offset + c.length])
        out[e.path] = b"".join(parts)
    return out


def referenced_objects(lake: Lake) -> set[str]:
    """Keys of every tree node and chunk that some commit record in the store reaches."""
    out: set[str] = set()
    for key, _ in lake.objects.list(layout.COMMITS):
        repo, cid = layout.parse_commit_key(key)
        c = lake.get_commit(repo, cid)
        stack = [c.tree]
        while stack:
            oid = stack.pop()
            if layout.tree_key(oid) in out:
                continue
            out.add(layout.tree_key(oid))
            node = lake.store.load_node(oid)
            if node.level == 0:
                out.update(layout.chunk_key(ch.id) for e in node.items for ch in e.chunks or ())
            else:
                stack.extend(ch.id for ch in node.items)
    return out


def stored_objects(lake: Lake) -> set[str]:
    return {k for p in (layout.TREES, layout.CHUNKS) for k, _ in lake.objects.list(p)}
