"""Which repo, ref and path an S3 bucket and key name: both bucket forms, and key rules.

- `s3://<repo>/<ref>/<path>`: the bucket is a repo, the key's first component a branch, tag or
  commit id (lakeFS's convention).
- `s3://<ref>.<repo>/<path>`: the bucket names the ref, keys are plain paths (Pachyderm's), for
  tools that want a plain bucket. Repo and branch names may hold dots, so a bucket that is a
  repo's name is that repo; otherwise the first split whose right side is an existing repo wins.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cowfs.errors import CowfsError
from cowfs.names import check_name, normalize_path
from cowfs.s3gateway.errors import S3Error


@dataclass(frozen=True)
class Bucket:
    name: str
    repo: str
    #: The ref the bucket names (`<ref>.<repo>`), or None when keys start with the ref.
    ref: str | None = None


@dataclass(frozen=True)
class Location:
    repo: str
    ref: str
    #: The tree key ("" for the root).
    path: str
    #: What precedes a tree path in this bucket's keys: "main/" in repo form, "" otherwise.
    key_prefix: str
    #: The key ended in "/": a folder marker, a directory rather than a file.
    is_folder: bool = False

    def key_of(self, path: str) -> str:
        return self.key_prefix + path


def parse_bucket(name: str, is_repo: Callable[[str], bool]) -> Bucket | None:
    """The bucket `name` means, or None when no repo answers to it."""
    if _valid(name) and is_repo(name):
        return Bucket(name, name)
    for i, c in enumerate(name):
        if c == "." and i > 0:
            ref, repo = name[:i], name[i + 1 :]
            if _valid(ref) and _valid(repo) and is_repo(repo):
                return Bucket(name, repo, ref)
    return None


def new_bucket(name: str) -> Bucket:
    """The bucket a CreateBucket of `name` makes: `<repo>`, or `<branch>.<repo>` split at the
    first dot when `name` is not a valid repo name on its own."""
    ref, dot, repo = name.partition(".")
    if dot and _valid(ref) and _valid(repo):
        return Bucket(name, repo, ref)
    if _valid(name):
        return Bucket(name, name)
    raise S3Error("InvalidBucketName", f"{name!r} is not <repo> or <branch>.<repo>")


def locate(bucket: Bucket, key: str) -> Location:
    """The repo, ref and tree path of `key` in `bucket`; keys are checked like every path."""
    if bucket.ref is not None:
        path, folder = _path(key)
        return Location(bucket.repo, bucket.ref, path, "", folder)
    ref, slash, rest = key.partition("/")
    if not slash or not _valid(ref):
        raise S3Error(
            "NoSuchKey" if not slash else "InvalidArgument",
            f"keys of bucket {bucket.name} are <ref>/<path> (branch, tag or commit first): {key!r}",
        )
    path, folder = _path(rest) if rest else ("", True)
    return Location(bucket.repo, ref, path, f"{ref}/", folder)


def _path(key: str) -> tuple[str, bool]:
    folder = key.endswith("/")
    body = key[:-1] if folder else key
    try:
        path = normalize_path(body)
    except CowfsError as e:
        from cowfs.s3gateway.errors import from_cowfs

        raise from_cowfs(e) from None
    if path != body or (not path and not folder):
        raise S3Error(
            "InvalidArgument",
            f"invalid key {key!r}: empty components and a leading '/' are not allowed",
        )
    return path, folder


def _valid(name: str) -> bool:
    try:
        check_name(name)
    except CowfsError:
        return False
    return True
