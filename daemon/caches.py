"""A least-recently-used map capped by an estimate of the bytes its values hold, for caches
whose values vary widely in size (one entry, or a directory's whole listing)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

from cowfs.entries import Entry, approx_bytes

K = TypeVar("K")
V = TypeVar("V")


class ByteLRU(Generic[K, V]):
    """Values past `cap` bytes (as `size` estimates them) are evicted oldest-used first; a
    value larger than `cap` alone is not kept at all. Thread-safe: the mount's worker threads
    fill it while the loop reads it."""

    def __init__(self, cap: int, size: Callable[[V], int]) -> None:
        self.cap = cap
        self._size = size
        self._items: OrderedDict[K, V] = OrderedDict()
        self.bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: K) -> V | None:
        with self._lock:
            v = self._items.get(key)
            if v is not None:
                self._items.move_to_end(key)
            return v

    def put(self, key: K, value: V) -> None:
        n = self._size(value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= self._size(old)
            if n > self.cap:
                return
            self._items[key] = value
            self.bytes += n
            while self.bytes > self.cap:
                _, v = self._items.popitem(last=False)
                self.bytes -= self._size(v)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


def entry_bytes(e: Entry) -> int:
    return approx_bytes(e)


def listing_bytes(entries: list[Entry]) -> int:
    return 64 + sum(8 + approx_bytes(e) for e in entries)
