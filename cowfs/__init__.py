"""cowfs: a versioned, copy-on-write data lake for ML teams.

The stable Python surface is what this module exports (see docs/python.md)::

    import cowfs
    lake = cowfs.connect()                      # COWFS_STORE, or the default local store
    with lake.open("images@main:/cats/1.jpg") as f:
        data = f.read()
    with lake.writer("images@main", message="add cats") as w:
        w.put_bytes("labels.csv", b"...")

Everything else (`cowfs.lake`, `cowfs.tree`, ...) is the library behind it and may change.
fsspec finds the `cowfs://` filesystem (`cowfs.filesystem.CowFileSystem`) by its entry point.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cowfs.api import Client, FileInfo, connect
    from cowfs.commits import Commit, Provenance
    from cowfs.errors import CowfsError, NameTooLong, NotFound, ReadOnly, UsageError
    from cowfs.writer import BranchWriter

#: Where each exported name lives. Imported on first use (PEP 562), not with the package: every
#: `cowfs` command imports `cowfs.cli`, and the whole library behind `connect` would add a
#: quarter of a second to each.
_EXPORTS = {
    "Client": "cowfs.api",
    "FileInfo": "cowfs.api",
    "connect": "cowfs.api",
    "Commit": "cowfs.commits",
    "Provenance": "cowfs.commits",
    "CowfsError": "cowfs.errors",
    "NameTooLong": "cowfs.errors",
    "NotFound": "cowfs.errors",
    "ReadOnly": "cowfs.errors",
    "UsageError": "cowfs.errors",
    "BranchWriter": "cowfs.writer",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            value = version("cowfs")
        except PackageNotFoundError:  # a checkout on sys.path, not installed
            value = "0+unknown"
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'cowfs' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BranchWriter",
    "Client",
    "Commit",
    "CowfsError",
    "FileInfo",
    "NameTooLong",
    "NotFound",
    "Provenance",
    "ReadOnly",
    "UsageError",
    "__version__",
    "connect",
]
