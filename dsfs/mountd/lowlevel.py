"""Adapter: pyfuse3's low-level (inode-based) API on trio.

Handlers run on the trio loop and push every blocking call (SQLite lookups, cache reads that may
hit the network) to worker threads through capacity limiters, so one slow fetch never stalls
other requests. Published data gets keep_cache and long entry/attr timeouts.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os

import pyfuse3
import trio

from ..cache import ReadState
from ..errors import DsfsError
from .view import VersionView

log = logging.getLogger(__name__)

LONG_TIMEOUT = 86400.0
SHORT_TIMEOUT = 1.0
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC


def translate_errors(method):
    """Only FUSEError leaves a handler: a DsfsError becomes its errno, a full staging disk
    ENOSPC, anything unexpected is logged with the operation and inode and becomes EIO."""
    name = method.__name__

    @functools.wraps(method)
    async def handler(self, *args):
        try:
            return await method(self, *args)
        except pyfuse3.FUSEError:
            raise
        except DsfsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s %s: %s", name, args[0] if args else "", exc)
            raise pyfuse3.FUSEError(exc.errno) from None
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                log.error("%s %s: staging area full: %s", name, args[0] if args else "", exc)
                raise pyfuse3.FUSEError(exc.errno) from None
            log.exception("%s(%s) failed", name, args[0] if args else "")
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("%s(%s) failed", name, args[0] if args else "")
            raise pyfuse3.FUSEError(errno.EIO) from None

    return handler


_translate = translate_errors


class LowLevelOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, view: VersionView, *, threads: int = 16) -> None:
        super().__init__()
        self.view = view
        self.meta_limiter = trio.CapacityLimiter(threads)
        self.read_limiter = trio.CapacityLimiter(threads)
        self.timeout = LONG_TIMEOUT if view.immutable else SHORT_TIMEOUT
        self._handles = itertools.count(1)
        self._open: dict[int, tuple] = {}

    async def _meta(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.meta_limiter)

    def _attr(self, node) -> pyfuse3.EntryAttributes:
        fields = self.view.stat_fields(node)
        attr = pyfuse3.EntryAttributes()
        for key, value in fields.items():
            setattr(attr, key, value)
        attr.st_rdev = 0
        attr.entry_timeout = self.timeout
        attr.attr_timeout = self.timeout
        attr.generation = 0
        return attr

    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        try:
            node = await self._meta(self.view.lookup, parent_inode, os.fsdecode(name))
        except DsfsError as exc:
            if exc.errno == errno.ENOENT:
                # A negative entry with a timeout: the kernel remembers that the name is absent.
                attr = pyfuse3.EntryAttributes()
                attr.st_ino = 0
                attr.entry_timeout = self.timeout
                return attr
            raise
        return self._attr(node)

    @_translate
    async def getattr(self, inode, ctx=None):
        return self._attr(await self._meta(self.view.getattr, inode))

    @_translate
    async def readlink(self, inode, ctx):
        node = await self._meta(self.view.getattr, inode)
        return os.fsencode(self.view.readlink(node))

    @_translate
    async def opendir(self, inode, ctx):
        node = await self._meta(self.view.getattr, inode)
        if not node.is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        return inode

    @_translate
    async def readdir(self, fh, start_id, token):
        # Offsets: 1 after '.', 2 after '..', then 2 + the inode of the last child returned.
        # Names are unique per folder and listed in name order, so "after this name" resumes
        # exactly even if the listing is read in several calls.
        node = await self._meta(self.view.getattr, fh)
        if start_id < 1:
            if not pyfuse3.readdir_reply(token, b".", self._attr(node), 1):
                return
        if start_id < 2:
            parent = await self._meta(self.view.getattr, node.parent)
            if not pyfuse3.readdir_reply(token, b"..", self._attr(parent), 2):
                return
        after = None
        if start_id > 2:
            after = (await self._meta(self.view.getattr, start_id - 2)).name
        while True:
            batch = await self._meta(self.view.children, fh, after)
            for child in batch:
                if not pyfuse3.readdir_reply(token, os.fsencode(child.name), self._attr(child), child.ino + 2):
                    return
            if len(batch) < 1000:
                return
            after = batch[-1].name

    async def releasedir(self, fh):
        pass

    @_translate
    async def open(self, inode, flags, ctx):
        if flags & _WRITE_FLAGS:
            raise pyfuse3.FUSEError(errno.EROFS)
        node = await self._meta(self.view.getattr, inode)
        fh = next(self._handles)
        self._open[fh] = (node, ReadState())
        return pyfuse3.FileInfo(fh=fh, keep_cache=self.view.immutable, direct_io=False)

    @_translate
    async def read(self, fh, off, size):
        node, state = self._open[fh]
        return await trio.to_thread.run_sync(self.view.read, node, off, size, state,
                                             limiter=self.read_limiter)

    async def release(self, fh):
        self._open.pop(fh, None)

    async def forget(self, inode_list):
        pass  # inodes are rows of an immutable index: nothing to free

    @_translate
    async def getxattr(self, inode, name, ctx):
        node = await self._meta(self.view.getattr, inode)
        return self.view.getxattr(node, os.fsdecode(name))

    @_translate
    async def listxattr(self, inode, ctx):
        node = await self._meta(self.view.getattr, inode)
        return [os.fsencode(n) for n in self.view.xattrs(node)]

    @_translate
    async def statfs(self, ctx):
        fields = self.view.statfs()
        data = pyfuse3.StatvfsData()
        for key, value in fields.items():
            setattr(data, key, value)
        return data

    @_translate
    async def access(self, inode, mode, ctx):
        if mode & os.W_OK:
            raise pyfuse3.FUSEError(errno.EROFS)
        return True


def serve(view: VersionView, mountpoint: str, options: list[str], on_ready) -> None:
    """Mount and serve until unmounted (blocking; runs its own trio loop)."""
    ops = LowLevelOperations(view)
    fuse_options = set(pyfuse3.default_options)
    fuse_options.update({"subtype=dsfs", "ro", *options})
    if not any(o.startswith("fsname=") for o in fuse_options):
        fuse_options.add("fsname=dsfs")
    pyfuse3.init(ops, mountpoint, fuse_options)
    try:
        trio.run(_main, on_ready)
    finally:
        pyfuse3.close(unmount=True)


async def _main(on_ready) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    import signal

    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            log.info("signal %d: unmounting", signum)
            pyfuse3.terminate()
            return
