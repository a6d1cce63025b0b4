"""The read side of `cowfs://`: paths, listings, ranges, digests (see `cowfs.filesystem`)."""

from __future__ import annotations

import errno
import os
import threading
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fsspec.callbacks import DEFAULT_CALLBACK
from fsspec.spec import AbstractFileSystem
from fsspec.utils import stringify_path

from cowfs.api import DEFAULT_HEAD_TTL, Client, connect
from cowfs.commits import Commit
from cowfs.entries import Entry, EntryType
from cowfs.errors import CowfsError
from cowfs.export import write_file
from cowfs.fsspec_parts import as_os_error
from cowfs.fsspec_parts import os_errors as _os_errors
from cowfs.names import normalize_path
from cowfs.refs import Ref, parse_ref

PROTOCOL = "cowfs"
_TYPES = {EntryType.FILE: "file", EntryType.DIR: "directory", EntryType.SYMLINK: "link"}


class CowReader(AbstractFileSystem):
    """Everything of `CowFileSystem` that only reads."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self,
        store: str | None = None,
        head_ttl: float = DEFAULT_HEAD_TTL,
        message: str = "",
        **kwargs: Any,
    ) -> None:
        """`head_ttl`: seconds a branch head is trusted before it is read again (this
        filesystem's own commits are seen at once). `message`: the message of its commits."""
        super().__init__(store=store, head_ttl=head_ttl, message=message, **kwargs)
        self.store = store
        self.head_ttl = head_ttl
        self.message = message
        self.last_commits: list[Commit] = []
        self._client: Client | None = None
        self._client_lock = threading.Lock()
        self._local = threading.local()

    @property
    def client(self) -> Client:
        """The connection, opened on first use and again in a forked child (DataLoader
        workers), which must not share the parent's LMDB handle or HTTP connections."""
        c = self._client
        if c is None or c.pid != os.getpid():
            with self._client_lock:
                c = self._client
                if c is None or c.pid != os.getpid():
                    c = self._client = connect(self.store, head_ttl=self.head_ttl)
        return c

    def close(self) -> None:
        if self._client is not None and self._client.pid == os.getpid():
            self._client.close()
        self._client = None

    # --- paths ---------------------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: Any) -> Any:
        if isinstance(path, list):
            return [cls._strip_protocol(p) for p in path]
        path = stringify_path(path)
        for prefix in (f"{PROTOCOL}://", f"{PROTOCOL}::"):
            if path.startswith(prefix):
                path = path[len(prefix) :]
        path = path.strip("/")
        first, sep, rest = path.partition("/")
        if first and "@" not in first:
            first += "@main"
        return first + sep + rest

    @staticmethod
    def _get_kwargs_from_urls(path: str) -> dict[str, Any]:
        return {}

    def _split(self, path: str) -> tuple[str, Ref]:
        """("repo@rev" as written, the ref with its path). The root "" is not a ref."""
        path = self._strip_protocol(path)
        first, _, rest = path.partition("/")
        if not first:
            raise FileNotFoundError(errno.ENOENT, "the root of cowfs:// lists repos only")
        ref = parse_ref(first, allow_path=False)
        return first, replace(ref, path=normalize_path(rest), has_path=True)

    def _lookup(self, path: str) -> tuple[str, Commit, Entry]:
        first, ref = self._split(path)
        commit, entry = self.client.entry(ref)
        return first, commit, entry

    def _info(self, first: str, commit: Commit, e: Entry) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": f"{first}/{e.path}" if e.path else first,
            "size": e.size,
            "type": _TYPES[e.type],
            "mode": e.st_mode,
            "mtime": e.mtime_ns / 1e9,
            "commit": commit.id,
        }
        if e.digest:
            out["digest"] = out["ETag"] = e.digest.hex()
        if e.target is not None:
            out["destination"] = e.target
        return out

    # --- reading -------------------------------------------------------------------------------

    @_os_errors
    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list:
        path = self._strip_protocol(path)
        if not path:
            out = [
                {"name": f"{repo}@{branch}", "size": 0, "type": "directory"}
                for repo in self.client.repos()
                for branch in sorted(self.client.branches(repo))
            ]
        else:
            first, commit, top = self._lookup(path)
            if top.is_dir:
                children = self.client.lake.list_dir(commit, top.path)
                out = [self._info(first, commit, e) for e in children]
            else:
                out = [self._info(first, commit, top)]
        return out if detail else [o["name"] for o in out]

    @_os_errors
    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        if not path:
            return {"name": "", "size": 0, "type": "directory"}
        return self._info(*self._lookup(path))

    @_os_errors
    def find(
        self,
        path: str,
        maxdepth: int | None = None,
        withdirs: bool = False,
        detail: bool = False,
        **kwargs: Any,
    ) -> Any:
        """One walk of one commit's tree, not a listing per directory."""
        path = self._strip_protocol(path)
        if not path:
            return super().find(path, maxdepth, withdirs, detail, **kwargs)
        try:
            first, commit, top = self._lookup(path)
        except FileNotFoundError:
            return {} if detail else []
        out: dict[str, dict[str, Any]] = {}
        if not top.is_dir:
            out[self._info(first, commit, top)["name"]] = self._info(first, commit, top)
        else:
            depth0 = top.path.count("/") + 1 if top.path else 0
            for e in self.client.lake.walk(commit, top.path):
                if e.path == top.path:
                    if withdirs and top.path:
                        out[path] = self._info(first, commit, e)
                    continue
                if maxdepth is not None and e.path.count("/") + 1 - depth0 > maxdepth:
                    continue
                if e.is_dir and not withdirs:
                    continue
                info = self._info(first, commit, e)
                out[info["name"]] = info
        names = sorted(out)
        return {n: out[n] for n in names} if detail else names

    @_os_errors
    def cat_file(
        self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any
    ) -> bytes:
        _, _, e = self._lookup(path)
        return self._read(path, e, start, end)

    def _read(self, path: str, e: Entry, start: int | None, end: int | None) -> bytes:
        if e.is_dir:
            raise IsADirectoryError(errno.EISDIR, f"{path} is a directory")
        size = e.size
        start = 0 if start is None else (max(0, size + start) if start < 0 else start)
        end = size if end is None else (max(0, size + end) if end < 0 else min(end, size))
        return self.client.read_entry(e, start, end) if end > start else b""

    @_os_errors
    def cat_ranges(
        self,
        paths: list[str],
        starts: int | list[int],
        ends: int | list[int],
        max_gap: int | None = None,
        on_error: str = "return",
        **kwargs: Any,
    ) -> list:
        """Many ranges, each file looked up once however many ranges it has."""
        if not isinstance(starts, list):
            starts = [starts] * len(paths)
        if not isinstance(ends, list):
            ends = [ends] * len(paths)
        if len(starts) != len(paths) or len(ends) != len(paths):
            raise ValueError("cat_ranges needs as many starts and ends as paths")
        entries: dict[str, Entry] = {}
        out: list = []
        for p, s, e in zip(paths, starts, ends):
            try:
                if p not in entries:
                    entries[p] = self._lookup(p)[2]
                out.append(self._read(p, entries[p], s, e))
            except Exception as ex:
                if on_error != "return":
                    raise as_os_error(ex) if isinstance(ex, CowfsError) else ex from None
                out.append(as_os_error(ex) if isinstance(ex, CowfsError) else ex)
        return out

    @_os_errors
    def get_file(
        self, rpath: str, lpath: Any, callback: Any = DEFAULT_CALLBACK, outfile: Any = None, **kw
    ) -> None:
        _, _, e = self._lookup(rpath)
        if e.is_dir:
            os.makedirs(lpath, exist_ok=True)
            return
        callback.set_size(e.size)
        if outfile is not None or not isinstance(lpath, (str, os.PathLike)):
            f = outfile if outfile is not None else lpath
            for piece in self.client.reader.iter_file(e):
                f.write(piece)
        else:
            os.makedirs(os.path.dirname(os.path.abspath(lpath)), exist_ok=True)
            write_file(self.client.reader, e, Path(lpath))
        callback.relative_update(e.size)

    @_os_errors
    def checksum(self, path: str) -> int:
        """The content digest (BLAKE3) as an int: equal content, equal checksum."""
        info = self.info(path)
        if "digest" in info:
            return int(info["digest"], 16)
        return super().checksum(path)

    @_os_errors
    def ukey(self, path: str) -> str:
        info = self.info(path)
        return info.get("digest") or super().ukey(path)

    @_os_errors
    def modified(self, path: str) -> datetime:
        return datetime.fromtimestamp(self.info(path)["mtime"], tz=timezone.utc)
