"""ListObjects over a tree: prefix, delimiter, max-keys and resuming after a key.

The tree iterates in key order from any start key, loading only the nodes it passes, so a page
costs the range it lists (plus one descent per common prefix skipped), never the whole commit.
Directory entries are not objects: a directory shows as a common prefix through what it holds.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cowfs.entries import Entry, EntryType
from cowfs.s3gateway.errors import S3Error

MAX_KEYS = 1000


@dataclass(frozen=True)
class ListRequest:
    prefix: str = ""
    delimiter: str = ""
    max_keys: int = MAX_KEYS
    #: Keys up to and including this one are not listed (start-after, marker or a token).
    after: str = ""


@dataclass(frozen=True)
class Item:
    key: str
    #: None for a common prefix.
    entry: Entry | None


@dataclass
class ListPage:
    objects: list[Item] = field(default_factory=list)
    prefixes: list[str] = field(default_factory=list)
    truncated: bool = False
    #: The last key or common prefix listed: where the next page starts after.
    last: str | None = None


def tree_items(
    iter_from: Callable[[str], Iterator[Entry]], key_prefix: str, req: ListRequest
) -> Iterator[Item]:
    """Objects and common prefixes of one tree whose keys are `key_prefix + path`, in order."""
    if not req.prefix.startswith(key_prefix):
        raise ValueError("the listing prefix must start with the bucket's key prefix")
    after = req.after
    if after and not after.startswith(key_prefix):
        if after > key_prefix:
            return
        after = ""
    start = max(req.prefix, after)[len(key_prefix) :]
    while True:
        restart = None
        for e in iter_from(start):
            key = key_prefix + e.path
            if not key.startswith(req.prefix):
                if key > req.prefix:
                    return
                continue
            if e.type is not EntryType.FILE or key <= after:
                continue
            rest = key[len(req.prefix) :]
            cut = rest.find(req.delimiter) if req.delimiter else -1
            if cut < 0:
                yield Item(key, e)
                continue
            common = req.prefix + rest[: cut + len(req.delimiter)]
            if common > after:
                yield Item(common, None)
            restart = _past(common)[len(key_prefix) :]
            break
        if restart is None:
            return
        start = restart


def _past(prefix: str) -> str:
    """The least string greater than every string that starts with `prefix`."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def paginate(items: Iterator[Item], max_keys: int) -> ListPage:
    page = ListPage()
    if max_keys <= 0:
        page.truncated = next(items, None) is not None
        return page
    for n, item in enumerate(items):
        if n == max_keys:
            page.truncated = True
            break
        if item.entry is None:
            page.prefixes.append(item.key)
        else:
            page.objects.append(item)
        page.last = item.key
    return page


def ref_items(
    refs: list[str],
    req: ListRequest,
    tree_of: Callable[[str, ListRequest], Iterator[Item]],
) -> Iterator[Item]:
    """Listing a repo-form bucket from above its refs: each branch is a folder `<branch>/`.

    `tree_of(ref, request)` lists one ref's tree for a request whose prefix starts `<ref>/`.
    """
    last_common = None
    for ref in sorted(refs):
        folder = f"{ref}/"
        if not folder.startswith(req.prefix) or req.after >= _past(folder):
            continue
        rest = folder[len(req.prefix) :]
        cut = rest.find(req.delimiter) if req.delimiter else -1
        if cut >= 0:
            common = req.prefix + rest[: cut + len(req.delimiter)]
            if common > req.after and common != last_common:
                last_common = common
                yield Item(common, None)
            continue
        yield from tree_of(ref, ListRequest(folder, req.delimiter, req.max_keys, req.after))


def encode_token(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_token(token: str) -> str:
    try:
        return base64.urlsafe_b64decode(token.encode()).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise S3Error(
            "InvalidArgument", "the continuation token is not one this gateway gave"
        ) from None
