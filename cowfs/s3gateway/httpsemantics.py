"""HTTP rules S3 follows for reads: byte ranges, ETags and conditional requests.

ETags are the file's BLAKE3 digest (64 hex digits): equal content, equal ETag, whatever path or
commit it sits in, and never mistaken by a client for an MD5 it could check.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate, parsedate_to_datetime

from cowfs.entries import Entry
from cowfs.s3gateway.errors import S3Error


def etag_of(entry: Entry) -> str:
    return f'"{entry.digest.hex()}"' if entry.digest else '"0"'


def mtime_of(entry: Entry) -> float:
    return entry.mtime_ns // 1_000_000_000


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(ts))


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """`(start, end)` (end exclusive) of a `Range: bytes=...` header; None for the whole file.

    A syntactically odd header is ignored, as HTTP says; a range that starts past the end is
    S3's `InvalidRange`.
    """
    if not header:
        return None
    unit, _, spec = header.strip().partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    first, dash, last = spec.strip().partition("-")
    if not dash:
        return None
    try:
        if not first:
            n = int(last)
            if n <= 0:
                raise S3Error("InvalidRange", f"the range {header} asks for nothing")
            return (max(0, size - n), size) if size else _unsatisfiable(header, size)
        start = int(first)
        end = int(last) + 1 if last else size
    except ValueError:
        return None
    if start >= size:
        _unsatisfiable(header, size)
    if end <= start:
        return None
    return start, min(end, size)


def _unsatisfiable(header: str, size: int) -> tuple[int, int]:
    raise S3Error("InvalidRange", f"the range {header} starts past the end ({size} bytes)")


def _etags(header: str) -> list[str]:
    return [t.strip().removeprefix("W/") for t in header.split(",") if t.strip()]


def _date(header: str) -> float | None:
    try:
        return parsedate_to_datetime(header).timestamp()
    except (TypeError, ValueError, IndexError):
        return None


def check_conditions(headers: Mapping[str, str], etag: str, mtime: float) -> int | None:
    """None to serve, 304 (not modified) or 412 (precondition failed), in S3's precedence."""
    if_match = headers.get("if-match")
    if if_match is not None:
        tags = _etags(if_match)
        if "*" not in tags and etag not in tags:
            return 412
    else:
        since = headers.get("if-unmodified-since")
        t = _date(since) if since else None
        if t is not None and mtime > t:
            return 412
    if_none = headers.get("if-none-match")
    if if_none is not None:
        tags = _etags(if_none)
        if "*" in tags or etag in tags:
            return 304
    else:
        since = headers.get("if-modified-since")
        t = _date(since) if since else None
        if t is not None and mtime <= t:
            return 304
    return None
