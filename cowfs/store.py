"""Content-addressed access to a lake: chunks and tree nodes in, verified bytes out.

`Store` puts the local `Index` in front of an `ObjectStore`: it skips uploads of objects known to
exist, serves tree nodes and (for remote stores) chunks from the LMDB cache, verifies every
object it decodes, and keeps the most recently decoded tree nodes in memory.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from cowfs.errors import ObjectMissing
from cowfs.index import Index
from cowfs.objects import Kind, decode, encode, object_id, object_key
from cowfs.objectstore import ObjectStore
from cowfs.tree import Node, decode_node, encode_node

_NODE_LRU = 4096


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
        self._nodes: OrderedDict[str, Node] = OrderedDict()
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
        if self.index.is_present(key) or self.objects.exists(key):
            self.index.mark_present([key])
            self.put_stats.add(kind, False, len(plain), 0)
            return False
        framed = encode(kind, plain)
        self.objects.put(key, framed)
        self.index.mark_present([key])
        self.put_stats.add(kind, True, len(plain), len(framed))
        return True

    def _get_object(self, kind: Kind, oid: str, cache: bool) -> bytes:
        key = object_key(kind, oid)
        if cache:
            hit = self.index.get_blob(key)
            if hit is not None:
                return hit
        try:
            framed = self.objects.get(key)
        except ObjectMissing:
            what = "chunk" if kind is Kind.CHUNK else "tree node"
            raise ObjectMissing(
                f"{what} {oid} is missing from the store {self.objects.url}"
            ) from None
        plain = decode(oid, framed, kind)
        if cache:
            self.index.put_blob(key, plain)
        return plain

    # --- tree nodes (the NodeStore protocol) -------------------------------------------------

    def load_node(self, node_id: str) -> Node:
        with self._nodes_lock:
            node = self._nodes.get(node_id)
            if node is not None:
                self._nodes.move_to_end(node_id)
                return node
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
            self._nodes[node_id] = node
            self._nodes.move_to_end(node_id)
            while len(self._nodes) > _NODE_LRU:
                self._nodes.popitem(last=False)

    # --- JSON records ------------------------------------------------------------------------

    def get_record(self, key: str, cache: bool = False) -> dict:
        """A JSON record; `cache=True` only for records that never change (commits)."""
        if cache:
            hit = self.index.get_blob(key)
            if hit is not None:
                return json.loads(hit)
        data = self.objects.get(key)
        if cache:
            self.index.put_blob(key, data)
        return json.loads(data)

    def put_record(self, key: str, record: dict) -> None:
        self.objects.put(key, json.dumps(record, sort_keys=True, indent=1).encode())
