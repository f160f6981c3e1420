"""Adapter: libfuse's high-level (path-based) API through mfusepy, for published versions.

Why this adapter for immutable data: open() answers ENOSYS, which with the kernel's no_open
support stops open/release round trips into Python for the whole mount while the page cache is
kept, and read() still gets the path. Warm re-reads (the second training epoch) then run at
near page-cache speed. libfuse runs handlers in its own worker threads; the view is thread-safe.
"""

from __future__ import annotations

import errno
import functools
import logging
import stat

import mfusepy

from ..errors import DsfsError
from .view import VersionView

log = logging.getLogger(__name__)

LONG_TIMEOUT = 86400.0
_TYPE_BITS = {"file": stat.S_IFREG, "dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}


def _translate(method):
    """Only FuseOSError leaves a handler; anything unexpected is logged and becomes EIO."""
    name = method.__name__

    @functools.wraps(method)
    def handler(self, path, *args):
        try:
            return method(self, path, *args)
        except mfusepy.FuseOSError:
            raise
        except DsfsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s %s: %s", name, path, exc)
            raise mfusepy.FuseOSError(exc.errno) from None
        except Exception:
            log.exception("%s %s failed", name, path)
            raise mfusepy.FuseOSError(errno.EIO) from None

    return handler


class HighLevelOperations(mfusepy.Operations):
    use_ns = True

    def __init__(self, view: VersionView, on_ready=None) -> None:
        self.view = view
        self.on_ready = on_ready

    def init_with_config(self, conn_info, config) -> None:
        if config is not None:
            config.use_ino = 1
            config.readdir_ino = 1
            config.kernel_cache = 1
            config.entry_timeout = LONG_TIMEOUT
            config.attr_timeout = LONG_TIMEOUT
            config.negative_timeout = LONG_TIMEOUT
        if self.on_ready is not None:
            self.on_ready()

    def _stat(self, node) -> dict:
        fields = self.view.stat_fields(node)
        for key in ("st_mtime", "st_ctime", "st_atime"):
            fields[key] = fields.pop(key + "_ns")
        return fields

    @_translate
    def getattr(self, path, fh=None):
        return self._stat(self.view.by_path(path))

    @_translate
    def readdir(self, path, fh):
        node = self.view.by_path(path)
        folder = self._stat(node)["st_mode"]
        yield ".", {"st_ino": node.ino, "st_mode": folder}, 0
        yield "..", {"st_ino": node.parent, "st_mode": folder}, 0
        after = None
        while True:
            batch = self.view.children(node.ino, after)
            for child in batch:
                # readdir only passes the type bits and inode on; a full stat would be wasted.
                yield child.name, {"st_ino": child.ino, "st_mode": _TYPE_BITS[child.type]}, 0
            if len(batch) < 1000:
                return
            after = batch[-1].name

    def open(self, path, flags):
        raise mfusepy.FuseOSError(errno.ENOSYS)

    def opendir(self, path):
        return 0  # defined (not inherited) so that libfuse calls _FUSE.opendir, which asks
        # the kernel to cache the listing

    @_translate
    def read(self, path, size, offset, fh):
        return self.view.read(self.view.by_path(path), offset, size)

    @_translate
    def readlink(self, path):
        return self.view.readlink(self.view.by_path(path))

    @_translate
    def getxattr(self, path, name, position=0):
        return self.view.getxattr(self.view.by_path(path), name)

    @_translate
    def listxattr(self, path):
        return list(self.view.xattrs(self.view.by_path(path)))

    @_translate
    def statfs(self, path):
        return self.view.statfs()

    def destroy(self, path) -> None:
        pass


class _FUSE(mfusepy.FUSE):
    """mfusepy's FUSE, plus kernel caching of folder listings: an immutable version's folders
    never change, so the kernel may keep their readdir results (FOPEN_CACHE_DIR)."""

    def opendir(self, path, fip):
        result = super().opendir(path, fip)
        fip.contents.cache_readdir = 1
        fip.contents.keep_cache = 1
        return result


def serve(view: VersionView, mountpoint: str, options: dict, on_ready) -> None:
    """Mount and serve until unmounted (blocking)."""
    ops = HighLevelOperations(view, on_ready)
    try:
        _FUSE(ops, mountpoint, foreground=True, nothreads=False, ro=True, default_permissions=True,
                     fsname=options.pop("fsname", "dsfs"), subtype="dsfs", **options)
    except RuntimeError as exc:
        # libfuse's loop reports a stop by SIGTERM/SIGINT as status 8 after it has unmounted
        # cleanly; that is the normal way systemd stops us, not a failure.
        from .registry import mount_fstype

        if str(exc) != "8" or mount_fstype(mountpoint) is not None:
            raise
