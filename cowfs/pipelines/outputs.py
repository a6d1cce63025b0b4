"""Turning datums' output directories into entries, many datums at a time.

Datums typically write a file or two each. Snapshotting each out dir on its own would make one
chunk object per datum; feeding the small files of a whole batch of datums through one
`Chunker.add_small_files` stream packs them as `cowfs put` packs a directory, so 10,000 datums
make a handful of chunks.

Entries are also packed to JSON here, for datum records (which must be readable by any tool).
"""

from __future__ import annotations

import os
from pathlib import Path

from cowfs.chunking import SMALL_FILE, Chunker, FileData
from cowfs.entries import Entry, EntryType, dir_entry, pack_entry, unpack_entry
from cowfs.snapshot import scan
from cowfs.store import Store


def ingest(store: Store, items: list[tuple[str, Path]]) -> dict[str, list[Entry]]:
    """`(datum hash, directory)` pairs to each datum's output entries, chunks stored."""
    found = {h: (list(scan(d)) if d.is_dir() else []) for h, d in items}
    out: dict[str, list[Entry]] = {h: [] for h, _ in items}
    small = [(h, f) for h, fs in found.items() for f in fs if _is_small_file(f)]
    large = [(h, f) for h, fs in found.items() for f in fs if _is_file(f) and not _is_small_file(f)]
    with Chunker(store) as chunker:

        def contents():
            for _, f in small:
                with open(f.abspath, "rb") as fh:
                    yield fh.read()

        pend_small = chunker.add_small_files(contents())
        pend_large = [chunker.add_file(f.abspath) for _, f in large]
        chunker.wait()
        datas: dict[str, FileData] = {}
        for (_, f), p in zip(small, pend_small, strict=True):
            datas[f.abspath] = p.result()
        for (_, f), p in zip(large, pend_large, strict=True):
            datas[f.abspath] = p.result()
    for h, fs in found.items():
        for f in fs:
            if f.kind is EntryType.DIR:
                out[h].append(dir_entry(f.rel, f.st.st_mode, f.st.st_mtime_ns))
            elif f.kind is EntryType.SYMLINK:
                target = os.readlink(f.abspath)
                out[h].append(
                    Entry(f.rel, EntryType.SYMLINK, 0o777, 0, f.st.st_mtime_ns, target=target)
                )
            else:
                d = datas[f.abspath]
                out[h].append(
                    Entry(
                        f.rel,
                        EntryType.FILE,
                        f.st.st_mode & 0o7777,
                        d.size,
                        f.st.st_mtime_ns,
                        d.digest,
                        d.chunks,
                    )
                )
    return out


def _is_file(f) -> bool:
    return f.kind is EntryType.FILE


def _is_small_file(f) -> bool:
    return f.kind is EntryType.FILE and f.st.st_size < SMALL_FILE


def entry_to_json(e: Entry) -> list:
    """The tree's entry array (`entries.pack_entry`) with its bytes as hex, because datum
    records are JSON: one layout for both, so the two cannot drift apart."""
    raw = pack_entry(e)
    raw[5] = raw[5].hex() if raw[5] else None
    raw[6] = [[cid.hex(), off, n] for cid, off, n in raw[6]]
    return raw


def entry_from_json(raw: list) -> Entry:
    """The inverse of `entry_to_json`, through `entries.unpack_entry`."""
    digest, chunks = raw[5], raw[6]
    return unpack_entry(
        [
            *raw[:5],
            bytes.fromhex(digest) if digest else None,
            [[bytes.fromhex(cid), off, n] for cid, off, n in chunks],
            raw[7],
        ]
    )
