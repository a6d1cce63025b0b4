"""What a branch open for writing shows: its base commit's tree with the staged records over it.

A path with a record shows the record (a whiteout: nothing). A path without one shows the base
entry, unless an ancestor is hidden (a whiteout, or a directory made again, "opaque"). A
directory lists the base's children where the base shows through, with the staged children
replacing or removing names. Reading a staged file takes overlay bytes inside its `ranges`, base
bytes below `base_len`, and zeros everywhere else.
"""

from __future__ import annotations

import os
from pathlib import Path

from cowfs.entries import Entry, dir_entry
from cowfs.names import ancestors, basename, parent_of
from cowfs.reader import ChunkReader
from cowfs.staging_records import DIR, ORPHAN, WHITEOUT, Rec
from cowfs.store import Store
from cowfs.tree import TreeView

#: Overlay files kept open at once.
_MAX_FDS = 256


class StagedTree:
    """The in-memory index of the records and the union view over the base. Not locked: the
    staging area that owns it serialises every caller."""

    def __init__(self, store: Store, base_tree: str, data_dir: Path) -> None:
        self.store = store
        self.view = TreeView(store, base_tree)
        self.data_dir = data_dir
        self.recs: dict[str, Rec] = {}
        self.children: dict[str, set[str]] = {}
        self.hidden: set[str] = set()
        #: Files unlinked (or replaced) while open, keyed by `ORPHAN` + n: their handles go on
        #: reading and writing them, but no lookup, listing or commit sees them.
        self.orphans: dict[str, Rec] = {}
        #: The view root's mtime: a commit has no entry for its root, so it lives in memory.
        self.root_mtime_ns = 0
        #: Bytes of inline data (`Rec.data`) the indexed records hold.
        self.inline_bytes = 0
        self._fds: dict[int, int] = {}
        self._data = str(data_dir)

    # --- the index -------------------------------------------------------------------------

    def index(self, path: str, rec: Rec) -> None:
        old = self.recs.get(path)
        if old is not None and old.data is not None:
            self.inline_bytes -= len(old.data)
        if rec.data is not None:
            self.inline_bytes += len(rec.data)
        self.recs[path] = rec
        self.children.setdefault(parent_of(path), set()).add(basename(path))
        if rec.kind == WHITEOUT or (rec.kind == DIR and rec.opaque):
            self.hidden.add(path)
        else:
            self.hidden.discard(path)

    def unindex(self, path: str) -> None:
        rec = self.recs.pop(path, None)
        if rec is None:
            return
        if rec.data is not None:
            self.inline_bytes -= len(rec.data)
        self.hidden.discard(path)
        kids = self.children.get(parent_of(path))
        if kids is not None:
            kids.discard(basename(path))
            if not kids:
                del self.children[parent_of(path)]

    def clear_index(self, store: Store, base_tree: str) -> None:
        self.recs.clear()
        self.inline_bytes = 0
        self.children.clear()
        self.hidden.clear()
        self.view = TreeView(store, base_tree)

    def rec(self, path: str) -> Rec | None:
        return self.orphans.get(path) if path.startswith(ORPHAN) else self.recs.get(path)

    # --- the union -------------------------------------------------------------------------

    def hidden_above(self, path: str) -> bool:
        return any(a in self.hidden for a in ancestors(path)) if self.hidden else False

    def base_lookup(self, path: str) -> Entry | None:
        if self.hidden_above(path):
            return None
        return self.view.lookup(path)

    def base_shows_under(self, path: str) -> bool:
        """Whether the base's contents of directory `path` show through."""
        if not path:
            return True
        rec = self.recs.get(path)
        if rec is not None and (rec.kind != DIR or rec.opaque):
            return False
        if self.hidden_above(path):
            return False
        e = self.view.lookup(path)
        return e is not None and e.is_dir

    def entry_at(self, path: str) -> Entry | None:
        if not path:
            return dir_entry("", 0o755, self.root_mtime_ns)
        rec = self.rec(path)
        if rec is not None:
            return None if rec.kind == WHITEOUT else rec.entry(path)
        return self.base_lookup(path)

    def children_of(self, path: str) -> list[Entry]:
        out: dict[str, Entry] = {}
        if self.base_shows_under(path):
            for e in self.view.list_dir(path):
                out[basename(e.path)] = e
        prefix = path + "/" if path else ""
        for name in self.children.get(path, ()):
            r = self.recs[prefix + name]
            if r.kind == WHITEOUT:
                out.pop(name, None)
            else:
                out[name] = r.entry(prefix + name)
        return [out[k] for k in sorted(out)]

    # --- file bytes ------------------------------------------------------------------------

    def read_rec(self, rec: Rec, offset: int, size: int, reader: ChunkReader) -> bytes:
        end = min(offset + size, rec.size)
        if offset >= end:
            return b""
        parts: list[bytes] = []
        pos = offset
        for s, e in rec.ranges:
            if e <= pos:
                continue
            if s >= end:
                break
            if s > pos:
                parts.append(self._read_base(rec, pos, s - pos, reader))
                pos = s
            take = min(e, end) - pos
            parts.append(self._read_overlay(rec, pos, take))
            pos += take
        if pos < end:
            parts.append(self._read_base(rec, pos, end - pos, reader))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _read_base(self, rec: Rec, offset: int, size: int, reader: ChunkReader) -> bytes:
        data = b""
        if offset < rec.base_len:
            data = reader.read(rec.base_entry(), offset, min(size, rec.base_len - offset))
        return data + bytes(size - len(data))

    def _read_overlay(self, rec: Rec, offset: int, size: int) -> bytes:
        if rec.data is not None:
            data = rec.data[offset : offset + size]
        else:
            data = os.pread(self.fd(rec.overlay), size, offset)
        return data + bytes(size - len(data))

    def fd(self, overlay: int | None, fresh: bool = False) -> int:
        """The open overlay file; `fresh` empties it (a new number may meet a file that an
        operation which failed, or a crash, left behind)."""
        assert overlay is not None
        fd = self._fds.get(overlay)
        if fd is None:
            flags = os.O_RDWR | os.O_CREAT | (os.O_TRUNC if fresh else 0)
            fd = os.open(os.path.join(self._data, str(overlay)), flags, 0o600)
            if len(self._fds) >= _MAX_FDS:
                os.close(self._fds.pop(next(iter(self._fds))))
            self._fds[overlay] = fd
        elif fresh:
            os.ftruncate(fd, 0)
        return fd

    def unlink_overlay(self, overlay: int) -> None:
        if any(r.overlay == overlay for r in self.orphans.values()):
            return  # an open handle still reads and writes it
        fd = self._fds.pop(overlay, None)
        if fd is not None:
            os.close(fd)
        try:
            os.unlink(self.data_dir / str(overlay))
        except FileNotFoundError:
            pass

    def close_fds(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    def overlays_on_disk(self) -> list[int]:
        return [int(f.name) for f in self.data_dir.iterdir() if f.name.isdigit()]
