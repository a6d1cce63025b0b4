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
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import blake3
import msgpack

from cowfs import tree
from cowfs.changes import ChangeSet
from cowfs.chunking import SMALL_FILE, Chunker, FileData, Packer, Pending
from cowfs.entries import ChunkRef, Entry, EntryType, dir_entry
from cowfs.errors import NameTooLong, NotFound, UsageError
from cowfs.names import check_component, check_path_limits, normalize_path
from cowfs.readahead import ordered_map
from cowfs.store import Store
from cowfs.tree import Graft, TreeView

_RACY_S = 2.0
#: Groups of small files read at once (and read but not yet cut): many reads queued keep a
#: cold disk busy (each is at most `SMALL_FILE`, so this bounds memory too).
_READERS = 8
_READ_GROUP = 8
#: Entries planned (stat cache looked up, reads started) together, and stat-cache rows
#: written together.
_BATCH = 2048
_STAT_BATCH = 4096


class Stat(NamedTuple):
    """What a put keeps of a file's `stat` (a third of an `os.stat_result`'s memory)."""

    st_mode: int
    st_size: int
    st_mtime_ns: int
    st_ino: int
    st_ctime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> Stat:
        return cls(st.st_mode, st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True, slots=True)
class Found:
    rel: str
    abspath: str
    st: Stat
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


def scan(root: Path) -> Iterator[Found]:
    """Every directory, regular file and symlink under `root`, in the trees' path order, read
    one directory at a time. Path order is not a depth-first walk in name order: `a!` sorts
    between the directory `a` and `a/x`, so a directory's entry and its contents are placed
    apart. A bad or over-long name fails the put (nothing is committed). FIFOs, sockets and
    devices are skipped with a warning (reading one could block or never end); entries that
    vanish while the scan runs are skipped as if they had not been there."""
    yield from _visit(str(root), "")


def _visit(dir_abs: str, dir_rel: str) -> Iterator[Found]:
    try:
        listing = list(os.scandir(dir_abs))
    except FileNotFoundError:
        _warn(f"skipping {dir_abs}: it vanished during the put")
        return
    except PermissionError as e:
        raise UsageError(f"cannot read directory {dir_abs}: {e.strerror}") from None
    # (sort key, found, whether this is the directory's contents rather than its entry)
    items: list[tuple[str, Found, bool]] = []
    for d in listing:
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
            items.append((name, Found(rel, d.path, Stat.of(st), EntryType.SYMLINK), False))
        elif stat.S_ISDIR(st.st_mode):
            found = Found(rel, d.path, Stat.of(st), EntryType.DIR)
            items.append((name, found, False))
            items.append((name + "/", found, True))
        elif stat.S_ISREG(st.st_mode):
            items.append((name, Found(rel, d.path, Stat.of(st), EntryType.FILE), False))
        else:
            _warn(f"skipping {d.path}: not a file, directory or symlink")
    del listing
    items.sort(key=lambda t: t[0])
    for _, found, contents in items:
        if contents:
            yield from _visit(found.abspath, found.rel)
        else:
            yield found


