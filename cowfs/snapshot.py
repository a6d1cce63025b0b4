"""Snapshotting a local directory (or file) into a change set, reading only what changed.

Like git's index, a stat cache in the node's LMDB remembers, for each local file put before, its
size, mtime, inode and ctime along with the chunks it became. A file whose stat is unchanged is
not read again. Files modified within the last two seconds are never cached: their mtime could
still change without the size doing so ("racy git").
"""

from __future__ import annotations

import os
import stat
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import blake3
import msgpack

from cowfs.changes import ChangeSet
from cowfs.chunking import SMALL_FILE, Chunker, FileData, Pending
from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.errors import NameTooLong, NotFound, UsageError
from cowfs.names import check_component, check_path_limits, normalize_path
from cowfs.readahead import ordered_map
from cowfs.store import Store
from cowfs.tree import TreeView

_RACY_S = 2.0
#: Small files read at once, and read but not yet cut: many reads queued keep a cold disk
#: busy (each is at most `SMALL_FILE`, so this bounds memory too).
_READERS = 8
_READS_AHEAD = 32


@dataclass(frozen=True)
class Found:
    rel: str
    abspath: str
    st: os.stat_result
    kind: EntryType


@dataclass
class SnapshotReport:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    files_read: int = 0
    bytes_read: int = 0
    skipped_special: int = 0


def _warn(msg: str) -> None:
    print(f"cowfs: {msg}", file=sys.stderr)


def _special(st: os.stat_result) -> bool:
    return not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode))


def scan(root: Path) -> list[Found]:
    """Every directory, regular file and symlink under `root`, sorted, names checked first so
    that a bad or over-long name fails the put before anything is uploaded. FIFOs, sockets
    and devices are skipped with a warning (reading one could block or never end); entries
    that vanish while the scan runs are skipped as if they had not been there."""
    out: list[Found] = []

    def visit(dir_abs: str, dir_rel: str) -> None:
        try:
            items = sorted(os.scandir(dir_abs), key=lambda d: d.name)
        except FileNotFoundError:
            _warn(f"skipping {dir_abs}: it vanished during the put")
            return
        except PermissionError as e:
            raise UsageError(f"cannot read directory {dir_abs}: {e.strerror}") from None
        for d in items:
            name = d.name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                shown = os.fsencode(d.path).decode("utf-8", "backslashreplace")
                raise UsageError(f"cannot put {shown}: its name is not valid UTF-8") from None
            try:
                check_component(name)
            except NameTooLong as e:
                raise NameTooLong(f"cannot put {d.path}: {e}") from None
            rel = f"{dir_rel}/{name}" if dir_rel else name
            try:
                st = d.stat(follow_symlinks=False)
            except FileNotFoundError:
                _warn(f"skipping {d.path}: it vanished during the put")
                continue
            if stat.S_ISLNK(st.st_mode):
                out.append(Found(rel, d.path, st, EntryType.SYMLINK))
            elif stat.S_ISDIR(st.st_mode):
                out.append(Found(rel, d.path, st, EntryType.DIR))
                visit(d.path, rel)
            elif stat.S_ISREG(st.st_mode):
                out.append(Found(rel, d.path, st, EntryType.FILE))
            else:
                _warn(f"skipping {d.path}: not a file, directory or symlink")

    visit(str(root), "")
    return out


def _read_small(f: Found) -> bytes | None:
    """A small file's bytes, or None when it vanished. Reads at most `SMALL_FILE` bytes, so a
    file growing without end cannot fill memory; one that outgrew the small-file size since
    the scan fails the put (nothing is committed) rather than being cut short."""
    try:
        with open(f.abspath, "rb") as fh:
            data = fh.read(SMALL_FILE + 1)
    except FileNotFoundError:
        _warn(f"skipping {f.abspath}: it vanished during the put")
        return None
    except PermissionError as e:
        raise UsageError(f"cannot read {f.abspath}: {e.strerror}") from None
    if len(data) > SMALL_FILE:
        raise UsageError(f"{f.abspath} grew while it was being put: put again")
    return data


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def _plan(
    store: Store,
    found: list[Found],
    target: Callable[[str], str],
    changes: ChangeSet,
    report: SnapshotReport,
) -> list[tuple[Found, str]]:
    """Put directories, symlinks and files the stat cache vouches for into `changes`; return
    the files that must be read. A stat-cache hit counts only if no chunk it names is
    doubted (checked for all hits at once), so a damaged chunk is re-read and re-uploaded."""
    cached = store.index.get_stats([os.path.abspath(f.abspath) for f in found])
    to_read: list[tuple[Found, str]] = []
    hits: list[tuple[Found, str, bytes, tuple[ChunkRef, ...]]] = []
    for f, raw in zip(found, cached):
        path = target(f.rel)
        check_path_limits(path)
        if f.kind is EntryType.DIR:
            changes.puts[path] = dir_entry(path, f.st.st_mode, f.st.st_mtime_ns)
            report.dirs += 1
            continue
        if f.kind is EntryType.SYMLINK:
            try:
                link = os.readlink(f.abspath)
            except FileNotFoundError:
                _warn(f"skipping {f.abspath}: it vanished during the put")
                continue
            changes.puts[path] = Entry(
                path, EntryType.SYMLINK, 0o777, 0, f.st.st_mtime_ns, target=link
            )
            report.files += 1
            continue
        report.files += 1
        report.bytes += f.st.st_size
        if raw is not None:
            key, digest, chunks = msgpack.unpackb(raw)
            if key == _stat_key(f.st):
                refs = tuple(ChunkRef(c.hex(), o, n) for c, o, n in chunks)
                hits.append((f, path, digest, refs))
                continue
        to_read.append((f, path))
    bad = store.untrusted({r.id for *_, refs in hits for r in refs}, verify_unknown=False)
    for f, path, digest, refs in hits:
        if bad and any(r.id in bad for r in refs):
            to_read.append((f, path))
            continue
        changes.puts[path] = Entry(
            path,
            EntryType.FILE,
            f.st.st_mode & 0o7777,
            f.st.st_size,
            f.st.st_mtime_ns,
            digest,
            refs,
        )
    to_read.sort(key=lambda t: t[1])  # small files are packed in path order
    return to_read


