"""The trio stand-in given to pyfuse3 (`daemon/fuseloop.py`): its lock still excludes, and its
`wait_readable` skips the scheduler only while the descriptor is readable, and not forever."""

from __future__ import annotations

import os

import pyfuse3
import trio
import trio.testing

from daemon import fuseloop


def test_the_lock_excludes_and_is_free_once_all_are_done() -> None:
    async def main() -> list[tuple[str, int]]:
        lock = fuseloop.FastLock()
        inside = 0
        events: list[tuple[str, int]] = []

        async def worker(i: int) -> None:
            nonlocal inside
            async with lock:
                inside += 1
                assert inside == 1
                events.append(("in", i))
                await trio.sleep(0)  # others try to enter meanwhile
                inside -= 1

        async with trio.open_nursery() as n:
            for i in range(5):
                n.start_soon(worker, i)
        assert not lock.locked()
        return events

    events = trio.run(main)
    assert sorted(i for _, i in events) == list(range(5))


def test_a_waiter_cancelled_while_parked_never_holds_the_lock() -> None:
    async def main() -> None:
        lock = fuseloop.FastLock()
        with trio.CancelScope() as outer:
            async with trio.open_nursery() as n, lock:
                waiter = trio.CancelScope()

                async def wait() -> None:
                    with waiter:
                        async with lock:
                            raise AssertionError("entered a held lock")

                n.start_soon(wait)
                await trio.testing.wait_all_tasks_blocked()
                waiter.cancel()
                await trio.testing.wait_all_tasks_blocked()
            assert not lock.locked()
        assert not outer.cancelled_caught

    trio.run(main)


def test_wait_readable_returns_at_once_only_while_data_waits() -> None:
    r, w = os.pipe()
    wait = fuseloop._ReadyFirst()

    async def main() -> None:
        os.write(w, b"x")
        ticks = 0

        async def count() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await trio.sleep(0)

        async with trio.open_nursery() as n:
            n.start_soon(count)
            while not ticks:
                await trio.sleep(0)
            before = ticks
            for _ in range(fuseloop.FAST_STREAK):
                await wait(r)
            assert ticks == before  # readable: no trip through the scheduler
            for _ in range(fuseloop.FAST_STREAK + 2):
                await wait(r)
            assert ticks > before  # but not for ever: the other task got to run
            os.read(r, 1)
            with trio.move_on_after(0.2) as scope:
                await wait(r)  # nothing to read: it really waits
            assert scope.cancelled_caught
            n.cancel_scope.cancel()

    try:
        trio.run(main)
    finally:
        os.close(r)
        os.close(w)


def test_install_gives_pyfuse3_trio_with_the_two_changes() -> None:
    before = pyfuse3.trio
    try:
        fuseloop.install()
        fake = pyfuse3.trio
        fuseloop.install()
        assert pyfuse3.trio is fake  # once
        assert fake.Lock is fuseloop.FastLock
        assert isinstance(fake.lowlevel.wait_readable, fuseloop._ReadyFirst)
        assert fake.open_nursery is trio.open_nursery
        assert fake.lowlevel.current_task is trio.lowlevel.current_task
        assert fake.ClosedResourceError is trio.ClosedResourceError
    finally:
        pyfuse3.trio = before
