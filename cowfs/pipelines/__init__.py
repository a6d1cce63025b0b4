"""Data-driven pipelines: specs, datum planning, the job executor and lineage.

Everything here runs without a daemon (`cowfs pipeline run` uses it in the foreground); the
watcher in `daemon/` only decides *when* to call `executor.run_job`.
"""
