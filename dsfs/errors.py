"""The dsfs error tree.

Every error a user can cause or meet is a ``DsfsError`` subclass that knows its errno (what a
FUSE handler answers) and its CLI exit code. Messages are short, lowercase and name the value.
Code raises the most specific class; the bare base class is never raised (a test checks).

Each class is also the built-in exception a Python caller would expect: a bad
value or a taken name is a ``ValueError`` (as the seed's ``raise_if_exists`` promises), what is
missing a ``LookupError``, a write to a published version a ``PermissionError``, trouble with the
store, the disk or a mount an ``OSError`` (its ``errno`` is the class's), and a state that
stopped an operation a ``RuntimeError``.
"""

from __future__ import annotations

import errno as _errno


class DsfsError(Exception):
    """Base of every error dsfs reports to a user."""

    errno: int = _errno.EIO
    exit_code: int = 1


class InvalidInput(DsfsError, ValueError):
    """A bad value: a path that escapes, a malformed ref, a bad option value."""

    errno = _errno.EINVAL
    exit_code = 2


class Ambiguous(InvalidInput):
    pass


class NotFound(DsfsError, LookupError):
    errno = _errno.ENOENT
    exit_code = 3


class Conflict(DsfsError, RuntimeError):
    """A concurrent writer changed a record first, or a lease is held elsewhere."""

    errno = _errno.EBUSY
    exit_code = 4


class AlreadyExists(DsfsError, ValueError):
    """A name or record that must be new is taken. Not a Conflict: a compare-and-swap loop
    retries a Conflict, and retrying cannot free a name."""

    errno = _errno.EEXIST
    exit_code = 4


class Busy(DsfsError, OSError):
    """Something is in use: a mountpoint with open files."""

    errno = _errno.EBUSY
    exit_code = 4


class Corrupt(DsfsError, OSError):
    """Bytes or records in the store are not what their manifest promises."""

    errno = _errno.EIO
    exit_code = 5


class ReadOnly(DsfsError, PermissionError):
    """A write to a published version."""

    errno = _errno.EROFS
    exit_code = 6


class StoreUnavailable(DsfsError, OSError):
    """The object store is missing or could not be reached (after retries)."""

    errno = _errno.EIO
    exit_code = 7


class NoSpace(DsfsError, OSError):
    errno = _errno.ENOSPC
    exit_code = 8


class MountError(DsfsError, OSError):
    """A mount could not be made or ended: a bad mountpoint, FUSE refusing, a daemon gone."""

    exit_code = 9


class NotRecorded(DsfsError, RuntimeError):
    """A draft mount's changes were not recorded; they stay pending for ``dsfs commit --pending``."""

    exit_code = 10


EXIT_CODES = """\
exit codes:
  0   success
  1   other error
  2   usage error or invalid input
  3   not found (dataset, version, path, object)
  4   conflict: a concurrent change, a name taken, a lease held, a busy mountpoint
  5   corrupt data in the store (also: verify found problems)
  6   read-only: the version is published
  7   store unavailable: not found, unreachable, access denied
  8   no space left
  9   mount error
  10  a draft mount's changes were not recorded (run: dsfs commit --pending VERSION)
  130 interrupted (Ctrl-C); 143 terminated (SIGTERM)"""


def from_kind(kind: str | None, message: str) -> DsfsError:
    """An error a mount daemon reported by class name, rebuilt on the caller's side of its
    control socket (so the caller exits with the daemon's code); MountError if unknown."""
    cls = globals().get(kind or "")
    if not (isinstance(cls, type) and issubclass(cls, DsfsError)) or cls is DsfsError:
        cls = MountError
    return cls(message)
