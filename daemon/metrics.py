"""Prometheus metrics of pipelines and of the daemon's object store traffic.

The mount's metrics (FUSE operations, their latency, chunk cache hits and misses, chunk bytes
read) live in `daemon.metrics_fuse`; importing it here registers them, so `/metrics` always
lists every family even when the daemon runs without a mount.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import Counter, Gauge, Histogram, start_http_server

import daemon.metrics_fuse  # noqa: F401 - registers the mount's metric families
from cowfs.lake import Lake
from cowfs.objectstore import ObjectStore
from cowfs.objectstore.base import Versioned
from cowfs.pipelines.executor import Observer
from cowfs.pipelines.records import Job

JOBS = Counter("cowfs_jobs_total", "Pipeline jobs that ended, by state", ["pipeline", "state"])
DATUMS = Counter(
    "cowfs_datums_total",
    "Datums by outcome: processed (ran), skipped (output reused), failed",
    ["pipeline", "state"],
)
JOB_SECONDS = Histogram(
    "cowfs_job_seconds",
    "Wall time of a pipeline job",
    ["pipeline"],
    buckets=(0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 7200),
)
DATUM_SECONDS = Histogram(
    "cowfs_datum_seconds",
    "Wall time of one processed datum's code",
    ["pipeline"],
    buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30, 300),
)
JOBS_RUNNING = Gauge("cowfs_jobs_running", "Jobs this daemon is running now", ["pipeline"])
WATCH_POLLS = Counter("cowfs_watcher_polls_total", "Looks at every pipeline's input branches")
WATCH_ERRORS = Counter("cowfs_watcher_errors_total", "Polls or jobs that failed unexpectedly")
STORE_REQUESTS = Counter(
    "cowfs_store_requests_total", "Object store requests made by the daemon", ["op"]
)
STORE_BYTES = Counter(
    "cowfs_store_bytes_total",
    "Object bytes the daemon moved to and from the store (framed, all kinds)",
    ["direction"],
)
UP_SINCE = Gauge("cowfs_daemon_start_time_seconds", "When the daemon started (Unix time)")


class MetricsObserver(Observer):
    def job_started(self, job: Job) -> None:
        JOBS_RUNNING.labels(job.pipeline).inc()

    def datum(self, pipeline: str, state: str, seconds: float) -> None:
        DATUMS.labels(pipeline, state).inc()
        if state == "processed":
            DATUM_SECONDS.labels(pipeline).observe(seconds)

    def job_finished(self, job: Job) -> None:
        JOBS_RUNNING.labels(job.pipeline).dec()
        JOBS.labels(job.pipeline, job.state).inc()
        secs = job.seconds()
        if secs is not None:
            JOB_SECONDS.labels(job.pipeline).observe(secs)


class CountingObjectStore(ObjectStore):
    """Counts requests and bytes on the way through; changes nothing else."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.url = inner.url
        self.is_local = inner.is_local

    def get(self, key: str) -> bytes:
        STORE_REQUESTS.labels("get").inc()
        data = self.inner.get(key)
        STORE_BYTES.labels("read").inc(len(data))
        return data

    def put(self, key: str, data: bytes) -> None:
        STORE_REQUESTS.labels("put").inc()
        self.inner.put(key, data)
        STORE_BYTES.labels("write").inc(len(data))

    def exists(self, key: str) -> bool:
        STORE_REQUESTS.labels("exists").inc()
        return self.inner.exists(key)

    def delete(self, key: str) -> None:
        STORE_REQUESTS.labels("delete").inc()
        self.inner.delete(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        STORE_REQUESTS.labels("list").inc()
        return self.inner.list(prefix)

    def get_versioned(self, key: str) -> Versioned | None:
        STORE_REQUESTS.labels("get").inc()
        v = self.inner.get_versioned(key)
        if v is not None:
            STORE_BYTES.labels("read").inc(len(v.data))
        return v

    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        STORE_REQUESTS.labels("swap").inc()
        ok = self.inner.swap(key, data, expected)
        if ok:
            STORE_BYTES.labels("write").inc(len(data))
        return ok

    def sync(self) -> None:
        self.inner.sync()

    def close(self) -> None:
        self.inner.close()


def instrument(lake: Lake) -> None:
    """Route the lake's store traffic through the counters."""
    counting = CountingObjectStore(lake.store.objects)
    lake.store.objects = counting
    lake.objects = counting


def serve(address: str) -> object:
    """Start /metrics on HOST:PORT in a thread of its own; returns the server to shut down."""
    host, port = parse_address(address)
    UP_SINCE.set(time.time())
    server, _thread = start_http_server(port, addr=host)
    return server


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"metrics address must be HOST:PORT, got {address!r}")
    return host.strip("[]") or "0.0.0.0", int(port)
