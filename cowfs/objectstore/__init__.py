"""Object stores: where every durable byte of a cowfs lake lives."""

from __future__ import annotations

from cowfs.config import StoreSettings
from cowfs.errors import UsageError
from cowfs.objectstore.base import ObjectStore, Versioned
from cowfs.objectstore.local import LocalStore

__all__ = ["ObjectStore", "Versioned", "LocalStore", "open_objectstore"]


def open_objectstore(
    url: str, create: bool = False, settings: StoreSettings | None = None
) -> ObjectStore:
    """Open the store a URL names: `s3://bucket/prefix`, `file:///path` or a plain path."""
    settings = settings or StoreSettings.from_env()
    if url.startswith("s3://"):
        from cowfs.objectstore.s3 import S3Store

        return S3Store(url, create=create, settings=settings)
    if url.startswith("file://"):
        return LocalStore(url[len("file://") :], create=create, settings=settings)
    if "://" in url:
        raise UsageError(
            f"unsupported store URL {url!r}: use a path, file:///path or s3://bucket/prefix"
        )
    return LocalStore(url, create=create, settings=settings)