def snapshot(
    store: Store,
    source: Path,
    dest: str,
    *,
    mirror: bool,
    base: TreeView,
    progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> tuple[ChangeSet, SnapshotReport]:
    """Chunk and upload `source` (a file or a directory) as a change placing it at `dest`.

    `base` is what the branch holds now; with `mirror`, entries under `dest`
    that the directory no longer has are deleted. Returns once every chunk is stored.
    """
    try:
        top_st = source.lstat()
    except FileNotFoundError:
        raise NotFound(f"{source} does not exist") from None
    if _special(top_st):
        raise UsageError(
            f"cannot put {source}: not a regular file, directory or symlink "
            "(FIFOs, sockets and devices are refused)"
        )
    report = SnapshotReport()
    changes = ChangeSet()

    if source.is_dir() and not source.is_symlink():
        found = scan(source)
        root_st = source.stat()
        if dest:
            changes.puts[dest] = dir_entry(dest, root_st.st_mode, root_st.st_mtime_ns)
    else:
        found = [
            Found(
                "",
                str(source),
                source.lstat(),
                EntryType.SYMLINK if source.is_symlink() else EntryType.FILE,
            )
        ]

    def target(rel: str) -> str:
        return f"{dest}/{rel}" if dest and rel else (rel or dest)

    now = time.time()
    to_read = _plan(store, found, target, changes, report)
    if on_total:
        on_total(sum(f.st.st_size for f, _ in to_read))
    results: list[tuple[Found, str, Pending | FileData]] = []
    with (
        Chunker(store, progress) as chunker,
        ThreadPoolExecutor(_READERS, thread_name_prefix="cowfs-read") as readers,
    ):
        small = [(f, p) for f, p in to_read if f.st.st_size < SMALL_FILE]
        large = [(f, p) for f, p in to_read if f.st.st_size >= SMALL_FILE]
        packed: list[tuple[Found, str]] = []

        def small_contents() -> Iterator[bytes]:
            # A small file whose bytes equal what the branch has at that path keeps its old
            # chunk slices, so re-putting without a stat cache never re-packs unchanged files.
            read = ordered_map(readers, lambda fp: _read_small(fp[0]), small, _READS_AHEAD)
            for (f, p), data in zip(small, read, strict=True):
                if data is None:
                    continue
                old = base.lookup(p)
                if (
                    old is not None
                    and old.is_file
                    and old.size == len(data)
                    and store.trust(old.chunks)
                ):
                    digest = blake3.blake3(data).digest()
                    if digest == old.digest:
                        results.append((f, p, FileData(old.size, digest, old.chunks)))
                        if progress:
                            progress(len(data))
                        continue
                packed.append((f, p))
                yield data

        pendings = chunker.add_small_files(small_contents())
        results.extend((f, p, pend) for (f, p), pend in zip(packed, pendings, strict=True))
        for f, p in large:
            try:
                results.append((f, p, chunker.add_file(f.abspath)))
            except FileNotFoundError:
                _warn(f"skipping {f.abspath}: it vanished during the put")
            except PermissionError as e:
                raise UsageError(f"cannot read {f.abspath}: {e.strerror}") from None
        chunker.wait()
        datas = [(f, p, d if isinstance(d, FileData) else d.result()) for f, p, d in results]

    stat_rows = []
    for f, path, data in datas:
        report.files_read += 1
        report.bytes_read += data.size
        changes.puts[path] = Entry(
            path,
            EntryType.FILE,
            f.st.st_mode & 0o7777,
            data.size,
            f.st.st_mtime_ns,
            data.digest,
            data.chunks,
        )
        if data.size == f.st.st_size and now - f.st.st_mtime_ns / 1e9 > _RACY_S:
            chunks = [[bytes.fromhex(c.id), c.offset, c.length] for c in data.chunks]
            stat_rows.append(
                (os.path.abspath(f.abspath), msgpack.packb([_stat_key(f.st), data.digest, chunks]))
            )
    store.index.put_stats(stat_rows)

    if mirror and source.is_dir():
        changes.mirror.append(dest)
    return changes, report


def destination(raw_dest: str | None, source: Path, base: TreeView) -> str:
    """Where a put lands. A directory lands at the destination (the root by default). A file
    lands at the destination exactly, unless it is an existing directory, ends in `/`, or has no
    suffix while the file has one (`put repo@main:/extra more.csv` -> /extra/more.csv)."""
    dest = normalize_path(raw_dest or "")
    if source.is_dir() and not source.is_symlink():
        return dest
    name = normalize_path(source.name)
    if not dest:
        return name
    here = base.lookup(dest)
    if raw_dest.endswith("/") or (here is not None and here.is_dir):
        return f"{dest}/{name}"
    if Path(dest).suffix == "" and source.suffix != "":
        return f"{dest}/{name}"
    return dest
