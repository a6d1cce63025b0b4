"""Extended attributes of the mount: each view answers `user.cowfs.*` (its commit, global ID,
repo, branch, whether it is writable) when asked by name, and nothing can set or remove one.
Mixed into `CowFS`."""

from __future__ import annotations

import errno
from collections.abc import Callable
from typing import Any

import pyfuse3

from daemon.handler import err, op
from daemon.inodes import Node
from daemon.views import View


class XattrHandlers:
    """Needs `_node` and `_writable` from the class it is mixed into."""

    _node: Callable[[int], Node]
    _writable: Callable[[Node], View]

    _XATTRS = (
        b"user.cowfs.commit",
        b"user.cowfs.global_id",
        b"user.cowfs.repo",
        b"user.cowfs.branch",
        b"user.cowfs.writable",
    )

    @op("getxattr")
    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        node = self._node(inode)
        if name not in self._XATTRS or node.kind != "view":
            # `security.capability` lands here before writes and chowns: answered first.
            raise err(pyfuse3.ENOATTR)
        view: View = node.view
        values = {
            b"user.cowfs.commit": view.commit_id,
            b"user.cowfs.global_id": view.global_id,
            b"user.cowfs.repo": view.repo,
            b"user.cowfs.branch": view.branch or "",
            b"user.cowfs.writable": "1" if view.writable else "0",
        }
        return values[name].encode()

    @op("listxattr")
    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        """Never listed, only answered when asked by name: listed, they would be copied by
        `cp -a`, `rsync -X` and `tar --xattrs` as if they were the file's own (stale commit ids
        on local copies), and `rsync -X` into a view (its root included) would fail removing
        them from the destination."""
        self._node(inode)
        return []

    @op("setxattr")
    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        self._refuse_xattr_change(inode)

    @op("removexattr")
    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        self._refuse_xattr_change(inode)

    def _refuse_xattr_change(self, inode: int) -> None:
        """Commits hold no extended attributes: read-only views say so first, as any fs would."""
        self._writable(self._node(inode))
        raise err(errno.ENOTSUP)
