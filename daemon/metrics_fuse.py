"""Prometheus metrics of the mount, in the default registry so `cowfs daemon` exports them."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

FUSE_OPS = Counter("cowfs_fuse_operations_total", "FUSE requests answered", ["op"])
FUSE_ERRORS = Counter(
    "cowfs_fuse_errors_total", "FUSE requests answered with an error", ["op", "errno"]
)
FUSE_SECONDS = Histogram(
    "cowfs_fuse_operation_seconds",
    "Time to answer a FUSE request",
    ["op"],
    buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
)
CHUNK_HITS = Counter("cowfs_chunk_cache_hits_total", "Chunk reads served from memory")
CHUNK_MISSES = Counter("cowfs_chunk_cache_misses_total", "Chunk reads that went to the store")
STORE_READ_BYTES = Counter("cowfs_store_read_bytes_total", "Plain chunk bytes read from the store")
