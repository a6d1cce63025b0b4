"""Prometheus metrics of the mount, in the default registry so `cowfs daemon` exports them.

Every FUSE request is counted and timed, so this is on the path of every request: the counts
and the latency histogram are plain integers kept per operation (`OpStats`) and turned into
metric families only when scraped (`FuseCollector`), where `Counter.inc` and
`Histogram.observe` take a lock per call and `observe` walks the buckets in Python. Handlers
all run on the one trio thread, so the integers need no lock. Chunk counters are updated from
reader threads and stay ordinary `Counter`s.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric

BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30)


class OpStats:
    """One operation's count, total seconds and histogram (non-cumulative buckets; the last
    one is +Inf)."""

    __slots__ = ("count", "seconds", "buckets")

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(BUCKETS) + 1)

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect_left(BUCKETS, seconds)] += 1


class FuseCollector:
    def __init__(self) -> None:
        self.ops: dict[str, OpStats] = {}

    def op(self, name: str) -> OpStats:
        return self.ops.setdefault(name, OpStats())

    def collect(self) -> Iterator[Metric]:
        total = CounterMetricFamily(
            "cowfs_fuse_operations", "FUSE requests answered", labels=["op"]
        )
        hist = HistogramMetricFamily(
            "cowfs_fuse_operation_seconds", "Time to answer a FUSE request", labels=["op"]
        )
        for name, st in list(self.ops.items()):
            total.add_metric([name], st.count)
            cum, rows = 0, []
            for bound, n in zip([*map(str, BUCKETS), "+Inf"], st.buckets, strict=True):
                cum += n
                rows.append((bound, cum))
            hist.add_metric([name], rows, st.seconds)
        yield total
        yield hist

    def describe(self) -> Iterator[Metric]:
        return iter(())


FUSE_STATS = FuseCollector()
REGISTRY.register(FUSE_STATS)
FUSE_ERRORS = Counter(
    "cowfs_fuse_errors_total", "FUSE requests answered with an error", ["op", "errno"]
)
CHUNK_HITS = Counter("cowfs_chunk_cache_hits_total", "Chunk reads served from memory")
CHUNK_MISSES = Counter("cowfs_chunk_cache_misses_total", "Chunk reads that went to the store")
STORE_READ_BYTES = Counter("cowfs_store_read_bytes_total", "Plain chunk bytes read from the store")
