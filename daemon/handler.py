"""What every FUSE handler of the mount goes through: counting, timing and errnos (`op`), and
the open handles they share (`Handle`)."""

from __future__ import annotations

import errno
import functools
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

import pyfuse3

from cowfs.entries import Entry
from cowfs.errors import CowfsError
from daemon.inodes import Node
from daemon.metrics_fuse import FUSE_ERRORS, FUSE_STATS
from daemon.views import View

log = logging.getLogger("cowfs.mount")

#: A sequential reader's read-ahead window, in chunks: it starts small and doubles each time
#: the reader finds the chunk it needs not yet fetched (it outran the fetches in flight), so a
#: fast reader keeps many fetches in flight and a slow one few.
READAHEAD_MIN = 4
READAHEAD_MAX = 64
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def op(name: str) -> Callable[[F], F]:
    """Count and time a handler, and turn every failure into an errno the kernel understands."""

    def wrap(fn: F) -> F:
        stats = FUSE_STATS.op(name)
        errors: dict[int, Any] = {}

        def failed(code: int) -> pyfuse3.FUSEError:
            counter = errors.get(code)
            if counter is None:
                counter = errors[code] = FUSE_ERRORS.labels(
                    name, errno.errorcode.get(code, str(code))
                )
            counter.inc()
            return pyfuse3.FUSEError(code)

        @functools.wraps(fn)
        async def handler(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter()
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError as e:
                failed(e.errno)
                raise
            except CowfsError as e:
                code = getattr(e, "errno", errno.EIO) or errno.EIO
                if code == errno.EIO:
                    log.warning("%s failed: %s", name, e)
                raise failed(code) from None
            except OSError as e:
                log.warning("%s failed: %s", name, e)
                raise failed(e.errno or errno.EIO) from None
            except Exception:
                log.exception("%s failed", name)
                raise failed(errno.EIO) from None
            finally:
                stats.observe(perf_counter() - t0)

        return handler  # type: ignore[return-value]

    return wrap


def err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


@dataclass(eq=False)
class Handle:
    node: Node
    view: View | None
    #: The entry a read-only handle was opened on: it reads that even after the head moves.
    entry: Entry | None = None
    writable: bool = False
    #: Opened on a writable view: reads follow the view (staged, then the head it froze onto).
    live: bool = False
    next_off: int = 0
    last_chunk: int = -1
    window: int = READAHEAD_MIN
    listing: list[tuple[bytes, Any]] = field(default_factory=list)


def direct_io(flags: int) -> bool:
    """Write-only handles skip the page cache (`direct_io`): the kernel then no longer asks
    `getxattr("security.capability")` before every write (its check for privileges to drop,
    which FUSE cannot cache), a request per write. Nothing can map or read through such a
    handle, and other handles see the writes as before (tests/test_mount_posix.py)."""
    return flags & os.O_ACCMODE == os.O_WRONLY
