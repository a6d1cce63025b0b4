"""The gateway's Prometheus metrics: requests, bytes and latency by S3 operation.

Defined here (not in `daemon/`) so `cowfs s3 serve` and `cowfs daemon --s3` export the same
families; they live in the default registry, so the daemon's own /metrics lists them too.
"""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

REQUESTS = Counter(
    "cowfs_s3_requests_total", "S3 gateway requests by operation and HTTP status", ["op", "status"]
)
BYTES = Counter(
    "cowfs_s3_bytes_total",
    "Object bytes through the S3 gateway by operation (in: uploaded, out: served)",
    ["op", "direction"],
)
SECONDS = Histogram(
    "cowfs_s3_request_seconds",
    "Time to answer an S3 request (until the response starts) by operation",
    ["op"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60),
)
COMMITS = Counter("cowfs_s3_commits_total", "Commits the gateway's writes landed as")
WRITES = Counter("cowfs_s3_writes_total", "Gateway writes (each lands in some commit)")


def exposition() -> tuple[bytes, str]:
    return generate_latest(), CONTENT_TYPE_LATEST
