"""The FUSE filesystem: repos, branches, commits and global IDs as directories.

    /MNT/<repo>/<branch>/…          the branch head (writable while `cowfs write` has it open)
    /MNT/<repo>/@<commit-id>/…      any commit, immutable (resolved on lookup, never listed)
    /MNT/.ids/<global-id>/<repo>/…  every commit sharing one global ID

Every handler runs on the trio loop; anything that may touch the object store (tree nodes,
chunks, refs) runs in a worker thread so one slow fetch never stalls the mount. Every error is
answered with an errno: `CowfsError`s carry theirs, anything else is logged and becomes EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyfuse3
import trio

from cowfs.commits import Commit
from cowfs.entries import Entry
from cowfs.errors import CowfsError, NotFound, UsageError
from cowfs.lake import Lake
from cowfs.names import MAX_NAME_BYTES, check_component, check_name, check_path_limits
from cowfs.staging import ORPHAN, Staging, StagingError, list_areas
from cowfs.staging_commit import open_write, seal
from daemon import attrs
from daemon.inodes import ROOT, InodeTable, Node
from daemon.metrics_fuse import FUSE_ERRORS, FUSE_OPS, FUSE_SECONDS
from daemon.reader import MountReader
from daemon.views import View, commit_view, write_view

log = logging.getLogger("cowfs.mount")

IDS = ".ids"
#: Chunks fetched ahead of a sequential reader, and ahead of a walk through a directory.
READAHEAD = 16
DIR_READAHEAD = 24
#: How stale a branch head may be when a lookup resolves the branch directory.
HEAD_FRESH_S = 0.3
POLL_S = 1.0
#: A view no inode or handle has used for this long is dropped from `CowFS.views` (its caches
#: with it); the sweep runs every `SWEEP_S`.
VIEW_IDLE_S = 60.0
SWEEP_S = 10.0
#: A branch directory not looked up for this long is no longer polled for head moves: its
#: dentry (valid `attrs.BRANCH` seconds) has long expired, so the next walk looks it up anew.
WATCH_IDLE_S = 60.0

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _op(name: str) -> Callable[[F], F]:
    """Count and time a handler, and turn every failure into an errno the kernel understands."""

    def wrap(fn: F) -> F:
        @functools.wraps(fn)
        async def handler(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            FUSE_OPS.labels(name).inc()
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError as e:
                FUSE_ERRORS.labels(name, errno.errorcode.get(e.errno, str(e.errno))).inc()
                raise
            except CowfsError as e:
                code = getattr(e, "errno", errno.EIO) or errno.EIO
                FUSE_ERRORS.labels(name, errno.errorcode.get(code, str(code))).inc()
                if code == errno.EIO:
                    log.warning("%s failed: %s", name, e)
                raise pyfuse3.FUSEError(code) from None
            except OSError as e:
                code = e.errno or errno.EIO
                log.warning("%s failed: %s", name, e)
                FUSE_ERRORS.labels(name, errno.errorcode.get(code, str(code))).inc()
                raise pyfuse3.FUSEError(code) from None
            except Exception:
                log.exception("%s failed", name)
                FUSE_ERRORS.labels(name, "EIO").inc()
                raise pyfuse3.FUSEError(errno.EIO) from None
            finally:
                FUSE_SECONDS.labels(name).observe(time.perf_counter() - t0)

        return handler  # type: ignore[return-value]

    return wrap


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _name(raw: bytes) -> str:
    """A name the tree can hold; anything else cannot exist here (one over the lake's limit
    is ENAMETOOLONG, as on any Linux filesystem)."""
    check_component(raw)
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise _err(errno.ENOENT) from None
    if name in ("", ".", "..") or "/" in name or "\x00" in name:
        raise _err(errno.ENOENT)
    return name


def _join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


@dataclass(eq=False)
class Handle:
    node: Node
    view: View | None
    #: The entry a read-only handle was opened on: it reads that even after the head moves.
    entry: Entry | None = None
    writable: bool = False
    #: Opened on a writable view: reads follow the view (staged, then the head it froze onto).
    live: bool = False
    next_off: int = 0
    last_chunk: int = -1
    listing: list[tuple[bytes, Any]] = field(default_factory=list)


@dataclass
class WriteSession:
    staging: Staging
    epoch: int


class CowFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, lake: Lake, readers: int = 16) -> None:
        super().__init__()
        self.lake = lake
        self.reader = MountReader(lake.store, workers=readers)
        self.table = InodeTable()
        self.owner = attrs.Owner.current()
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.views: dict[tuple, View] = {}
        #: view key -> when a lookup or a kernel reference last used it (`_sweep_views`).
        self._used: dict[tuple, float] = {}
        #: (repo, branch) -> (head commit id or None, when checked)
        self.heads: dict[tuple[str, str], tuple[str | None, float]] = {}
        #: Branch directories the kernel may hold: (repo, branch) -> (repo inode, last lookup).
        self.watched: dict[tuple[str, str], tuple[int, float]] = {}
        self.writes: dict[tuple[str, str], WriteSession] = {}
        self._epoch = 0
        self._repos_ok: dict[str, float] = {}
        self.write_lock = trio.Lock()
        for repo, branch in list_areas(lake.url):
            try:
                self._open_session(Staging.open(lake.store, lake.url, repo, branch))
            except CowfsError as e:
                log.warning("cannot reopen staged writes of %s@%s: %s", repo, branch, e)

    def close(self) -> None:
        for s in self.writes.values():
            s.staging.close()
        self.writes.clear()
        self.reader.close()

    # --- helpers -------------------------------------------------------------------------------

    def _node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def _new_fh(self, h: Handle) -> int:
        fh = self._next_fh
        self._next_fh += 1
        self.handles[fh] = h
        h.node.opens += 1
        return fh

    def _open_session(self, staging: Staging) -> WriteSession:
        self._epoch += 1
        s = WriteSession(staging, self._epoch)
        self.writes[(staging.repo, staging.branch)] = s
        return s

    async def _entry(self, node: Node) -> Entry:
        view: View = node.view
        e = view.cached(node.path)
        if e is None:
            e = await trio.to_thread.run_sync(view.lookup, node.path)
        if e is None:
            raise _err(errno.ENOENT)
        return e

    def _timeouts(self, node: Node) -> tuple[float, float]:
        view: View = node.view
        if view.writable:
            return (attrs.BRANCH if not node.path else attrs.WRITABLE), attrs.WRITABLE
        if not node.path and view.key[0] in "bw":
            # "w" here: a write view frozen onto the head when its session ended.
            return attrs.BRANCH, attrs.FOREVER
        return attrs.FOREVER, attrs.FOREVER

    async def _attr(self, node: Node, entry: Entry | None = None) -> pyfuse3.EntryAttributes:
        if node.kind == "root":
            return attrs.dir_attr(node.ino, self.owner, attrs.LISTING)
        if node.kind != "view":
            return attrs.dir_attr(node.ino, self.owner, attrs.LISTING, 0o555)
        e = entry or await self._entry(node)
        et, at = self._timeouts(node)
        a = attrs.entry_attr(node.ino, e, self.owner, et, at)
        if node.extra.get("unlinked"):
            a.st_nlink = 0  # fstat of a file deleted while open, as POSIX has it
        return a

    async def _repo_exists(self, name: str) -> bool:
        try:
            check_name(name, "repo name")
        except UsageError:
            return False
        if time.monotonic() - self._repos_ok.get(name, -1e9) < attrs.LISTING:
            return True
        try:
            await trio.to_thread.run_sync(self.lake.repo, name)
        except NotFound:
            return False
        self._repos_ok[name] = time.monotonic()
        return True

    async def _head(self, repo: str, branch: str, fresh: float = HEAD_FRESH_S) -> str | None:
        cached = self.heads.get((repo, branch))
        if cached is not None and time.monotonic() - cached[1] < fresh:
            return cached[0]
        cid = await trio.to_thread.run_sync(self.lake.head_id, repo, branch)
        self.heads[(repo, branch)] = (cid, time.monotonic())
        return cid

    async def _branch_view(self, repo: str, branch: str) -> View | None:
        s = self.writes.get((repo, branch))
        if s is not None:
            key: tuple = ("w", repo, branch, s.epoch)
            view = self.views.get(key)
            if view is None:
                view = self.views[key] = write_view(key, s.staging)
            return self._use(view)
        cid = await self._head(repo, branch)
        if cid is None:
            return None
        key = ("b", repo, branch, cid)
        view = self.views.get(key)
        if view is None:
            commit = await trio.to_thread.run_sync(self.lake.get_commit, repo, cid)
            view = self.views[key] = commit_view(key, self.lake.store, commit, branch)
            # The head's previous view lives on only in the inodes and handles that hold it.
            for k in [k for k in self.views if k[:3] == ("b", repo, branch) and k != key]:
                self._drop_view(k)
        return self._use(view)

    def _use(self, view: View) -> View:
        self._used[view.key] = time.monotonic()
        return view

    def _drop_view(self, key: tuple) -> None:
        self.views.pop(key, None)
        self._used.pop(key, None)

    async def _commit_view(self, repo: str, ident: str) -> View | None:
        # Keyed by the full id, so every prefix of one commit shares one view (and its inodes).
        view = self.views.get(("c", repo, ident))
        if view is None:
            try:
                commit = await trio.to_thread.run_sync(self.lake.find_commit, repo, ident)
            except (UsageError, NotFound):
                return None
            if commit is None:
                return None
            key = ("c", repo, commit.id)
            view = self.views.get(key)
            if view is None:
                view = self.views[key] = commit_view(key, self.lake.store, commit)
        return self._use(view)

    async def _gid_repos(self, gid: str) -> dict[str, Commit]:
        """Per repo, the commit `/.ids/<gid>/<repo>` shows: a repo may hold several commits of
        one global ID (failed pipeline runs carry it too), so the newest finished one, else the
        newest of the others."""
        best: dict[str, Commit] = {}
        for c in await self._gid_commits(gid):
            cur = best.get(c.repo)
            if cur is None or _rank(c) > _rank(cur):
                best[c.repo] = c
        return best

    async def _gid_commits(self, gid: str) -> list[Commit]:
        try:
            check_name(gid, "global id")
        except UsageError:
            return []
        return await trio.to_thread.run_sync(self.lake.inspect, gid)

    def _view_root(self, view: View, parent: int, name: bytes) -> Node:
        node = self.table.ensure((view.key, ""), "view", view, "", parent, name)
        if view.branch is not None and view.key[0] in "bw":
            self.watched[(view.repo, view.branch)] = (parent, time.monotonic())
        return node

    # --- lookup and attributes -----------------------------------------------------------------

    async def _resolve(self, parent: Node, raw: bytes) -> tuple[Node, Entry | None]:
        name = _name(raw)
        if parent.kind == "root":
            if name == IDS:
                return self.table.ensure(("ids",), "ids"), None
            if not await self._repo_exists(name):
                raise _err(errno.ENOENT)
            return self.table.ensure(("repo", name), "repo", path=name), None
        if parent.kind == "ids":
            if not await self._gid_commits(name):
                raise _err(errno.ENOENT)
            return self.table.ensure(("gid", name), "gid", path=name), None
        if parent.kind == "repo":
            repo = parent.path
            if name.startswith("@"):
                view = await self._commit_view(repo, name[1:])
            else:
                try:
                    check_name(name, "branch name")
                except UsageError:
                    raise _err(errno.ENOENT) from None
                view = await self._branch_view(repo, name)
            if view is None:
                raise _err(errno.ENOENT)
            return self._view_root(view, parent.ino, raw), None
        if parent.kind == "gid":
            key = ("g", parent.path, name)
            view = self.views.get(key)
            if view is None:
                found = (await self._gid_repos(parent.path)).get(name)
                if found is None:
                    raise _err(errno.ENOENT)
                view = self.views[key] = commit_view(key, self.lake.store, found)
            return self._view_root(self._use(view), parent.ino, raw), None
        view = parent.view
        path = _join(parent.path, name)
        e = view.cached(path)
        if e is None:
            e = await trio.to_thread.run_sync(view.lookup, path)
        if e is None:
            raise _err(errno.ENOENT)
        return self.table.ensure((view.key, path), "view", view, path, parent.ino, raw), e

    @_op("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        parent = self._node(parent_inode)
        if parent.kind == "view":
            e = await self._entry(parent)
            if not e.is_dir:
                raise _err(errno.ENOTDIR)
        node, entry = await self._resolve(parent, name)
        a = await self._attr(node, entry)
        self.table.ref(node)
        return a

    @_op("forget")
    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            self.table.forget(ino, n)

    @_op("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return await self._attr(self._node(inode))

    @_op("readlink")
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.kind != "view":
            raise _err(errno.EINVAL)
        e = await self._entry(node)
        if e.target is None:
            raise _err(errno.EINVAL)
        return e.target.encode()

    # --- directories ---------------------------------------------------------------------------

    @_op("opendir")
    async def opendir(self, inode: int, ctx: Any) -> int:
        node = self._node(inode)
        h = Handle(node, node.view)
        if node.kind == "root":
            repos = await trio.to_thread.run_sync(self.lake.list_repos)
            h.listing = [(IDS.encode(), ("ids",))] + [
                (r["name"].encode(), ("repo", r["name"])) for r in repos
            ]
        elif node.kind == "ids":
            h.listing = []
        elif node.kind == "repo":
            branches = await trio.to_thread.run_sync(self.lake.branches, node.path)
            h.listing = [(b.encode(), ("branch", node.path, b)) for b, _ in sorted(branches)]
        elif node.kind == "gid":
            repos = sorted(await self._gid_repos(node.path))
            h.listing = [(r.encode(), ("gidrepo", r)) for r in repos]
        else:
            e = await self._entry(node)
            if not e.is_dir:
                raise _err(errno.ENOTDIR)
            entries = await trio.to_thread.run_sync(node.view.list_dir, node.path)
            h.listing = [(x.path.rpartition("/")[2].encode(), x) for x in entries]
        return self._new_fh(h)

    @_op("readdir")
    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        h = self.handles[fh]
        parent = h.node
        for i in range(start_id, len(h.listing)):
            raw, what = h.listing[i]
            try:
                if isinstance(what, Entry):
                    view = parent.view
                    node = self.table.ensure(
                        (view.key, what.path), "view", view, what.path, parent.ino, raw
                    )
                    a = await self._attr(node, what)
                else:
                    node, entry = await self._resolve(parent, raw)
                    a = await self._attr(node, entry)
            except pyfuse3.FUSEError:
                continue  # gone since the listing was made
            if not pyfuse3.readdir_reply(token, raw, a, i + 1):
                self.table.maybe_drop(node)
                return
            self.table.ref(node)

    @_op("releasedir")
    async def releasedir(self, fh: int) -> None:
        await self._release(fh)

    async def _release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.opens -= 1
        self.table.maybe_drop(node)
        st = h.view.staging if h.view is not None else None
        if node.opens == 0 and node.path.startswith(ORPHAN) and st is not None:
            # The last handle on a file unlinked while open: now its bytes can go.
            await trio.to_thread.run_sync(st.drop_orphan, node.path)

    # --- reading -------------------------------------------------------------------------------

    @_op("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind != "view":
            raise _err(errno.EISDIR)
        view: View = node.view
        e = await self._entry(node)
        if e.is_dir:
            raise _err(errno.EISDIR)
        wants_write = flags & (os.O_WRONLY | os.O_RDWR) or flags & os.O_TRUNC
        if wants_write and not view.writable:
            raise _err(errno.EROFS)
        h = Handle(node, view, entry=e, writable=bool(wants_write), live=view.writable)
        if view.writable and flags & os.O_TRUNC:
            await self._staged(view.staging.truncate, node.path, 0)
        if view.immutable:
            self._prefetch_walk(view, node.path, e)
        fi = pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=view.immutable)
        return fi

    def _prefetch_walk(self, view: View, path: str, e: Entry) -> None:
        """A file opened in a listed directory: fetch the chunks the next files live in."""
        if not e.chunks:
            return
        known = view.dir_chunks.get(path.rpartition("/")[0])
        if known is None:
            return
        order, pos = known
        i = pos.get(e.chunks[0].id)
        if i is None:
            return
        ahead = [c for c in order[i : i + DIR_READAHEAD] if not self.reader.has(c)]
        if ahead:
            self.reader.prefetch(ahead)

    @_op("read")
    async def read(self, fh: int, off: int, size: int) -> bytes:
        h = self.handles[fh]
        view = h.view
        assert view is not None
        if view.writable:
            # In a thread: a seal holds the staging lock for as long as it takes.
            st = view.staging
            try:
                staged = await trio.to_thread.run_sync(st.read, h.node.path, off, size, self.reader)
            except StagingError as err:
                if err.errno != errno.EROFS or view.staging is st:
                    raise
                staged = None  # the session ended meanwhile: read the head it froze onto
            if staged is not None:
                return staged
            e = await self._entry(h.node)
        elif h.live:
            # Opened while the branch was open for writing: what it had is now the head.
            e = await self._entry(h.node)
        else:
            e = h.entry
        assert e is not None
        sequential = off == h.next_off
        h.next_off = off + size
        data = self.reader.cached_read(e, off, size)
        if data is None:
            data = await trio.to_thread.run_sync(
                self.reader.read, e, off, size, READAHEAD if sequential else 0
            )
        elif sequential and e.chunks:
            idx = _chunk_index(e, off + size - 1)
            if idx != h.last_chunk:
                h.last_chunk = idx
                ahead = [c.id for c in e.chunks[idx + 1 : idx + 1 + READAHEAD]]
                self.reader.prefetch([c for c in ahead if not self.reader.has(c)])
        return data

    @_op("flush")
    async def flush(self, fh: int) -> None:
        # Writes reach the staging area as they happen; with ENOSYS the kernel stops sending
        # FLUSH, saving a round trip on every close.
        raise _err(errno.ENOSYS)

    @_op("release")
    async def release(self, fh: int) -> None:
        await self._release(fh)

    @_op("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles.get(fh)
        if h is not None and h.view is not None and h.view.writable:
            await trio.to_thread.run_sync(h.view.staging.sync, h.node.path)

    # --- extended attributes -------------------------------------------------------------------

    _XATTRS = (
        b"user.cowfs.commit",
        b"user.cowfs.global_id",
        b"user.cowfs.repo",
        b"user.cowfs.branch",
        b"user.cowfs.writable",
    )

    @_op("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.kind != "view" or name not in self._XATTRS:
            raise _err(pyfuse3.ENOATTR)
        view: View = node.view
        values = {
            b"user.cowfs.commit": view.commit_id,
            b"user.cowfs.global_id": view.global_id,
            b"user.cowfs.repo": view.repo,
            b"user.cowfs.branch": view.branch or "",
            b"user.cowfs.writable": "1" if view.writable else "0",
        }
        return values[name].encode()

    @_op("listxattr")
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        """Never listed, only answered when asked by name: listed, they would be copied by
        `cp -a`, `rsync -X` and `tar --xattrs` as if they were the file's own (stale commit ids
        on local copies), and `rsync -X` into a view (its root included) would fail removing
        them from the destination."""
        self._node(inode)
        return []

    @_op("setxattr")
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._refuse_xattr_change(inode)

    @_op("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._refuse_xattr_change(inode)

    def _refuse_xattr_change(self, inode: int) -> None:
        """Commits hold no extended attributes: read-only views say so first, as any fs would."""
        self._writable(self._node(inode))
        raise _err(errno.ENOTSUP)

    @_op("statfs")
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = attrs.BLKSIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = MAX_NAME_BYTES
        return s

    # --- writing -------------------------------------------------------------------------------

    def _writable(self, node: Node) -> View:
        if node.kind != "view" or not node.view.writable:
            raise _err(errno.EROFS)
        return node.view

    async def _staged(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args))

    async def _new_child(self, parent: Node, raw: bytes, e: Entry) -> pyfuse3.EntryAttributes:
        view: View = parent.view
        node = self.table.ensure((view.key, e.path), "view", view, e.path, parent.ino, raw)
        a = await self._attr(node, e)
        self.table.ref(node)
        return a

    def _child_path(self, parent: Node, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(errno.EINVAL) from None
        if "\x00" in name or name in (".", ".."):
            raise _err(errno.EINVAL)
        check_component(raw)
        path = _join(parent.path, name)
        check_path_limits(path)
        return path

    @_op("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        e = await self._staged(view.staging.create, path, mode, bool(flags & os.O_EXCL))
        a = await self._new_child(parent, name, e)
        node = self.table.by_key((view.key, path))
        assert node is not None
        h = Handle(node, view, entry=e, writable=True, live=True)
        return pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=False), a

    @_op("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if h.view is None or not h.view.writable:
            raise _err(errno.EROFS)
        return await self._staged(h.view.staging.write, h.node.path, off, buf)

    @_op("setattr")
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        node = self._node(inode)
        if not (fields.update_size or fields.update_mode or fields.update_mtime):
            # chown to ourselves, atime-only updates: nothing cowfs records.
            if fields.update_uid and attr.st_uid != self.owner.uid:
                raise _err(errno.EPERM)
            return await self._attr(node)
        view = self._writable(node)
        st = view.staging
        if fields.update_size and not node.path:
            raise _err(errno.EISDIR)
        if fields.update_size:
            await self._staged(st.truncate, node.path, attr.st_size)
        if fields.update_mode or fields.update_mtime:
            await self._staged(
                st.setattr,
                node.path,
                attr.st_mode if fields.update_mode else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return await self._attr(node)

    async def _make(self, parent_inode: int, name: bytes, make: str, arg: Any) -> Any:
        """mkdir and symlink: a new child made by the staging method named `make`."""
        parent = self._node(parent_inode)
        view = self._writable(parent)
        fn = getattr(view.staging, make)
        e = await self._staged(fn, self._child_path(parent, name), arg)
        return await self._new_child(parent, name, e)

    @_op("mkdir")
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return await self._make(parent_inode, name, "mkdir", mode)

    @_op("symlink")
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(errno.EINVAL) from None
        return await self._make(parent_inode, name, "symlink", text)

    def _is_open(self, view: View, path: str) -> bool:
        node = self.table.by_key((view.key, path))
        return node is not None and node.opens > 0

    @_op("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        kept = await self._staged(view.staging.unlink, path, self._is_open(view, path))
        self.table.detach(view.key, path, kept)

    @_op("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        await self._staged(view.staging.rmdir, path)
        self.table.detach(view.key, path)

    @_op("rename")
    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        old_parent, new_parent = self._node(p_old), self._node(p_new)
        if old_parent.kind != "view" or new_parent.kind != "view":
            raise _err(errno.EROFS if old_parent.kind == new_parent.kind else errno.EXDEV)
        if old_parent.view is not new_parent.view:
            raise _err(errno.EXDEV)
        view = self._writable(old_parent)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise _err(errno.ENOTSUP)
        old = self._child_path(old_parent, n_old)
        new = self._child_path(new_parent, n_new)
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        kept = await self._staged(
            view.staging.rename, old, new, noreplace, self._is_open(view, new)
        )
        if old != new:
            self.table.detach(view.key, new, kept)
            self.table.rekey(view.key, old, new)
            moved = self.table.by_key((view.key, new))
            if moved is not None:
                moved.parent, moved.name = new_parent.ino, n_new

    @_op("link")
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._writable(self._node(new_parent_inode))
        raise _err(errno.ENOTSUP)

    @_op("mknod")
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        """A regular file (GNU tar makes files with mknodat); other kinds have no place in a
        commit."""
        parent = self._node(parent_inode)
        view = self._writable(parent)
        if not stat.S_ISREG(mode):
            raise _err(errno.ENOTSUP)
        path = self._child_path(parent, name)
        e = await self._staged(view.staging.create, path, mode, True)
        return await self._new_child(parent, name, e)

    # --- branch heads and write sessions -------------------------------------------------------

    def _invalidate_branch(self, repo: str, branch: str) -> None:
        """Make the kernel look the branch directory up again (never from a handler of it:
        the async variant queues the call to a thread of its own)."""
        watched = self.watched.get((repo, branch))
        if watched is None or self.table.get(watched[0]) is None:
            return
        repo_ino = watched[0]
        pyfuse3.invalidate_entry_async(repo_ino, branch.encode(), ignore_enoent=True)

    async def poll_heads(self) -> None:
        """Follow every branch head the kernel may be showing, and drop its caches on a move."""
        swept = time.monotonic()
        while True:
            await trio.sleep(POLL_S)
            if time.monotonic() - swept >= SWEEP_S:
                swept = time.monotonic()
                self._sweep_views()
            for (repo, branch), (_, seen) in list(self.watched.items()):
                if time.monotonic() - seen > WATCH_IDLE_S:
                    del self.watched[(repo, branch)]
                    self.heads.pop((repo, branch), None)
                    continue
                if (repo, branch) in self.writes:
                    continue
                before = self.heads.get((repo, branch), (None, 0.0))[0]
                try:
                    now = await self._head(repo, branch, fresh=POLL_S / 2)
                except Exception as e:  # a store hiccup must not end the poller
                    log.warning("cannot read head of %s@%s: %s", repo, branch, e)
                    continue
                if now != before:
                    self._drop_view(("b", repo, branch, before))
                    self._invalidate_branch(repo, branch)

    def _sweep_views(self) -> None:
        """Drop the views that no inode the kernel holds, no open handle and no lookup has used
        for `VIEW_IDLE_S`; a later lookup makes them again."""
        now = time.monotonic()
        held = {n.key[0] for n in self.table.nodes() if n.kind == "view"}
        held.update(h.view.key for h in self.handles.values() if h.view is not None)
        for key in list(self.views):
            if key in held:
                self._used[key] = now
            elif now - self._used.get(key, now) > VIEW_IDLE_S:
                self._drop_view(key)
            else:
                self._used.setdefault(key, now)

    def _freeze_view(self, s: WriteSession, head: Commit | None) -> None:
        """Blocking, with `s.staging.lock` held: the session ends, and its view (inodes, handles
        and working directories in it) goes on showing the branch head, read-only."""
        view = self.views.get(("w", s.staging.repo, s.staging.branch, s.epoch))
        if view is not None:
            view.freeze(self.lake.store, head)

    def _end_session(self, s: WriteSession, end: Callable[[], None]) -> None:
        """Blocking: run `end` (close or destroy the area), then freeze the session's view."""
        st = s.staging
        with st.lock:
            end()
            try:
                head = self.lake.head(st.repo, st.branch)
            except CowfsError as e:
                log.warning("cannot read head of %s@%s: %s", st.repo, st.branch, e)
                return
            self._freeze_view(s, head)

    async def ctl_write(self, repo: str, branch: str) -> dict:
        async with self.write_lock:
            if (repo, branch) not in self.writes:
                st = await trio.to_thread.run_sync(open_write, self.lake, repo, branch)
                self._open_session(st)
                self._invalidate_branch(repo, branch)
            st = self.writes[(repo, branch)].staging
            return {"repo": repo, "branch": branch, "base": st.base}

    async def ctl_commit(self, repo: str, branch: str, message: str, keep_open: bool) -> dict:
        async with self.write_lock:
            s = self.writes.get((repo, branch))
            if s is None:
                raise NotFound(f"{repo}@{branch} is not open for writing: run `cowfs write` first")
            # keep_open empties the same staging area onto the new head, so the session, its
            # view and every handle open on it carry on; see `seal` for why no write is lost.

            def work() -> Commit | None:
                with s.staging.lock:
                    head = seal(self.lake, s.staging, message, self.reader, keep_open)
                    if not keep_open:
                        self._freeze_view(s, head)
                    return head

            commit = await trio.to_thread.run_sync(work)
            if not keep_open:
                del self.writes[(repo, branch)]
                self._drop_view(("w", repo, branch, s.epoch))
            self.heads.pop((repo, branch), None)
            self._invalidate_branch(repo, branch)
            return {"commit": commit.id if commit else None, "repo": repo, "branch": branch}

    async def ctl_discard(self, repo: str, branch: str) -> dict:
        async with self.write_lock:
            s = self.writes.pop((repo, branch), None)
            if s is None:
                raise NotFound(f"{repo}@{branch} is not open for writing")
            await trio.to_thread.run_sync(self._end_session, s, s.staging.destroy)
            self._drop_view(("w", repo, branch, s.epoch))
            self.heads.pop((repo, branch), None)
            self._invalidate_branch(repo, branch)
            return {"repo": repo, "branch": branch}

    async def ctl_reload(self) -> dict:
        """Match the open write sessions to the staging areas on disk (another mount or the
        CLI may have committed or opened one)."""
        async with self.write_lock:
            on_disk = set(await trio.to_thread.run_sync(list_areas, self.lake.url))
            for key in [k for k in self.writes if k not in on_disk]:
                s = self.writes.pop(key)
                await trio.to_thread.run_sync(self._end_session, s, s.staging.close)
                self._drop_view(("w", *key, s.epoch))
                self.heads.pop(key, None)
                self._invalidate_branch(*key)
            for repo, branch in on_disk - set(self.writes):
                try:
                    st = await trio.to_thread.run_sync(
                        Staging.open, self.lake.store, self.lake.url, repo, branch
                    )
                except StagingError as e:
                    # Another mount (or the CLI) holds it: here the branch stays read-only.
                    log.info("not writing %s@%s here: %s", repo, branch, e)
                    continue
                self._open_session(st)
                self._invalidate_branch(repo, branch)
            return {"writes": [f"{r}@{b}" for r, b in self.writes]}

    async def control(self, req: dict) -> dict:
        """One request from the control channel."""
        op = req.get("op")
        if op == "write":
            return await self.ctl_write(req["repo"], req["branch"])
        if op == "commit":
            return await self.ctl_commit(
                req["repo"], req["branch"], req.get("message", ""), bool(req.get("keep_open"))
            )
        if op == "discard":
            return await self.ctl_discard(req["repo"], req["branch"])
        if op == "reload":
            return await self.ctl_reload()
        if op == "status":
            return await self.ctl_status()
        raise UsageError(f"unknown control request {op!r}")

    async def ctl_status(self) -> dict:
        return {
            "store": self.lake.url,
            "writes": [f"{r}@{b}" for r, b in self.writes],
            "inodes": len(self.table),
            "handles": len(self.handles),
            "views": len(self.views),
            "watched": len(self.watched),
        }


def _rank(c: Commit) -> tuple[bool, float, str]:
    return (c.state == "finished", c.finished or c.created or 0.0, c.id)


def _chunk_index(e: Entry, offset: int) -> int:
    from bisect import bisect_right

    return bisect_right(e.chunk_starts(), offset) - 1


__all__ = ["CowFS", "ROOT"]
