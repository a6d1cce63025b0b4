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


def sandbox_user() -> tuple[int, int] | None:
    """The (uid, gid) that pipeline transforms run as, from `COWFS_SANDBOX_USER` (a user name,
    `uid` or `uid:gid`; default `nobody`). None keeps the runner's own identity: when the runner
    is not root (it cannot switch), or when the setting is `root`/`0` (an explicit opt-out)."""
    import pwd

    raw = (os.environ.get("COWFS_SANDBOX_USER") or "nobody").strip()
    if os.geteuid() != 0 or raw in ("root", "0", "0:0"):
        return None
    name, _, group = raw.partition(":")
    try:
        if name.isdigit():
            uid = int(name)
            gid = int(group) if group.isdigit() else uid
        else:
            pw = pwd.getpwnam(name)
            uid, gid = pw.pw_uid, int(group) if group.isdigit() else pw.pw_gid
    except KeyError:
        from cowfs.errors import UsageError

        raise UsageError(
            f"COWFS_SANDBOX_USER={raw}: no such user (give a user name, uid or uid:gid)"
        ) from None
    return uid, gid