def _read_small(f: Found) -> bytes | None:
    """A small file's bytes, or None when it vanished. Reads at most `SMALL_FILE` bytes, so a
    file growing without end cannot fill memory; one that outgrew the small-file size since
    the scan fails the put (nothing is committed) rather than being cut short."""
    try:
        fd = os.open(f.abspath, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        _warn(f"skipping {f.abspath}: it vanished during the put")
        return None
    except PermissionError as e:
        raise UsageError(f"cannot read {f.abspath}: {e.strerror}") from None
    try:
        # Sized by the scan's stat, not by the limit: a 1 MiB buffer per tiny file costs more
        # than reading it. A file that grew is read on, up to the limit.
        pieces = []
        got = 0
        want = min(f.st.st_size, SMALL_FILE) + 1
        while piece := os.read(fd, want):
            pieces.append(piece)
            got += len(piece)
            if got > SMALL_FILE:
                raise UsageError(f"{f.abspath} grew while it was being put: put again")
            want = SMALL_FILE + 1 - got
    finally:
        os.close(fd)
    return pieces[0] if len(pieces) == 1 else b"".join(pieces)


def _read_hashed(f: Found) -> tuple[bytes, bytes] | None:
    """A small file's bytes and digest, hashed by the reading thread (the cutting thread is the
    put's bottleneck)."""
    data = _read_small(f)
    return None if data is None else (data, blake3.blake3(data).digest())


def _stat_key(st: Stat) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


@dataclass(slots=True)
class _Item:
    """One path of the put, in path order: an entry ready to land, or a file being read."""

    path: str
    found: Found
    entry: Entry | None = None
    data: Pending | FileData | None = None


def _plan(
    store: Store, batch: list[Found], target: Callable[[str], str], report: SnapshotReport
) -> list[_Item]:
    """Entries for directories, symlinks and files the stat cache vouches for; the files left
    (without an entry) must be read. A stat-cache hit counts only if no chunk it names is
    doubted (checked for the whole batch at once), so a damaged chunk is re-read."""
    cached = store.index.get_stats([os.path.abspath(f.abspath) for f in batch])
    out: list[_Item] = []
    hits: list[tuple[_Item, bytes, tuple[ChunkRef, ...]]] = []
    for f, raw in zip(batch, cached):
        path = target(f.rel)
        check_path_limits(path)
        if f.kind is EntryType.DIR:
            out.append(_Item(path, f, dir_entry(path, f.st.st_mode, f.st.st_mtime_ns)))
            report.dirs += 1
            continue
        if f.kind is EntryType.SYMLINK:
            try:
                link = os.readlink(f.abspath)
            except FileNotFoundError:
                _warn(f"skipping {f.abspath}: it vanished during the put")
                continue
            entry = Entry(path, EntryType.SYMLINK, 0o777, 0, f.st.st_mtime_ns, target=link)
            out.append(_Item(path, f, entry))
            report.files += 1
            continue
        report.files += 1
        report.bytes += f.st.st_size
        item = _Item(path, f)
        out.append(item)
        if raw is not None:
            key, digest, chunks = msgpack.unpackb(raw)
            if key == _stat_key(f.st):
                refs = tuple(ChunkRef(c.hex(), o, n) for c, o, n in chunks)
                hits.append((item, digest, refs))
    bad = store.untrusted({r.id for *_, refs in hits for r in refs}, verify_unknown=False)
    for item, digest, refs in hits:
        if bad and any(r.id in bad for r in refs):
            continue
        st = item.found.st
        item.entry = Entry(
            item.path, EntryType.FILE, st.st_mode & 0o7777, st.st_size, st.st_mtime_ns, digest, refs
        )
    return out


def _batches(found: Iterable[Found], n: int) -> Iterator[list[Found]]:
    batch: list[Found] = []
    for f in found:
        batch.append(f)
        if len(batch) >= n:
            yield batch
            batch = []
    if batch:
        yield batch


class _Landing:
    """Where finished entries go, in path order: a tree built as they come (a mirroring put
    of a directory, so no entry is held once its node is written) or the change's puts.

    A packed small file is finished only once the chunks after it are cut, which for tiny
    files can be hundreds of thousands of files later: it waits as one packed record
    (about 250 bytes), not as objects."""

    def __init__(
        self,
        store: Store,
        changes: ChangeSet,
        packer: Packer,
        local: Callable[[str], str],
        grafted: bool,
    ) -> None:
        self.store = store
        self.changes = changes
        self.packer = packer
        self.local = local
        self.builder = tree.Builder(store) if grafted else None
        self.now = time.time()
        self.stat_rows: list[tuple[str, bytes]] = []
        #: `_Item`s, and (end in the pack stream, packed record) of packed small files.
        self.queue: deque[_Item | tuple[int, bytes]] = deque()

    def add(self, item: _Item) -> None:
        self.queue.append(item)

    def add_packed(self, item: _Item, span: tuple[int, int], digest: bytes) -> None:
        st = item.found.st
        rec = msgpack.packb(
            [
                item.path,
                st.st_mode,
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
                st.st_ctime_ns,
                digest,
                span[0],
            ]
        )
        self.queue.append((span[1], rec))

    def drain(self, report: SnapshotReport, wait: bool = False) -> None:
        """Land the items at the head of the queue that are finished (all of them with
        `wait`, once the pack stream is finished)."""
        q = self.queue
        while q:
            head = q[0]
            if isinstance(head, tuple):
                if head[0] > self.packer.done:
                    break
                self._land_packed(*q.popleft(), report)
            else:
                self._land(q.popleft(), report)
        if len(self.stat_rows) >= _STAT_BATCH or (wait and self.stat_rows):
            self.store.index.put_stats(self.stat_rows)
            self.stat_rows = []

    def _land_packed(self, end: int, rec: bytes, report: SnapshotReport) -> None:
        path, mode, size, mtime_ns, ino, ctime_ns, digest, start = msgpack.unpackb(rec)
        refs = tuple(ChunkRef(f.result(), off, n) for f, off, n in self.packer.refs(start, end))
        self.packer.release(end)
        st = Stat(mode, size, mtime_ns, ino, ctime_ns)
        self._file(path, st, FileData(end - start, digest, refs), report)

    def _land(self, item: _Item, report: SnapshotReport) -> None:
        if item.entry is not None:
            self._put(item.entry)
        elif item.data is not None:  # None: it vanished
            data = item.data.result() if isinstance(item.data, Pending) else item.data
            self._file(item.path, item.found.st, data, report)

    def _file(self, path: str, st: Stat, data: FileData, report: SnapshotReport) -> None:
        report.files_read += 1
        report.bytes_read += data.size
        self._put(
            Entry(
                path,
                EntryType.FILE,
                st.st_mode & 0o7777,
                data.size,
                st.st_mtime_ns,
                data.digest,
                data.chunks,
            )
        )
        if data.size == st.st_size and self.now - st.st_mtime_ns / 1e9 > _RACY_S:
            chunks = [[bytes.fromhex(c.id), c.offset, c.length] for c in data.chunks]
            row = msgpack.packb([_stat_key(st), data.digest, chunks])
            self.stat_rows.append((self.local(path), row))

    def _put(self, entry: Entry) -> None:
        if self.builder is not None:
            self.builder.add_entry(entry)
        else:
            self.changes.puts[entry.path] = entry

    def finish(self, dest: str) -> None:
        if self.builder is not None:
            self.changes.graft = Graft(dest, self.builder.finish())


def _read_into(
    landing: _Landing,
    chunker: Chunker,
    items: list[_Item],
    readers: ThreadPoolExecutor,
    store: Store,
    base: TreeView,
    progress: Callable[[int], None] | None,
) -> None:
    """Read every item of a batch that has no entry yet and queue the batch for landing:
    small files (read ahead by `readers`) go into the shared pack stream, large ones are cut
    on their own."""
    small = [it for it in items if it.entry is None and it.found.st.st_size < SMALL_FILE]
    # Reads go to the pool a group at a time: one hand-off per group, not per tiny file.
    groups = [small[i : i + _READ_GROUP] for i in range(0, len(small), _READ_GROUP)]
    read = ordered_map(readers, lambda g: [_read_hashed(it.found) for it in g], groups, _READERS)
    contents = (data for group in read for data in group)
    for it in items:
        f = it.found
        if it.entry is not None:
            pass
        elif f.st.st_size >= SMALL_FILE:
            try:
                it.data = chunker.add_file(f.abspath)
            except FileNotFoundError:
                _warn(f"skipping {f.abspath}: it vanished during the put")
            except PermissionError as e:
                raise UsageError(f"cannot read {f.abspath}: {e.strerror}") from None
        else:
            read = next(contents)
            if read is not None:
                data, digest = read
                # A small file whose bytes equal what the branch has at that path keeps its
                # old chunk slices, so re-putting without a stat cache never re-packs it.
                old = base.lookup(it.path)
                if (
                    old is not None
                    and old.is_file
                    and old.size == len(data)
                    and old.digest == digest
                    and store.trust(old.chunks)
                ):
                    it.data = FileData(old.size, digest, old.chunks)
                    if progress:
                        progress(len(data))
                else:
                    landing.add_packed(it, landing.packer.add(data), digest)
                    continue
        landing.add(it)


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

    The directory is read in path order, a batch of entries at a time, and a mirroring put
    lands as a graft: a tree built as entries finish, so memory does not grow with the number
    of files. `on_total` is told the bytes of each batch that must be read, as they are known.
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
    is_dir = source.is_dir() and not source.is_symlink()
    found: Iterable[Found]
    if is_dir:
        found = scan(source)
        root_st = source.stat()
        if dest:
            changes.puts[dest] = dir_entry(dest, root_st.st_mode, root_st.st_mtime_ns)
    else:
        kind = EntryType.SYMLINK if source.is_symlink() else EntryType.FILE
        found = [Found("", str(source), Stat.of(source.lstat()), kind)]

    def target(rel: str) -> str:
        return f"{dest}/{rel}" if dest and rel else (rel or dest)

    src = os.path.abspath(source)

    def local(path: str) -> str:
        rel = path[len(dest) + 1 :] if dest else path
        return os.path.join(src, rel) if rel and is_dir else src

    total = 0
    with (
        Chunker(store, progress) as chunker,
        ThreadPoolExecutor(_READERS, thread_name_prefix="cowfs-read") as readers,
    ):
        landing = _Landing(store, changes, chunker.packer(), local, is_dir and mirror)
        for batch in _batches(found, _BATCH):
            items = _plan(store, batch, target, report)
            if on_total:
                total += sum(it.found.st.st_size for it in items if it.entry is None)
                on_total(total)
            _read_into(landing, chunker, items, readers, store, base, progress)
            landing.drain(report)
        landing.packer.finish()
        chunker.wait()
        landing.drain(report, wait=True)
    landing.finish(dest)
    if mirror and is_dir and landing.builder is None:
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
