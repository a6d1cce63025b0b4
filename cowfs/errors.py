"""The errors cowfs raises on purpose.

Every error the user can cause is a `CowfsError`: the CLI prints its message as one line and exits
with its `exit_code`; the mount maps it to an errno. Anything else escaping is a bug.
"""

from __future__ import annotations

import errno


class CowfsError(Exception):
    exit_code = 1
    errno = errno.EIO


class UsageError(CowfsError):
    """The request itself is malformed: a bad name, a bad path, a bad ref."""

    exit_code = 2
    errno = errno.EINVAL


class NameTooLong(UsageError):
    """A path component over 255 bytes or a path over 4,096 (the lake's limits, in `names`)."""

    errno = errno.ENAMETOOLONG


class NotFound(CowfsError):
    errno = errno.ENOENT


class AlreadyExists(CowfsError):
    errno = errno.EEXIST


class Conflict(CowfsError):
    """A compare-and-swap lost: someone else moved the ref first."""

    errno = errno.EAGAIN


class CorruptObject(CowfsError):
    """An object's bytes do not hash to its address, or do not decode."""

    errno = errno.EIO


class StoreUnavailable(CowfsError):
    """The object store cannot be reached or refused the request."""

    errno = errno.EIO


class ObjectMissing(NotFound):
    """A key that must exist in the object store does not.

    Under the mount this is an I/O error of the store, not a missing name: EIO, not ENOENT.
    """

    errno = errno.EIO


class Damaged(CowfsError):
    """The store is inconsistent in a way no operation of cowfs leaves it: a branch that had
    commits lost its ref, a ref names a missing commit. Reported, never repaired silently."""

    errno = errno.EIO


class ReadOnly(CowfsError, PermissionError):
    """A write aimed at something immutable: a commit, or an ancestor like `main^`.

    Also a `PermissionError`, so fsspec callers (pandas, PyArrow) see the error they expect.
    """

    errno = errno.EROFS
