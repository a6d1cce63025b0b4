"""A PyTorch `Dataset` over one commit of a repo (`pip install 'cowfs[torch]'`).

The dataset resolves its ref once, when it is made, and keeps the commit id: every epoch and
every `DataLoader` worker then reads exactly the same files, and `dataset.lineage` records which
data a model saw. It reads either straight from the store (no mount needed: a notebook, a
container without `/dev/fuse`) or through a mount, from the commit's immutable view
`<mount>/<repo>/@<commit>/`. Connections are opened lazily in each process, so forked
`DataLoader` workers (`num_workers>0`) each get their own instead of sharing the parent's.
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable
from typing import Any

from torch.utils.data import Dataset as _TorchDataset

from cowfs.api import Client, connect
from cowfs.entries import Entry
from cowfs.refs import parse_ref


class Dataset(_TorchDataset):
    """Map-style: item `i` is `transform(bytes, path)` of the i-th file (path order), or
    `(path, bytes)` without a transform.

    `ref` is `repo@branch`, `repo@<commit>` or with a path, `repo@main:/train`. `pattern`
    keeps files whose path relative to that directory matches it (`*.jpg`, `cats/*`).
    `mount` (e.g. "/pfs") reads through that mount instead of from the store."""

    def __init__(
        self,
        ref: str,
        *,
        pattern: str = "*",
        transform: Callable[[bytes, str], Any] | None = None,
        store: str | None = None,
        mount: str | os.PathLike[str] | None = None,
    ) -> None:
        parsed = parse_ref(ref)
        self.store = store
        self.mount = os.fspath(mount) if mount is not None else None
        self.transform = transform
        client = connect(store)
        try:
            commit = client.resolve(parsed)
            top = parsed.path
            cut = len(top) + 1 if top else 0
            self.entries: list[Entry] = [
                e
                for e in client.lake.walk(commit, top)
                if e.is_file and fnmatch.fnmatchcase(e.path[cut:], pattern)
            ]
        finally:
            client.close()
        self.repo = commit.repo
        self.commit_id = commit.id
        self.global_id = commit.global_id
        self._client: Client | None = None

    @property
    def lineage(self) -> dict[str, str]:
        """What to store beside a trained model: the exact data it was trained on."""
        return {"repo": self.repo, "commit": self.commit_id, "global_id": self.global_id}

    @property
    def paths(self) -> list[str]:
        return [e.path for e in self.entries]

    def __len__(self) -> int:
        return len(self.entries)

    def read(self, i: int) -> bytes:
        entry = self.entries[i]
        if self.mount is not None:
            path = os.path.join(self.mount, self.repo, f"@{self.commit_id}", entry.path)
            with open(path, "rb") as f:
                return f.read()
        return self._connection().read_entry(entry)

    def __getitem__(self, i: int) -> Any:
        data = self.read(i)
        path = self.entries[i].path
        return self.transform(data, path) if self.transform else (path, data)

    def _connection(self) -> Client:
        c = self._client
        if c is None or c.pid != os.getpid():
            c = self._client = connect(self.store)
        return c

    def __getstate__(self) -> dict[str, Any]:
        """Workers started by spawn get the file list, never the parent's connection."""
        state = dict(self.__dict__)
        state["_client"] = None
        return state
