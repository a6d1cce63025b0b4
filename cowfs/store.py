"""Content-addressed access to a lake: chunks and tree nodes in, verified bytes out.

`Store` puts the local `Index` in front of an `ObjectStore`: it skips uploads of objects known to
exist, serves tree nodes and (for remote stores) chunks from the LMDB cache, verifies every
object it decodes, and keeps the most recently decoded tree nodes in memory.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from cowfs import layout
from cowfs.entries import ChunkRef, Entry, approx_bytes
from cowfs.errors import CorruptObject, ObjectMissing
from cowfs.index import Index
from cowfs.objects import (
    HEADER_SIZE,
    Kind,
    decode,
    decode_parts,
    encode_parts,
    object_id,
    object_key,
)
from cowfs.objectstore import ObjectStore
from cowfs.tree import Node, decode_node, encode_node

#: Decoded tree nodes kept in memory, capped by an estimate of the bytes they hold (a leaf of
#: 64 entries holds about 35 KB decoded): a walk of millions of files must not keep them all.
NODE_CACHE_BYTES = 32 << 20
T = TypeVar("T")


def parse_json(key: str, data: bytes) -> Any:
    """A JSON record's value, or one clear `CorruptObject` line naming its key."""
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptObject(f"record {key} is corrupt: not valid JSON ({e})") from None


@dataclass
class PutStats:
    """What a writer did, for progress output and benchmarks."""

    chunks_new: int = 0
    chunks_reused: int = 0
    trees_new: int = 0
    bytes_plain_new: int = 0
    bytes_stored_new: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, kind: Kind, new: bool, plain: int, stored: int) -> None:
        with self.lock:
            if new:
                self.bytes_plain_new += plain
                self.bytes_stored_new += stored
            if kind is Kind.TREE:
                self.trees_new += new
            elif new:
                self.chunks_new += 1
            else:
                self.chunks_reused += 1


