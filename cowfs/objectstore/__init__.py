"""Object stores: where every durable byte of a cowfs lake lives."""

from __future__ import annotations

from cowfs.errors import UsageError
from cowfs.objectstore.base import ObjectStore, Versioned
from cowfs.objectstore.local import LocalStore

__all__ = ["ObjectStore", "Versioned", "LocalStore", "open_objectstore"]


def open_objectstore(url: str, create: bool = False) -> ObjectStore:
    """Open the store a URL names: `s3://bucket/prefix`, `file:///path` or a plain path."""
    if url.startswith("s3://"):
        from cowfs.objectstore.s3 import S3Store

        return S3Store(url, create=create)
    if url.startswith("file://"):
        return LocalStore(url[len("file://") :], create=create)
    if "://" in url:
        raise UsageError(
            f"unsupported store URL {url!r}: use a path, file:///path or s3://bucket/prefix"
        )
    return LocalStore(url, create=create)
