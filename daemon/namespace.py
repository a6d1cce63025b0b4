"""The mount's namespace: what each name resolves to, the views behind them, branch heads and
write sessions, with no FUSE in it (the shim in `daemon.fs` turns its answers into attributes and
its errors into errnos), so it can be driven and tested on a trio loop without /dev/fuse.

    /MNT/<repo>/<branch>/…          the branch head (writable while `cowfs write` has it open)
    /MNT/<repo>/@<commit-id>/…      any commit, immutable (resolved on lookup, never listed)
    /MNT/.ids/<global-id>/<repo>/…  every commit sharing one global ID

Anything that may touch the object store (tree nodes, refs) runs in a worker thread.
"""

from __future__ import annotations

import errno
import functools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import trio

from cowfs.commits import Commit
from cowfs.entries import Entry
from cowfs.errors import CowfsError, NotFound, UsageError
from cowfs.lake import Lake
from cowfs.names import check_component, check_name
from cowfs.reader import ChunkReader
from cowfs.staging import Staging, StagingError, list_areas
from cowfs.staging_commit import open_write, seal
from daemon import attrs
from daemon.inodes import InodeTable, Node
from daemon.residency import release_maps
from daemon.views import View, commit_view, write_view

log = logging.getLogger("cowfs.mount")

IDS = ".ids"
#: How stale a branch head may be when a lookup resolves the branch directory.
HEAD_FRESH_S = 0.3
POLL_S = 1.0
#: A view no inode or handle has used for this long is dropped from `Namespace.views` (its
#: caches with it); the sweep runs every `SWEEP_S`.
VIEW_IDLE_S = 60.0
SWEEP_S = 10.0
#: A branch directory not looked up for this long is no longer polled for head moves: its
#: dentry (valid `attrs.BRANCH` seconds) has long expired, so the next walk looks it up anew.
WATCH_IDLE_S = 60.0


class FsError(CowfsError):
    """An answer that is only an errno (no such name, not a directory)."""

    def __init__(self, code: int) -> None:
        super().__init__(errno.errorcode.get(code, str(code)))
        self.errno = code


def _err(code: int) -> FsError:
    return FsError(code)


def name_of(raw: bytes) -> str:
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


def join(parent: str, name: str) -> str:
    return f"{parent}/{name}" if parent else name


async def run_staged(st: Staging, fn: Callable[..., Any], *args: Any) -> Any:
    """Run a staging operation: on the loop itself when the area's lock is free and its store is
    local, else in a worker thread.

    An operation is a few dictionary updates, a journal append and perhaps a pwrite: less than
    the two thread switches a worker costs (`tar x` of small files is a dozen such requests per
    file). A seal holds the lock for long, so then the operation waits in a thread; over a
    remote store a base lookup may fetch a tree node, which must not stall the loop.
    """
    if st.store.objects.is_local and st.lock.acquire(blocking=False):
        try:
            return fn(*args)
        finally:
            st.lock.release()
    return await trio.to_thread.run_sync(functools.partial(fn, *args))


@dataclass
class WriteSession:
    staging: Staging
    epoch: int


def _no_invalidate(parent_inode: int, name: bytes) -> None:
    return None


