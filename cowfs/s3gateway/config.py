"""The gateway's settings, resolved once from the `[s3]` table of the TOML config and flags.

```toml
[s3]
listen = "127.0.0.1:9000"
allow_anonymous = false        # true: unsigned requests may read every repo (never write)
batch_window = 0.0             # seconds a write waits for others to share its commit
region = "us-east-1"           # only echoed back (GetBucketLocation); any region signs

[[s3.keys]]
access_key = "cowfs"
secret_key = "..."
read_write = ["*"]             # repos this key may read and write ("*": all)
read_only = []                 # repos this key may only read
```

A single key may also be given as `access_key` and `secret_key` in `[s3]` itself: it may read
and write every repo.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from cowfs.errors import UsageError

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

DEFAULT_CONFIG = Path("/etc/cowfs/config.toml")
DEFAULT_LISTEN = "127.0.0.1:9000"
ANONYMOUS = ""


@dataclass(frozen=True)
class AccessKey:
    access_key: str
    secret_key: str = field(repr=False)
    read_write: frozenset[str] = frozenset({"*"})
    read_only: frozenset[str] = frozenset()

    def can_read(self, repo: str) -> bool:
        return self.can_write(repo) or bool({"*", repo} & self.read_only)

    def can_write(self, repo: str) -> bool:
        return bool({"*", repo} & self.read_write)


ANONYMOUS_READER = AccessKey(ANONYMOUS, "", frozenset(), frozenset({"*"}))


@dataclass(frozen=True)
class GatewayConfig:
    listen: str = DEFAULT_LISTEN
    allow_anonymous: bool = False
    batch_window: float = 0.0
    region: str = "us-east-1"
    keys: Mapping[str, AccessKey] = field(default_factory=dict, repr=False)
    #: Node-local folder for multipart uploads in progress (their parts' chunk references).
    state_dir: Path | None = None

    def override(self, **kw: Any) -> GatewayConfig:
        """Command-line values win over the file; None means "not given"."""
        return replace(self, **{k: v for k, v in kw.items() if v is not None})

    def secret_for(self, access_key: str) -> str | None:
        k = self.keys.get(access_key)
        return k.secret_key if k else None


def load_gateway_config(path: Path | None, required: bool = False) -> GatewayConfig:
    """The `[s3]` table of `path`; a missing default file means no keys (anonymous at most)."""
    path = path or DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        if required:
            raise UsageError(f"no config file {path}") from None
        return GatewayConfig()
    except PermissionError:
        raise UsageError(f"cannot read config file {path}: permission denied") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config {path} does not parse: {e}") from None
    return parse_gateway_config(raw.get("s3", {}), str(path))


_SCALARS = {"listen": str, "allow_anonymous": bool, "batch_window": (int, float), "region": str}


def parse_gateway_config(section: Mapping[str, Any], where: str = "config") -> GatewayConfig:
    problems: list[str] = []
    values: dict[str, Any] = {}
    keys: dict[str, AccessKey] = {}
    for name, value in section.items():
        if name in ("keys", "access_key", "secret_key"):
            continue
        want = _SCALARS.get(name)
        if want is None:
            known = ", ".join([*_SCALARS, "access_key", "secret_key", "keys"])
            problems.append(f"unknown key s3.{name} (known: {known})")
        elif not isinstance(value, want) or (want is not bool and isinstance(value, bool)):
            problems.append(f"s3.{name} has the wrong type ({type(value).__name__})")
        else:
            values[name] = float(value) if name == "batch_window" else value
    tables = list(section.get("keys", []))
    if "access_key" in section or "secret_key" in section:
        tables.append({k: section[k] for k in ("access_key", "secret_key") if k in section})
    for i, t in enumerate(tables):
        try:
            k = _access_key(t)
        except (KeyError, TypeError, ValueError) as e:
            problems.append(f"s3.keys[{i}]: {e}")
            continue
        keys[k.access_key] = k
    if values.get("batch_window", 0.0) < 0:
        problems.append("s3.batch_window must not be negative")
    if problems:
        raise UsageError(f"{where}: " + "; ".join(problems))
    return GatewayConfig(keys=keys, **values)


def _access_key(t: Mapping[str, Any]) -> AccessKey:
    extra = set(t) - {"access_key", "secret_key", "read_write", "read_only"}
    if extra:
        raise ValueError(f"unknown field {sorted(extra)[0]!r}")
    ak, sk = t.get("access_key"), t.get("secret_key")
    if not isinstance(ak, str) or not ak or not isinstance(sk, str) or not sk:
        raise ValueError("access_key and secret_key must be non-empty strings")
    rw = t.get("read_write", ["*"] if "read_only" not in t else [])
    ro = t.get("read_only", [])
    if not all(isinstance(x, str) for x in [*rw, *ro]):
        raise ValueError("read_write and read_only are lists of repo names")
    return AccessKey(ak, sk, frozenset(rw), frozenset(ro))
