"""An S3 gateway over the lake: every repo, branch and commit reachable with the S3 API.

Pure rules live in plain modules (`sigv4`, `buckets`, `listing`, `httpsemantics`, `xmlbody`,
`awschunked`, `batch.merge`); `core` and the `ops_*` modules apply them to a `Lake`; `app` is the
ASGI application and `server` runs it with hypercorn on trio. See docs/s3.md.
"""
