"""Landing writes as commits, optionally grouping a burst of them into one.

Every write is a `ChangeSet` committed with `Lake.commit`, the same compare-and-swap path as
`cowfs put`: a writer that loses the swap re-applies its change to the new head, so concurrent
writers all land. With a batch window of W seconds, the first write to a branch waits W seconds
for others; all of them then land as one commit, and each answers only once that commit is in.
If the combined change fails (two writes that cannot coexist), each is committed on its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import anyio
import anyio.to_thread

from cowfs.changes import ChangeSet
from cowfs.commits import Commit
from cowfs.errors import CowfsError
from cowfs.lake import Lake


def merge(changes: list[ChangeSet]) -> ChangeSet:
    """One change with the effect of `changes` applied in order (later writes win)."""
    out = ChangeSet()
    for c in changes:
        for d in c.deletes:
            under = d + "/"
            for p in [p for p in out.puts if p == d or p.startswith(under) or not d]:
                del out.puts[p]
        out.deletes.extend(c.deletes)
        out.puts.update(c.puts)
    return out


@dataclass
class _Batch:
    changes: list[ChangeSet] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    results: list[Commit | BaseException] = field(default_factory=list)
    done: anyio.Event = field(default_factory=anyio.Event)


class Committer:
    def __init__(
        self, lake: Lake, window: float, on_commit: Callable[[int], None] | None = None
    ) -> None:
        self.lake = lake
        self.window = window
        self.on_commit = on_commit or (lambda n: None)
        self._open: dict[tuple[str, str], _Batch] = {}

    async def commit(self, repo: str, branch: str, changes: ChangeSet, message: str) -> Commit:
        if self.window <= 0:
            return await anyio.to_thread.run_sync(self._one, repo, branch, changes, message)
        key = (repo, branch)
        batch = self._open.get(key)
        leader = batch is None
        if batch is None:
            batch = self._open[key] = _Batch()
        index = len(batch.changes)
        batch.changes.append(changes)
        batch.messages.append(message)
        if leader:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(self.window)
                del self._open[key]
                try:
                    batch.results = await anyio.to_thread.run_sync(self._land, repo, branch, batch)
                except BaseException as e:
                    batch.results = [e] * len(batch.changes)
                finally:
                    batch.done.set()
        else:
            await batch.done.wait()
        result = batch.results[index]
        if isinstance(result, BaseException):
            raise result
        return result

    def _one(self, repo: str, branch: str, changes: ChangeSet, message: str) -> Commit:
        commit = self.lake.commit(repo, branch, changes, message)
        self.on_commit(1)
        return commit

    def _land(self, repo: str, branch: str, batch: _Batch) -> list[Commit | BaseException]:
        n = len(batch.changes)
        if n == 1:
            try:
                return [self._one(repo, branch, batch.changes[0], batch.messages[0])]
            except CowfsError as e:
                return [e]
        message = f"s3: {n} writes: " + "; ".join(batch.messages[:5]) + ("; ..." if n > 5 else "")
        try:
            commit = self.lake.commit(repo, branch, merge(batch.changes), message)
            self.on_commit(n)
            return [commit] * n
        except CowfsError:
            pass
        out: list[Commit | BaseException] = []
        for changes, msg in zip(batch.changes, batch.messages):
            try:
                out.append(self._one(repo, branch, changes, msg))
            except CowfsError as e:
                out.append(e)
        return out
