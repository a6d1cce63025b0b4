"""Writing a commit (or a path in it) back to a local directory, byte for byte."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from cowfs.entries import Entry, EntryType
from cowfs.errors import CorruptObject, NotFound, UsageError
from cowfs.names import normalize_path
from cowfs.reader import ChunkReader
from cowfs.tree import TreeView


@dataclass
class ExportReport:
    files: int = 0
    dirs: int = 0
    bytes: int = 0


def write_file(reader: ChunkReader, entry: Entry, target: Path) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
    if target.is_symlink():
        target.unlink()
    fd = os.open(target, flags, entry.mode & 0o7777 or 0o644)
    try:
        with os.fdopen(fd, "wb", closefd=False) as f:
            for piece in reader.iter_file(entry):
                f.write(piece)
        os.fchmod(fd, entry.mode & 0o7777)
        os.utime(fd, ns=(entry.mtime_ns, entry.mtime_ns))
    finally:
        os.close(fd)


def export(
    view: TreeView,
    reader: ChunkReader,
    path: str,
    dest: Path,
    progress: Callable[[int], None] | None = None,
) -> ExportReport:
    """Recreate `path` of a tree at `dest`. Names are re-checked on the way out, so even a
    hand-crafted tree can never write outside `dest` or through a symlink it created."""
    progress = progress or (lambda n: None)
    report = ExportReport()
    top = view.lookup(path) if path else None
    if path and top is None:
        raise NotFound(f"no such path /{path}")
    if top is not None and not top.is_dir:
        target = dest / Path(path).name if dest.is_dir() else dest
        _write_one(reader, top, target, report, progress)
        return report

    dest.mkdir(parents=True, exist_ok=True)
    made: set[str] = {""}
    dirs: list[tuple[Path, Entry]] = []
    for entry in _relative(view.walk(path), path):
        rel = entry.path
        parent = rel.rpartition("/")[0]
        if parent not in made:
            raise CorruptObject(f"tree is malformed: /{rel} has no parent directory")
        target = dest / rel
        if entry.is_dir:
            target.mkdir(exist_ok=True)
            made.add(rel)
            dirs.append((target, entry))
            report.dirs += 1
        else:
            _write_one(reader, entry, target, report, progress)
    for target, entry in reversed(dirs):
        os.chmod(target, entry.mode & 0o7777 or 0o755)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns))
    return report


def _relative(entries: Iterator[Entry], path: str) -> Iterator[Entry]:
    for e in entries:
        if e.path == path:
            continue
        rel = e.path[len(path) + 1 :] if path else e.path
        if normalize_path(rel) != rel:
            raise UsageError(f"refusing to write {e.path!r}: not a clean relative path")
        yield e.with_path(rel)


def _write_one(
    reader: ChunkReader,
    entry: Entry,
    target: Path,
    report: ExportReport,
    progress: Callable[[int], None],
) -> None:
    if entry.type is EntryType.SYMLINK:
        if target.is_symlink() or target.exists():
            target.unlink()
        os.symlink(entry.target or "", target)
        os.utime(target, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
    else:
        write_file(reader, entry, target)
        report.bytes += entry.size
        progress(entry.size)
    report.files += 1