class Namespace:
    """Names to nodes and views. `invalidate(parent inode, name)` asks the kernel to drop a
    dentry (never from a handler of it); `held_views()` gives the views open handles hold."""

    def __init__(
        self,
        lake: Lake,
        reader: ChunkReader,
        invalidate: Callable[[int, bytes], None] = _no_invalidate,
        held_views: Callable[[], Iterable[tuple]] = tuple,
    ) -> None:
        self.lake = lake
        self.reader = reader
        self._invalidate = invalidate
        self.held_views = held_views
        self.table = InodeTable()
        self.views: dict[tuple, View] = {}
        #: view key -> when a lookup or a kernel reference last used it (`sweep_views`).
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
                self.open_session(Staging.open(lake.store, lake.url, repo, branch))
            except CowfsError as e:
                log.warning("cannot reopen staged writes of %s@%s: %s", repo, branch, e)

    async def view_lookup(self, view: View, path: str) -> Entry | None:
        st = view.staging
        if st is not None:
            return await run_staged(st, view.lookup, path)
        return await trio.to_thread.run_sync(view.lookup, path)

    def close(self) -> None:
        for s in self.writes.values():
            s.staging.close()
        self.writes.clear()

    def node(self, ino: int) -> Node:
        node = self.table.get(ino)
        if node is None:
            raise _err(errno.ENOENT)
        return node

    def open_session(self, staging: Staging) -> WriteSession:
        self._epoch += 1
        s = WriteSession(staging, self._epoch)
        self.writes[(staging.repo, staging.branch)] = s
        return s

    async def entry(self, node: Node) -> Entry:
        view: View = node.view
        e = view.cached(node.path)
        if e is None:
            e = await self.view_lookup(view, node.path)
        if e is None:
            raise _err(errno.ENOENT)
        return e

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

    async def head(self, repo: str, branch: str, fresh: float = HEAD_FRESH_S) -> str | None:
        cached = self.heads.get((repo, branch))
        if cached is not None and time.monotonic() - cached[1] < fresh:
            return cached[0]
        cid = await trio.to_thread.run_sync(self.lake.head_id, repo, branch)
        self.heads[(repo, branch)] = (cid, time.monotonic())
        return cid

    async def branch_view(self, repo: str, branch: str) -> View | None:
        s = self.writes.get((repo, branch))
        if s is not None:
            key: tuple = ("w", repo, branch, s.epoch)
            view = self.views.get(key)
            if view is None:
                view = self.views[key] = write_view(key, s.staging)
            return self._use(view)
        cid = await self.head(repo, branch)
        if cid is None:
            return None
        key = ("b", repo, branch, cid)
        view = self.views.get(key)
        if view is None:
            commit = await trio.to_thread.run_sync(self.lake.get_commit, repo, cid)
            view = self.views[key] = commit_view(key, self.lake.store, commit, branch)
            # The head's previous view lives on only in the inodes and handles that hold it.
            for k in [k for k in self.views if k[:3] == ("b", repo, branch) and k != key]:
                self.drop_view(k)
        return self._use(view)

    def _use(self, view: View) -> View:
        self._used[view.key] = time.monotonic()
        return view

    def drop_view(self, key: tuple) -> None:
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

    async def gid_repos(self, gid: str) -> dict[str, Commit]:
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
        node = self.table.view_root(view, parent, name)
        if view.branch is not None and view.key[0] in "bw":
            self.watched[(view.repo, view.branch)] = (parent, time.monotonic())
        return node

    async def resolve(self, parent: Node, raw: bytes) -> tuple[Node, Entry | None]:
        name = name_of(raw)
        if parent.kind == "root":
            if name == IDS:
                return self.table.child(parent, raw, "ids"), None
            if not await self._repo_exists(name):
                raise _err(errno.ENOENT)
            return self.table.child(parent, raw, "repo"), None
        if parent.kind == "ids":
            if not await self._gid_commits(name):
                raise _err(errno.ENOENT)
            return self.table.child(parent, raw, "gid"), None
        if parent.kind == "repo":
            repo = parent.path
            if name.startswith("@"):
                view = await self._commit_view(repo, name[1:])
            else:
                try:
                    check_name(name, "branch name")
                except UsageError:
                    raise _err(errno.ENOENT) from None
                view = await self.branch_view(repo, name)
            if view is None:
                raise _err(errno.ENOENT)
            return self._view_root(view, parent.ino, raw), None
        if parent.kind == "gid":
            key = ("g", parent.path, name)
            view = self.views.get(key)
            if view is None:
                found = (await self.gid_repos(parent.path)).get(name)
                if found is None:
                    raise _err(errno.ENOENT)
                view = self.views[key] = commit_view(key, self.lake.store, found)
            return self._view_root(self._use(view), parent.ino, raw), None
        view = parent.view
        path = join(parent.path, name)
        e = view.cached(path)
        if e is None:
            e = await self.view_lookup(view, path)
        if e is None:
            raise _err(errno.ENOENT)
        return self.table.child(parent, raw), e

    def invalidate_branch(self, repo: str, branch: str) -> None:
        """Make the kernel look the branch directory up again (never from a handler of it:
        the async variant queues the call to a thread of its own)."""
        watched = self.watched.get((repo, branch))
        if watched is None or self.table.get(watched[0]) is None:
            return
        repo_ino = watched[0]
        self._invalidate(repo_ino, branch.encode())

    async def poll_heads(self) -> None:
        """Follow every branch head the kernel may be showing, and drop its caches on a move."""
        swept = time.monotonic()
        while True:
            await trio.sleep(POLL_S)
            # Every second, not every sweep: a walk maps index pages at ~13 MiB/s, which ten
            # seconds' worth would add to the resident size (docs/benchmarks.md, walk memory).
            release_maps(self.lake.store.index.path)
            if time.monotonic() - swept >= SWEEP_S:
                swept = time.monotonic()
                self.sweep_views()
            for (repo, branch), (_, seen) in list(self.watched.items()):
                if time.monotonic() - seen > WATCH_IDLE_S:
                    del self.watched[(repo, branch)]
                    self.heads.pop((repo, branch), None)
                    continue
                if (repo, branch) in self.writes:
                    continue
                before = self.heads.get((repo, branch), (None, 0.0))[0]
                try:
                    now = await self.head(repo, branch, fresh=POLL_S / 2)
                except Exception as e:  # a store hiccup must not end the poller
                    log.warning("cannot read head of %s@%s: %s", repo, branch, e)
                    continue
                if now != before:
                    self.drop_view(("b", repo, branch, before))
                    self.invalidate_branch(repo, branch)

    def sweep_views(self) -> None:
        """Drop the views that no inode the kernel holds, no open handle and no lookup has used
        for `VIEW_IDLE_S`; a later lookup makes them again."""
        now = time.monotonic()
        held = {v.key for v in self.table.held_views()}
        held.update(self.held_views())
        for key in list(self.views):
            if key in held:
                self._used[key] = now
            elif now - self._used.get(key, now) > VIEW_IDLE_S:
                self.drop_view(key)
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
                self.open_session(st)
                self.invalidate_branch(repo, branch)
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
                self.drop_view(("w", repo, branch, s.epoch))
            self.heads.pop((repo, branch), None)
            self.invalidate_branch(repo, branch)
            return {"commit": commit.id if commit else None, "repo": repo, "branch": branch}

    async def ctl_discard(self, repo: str, branch: str) -> dict:
        async with self.write_lock:
            s = self.writes.pop((repo, branch), None)
            if s is None:
                raise NotFound(f"{repo}@{branch} is not open for writing")
            await trio.to_thread.run_sync(self._end_session, s, s.staging.destroy)
            self.drop_view(("w", repo, branch, s.epoch))
            self.heads.pop((repo, branch), None)
            self.invalidate_branch(repo, branch)
            return {"repo": repo, "branch": branch}

    async def ctl_reload(self) -> dict:
        """Match the open write sessions to the staging areas on disk (another mount or the
        CLI may have committed or opened one)."""
        async with self.write_lock:
            on_disk = set(await trio.to_thread.run_sync(list_areas, self.lake.url))
            for key in [k for k in self.writes if k not in on_disk]:
                s = self.writes.pop(key)
                await trio.to_thread.run_sync(self._end_session, s, s.staging.close)
                self.drop_view(("w", *key, s.epoch))
                self.heads.pop(key, None)
                self.invalidate_branch(*key)
            for repo, branch in on_disk - set(self.writes):
                try:
                    st = await trio.to_thread.run_sync(
                        Staging.open, self.lake.store, self.lake.url, repo, branch
                    )
                except StagingError as e:
                    # Another mount (or the CLI) holds it: here the branch stays read-only.
                    log.info("not writing %s@%s here: %s", repo, branch, e)
                    continue
                self.open_session(st)
                self.invalidate_branch(repo, branch)
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
            "handles": len(list(self.held_views())),
            "views": len(self.views),
            "watched": len(self.watched),
        }


def _rank(c: Commit) -> tuple[bool, float, str]:
    return (c.state == "finished", c.finished or c.created or 0.0, c.id)
