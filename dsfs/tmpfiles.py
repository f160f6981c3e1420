"""Temp files under ``<cache_dir>/tmp`` that a killed process does not leave behind for ever.

A temp file (a chunk being packed, a change-set or chunk being downloaded, bytes written through
``dsfs://`` waiting for their change-set) is made by ``make``, which holds a shared ``flock`` on
it through the descriptor it returns; the maker keeps that descriptor open for as long as the file
is in use. The kernel drops the lock when its process ends, however it ends (``kill -9``
included), and a lock is seen by every process on the machine, whatever its PID namespace, so a
container sharing the cache folder counts too. ``sweep`` deletes the files of the folder that
nobody holds and that have not changed for ``GRACE`` seconds (the grace covers the instant
between a file's creation and its lock, and files of a dsfs from before these locks).
``Repository`` sweeps its temp folder when it is made, so any dsfs command or SDK call cleans up
after the ones that were killed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .store.base import ObjectStore

GRACE = 3600.0


def make(folder: str, prefix: str, suffix: str = "") -> tuple[int, str]:
    """A new temp file in ``folder``: (its descriptor, holding the file's lock; its path)."""
    for attempt in range(2):
        os.makedirs(folder, exist_ok=True)
        try:
            fd, path = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=suffix)
            break
        except FileNotFoundError:  # a sweep took the (empty, long unchanged) folder just now
            if attempt:
                raise
    _lock(fd)
    return fd, path


def hold(path: str) -> int:
    """A descriptor holding ``path``'s lock (for a file whose first descriptor is closed while
    the file is still needed)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    _lock(fd)
    return fd


def _lock(fd: int) -> None:
    """Take the shared lock. A filesystem without flock (some network ones say ENOLCK) gets none:
    the file works as ever, and ``sweep``, which cannot lock there either, never removes it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
    except OSError:
        pass


@contextlib.contextmanager
def downloaded(store: ObjectStore, key: str, folder: str, prefix: str) -> Iterator[str]:
    """The object ``key`` of ``store`` in a held temp file of ``folder`` for the ``with`` block,
    deleted after it. The download may write a file of its own and rename it over the one made
    here (boto3 does): the file at the path is held again once it is there."""
    held, path = make(folder, prefix)
    try:
        store.download_file(key, path)
        close(held)
        held = hold(path)
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        close(held)


def sweep(folder: str, grace: float = GRACE) -> list[str]:
    """Delete the files in ``folder``, and in its folders (a packer's), that nobody holds and
    that are older than ``grace`` seconds, and those folders once empty and as old; the paths
    deleted. Never raises: what it cannot look at is left alone."""
    return _sweep_files(folder, time.time() - grace, depth=1)


def _sweep_files(folder: str, cutoff: float, depth: int) -> list[str]:
    removed: list[str] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        try:
            if depth and entry.is_dir(follow_symlinks=False):
                old = entry.stat(follow_symlinks=False).st_mtime <= cutoff  # before its files go
                removed += _sweep_files(entry.path, cutoff, depth - 1)
                if old:
                    os.rmdir(entry.path)  # only if empty
                    removed.append(entry.path)
                continue
            if not entry.is_file(follow_symlinks=False) or entry.stat(follow_symlinks=False).st_mtime > cutoff:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live process: in use
            os.unlink(entry.path)
            removed.append(entry.path)
        except OSError:
            pass
        finally:
            os.close(fd)
    return removed


def close(fd: int | None) -> None:
    """Close a descriptor ``make`` or ``hold`` gave (None: nothing), letting the lock go."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)
