"""The dsfs error tree.

Every error a user can cause or meet is a ``DsfsError`` subclass that knows its errno (what a
FUSE handler answers) and its CLI exit code. Messages are short, lowercase and name the value.
"""

from __future__ import annotations

import errno as _errno


class DsfsError(Exception):
    """Base of every error dsfs reports to a user."""

    errno: int = _errno.EIO
    exit_code: int = 1


class NotFound(DsfsError):
    errno = _errno.ENOENT


class AlreadyExists(DsfsError):
    errno = _errno.EEXIST


class Conflict(DsfsError):
    """A concurrent writer changed a record first, or a lease is held elsewhere."""

    errno = _errno.EBUSY


class InvalidInput(DsfsError):
    """A bad value: a path that escapes, a malformed ref, a bad option value."""

    errno = _errno.EINVAL


class Ambiguous(InvalidInput):
    pass


class ReadOnly(DsfsError):
    """A write to a published version."""

    errno = _errno.EROFS


class Corrupt(DsfsError):
    """Bytes or records in the store are not what their manifest promises."""

    errno = _errno.EIO


class StoreUnavailable(DsfsError):
    """The object store could not be reached (after retries)."""

    errno = _errno.EIO


class NoSpace(DsfsError):
    errno = _errno.ENOSPC
