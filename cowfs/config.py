"""Where the store and the node-local caches live."""

from __future__ import annotations

import os
from pathlib import Path

import xxhash


def _xdg(var: str, fallback: str) -> Path:
    return Path(os.environ.get(var) or Path.home() / fallback)


def default_store_url() -> str:
    return os.environ.get("COWFS_STORE") or str(
        _xdg("XDG_DATA_HOME", ".local/share") / "cowfs" / "store"
    )


def cache_dir_for(url: str) -> Path:
    """Each store gets its own cache folder, so two stores never mix their indexes."""
    base = os.environ.get("COWFS_CACHE_DIR")
    root = Path(base) if base else _xdg("XDG_CACHE_HOME", ".cache") / "cowfs"
    return root / xxhash.xxh3_64_hexdigest(url.encode())


def state_dir() -> Path:
    """Durable node-local state that is not a cache: staged writes under the mount."""
    base = os.environ.get("COWFS_STATE_DIR")
    return Path(base) if base else _xdg("XDG_STATE_HOME", ".local/state") / "cowfs"


#: How long a writer may take from reading the collector's state to its branch swap, and how
#: long a collector waits between publishing a run and sweeping it (docs/architecture.md,
#: "Garbage collection"). Every machine writing to a store must use the same value.
DEFAULT_GC_WINDOW_S = 60.0


def gc_window_s() -> float:
    raw = os.environ.get("COWFS_GC_WINDOW")
    if not raw:
        return DEFAULT_GC_WINDOW_S
    try:
        value = float(raw)
    except ValueError:
        from cowfs.errors import UsageError

        raise UsageError(f"COWFS_GC_WINDOW={raw!r} is not a number of seconds") from None
    return max(value, 0.0)
