"""What every operation shares: the lake, the request's parts, and bucket and ref resolution.

Everything here is blocking (it reads the store) and runs in a worker thread; handlers keep
the event loop for the network.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from starlette.requests import Request

from cowfs import tree
from cowfs.commits import Commit
from cowfs.config import state_dir
from cowfs.entries import Entry
from cowfs.lake import Lake
from cowfs.names import ancestors
from cowfs.reader import ChunkReader
from cowfs.s3gateway.batch import Committer
from cowfs.s3gateway.buckets import Bucket, Location, parse_bucket
from cowfs.s3gateway.config import AccessKey, GatewayConfig
from cowfs.s3gateway.errors import S3Error
from cowfs.s3gateway.ingest import Limits
from cowfs.s3gateway.metrics import COMMITS, WRITES
from cowfs.s3gateway.multipart import Uploads
from cowfs.s3gateway.refcache import COMMIT_TTL_S, HEAD_TTL_S, MISSING, REPO_TTL_S, TtlCache
from cowfs.s3gateway.sigv4 import Verified

#: Chunks the gateway keeps in memory for reads (packed small files share them).
READER_MEMORY = 128 << 20


@dataclass
class Call:
    """One request, taken apart."""

    request: Request
    method: str
    bucket: str
    key: str
    query: Mapping[str, str]
    headers: Mapping[str, str]
    op: str = "Unknown"
    access: AccessKey | None = None
    verified: Verified | None = None
    bytes_in: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def resource(self) -> str:
        return "/" + self.bucket + ("/" + self.key if self.key else "")


class Gateway:
    def __init__(self, lake: Lake, cfg: GatewayConfig) -> None:
        self.lake = lake
        self.cfg = cfg
        self.store = lake.store
        self.reader = ChunkReader(lake.store, memory=READER_MEMORY)

        def landed(n: int) -> None:
            COMMITS.inc()
            WRITES.inc(n)

        self.committer = Committer(lake, cfg.batch_window, landed)
        root = cfg.state_dir or Path(state_dir()) / "s3" / "uploads"
        root.mkdir(parents=True, exist_ok=True)
        self.uploads = Uploads(root)
        self.cache = TtlCache()
        self.limits = Limits()

    def close(self) -> None:
        self.reader.close()

    # --- buckets and refs ----------------------------------------------------------------------

    def is_repo(self, name: str) -> bool:
        hit = self.cache.get(("repo", name))
        if hit is not MISSING:
            return hit  # type: ignore[return-value]
        found = self.lake.incarnation(name) is not None  # a repo being deleted is gone
        # "no such repo" is asked on every `<ref>.<repo>` request (is the whole name a repo?),
        # so it is remembered too, for as long as a branch head.
        self.cache.put(("repo", name), found, REPO_TTL_S if found else HEAD_TTL_S)
        return found

    def resolve(self, repo: str, ref: str) -> Commit | None:
        """The commit `repo@ref` names (a branch's head, or a commit by id or prefix)."""
        key = ("ref", repo, ref)
        hit = self.cache.get(key)
        if hit is not MISSING:
            return hit  # type: ignore[return-value]
        gen = self.cache.generation(key)
        cid = self.lake.head_id(repo, ref)
        if cid is not None:
            commit = self.lake.get_commit(repo, cid)
            self.cache.put(key, commit, HEAD_TTL_S, gen)
            return commit
        commit = self.lake.find_commit(repo, ref)
        if commit is not None:
            # A full commit id never changes what it names; a tag or an id prefix might.
            self.cache.put(key, commit, COMMIT_TTL_S if commit.id == ref else HEAD_TTL_S, gen)
        return commit

    def note_head(self, repo: str, branch: str) -> None:
        """A write through this gateway moved a branch: the next read looks at the store, so
        every client of this gateway reads its own writes (whichever of two racing writes
        finished last)."""
        self.cache.drop(("ref", repo, branch))

    def bucket(self, name: str) -> Bucket:
        b = parse_bucket(name, self.is_repo)
        if b is None:
            raise S3Error(
                "NoSuchBucket",
                f"no repo behind bucket {name!r}: buckets are <repo> or <ref>.<repo>",
            )
        return b

    def can_read(self, access: AccessKey, repo: str) -> None:
        if not access.can_read(repo):
            who = f"access key {access.access_key}" if access.access_key else "anonymous access"
            raise S3Error("AccessDenied", f"{who} may not read repo {repo}")

    def root_of(self, repo: str, ref: str, missing: str = "NoSuchKey") -> str | None:
        """The tree root `repo@ref` names; None for a branch that has no commit yet (a repo with
        no branches at all, as CreateBucket leaves it)."""
        commit = self.resolve(repo, ref)
        if commit is not None:
            return commit.tree
        if not self.lake.branches(repo):
            return None
        raise S3Error(missing, f"{repo}@{ref} is neither a branch nor a commit")

    def commit_of(self, repo: str, ref: str, missing: str = "NoSuchKey") -> Commit:
        commit = self.resolve(repo, ref)
        if commit is None:
            raise S3Error(missing, f"{repo}@{ref} is neither a branch nor a commit")
        return commit

    def check_writable(self, access: AccessKey, repo: str, ref: str, missing: str) -> str | None:
        """Refuse writes to commits and to branches that do not exist; returns the head's tree."""
        if not access.can_write(repo):
            who = f"access key {access.access_key}" if access.access_key else "anonymous access"
            why = "read-only" if access.can_read(repo) else "not allowed"
            raise S3Error("AccessDenied", f"{who} may not write repo {repo} ({why})")
        head = self.lake.head(repo, ref)
        if head is not None:
            return head.tree
        found = self.lake.find_commit(repo, ref)
        if found is not None:
            what = "is commit" if found.id == ref else "names commit"
            raise S3Error(
                "AccessDenied",
                f"{repo}@{ref} {what} {found.id}: commits are read-only, write to a branch",
            )
        if not self.lake.branches(repo):
            return None
        raise S3Error(
            missing,
            f"no branch {ref} in repo {repo}: create it with CreateBucket {ref}.{repo} "
            f"or `cowfs branch create {repo}@{ref} --from {repo}@main`",
        )

    def lookup(self, root: str | None, path: str) -> Entry | None:
        if root is None or not path:
            return None
        return tree.lookup(self.store, root, path)

    def iter_from(self, root: str | None) -> Callable[[str], Iterator[Entry]]:
        def it(start: str) -> Iterator[Entry]:
            return iter(()) if root is None else tree.iter_from(self.store, root, start)

        return it

    def check_clash(self, root: str | None, loc: Location) -> None:
        """S3 allows `a` and `a/b` both as keys; a filesystem does not. Refuse rather than let
        one silently replace the other."""
        if root is None:
            return
        for anc in ancestors(loc.path):
            e = tree.lookup(self.store, root, anc)
            if e is None:
                break
            if not e.is_dir:
                raise S3Error(
                    "InvalidArgument",
                    f"{loc.key_of(anc)} is a file, so {loc.key_of(loc.path)} cannot be a key "
                    "under it (a path is a file or a folder, not both)",
                )
        here = tree.lookup(self.store, root, loc.path)
        if here is not None and here.is_dir and not loc.is_folder:
            for e in tree.iter_under(self.store, root, loc.path):
                if e.path != loc.path:
                    raise S3Error(
                        "InvalidArgument",
                        f"{loc.key_of(loc.path)}/ is a folder with objects in it: "
                        "it cannot also be a file",
                    )
