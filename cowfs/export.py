"""Writing a commit (or a path in it) back to a local directory, byte for byte."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from cowfs.entries import Entry, EntryType
from cowfs.errors import CorruptObject, NameTooLong, NotFound, ObjectMissing, UsageError
from cowfs.names import check_component, normalize_path
from cowfs.reader import ChunkReader
from cowfs.tree import TreeView


@dataclass
class ExportReport:
    files: int = 0
    dirs: int = 0
    bytes: int = 0
    #: "/path: why" for each path that could not be restored (a damaged or missing chunk, a
    #: name this filesystem refuses); everything else was restored.
    damaged: list[str] = field(default_factory=list)


def write_file(reader: ChunkReader, entry: Entry, target: Path) -> None:
    """Write a file whole or not at all: into a temporary name beside it, renamed over the
    target only once every chunk was read and verified, so damage never leaves a short file."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_EXCL
    tmp = target.with_name(f".{target.name[:200]}.cowfs-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for piece in reader.iter_file(entry):
                f.write(piece)
        os.fchmod(fd, entry.mode & 0o7777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    if target.is_symlink():
        target.unlink()
    os.replace(tmp, target)


def export(
    view: TreeView,
    reader: ChunkReader,
    path: str,
    dest: Path,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Recreate `path` of a tree at `dest`. Names are re-checked on the way out, so even a
    hand-crafted tree can never write outside `dest` or through a symlink it created.

    Damage is contained to the paths it touches: a file with a damaged or missing chunk, or a
    name over the lake's limits (committed before they were enforced), is listed in the
    report's `damaged` and skipped, and every other path is restored."""
    progress = progress or (lambda n: None)
    report = ExportReport()
    top = view.lookup(path) if path else None
    if path and top is None:
        raise NotFound(f"no such path /{path}")
    if top is not None and not top.is_dir:
        target = dest / Path(path).name if dest.is_dir() else dest
        _write_one(reader, top, target, report, progress, "/" + path)
        return report

    dest.mkdir(parents=True, exist_ok=True)
    made: set[str] = {""}
    skipped: set[str] = set()
    dirs: list[tuple[Path, Entry]] = []
    for entry in _relative(view.walk(path), path):
        rel = entry.path
        shown = f"/{path}/{rel}" if path else f"/{rel}"
        parent = rel.rpartition("/")[0]
        if parent in skipped:
            if entry.is_dir:
                skipped.add(rel)
            continue
        if parent not in made:
            raise CorruptObject(f"tree is malformed: /{rel} has no parent directory")
        try:
            check_component(rel.rpartition("/")[2])
        except NameTooLong as e:
            report.damaged.append(f"{shown[:80]}...: not restored, {e}")
            if entry.is_dir:
                skipped.add(rel)
            continue
        target = dest / rel
        if entry.is_dir:
            try:
                target.mkdir(exist_ok=True)
            except OSError as e:
                report.damaged.append(f"{shown}: not restored, {e.strerror}")
                skipped.add(rel)
                continue
            made.add(rel)
            dirs.append((target, entry))
            report.dirs += 1
        else:
            _write_one(reader, entry, target, report, progress, shown)
    for target, entry in reversed(dirs):
        os.chmod(target, entry.mode & 0o7777 or 0o755)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
    return report


def _relative(entries: Iterator[Entry], path: str) -> Iterator[Entry]:
    for e in entries:
        if e.path == path:
            continue
        rel = e.path[len(path) + 1 :] if path else e.path
        try:
            clean = normalize_path(rel)
        except NameTooLong:
            clean = rel  # limits are checked per name by the caller, which skips and reports
        if clean != rel:
            raise UsageError(f"refusing to write {e.path!r}: not a clean relative path")
        yield e.with_path(rel)


def _write_one(
    reader: ChunkReader,
    entry: Entry,
    target: Path,
    report: ExportReport,
    progress: Callable[[int], None],
    shown: str,
) -> None:
    try:
        if entry.type is EntryType.SYMLINK:
            if target.is_symlink() or target.exists():
                target.unlink()
            os.symlink(entry.target or "", target)
            os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
        else:
            write_file(reader, entry, target)
            report.bytes += entry.size
            progress(entry.size)
    except (CorruptObject, ObjectMissing) as e:
        report.damaged.append(f"{shown}: not restored, {e}")
        return
    except OSError as e:
        if e.errno not in (errno.ENAMETOOLONG, errno.EINVAL, errno.EILSEQ):
            raise
        report.damaged.append(f"{shown}: not restored, {e.strerror}")
        return
    report.files += 1
