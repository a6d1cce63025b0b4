"""An in-memory node store that counts what the tree code reads and writes."""

from __future__ import annotations

from cowfs.objects import object_id
from cowfs.tree import Node, decode_node, encode_node


class MemNodes:
    def __init__(self) -> None:
        self.blobs: dict[str, bytes] = {}
        self.loads = 0
        self.writes = 0

    def load_node(self, node_id: str) -> Node:
        self.loads += 1
        return decode_node(self.blobs[node_id])

    def save_node(self, node: Node) -> str:
        data = encode_node(node)
        oid = object_id(data)
        if oid not in self.blobs:
            self.writes += 1
            self.blobs[oid] = data
        return oid
