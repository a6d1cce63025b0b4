"""The one small interface every object store implements.

Everything cowfs keeps durably goes through these few calls, so that a local folder and any S3
bucket are interchangeable (as fsspec does for file systems). Keys are `/`-separated ASCII strings
such as `chunks/ab/abcdef…`. Objects are immutable except the few written with `swap`, which is
the only mutation the format needs: moving a branch head by compare-and-swap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Versioned:
    """An object's bytes with the token that `swap` must be given to replace exactly them."""

    data: bytes
    token: str


class ObjectStore(ABC):
    url: str
    #: True when objects already sit on a local disk, so caching them again would only waste space.
    is_local: bool = False

    @abstractmethod
    def get(self, key: str) -> bytes:
        """Return the object's bytes; raise `ObjectMissing` if there is none."""

    def get_parts(self, key: str, head: int) -> tuple[bytes, bytes | memoryview]:
        """The object's first `head` bytes and the rest; raise `ObjectMissing` if there is none.

        For reading a framed object (`cowfs.objects`): a store that reads into buffers of its
        own returns the rest as `bytes` of its own, so a raw chunk's plain bytes are not copied
        again to strip the header. This default slices `get`."""
        data = self.get(key)
        return data[:head], memoryview(data)[head:]

    @abstractmethod
    def put(self, key: str, data: bytes) -> None:
        """Write an object whole. Readers see either nothing or all of it, never a part."""

    def put_parts(self, key: str, parts: Sequence[bytes | memoryview]) -> None:
        """`put` of the parts' bytes one after the other: a store that can write them as they
        are (a local file, with `writev`) spares the copy this default's join makes."""
        self.put(key, b"".join(parts))

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove an object; removing one that is absent is not an error."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        """Yield `(key, size)` for every key starting with `prefix`, in key order."""

    @abstractmethod
    def get_versioned(self, key: str) -> Versioned | None:
        """Return the object with its swap token, or None when it does not exist."""

    @abstractmethod
    def swap(self, key: str, data: bytes, expected: str | None) -> bool:
        """Replace the object only if it is still the version `expected` names.

        `expected=None` means "only if the key does not exist yet". Returns False when another
        writer got there first; the caller re-reads and decides. Never half-writes.
        """

    def sync(self) -> None:  # noqa: B027 - optional hook, a no-op where writes are durable at once
        """Make every `put` so far durable before a ref that names them moves."""

    def close(self) -> None:  # noqa: B027
        """Release connections and file handles."""
