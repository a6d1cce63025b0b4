"""Reading ahead of the cutter, so that the disk is busy while the CPUs cut, hash and compress.

Two shapes of read-ahead, each bounded so that a put's memory does not depend on what it puts:

- `ordered_map`: many small reads (one per small file) in flight on a thread pool, results
  handed back in the order asked for. A cold disk answers 16 queued reads far faster than 16
  reads one after another, and `open`/`read`/`close` release the GIL.
- `BlockReader`: one large file read on a thread of its own into fresh blocks, a few blocks
  ahead of the consumer. Each block has `headroom` bytes free in front of its data, so the
  consumer can put the uncut tail of the previous block there (a copy of at most one chunk)
  instead of copying the whole block onto that tail.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Readable(Protocol):
    """What is read from: an open binary file, or anything with `readinto`."""

    def readinto(self, buffer: memoryview, /) -> int: ...


def ordered_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], ahead: int
) -> Iterator[R]:
    """`fn` of each item, in order, with at most `ahead` calls running or done but not yet
    taken. An exception is raised where its item's result would have been yielded; calls
    queued behind it are cancelled when the generator is closed."""
    window: deque[Future[R]] = deque()
    source = iter(items)
    try:
        for item in source:
            window.append(pool.submit(fn, item))
            if len(window) >= ahead:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()
    finally:
        for f in window:
            f.cancel()


def fill(readable: Readable, view: memoryview) -> int:
    """Read into `view` until it is full or the stream ends; the number of bytes read."""
    got = 0
    while got < len(view):
        n = readable.readinto(view[got:])
        if not n:
            break
        got += n
    return got


class Block:
    """`data` is `buf[headroom : headroom + size]`; `last` when the stream ended in it."""

    __slots__ = ("buf", "size", "last")

    def __init__(self, buf: bytearray, size: int, last: bool) -> None:
        self.buf = buf
        self.size = size
        self.last = last


def read_blocks(readable: Readable, block: int, headroom: int) -> Iterator[Block]:
    """Blocks of `readable`, read on the calling thread (for streams tied to it)."""
    while True:
        buf = bytearray(headroom + block)
        with memoryview(buf) as view:
            got = fill(readable, view[headroom:])
        yield Block(buf, got, got < block)
        if got < block:
            return


class BlockReader:
    """Blocks of one readable, read by a thread of its own at most `ahead` blocks early.

    Iterate it for the blocks; `close()` (or leaving the `with`) stops the thread, also when
    the consumer gave up half way. A read error is raised by the iteration."""

    def __init__(self, readable: Readable, block: int, headroom: int, ahead: int = 2) -> None:
        self._q: queue.Queue[Block | BaseException] = queue.Queue(ahead)
        self._stop = threading.Event()
        self._gen = read_blocks(readable, block, headroom)
        self._thread = threading.Thread(target=self._run, name="cowfs-read", daemon=True)
        self._thread.start()

    def _put(self, item: Block | BaseException) -> bool:
        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for b in self._gen:
                if not self._put(b):
                    return
        except BaseException as e:  # handed to the consumer, which raises it
            self._put(e)

    def __iter__(self) -> Iterator[Block]:
        while True:
            item = self._q.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.last:
                return

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> BlockReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
