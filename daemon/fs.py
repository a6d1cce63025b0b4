"""The FUSE shim: kernel requests in, attributes and errnos out, over `daemon.namespace`.

Names, views, heads and write sessions are the namespace's (testable without /dev/fuse); this
module keeps what only FUSE has: handles, attributes and cache timeouts, and the read path. The
handlers that stage writes are `daemon.fs_write`'s, extended attributes `daemon.fs_xattr`'s, and
what every handler goes through `daemon.handler`'s. Every handler runs on the trio loop;
anything that may touch the object store (tree nodes, chunks, refs) runs in a worker thread so
one slow fetch never stalls the mount (staging operations over a local store run on the loop:
`namespace.run_staged`). Every error is answered with an errno: `CowfsError`s carry theirs,
anything else is logged and becomes EIO.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any

import pyfuse3
import trio

from cowfs.entries import Entry
from cowfs.errors import CowfsError
from cowfs.lake import Lake
from cowfs.names import MAX_NAME_BYTES
from cowfs.staging import ORPHAN, StagingError
from daemon import attrs
from daemon.fs_write import WriteHandlers
from daemon.fs_xattr import XattrHandlers
from daemon.handler import READAHEAD_MAX, Handle, direct_io, err, op
from daemon.inodes import ROOT, Node
from daemon.namespace import IDS, Namespace
from daemon.reader import MountReader
from daemon.views import View

log = logging.getLogger("cowfs.mount")

#: Chunks fetched ahead of a walk through a directory.
DIR_READAHEAD = 24


def _invalidate_entry(parent_inode: int, name: bytes) -> None:
    """The async variant queues the call to a thread of its own, so a handler of that very
    entry never deadlocks on it."""
    pyfuse3.invalidate_entry_async(parent_inode, name, ignore_enoent=True)


class CowFS(WriteHandlers, XattrHandlers, pyfuse3.Operations):
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
            raise err(errno.ENOENT)
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

    @op("lookup")
    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        parent = self._node(parent_inode)
        if parent.kind == "view":
            e = await self.ns.entry(parent)
            if not e.is_dir:
                raise err(errno.ENOTDIR)
        node, entry = await self.ns.resolve(parent, name)
        # Counted before any await, so nothing drops the node while its attributes are made.
        self.table.ref(node)
        try:
            return await self._attr(node, entry)
        except BaseException:
            self.table.forget(node.ino, 1)
            raise

    @op("forget")
    async def forget(self, inode_list: Any) -> None:
        for ino, n in inode_list:
            self.table.forget(ino, n)

    @op("getattr")
    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        return await self._attr(self._node(inode))

    @op("readlink")
    async def readlink(self, inode: int, ctx: Any) -> bytes:
        node = self._node(inode)
        if node.kind != "view":
            raise err(errno.EINVAL)
        e = await self.ns.entry(node)
        if e.target is None:
            raise err(errno.EINVAL)
        return e.target.encode()

    # --- directories ---------------------------------------------------------------------------

    @op("opendir")
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
                raise err(errno.ENOTDIR)
            entries = await trio.to_thread.run_sync(node.view.list_dir, node.path)
            h.listing = [(x.path.rpartition("/")[2].encode(), x) for x in entries]
        return self._new_fh(h)

    @op("readdir")
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

    @op("releasedir")
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

    @op("open")
    async def open(self, inode: int, flags: int, ctx: Any) -> pyfuse3.FileInfo:
        node = self._node(inode)
        if node.kind != "view":
            raise err(errno.EISDIR)
        view: View = node.view
        e = await self.ns.entry(node)
        if e.is_dir:
            raise err(errno.EISDIR)
        wants_write = flags & (os.O_WRONLY | os.O_RDWR) or flags & os.O_TRUNC
        if wants_write and not view.writable:
            raise err(errno.EROFS)
        h = Handle(node, view, entry=e, writable=bool(wants_write), live=view.writable)
        if view.writable and flags & os.O_TRUNC:
            await self._staged(view.staging.truncate, node.path, 0)
        if view.immutable:
            self._prefetch_walk(view, node.path, e)
        direct = view.writable and direct_io(flags)
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

    @op("read")
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

    @op("flush")
    async def flush(self, fh: int) -> None:
        # Writes reach the staging area as they happen; with ENOSYS the kernel stops sending
        # FLUSH, saving a round trip on every close.
        raise err(errno.ENOSYS)

    @op("release")
    async def release(self, fh: int) -> None:
        await self._release(fh)

    @op("fsync")
    async def fsync(self, fh: int, datasync: bool) -> None:
        h = self.handles.get(fh)
        if h is not None and h.view is not None and h.view.writable:
            await trio.to_thread.run_sync(h.view.staging.sync, h.node.path)

    @op("statfs")
    async def statfs(self, ctx: Any) -> pyfuse3.StatvfsData:
        s = pyfuse3.StatvfsData()
        s.f_bsize = s.f_frsize = attrs.BLKSIZE
        s.f_blocks = s.f_bfree = s.f_bavail = 1 << 30
        s.f_files = s.f_ffree = s.f_favail = 1 << 30
        s.f_namemax = MAX_NAME_BYTES
        return s


def _chunk_index(e: Entry, offset: int) -> int:
    from bisect import bisect_right

    return bisect_right(e.chunk_starts(), offset) - 1


__all__ = ["CowFS", "ROOT"]