class Store:
    def __init__(self, objects: ObjectStore, index: Index) -> None:
        self.objects = objects
        self.index = index
        self._nodes: OrderedDict[str, tuple[Node, int]] = OrderedDict()
        self._nodes_bytes = 0
        self._nodes_lock = threading.Lock()
        self.put_stats = PutStats()

    def close(self) -> None:
        self.objects.close()
        self.index.close()

    # --- chunks ------------------------------------------------------------------------------

    def put_chunk(self, plain: bytes | memoryview, oid: str | None = None) -> str:
        oid = oid or object_id(plain)
        self._put_object(Kind.CHUNK, oid, plain)
        return oid

    def get_chunk(self, oid: str) -> bytes:
        return self._get_object(Kind.CHUNK, oid, cache=not self.objects.is_local)

    def _put_object(self, kind: Kind, oid: str, plain: bytes | memoryview) -> bool:
        key = object_key(kind, oid)
        doubted = self.index.is_doubted(key)
        if not doubted and (self.index.is_present(key) or self._sound(kind, oid, key)):
            self.index.mark_present([key])
            self.put_stats.add(kind, False, len(plain), 0)
            return False
        parts = encode_parts(kind, plain)
        self.objects.put_parts(key, parts)
        self.index.mark_present([key])
        if doubted:
            self.index.clear_doubt(key)
        self.put_stats.add(kind, True, len(plain), sum(len(p) for p in parts))
        return True

    def _sound(self, kind: Kind, oid: str, key: str) -> bool:
        """Whether the store holds a good copy of an object this node has no record of.

        On a local store the copy is read and verified (a disk read, cheaper than trusting a
        damaged chunk forever); on S3 its existence is taken as enough, and a damaged copy
        is found by the first read, which then marks it doubted.
        """
        if not self.objects.is_local:
            return self.objects.exists(key)
        try:
            decode(oid, self.objects.get(key), kind)
        except (ObjectMissing, CorruptObject):
            return False
        return True

    def untrusted(self, ids: Iterable[str], verify_unknown: bool = True) -> set[str]:
        """The chunk ids a writer may not reference again without uploading them: found
        damaged or missing by this node, or (with `verify_unknown`) unknown to the index and
        not soundly in the store; those are doubted now, so an upload of the same bytes
        replaces them. One index transaction for all of them.

        Stat-cache hits pass `verify_unknown=False`: their chunks were uploaded by this node,
        and re-verifying every one after `present` expires would cost a read of the whole
        data (or a HEAD per chunk) on every re-put; a damaged one is doubted by the first
        read that meets it."""
        keys = {object_key(Kind.CHUNK, i): i for i in ids}
        doubted, absent = self.index.check_keys(list(keys))
        bad = {keys[k] for k in doubted}
        if not verify_unknown:
            return bad
        sound = []
        for key in absent - doubted:
            if self._sound(Kind.CHUNK, keys[key], key):
                sound.append(key)
            else:
                self.index.doubt(key)
                bad.add(keys[key])
        self.index.mark_present(sound)
        return bad

    def trust(self, refs: Iterable[ChunkRef]) -> bool:
        """Whether these stored chunks may be referenced again without uploading them."""
        return not self.untrusted(r.id for r in refs)

    def refuse_doubted(self, entries: Iterable[Entry]) -> None:
        """Refuse to publish entries that reference an object this node found damaged or
        missing and has not uploaded again since (issue 8, item 9)."""
        if not self.index.any_doubts():
            return
        keys: dict[str, str] = {}
        for e in entries:
            for c in e.chunks:
                keys.setdefault(object_key(Kind.CHUNK, c.id), e.path)
        bad = self.index.doubted(list(keys))
        if bad:
            key = min(bad)
            raise CorruptObject(
                f"not committing: chunk {layout.oid_of(key)} of /{keys[key]} was found damaged "
                "or missing in the store and has not been uploaded again; put the file's data "
                "again (a put re-uploads it)"
            )

    def _get_object(self, kind: Kind, oid: str, cache: bool) -> bytes:
        key = object_key(kind, oid)
        if cache:
            hit = self.index.get_blob(key)
            if hit is not None:
                # A chunk comes back checked against the block sums its cache entry took from
                # its verified bytes (a torn or lost write after a crash is a miss); a tree
                # node kept in LMDB is checked here.
                if kind is Kind.CHUNK or object_id(hit) == oid:
                    return hit
                self.index.forget_blob(key)
        try:
            head, payload = self.objects.get_parts(key, HEADER_SIZE)
        except ObjectMissing:
            self.index.doubt(key)
            what = "chunk" if kind is Kind.CHUNK else "tree node"
            raise ObjectMissing(
                f"{what} {oid} is missing from the store {self.objects.url}"
            ) from None
        try:
            plain = decode_parts(oid, head, payload, kind)
        except CorruptObject:
            self.index.doubt(key)
            raise
        if cache:
            self.index.put_blob(key, plain)
        return plain

    # --- tree nodes (the NodeStore protocol) -------------------------------------------------

    def load_node(self, node_id: str) -> Node:
        with self._nodes_lock:
            held = self._nodes.get(node_id)
            if held is not None:
                self._nodes.move_to_end(node_id)
                return held[0]
        node = decode_node(self._get_object(Kind.TREE, node_id, cache=True))
        self._remember(node_id, node)
        return node

    def save_node(self, node: Node) -> str:
        plain = encode_node(node)
        oid = object_id(plain)
        self._put_object(Kind.TREE, oid, plain)
        self._remember(oid, node)
        return oid

    def _remember(self, node_id: str, node: Node) -> None:
        with self._nodes_lock:
            old = self._nodes.pop(node_id, None)
            if old is not None:
                self._nodes_bytes -= old[1]
            size = _node_bytes(node)
            self._nodes[node_id] = (node, size)
            self._nodes_bytes += size
            while self._nodes_bytes > NODE_CACHE_BYTES and len(self._nodes) > 1:
                self._nodes_bytes -= self._nodes.popitem(last=False)[1][1]

    # --- JSON records ------------------------------------------------------------------------

    def get_record(
        self, key: str, cache: bool = False, check: Callable[[Any], T] | None = None
    ) -> T:
        """A JSON record, parsed and passed through `check` (which raises `CorruptObject`).

        `cache=True` only for records that never change (commits). A record is cached only once
        it parsed and passed its check, and a cached copy that fails them is dropped and read
        again from the store: damage is reported, never remembered.
        """
        check = check or (lambda r: r)
        if cache:
            hit = self.index.get_blob(key)
            if hit is not None:
                try:
                    return check(parse_json(key, hit))
                except CorruptObject:
                    self.index.forget_blob(key)
        data = self.objects.get(key)
        record = check(parse_json(key, data))
        if cache:
            self.index.put_blob(key, data)
        return record

    def put_record(self, key: str, record: dict) -> None:
        self.objects.put(key, json.dumps(record, sort_keys=True, indent=1).encode())


def _node_bytes(node: Node) -> int:
    if node.level == 0:
        return 100 + sum(8 + approx_bytes(e) for e in node.items)
    return 100 + 250 * len(node.items)
