"""pyfuse3's request loop, two scheduler trips per request cheaper.

pyfuse3 waits for each request the same way: it takes a `trio.Lock` (whose `acquire` always
yields to the scheduler, even when nobody holds the lock) and then `trio.lowlevel.wait_readable`
on /dev/fuse (which registers the descriptor with epoll and parks the task until the next run of
the scheduler, even when a request is already waiting). On this 2-core VM those two trips were
about 40 of the 85-100 us of CPU that a file system doing nothing spends per 4 KiB READ.

pyfuse3 reaches trio only through its module attribute `pyfuse3.trio`, which it documents as
replaceable (`pyfuse3.asyncio.enable()` puts an asyncio stand-in there). `install()` puts trio
there with two changes:

- `Lock`: an uncontended `acquire` takes the lock without yielding; a contended one parks, and
  the holder hands the lock straight to the first task parked.
- `lowlevel.wait_readable`: a `poll` with no timeout first; if a request (or an error, such as
  the unmount's) is already there, it returns at once. At most `FAST_STREAK` times in a row, so
  the loop still yields to the scheduler, and to every other task, every few requests.

Everything else is trio itself. Measured on the do-nothing file system (fio, 4 KiB random reads,
docs/benchmarks.md, three runs): 58-101 us of CPU per READ before, 27-58 after.
"""

from __future__ import annotations

import select
import types
from typing import Any

import pyfuse3
import trio

#: Requests taken without a trip through the scheduler before one is made anyway.
FAST_STREAK = 8


class FastLock:
    """A trio lock whose uncontended `async with` does not yield. Only `async with` is offered:
    it is all pyfuse3 uses."""

    def __init__(self) -> None:
        self._held = False
        self._waiting = trio.lowlevel.ParkingLot()

    async def __aenter__(self) -> None:
        if self._held:
            await self._waiting.park()  # woken holding it: the holder hands it over
        else:
            self._held = True

    async def __aexit__(self, *exc: object) -> None:
        if self._waiting:
            self._waiting.unpark()
        else:
            self._held = False

    def locked(self) -> bool:
        return self._held


class _ReadyFirst:
    """`wait_readable` that first asks whether the descriptor is readable already."""

    def __init__(self) -> None:
        self._polls: dict[int, select.poll] = {}
        self.streak = 0

    async def __call__(self, fd: Any) -> None:
        no = fd if isinstance(fd, int) else fd.fileno()
        p = self._polls.get(no)
        if p is None:
            p = self._polls[no] = select.poll()
            p.register(no, select.POLLIN)
        if self.streak < FAST_STREAK and p.poll(0):
            self.streak += 1
            return
        self.streak = 0
        await trio.lowlevel.wait_readable(fd)


def fast_trio() -> types.ModuleType:
    """A module that is trio, with `Lock` and `lowlevel.wait_readable` as above."""
    lowlevel = types.ModuleType("cowfs_fuse_trio.lowlevel")
    lowlevel.__dict__.update(_public(trio.lowlevel))
    lowlevel.wait_readable = _ReadyFirst()  # type: ignore[attr-defined]
    fake = types.ModuleType("cowfs_fuse_trio")
    fake.__dict__.update(_public(trio))
    fake.lowlevel = lowlevel  # type: ignore[attr-defined]
    fake.Lock = FastLock  # type: ignore[attr-defined]
    return fake


def _public(module: types.ModuleType) -> dict[str, Any]:
    return {k: v for k, v in vars(module).items() if not k.startswith("__")}


def install() -> None:
    """Before `pyfuse3.main` (pyfuse3 makes its lock when its loop first waits)."""
    if getattr(pyfuse3.trio, "__name__", "") != "cowfs_fuse_trio":
        pyfuse3.trio = fast_trio()  # type: ignore[attr-defined]
