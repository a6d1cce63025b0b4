"""Short-lived answers to "is there a repo R" and "which commit is R@ref", per gateway.

Without them every GET of a small object would cost three store round trips (the repo record,
the branch head, then the data) before its own bytes. A branch head is re-read at most every
`HEAD_TTL_S` (a write through this gateway drops it at once, so its clients read their own
writes); a commit id never changes what it names; a repo is trusted to exist for `REPO_TTL_S`
and not to exist for `HEAD_TTL_S`. CreateBucket and DeleteBucket through this gateway clear it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable

HEAD_TTL_S = 1.0
REPO_TTL_S = 5.0
COMMIT_TTL_S = 3600.0
_MAX = 10_000
MISSING = object()


class TtlCache:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._items: dict[Hashable, tuple[float, object]] = {}
        #: Bumped by every drop, so that a read which began before a write cannot put back
        #: what it saw after the write has dropped it.
        self._gen: dict[Hashable, int] = {}
        self._lock = threading.Lock()

    def generation(self, key: Hashable) -> int:
        with self._lock:
            return self._gen.get(key, 0)

    def get(self, key: Hashable) -> object:
        with self._lock:
            hit = self._items.get(key)
        if hit is None or hit[0] < self.clock():
            return MISSING
        return hit[1]

    def put(self, key: Hashable, value: object, ttl: float, gen: int | None = None) -> None:
        with self._lock:
            if gen is not None and gen != self._gen.get(key, 0):
                return
            if len(self._items) >= _MAX:
                self._items.clear()
            self._items[key] = (self.clock() + ttl, value)

    def drop(self, key: Hashable) -> None:
        with self._lock:
            self._items.pop(key, None)
            self._gen[key] = self._gen.get(key, 0) + 1
            if len(self._gen) > _MAX:
                self._gen.clear()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
