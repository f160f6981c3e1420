"""Find and load libfuse 3 for the published-mount adapter, whatever else is installed.

mfusepy (where the ABI-matched ctypes structures come from) binds the first library it finds at
import time, and on a machine that also has libfuse 2 (AppImage support, fuse-zip, sshfs) that is
``libfuse.so.2``, which has no low-level ``fuse_add_direntry_plus``. So dsfs loads libfuse 3 by
its soname, falls back to a search that accepts only a library reporting major version 3, and
then imports mfusepy bound to exactly that file. FUSE_LIBRARY_PATH and FUSE_LIBRARY_NAME are left
as they were for other programs; they never choose dsfs's library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import importlib
import os
import sys
from collections.abc import Iterator

from ..errors import MountError

SONAME = "libfuse3.so.3"
_SEARCH = ("/usr/lib/*-linux-gnu", "/lib/*-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib",
           "/lib", "/usr/local/lib", "/usr/local/lib64")
MISSING = ("libfuse 3 not found: install the fuse3 package "
           "(Debian/Ubuntu: apt-get install fuse3; Fedora: dnf install fuse3-libs)")


class LibfuseMissing(MountError):
    """No libfuse 3 on this machine (libfuse 2 does not count)."""


def major_version(path: str) -> int | None:
    """The major version a library file reports through ``fuse_version()``, or None."""
    try:
        lib = ctypes.CDLL(path)
        version = lib.fuse_version()
    except (OSError, AttributeError):
        return None
    return version // 100 if version >= 100 else version // 10


def candidates() -> list[str]:
    """Where libfuse 3 may be, best first: its soname (the dynamic loader's own search), what
    ldconfig knows as ``fuse3``, then the usual library folders."""
    return list(dict.fromkeys(_search()))


def _search() -> Iterator[str]:
    # Lazily: the soname almost always loads, and the rest costs an ``ldconfig -p`` run and a
    # scan of the library folders (a mount's start-up would pay for them).
    yield SONAME
    by_name = ctypes.util.find_library("fuse3")
    if by_name:
        yield by_name
    for folder in _SEARCH:
        yield from sorted(glob.glob(os.path.join(folder, "libfuse3.so*")), reverse=True)


_found: str | None = None


def find(paths: list[str] | None = None) -> str:
    """The first of ``paths`` (default: ``candidates()``, searched lazily and remembered) that
    loads and is libfuse 3."""
    global _found
    if paths is None and _found is not None:
        return _found
    for path in _search() if paths is None else paths:
        if major_version(path) == 3:
            if paths is None:
                _found = path
            return path
    raise LibfuseMissing(MISSING)


def mfusepy_bound_to_libfuse3():
    """mfusepy, imported (or re-imported) so that its structures and library are libfuse 3's."""
    path = find()
    module = sys.modules.get("mfusepy")
    if module is not None and module.fuse_version_major == 3:
        return module
    saved = {k: os.environ.pop(k, None) for k in ("FUSE_LIBRARY_PATH", "FUSE_LIBRARY_NAME")}
    os.environ["FUSE_LIBRARY_PATH"] = path
    try:
        module = importlib.reload(module) if module is not None else importlib.import_module("mfusepy")
    finally:
        del os.environ["FUSE_LIBRARY_PATH"]
        os.environ.update({k: v for k, v in saved.items() if v is not None})
    if module.fuse_version_major != 3:  # pragma: no cover - find() checked the file
        raise LibfuseMissing(MISSING)
    return module
