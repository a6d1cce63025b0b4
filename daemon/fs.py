"""The FUSE shim: kernel requests in, attributes and errnos out, over `daemon.namespace`.

Names, views, heads and write sessions are the namespace's (testable without /dev/fuse); this
module keeps what only FUSE has: handles, attributes and cache timeouts, the read path and the
handlers that stage writes. Every handler runs on the trio loop; anything that may touch the
object store (tree nodes, chunks, refs) runs in a worker thread so one slow fetch never stalls
the mount (staging operations over a local store run on the loop: `namespace.run_staged`).
Every error is answered with an errno: `CowfsError`s carry theirs, anything else is logged and
becomes EIO.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, TypeVar

import pyfuse3
import trio

from cowfs.entries import Entry
from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.names import MAX_NAME_BYTES, check_component, check_path_limits
from cowfs.staging import ORPHAN, StagingError
from daemon import attrs
from daemon.inodes import ROOT, Node
from daemon.metrics_fuse import FUSE_ERRORS, FUSE_STATS
from daemon.namespace import IDS, Namespace, join, run_staged
from daemon.reader import MountReader
from daemon.views import View

log = logging.getLogger("cowfs.mount")

#: Chunks fetched ahead of a walk through a directory.
DIR_READAHEAD = 24
#: A sequential reader's read-ahead window, in chunks: it starts small and doubles each time
#: the reader finds the chunk it needs not yet fetched (it outran the fetches in flight), so a
#: fast reader keeps many fetches in flight and a slow one few.
READAHEAD_MIN = 4
READAHEAD_MAX = 64
F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _op(name: str) -> Callable[[F], F]:
    """Count and time a handler, and turn every failure into an errno the kernel understands."""

    def wrap(fn: F) -> F:
        stats = FUSE_STATS.op(name)
        errors: dict[int, Any] = {}

        def failed(code: int) -> pyfuse3.FUSEError:
            counter = errors.get(code)
            if counter is None:
                counter = errors[code] = FUSE_ERRORS.labels(
                    name, errno.errorcode.get(code, str(code))
                )
            counter.inc()
            return pyfuse3.FUSEError(code)

        @functools.wraps(fn)
        async def handler(*args: Any, **kwargs: Any) -> Any:
            t0 = perf_counter()
            try:
                return await fn(*args, **kwargs)
            except pyfuse3.FUSEError as e:
                failed(e.errno)
                raise
            except CowfsError as e:
                code = getattr(e, "errno", errno.EIO) or errno.EIO
                if code == errno.EIO:
                    log.warning("%s failed: %s", name, e)
                raise failed(code) from None
            except OSError as e:
                log.warning("%s failed: %s", name, e)
                raise failed(e.errno or errno.EIO) from None
            except Exception:
                log.exception("%s failed", name)
                raise failed(errno.EIO) from None
            finally:
                stats.observe(perf_counter() - t0)

        return handler  # type: ignore[return-value]

    return wrap


def _err(code: int) -> pyfuse3.FUSEError:
    return pyfuse3.FUSEError(code)


def _invalidate_entry(parent_inode: int, name: bytes) -> None:
    """The async variant queues the call to a thread of its own, so a handler of that very
    entry never deadlocks on it."""
    pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)


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
    window: int = READAHEAD_MIN
    listing: list[tuple[bytes, Any]] = field(default_factory=list)


class CowFS(pyfuse3.Operations):
    supports_dot_lookup = False
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, lake: Lake, readers: int = 16) -> None:
        super().__init__()
        self.lake = lake
        self.reader = MountReader(lake.store, workers=readers)
        self.owner = attrs.Owner.current()
        self.handles: dict[int, Handle] = {}
        self._next_fh = 1
        self.ns = Namespace(lake, self.reader, _invalidate_entry, self._held_views)
        self.table = self.ns.table
        self.poll_heads = self.ns.poll_heads
        self.control = self.ns.control
        #: Set once the kernel's INIT is answered: what the kernel settles then (its read-ahead
        #: among them) can be changed only after.
        self.initialized = trio.Event()

    def init(self) -> None:
        self.initialized.set()

    def _held_views(self) -> list[tuple]:
        return [h.view.key for h in self.handles.values() if h.view is not None]

    def close(self) -> None:
        self.ns.close()
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

    def _timeouts(self, node: Node) -> tuple[float, float]:
        view: View = node.view
        if view.writable:
            return (attrs.BRANCH if node.is_view_root else attrs.WRITABLE), attrs.WRITABLE
        if node.is_view_root and view.key[0] in "bw":
            # "w" here: a write view frozen onto the head when its session ended.
            return attrs.BRANCH, attrs.FOREVER
        return attrs.FOREVER, attrs.FOREVER

    async def _attr(self, node: Node, entry: Entry | None = None) -> pyfuse3.EntryAttributes:
        if node.kind == "root":
            return attrs.dir_attr(node.ino, self.owner, attrs.LISTING)
        if node.kind != "view":
            return attrs.dir_attr(node.ino, self.owner, attrs.LISTING, 0o555)
        e = entry or await self.ns.entry(node)
        et, at = self._timeouts(node)
        a = attrs.entry_attr(node.ino, e, self.owner, et, at)
        if node.unlinked:
            a.st_nlink = 0  # fstat of a file deleted while open, as POSIX has it
        return a

    # --- lookup and attributes -----------------------------------------------------------------

    @_op("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        parent = self._node(parent_inode)
        if parent.kind == "view":
            e = await self.ns.entry(parent)
            if not e.is_dir:
                raise _err(errno.ENOTDIR)
        node, entry = await self.ns.resolve(parent, name)
        # Counted before any await, so nothing drops the node while its attributes are made.
        self.table.ref(node)
        try:
            return await self._attr(node, entry)
        except BaseException:
            self.table.forget(node.ino, 1)
            raise

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
        e = await self.ns.entry(node)
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
            repos = sorted(await self.ns.gid_repos(node.path))
            h.listing = [(r.encode(), ("gidrepo", r)) for r in repos]
        else:
            e = await self.ns.entry(node)
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
                    node, entry = self.table.child(parent, raw), what
                else:
                    node, entry = await self.ns.resolve(parent, raw)
            except (pyfuse3.FUSEError, CowfsError):
                continue  # gone since the listing was made
            self.table.ref(node)  # before any await: see `lookup`
            try:
                a = await self._attr(node, entry)
            except (pyfuse3.FUSEError, CowfsError):
                self.table.forget(node.ino, 1)
                continue
            if not pyfuse3.readdir_reply(token, raw, a, i + 1):
                self.table.forget(node.ino, 1)
                return

    @_op("releasedir")
    async def releasedir(self, fh: int) -> None:
        await self._release(fh)

    async def _release(self, fh: int) -> None:
        h = self.handles.pop(fh, None)
        if h is None:
            return
        node = h.node
        node.opens -= 1
        opens, path = node.opens, node.path  # read before the node may be dropped
        self.table.maybe_drop(node)
        st = h.view.staging if h.view is not None else None
        if opens == 0 and path.startswith(ORPHAN) and st is not None:
            # The last handle on a file unlinked while open: now its bytes can go.
            await trio.to_thread.run_sync(st.drop_orphan, path)

    # --- reading -------------------------------------------------------------------------------

    @_op("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind != "view":
            raise _err(errno.EISDIR)
        view: View = node.view
        e = await self.ns.entry(node)
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
        direct = view.writable and _direct(flags)
        return pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=view.immutable, direct_io=direct)

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
            e = await self.ns.entry(h.node)
        elif h.live:
            # Opened while the branch was open for writing: what it had is now the head.
            e = await self.ns.entry(h.node)
        else:
            e = h.entry
        assert e is not None
        sequential = off == h.next_off
        h.next_off = off + size
        data = self.reader.cached_read(e, off, size)
        if data is None:
            if sequential and off:
                h.window = min(h.window * 2, READAHEAD_MAX)
            data = await trio.to_thread.run_sync(
                self.reader.read, e, off, size, h.window if sequential else 0
            )
        elif sequential and e.chunks:
            idx = _chunk_index(e, off + size - 1)
            if idx != h.last_chunk:
                h.last_chunk = idx
                ahead = [c.id for c in e.chunks[idx + 1 : idx + 1 + h.window]]
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
        if name not in self._XATTRS or node.kind != "view":
            # `security.capability` lands here before writes and chowns: answered first.
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
        return await run_staged(fn.__self__, fn, *args)  # type: ignore[attr-defined]

    async def _new_child(self, parent: Node, raw: bytes, e: Entry) -> pyfuse3.EntryAttributes:
        return (await self._new_node(parent, raw, e))[1]

    async def _new_node(
        self, parent: Node, raw: bytes, e: Entry
    ) -> tuple[Node, pyfuse3.EntryAttributes]:
        node = self.table.child(parent, raw)
        self.table.ref(node)
        try:
            return node, await self._attr(node, e)
        except BaseException:
            self.table.forget(node.ino, 1)
            raise

    def _child_path(self, parent: Node, raw: bytes) -> str:
        try:
            name = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _err(errno.EINVAL) from None
        if "\x00" in name or name in (".", ".."):
            raise _err(errno.EINVAL)
        check_component(raw)
        path = join(parent.path, name)
        check_path_limits(path)
        return path

    @_op("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        e = await self._staged(view.staging.create, path, mode, bool(flags & os.O_EXCL))
        node, a = await self._new_node(parent, name, e)
        h = Handle(node, view, entry=e, writable=True, live=True)
        return pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=False, direct_io=_direct(flags)), a

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
        path = node.path
        if fields.update_size and not path:
            raise _err(errno.EISDIR)
        e = None
        if fields.update_size:
            await self._staged(st.truncate, path, attr.st_size)
        if fields.update_mode or fields.update_mtime:
            e = await self._staged(
                st.setattr,
                path,
                attr.st_mode if fields.update_mode else None,
                attr.st_mtime_ns if fields.update_mtime else None,
            )
        return await self._attr(node, e)

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
        node = self.table.find(view, path)
        return node is not None and node.opens > 0

    @_op("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        kept = await self._staged(view.staging.unlink, path, self._is_open(view, path))
        self.table.detach(view, path, kept)

    @_op("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        await self._staged(view.staging.rmdir, path)
        self.table.detach(view, path)

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
            self.table.rekey(view, old, new, new_parent.ino, n_new, kept)

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


def _direct(flags: int) -> bool:
    """Write-only handles skip the page cache (`direct_io`): the kernel then no longer asks
    `getxattr("security.capability")` before every write (its check for privileges to drop,
    which FUSE cannot cache), a request per write. Nothing can map or read through such a
    handle, and other handles see the writes as before (tests/test_mount_posix.py)."""
    return flags & os.O_ACCMODE == os.O_WRONLY


def _chunk_index(e: Entry, offset: int) -> int:
    from bisect import bisect_right

    return bisect_right(e.chunk_starts(), offset) - 1


__all__ = ["CowFS", "ROOT"]
