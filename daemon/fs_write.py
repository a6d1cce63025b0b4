"""The handlers that change a writable view: create, write, setattr, mkdir, symlink, unlink,
rmdir, rename (and the refusals: link, mknod of anything but a file). Mixed into `CowFS`, whose
inode table, attributes and handles they use; each stages its change through the view's
staging area (`namespace.run_staged`) and answers the kernel with the entry it staged.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from typing import Any

import pyfuse3

from cowfs.entries import Entry
from cowfs.names import check_component, check_path_limits
from daemon.attrs import Owner
from daemon.handler import Handle, direct_io, err, op
from daemon.inodes import InodeTable, Node
from daemon.namespace import join, run_staged
from daemon.views import View


class WriteHandlers:
    """Needs, from the class it is mixed into: `table`, `owner`, `_node`, `_attr`, `_new_fh`."""

    table: InodeTable
    owner: Owner
    _node: Callable[[int], Node]
    _attr: Callable[..., Any]
    _new_fh: Callable[[Handle], int]

    def _writable(self, node: Node) -> View:
        if node.kind != "view" or not node.view.writable:
            raise err(errno.EROFS)
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
            raise err(errno.EINVAL) from None
        if "\x00" in name or name in (".", ".."):
            raise err(errno.EINVAL)
        check_component(raw)
        path = join(parent.path, name)
        check_path_limits(path)
        return path

    @op("create")
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int, ctx: Any) -> Any:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        e = await self._staged(view.staging.create, path, mode, bool(flags & os.O_EXCL))
        node, a = await self._new_node(parent, name, e)
        h = Handle(node, view, entry=e, writable=True, live=True)
        return pyfuse3.FileInfo(fh=self._new_fh(h), keep_cache=False, direct_io=direct_io(flags)), a

    @op("write")
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        h = self.handles[fh]
        if h.view is None or not h.view.writable:
            raise err(errno.EROFS)
        return await self._staged(h.view.staging.write, h.node.path, off, buf)

    @op("setattr")
    async def setattr(self, inode: int, attr: Any, fields: Any, fh: Any, ctx: Any) -> Any:
        node = self._node(inode)
        if not (fields.update_size or fields.update_mode or fields.update_mtime):
            # chown to ourselves, atime-only updates: nothing cowfs records.
            if fields.update_uid and attr.st_uid != self.owner.uid:
                raise err(errno.EPERM)
            return await self._attr(node)
        view = self._writable(node)
        st = view.staging
        path = node.path
        if fields.update_size and not path:
            raise err(errno.EISDIR)
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

    @op("mkdir")
    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        return await self._make(parent_inode, name, "mkdir", mode)

    @op("symlink")
    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        try:
            text = target.decode("utf-8")
        except UnicodeDecodeError:
            raise err(errno.EINVAL) from None
        return await self._make(parent_inode, name, "symlink", text)

    def _is_open(self, view: View, path: str) -> bool:
        node = self.table.find(view, path)
        return node is not None and node.opens > 0

    @op("unlink")
    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        kept = await self._staged(view.staging.unlink, path, self._is_open(view, path))
        self.table.detach(view, path, kept)

    @op("rmdir")
    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        parent = self._node(parent_inode)
        view = self._writable(parent)
        path = self._child_path(parent, name)
        await self._staged(view.staging.rmdir, path)
        self.table.detach(view, path)

    @op("rename")
    async def rename(
        self, p_old: int, n_old: bytes, p_new: int, n_new: bytes, flags: int, ctx: Any
    ) -> None:
        old_parent, new_parent = self._node(p_old), self._node(p_new)
        if old_parent.kind != "view" or new_parent.kind != "view":
            raise err(errno.EROFS if old_parent.kind == new_parent.kind else errno.EXDEV)
        if old_parent.view is not new_parent.view:
            raise err(errno.EXDEV)
        view = self._writable(old_parent)
        if flags & pyfuse3.RENAME_EXCHANGE:
            raise err(errno.ENOTSUP)
        old = self._child_path(old_parent, n_old)
        new = self._child_path(new_parent, n_new)
        noreplace = bool(flags & pyfuse3.RENAME_NOREPLACE)
        kept = await self._staged(
            view.staging.rename, old, new, noreplace, self._is_open(view, new)
        )
        if old != new:
            self.table.rekey(view, old, new, new_parent.ino, n_new, kept)

    @op("link")
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        self._writable(self._node(new_parent_inode))
        raise err(errno.ENOTSUP)

    @op("mknod")
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int, ctx: Any) -> Any:
        """A regular file (GNU tar makes files with mknodat); other kinds have no place in a
        commit."""
        parent = self._node(parent_inode)
        view = self._writable(parent)
        if not stat.S_ISREG(mode):
            raise err(errno.ENOTSUP)
        path = self._child_path(parent, name)
        e = await self._staged(view.staging.create, path, mode, True)
        return await self._new_child(parent, name, e)
