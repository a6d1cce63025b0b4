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

from importlib.metadata import PackageNotFoundError, version

from cowfs.api import Client, FileInfo, connect
from cowfs.commits import Commit, Provenance
from cowfs.errors import CowfsError, NameTooLong, NotFound, ReadOnly, UsageError
from cowfs.writer import BranchWriter

try:
    __version__ = version("cowfs")
except PackageNotFoundError:  # a checkout on sys.path, not installed
    __version__ = "0+unknown"

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
