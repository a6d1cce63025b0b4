"""Give back the index's LMDB pages the mount has read: a walk of millions of files reads
hundreds of MB of tree-node bytes through LMDB's map, and every page read stays resident in the
mount's RSS until the kernel reclaims it. The pages are clean and shared (LMDB's map is
read-only here: no `writemap`), so `madvise(MADV_DONTNEED)` only unmaps them: the bytes stay in
the page cache, and a later read faults them back in. Linux only; anything else is a no-op.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from pathlib import Path

log = logging.getLogger("cowfs.mount")

MADV_DONTNEED = 4


def shared_file_maps(under: Path) -> list[tuple[int, int]]:
    """(start, length) of every read-only shared mapping of a file below `under`."""
    out = []
    prefix = str(under.resolve()) + "/"
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split(maxsplit=5)
            if len(parts) < 6 or parts[1] != "r--s" or not parts[5].startswith(prefix):
                continue
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            out.append((lo, hi - lo))
    return out


def release_maps(under: Path) -> int:
    """Unmap the resident pages of the read-only file maps below `under`; bytes advised."""
    if not sys.platform.startswith("linux"):
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        done = 0
        for start, length in shared_file_maps(under):
            if madvise(start, length, MADV_DONTNEED) == 0:
                done += length
        return done
    except (OSError, AttributeError) as e:  # never worth failing the mount over
        log.debug("cannot release mapped pages: %s", e)
        return 0
