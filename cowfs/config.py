"""Where the store and the node-local caches live, and how the store is talked to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import xxhash

from cowfs.errors import UsageError


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


# --- settings resolved once ------------------------------------------------------------------

#: File and directory modes of a local store, by `COWFS_STORE_MODE`.
_STORE_MODES = {"private": (0o600, 0o700), "group": (0o640, 0o750), "shared": (0o644, 0o755)}


@dataclass(frozen=True)
class StoreSettings:
    """How cowfs talks to its object store. Read from the environment once (`from_env`), then
    passed down, so nothing deep in the code consults `os.environ`.

    - `COWFS_STORE_MODE`: `private` (default: files 0600, folders 0700, so only the store's
      owner reads chunks; the mount's permission checks cannot be bypassed by reading the
      folder), `group` (0640/0750) or `shared` (0644/0755).
    - `COWFS_S3_CONNECT_TIMEOUT`, `COWFS_S3_READ_TIMEOUT` (seconds, per socket operation) and
      `COWFS_S3_ATTEMPTS` (total tries of a transient failure): a dead or stopped endpoint fails
      a request in about `attempts * (connect or read timeout)`, seconds rather than minutes.
    - `COWFS_S3_FAST_GET=0` sends GETs through boto3 instead of the lean signed HTTP/1.1
      requests of `cowfs.objectstore.s3get`, for comparison or a server the fast path trips.
    """

    file_mode: int = 0o600
    dir_mode: int = 0o700
    s3_connect_timeout: float = 2.0
    s3_read_timeout: float = 5.0
    s3_attempts: int = 2
    s3_fast_get: bool = True

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> StoreSettings:
        env = os.environ if env is None else env
        mode = (env.get("COWFS_STORE_MODE") or "private").strip().lower()
        if mode not in _STORE_MODES:
            raise UsageError(f"COWFS_STORE_MODE={mode!r}: use one of {', '.join(_STORE_MODES)}")
        file_mode, dir_mode = _STORE_MODES[mode]
        return cls(
            file_mode=file_mode,
            dir_mode=dir_mode,
            s3_connect_timeout=_number(env, "COWFS_S3_CONNECT_TIMEOUT", cls.s3_connect_timeout),
            s3_read_timeout=_number(env, "COWFS_S3_READ_TIMEOUT", cls.s3_read_timeout),
            s3_attempts=int(_number(env, "COWFS_S3_ATTEMPTS", cls.s3_attempts, integer=True)),
            s3_fast_get=(env.get("COWFS_S3_FAST_GET") or "1").strip() not in ("0", "no", "off"),
        )


def _number(env: Mapping[str, str], name: str, default: float, integer: bool = False) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    if value <= 0:
        kind = "a whole number" if integer else "a number of seconds"
        raise UsageError(f"{name}={raw!r} is not {kind} above 0")
    return value


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
