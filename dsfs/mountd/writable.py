"""Adapter: a writable draft mount, pyfuse3 on trio, over the draft's view (dsfs/draft/view.py).

Handlers only translate: requests into ``DraftView`` calls, its answers into replies, its
errors into errnos. Calls that move file data (reads, writes, closes, copy-up fetches) run in
worker threads behind a capacity limiter; the short metadata ones (lookup, stat, folder entries)
run on the loop when the overlay's lock is free, since a hop to a worker thread costs more than
they do, and in a worker when it is not.

Nodes of the draft's base that the overlay never touched are immutable until changed through
this mount, and the kernel learns of every such change itself: their names and attributes are
cached for a day and their pages kept across opens, as on a published mount.
"""

from __future__ import annotations

import itertools
import logging
import os

import pyfuse3
import trio

from ..draft.overlay import Attr
from ..draft.view import DraftView, Handle, Listing
from . import controld
from .lowlevel import LONG_TIMEOUT, _stop_on_signal
from .lowlevel import translate_errors as _translate
from ..xattrs import DatasetOf

log = logging.getLogger(__name__)

TIMEOUT = 1.0


class WritableOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # +1 setattr per small file (measured): more requests, not fewer
    enable_acl = False

    def __init__(self, view: DraftView, threads: int = 8) -> None:
        super().__init__()
        self.view = view
        self.limiter = trio.CapacityLimiter(threads)
        self._handles = itertools.count(1)
        self._files: dict[int, Handle] = {}
        self._dirs: dict[int, Listing] = {}
        self._lookups: dict[int, int] = {}  # inode -> the kernel's lookup count

    def _known(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """An entry the kernel will hold a reference to until it forgets it."""
        self._lookups[entry.st_ino] = self._lookups.get(entry.st_ino, 0) + 1
        return entry

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _quick(self, fn, *args):
        """A short metadata call: on the loop if the overlay's lock is free, else in a worker."""
        lock = self.view.lock
        if lock.acquire(blocking=False):
            try:
                return fn(*args)
            finally:
                lock.release()
        return await self._run(fn, *args)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        self.view.stat_into(attr, e)
        e.entry_timeout = e.attr_timeout = LONG_TIMEOUT if attr.pristine else TIMEOUT
        e.generation = 0
        return e

    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        return self._known(self._entry(await self._quick(self.view.lookup, parent_inode, os.fsdecode(name))))

    async def forget(self, inode_list):
        gone = []
        for inode, nlookup in inode_list:
            left = self._lookups.pop(inode, 0) - nlookup
            if left > 0:
                self._lookups[inode] = left
            elif self.view.is_detached(inode):
                gone.append(inode)
        if gone:
            try:
                await self._run(self.view.forget, gone)
            except Exception:  # forget answers no request: nothing may leave it
                log.exception("forget(%s) failed", gone)

    @_translate
    async def getattr(self, inode, ctx=None):
        return self._entry(await self._quick(self.view.getattr, inode))

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        changes = {
            "mode": attr.st_mode & 0o7777 if fields.update_mode else None,
            "mtime_ns": attr.st_mtime_ns if fields.update_mtime else None,
            "atime_ns": attr.st_atime_ns if fields.update_atime else None,
            "size": attr.st_size if fields.update_size else None,
            "uid": attr.st_uid if fields.update_uid else None,
            "gid": attr.st_gid if fields.update_gid else None,
        }
        return self._entry(await self._run(lambda: self.view.setattr(inode, **changes)))

    @_translate
    async def readlink(self, inode, ctx):
        return os.fsencode(await self._run(self.view.readlink, inode))

    @_translate
    async def opendir(self, inode, ctx):
        fh = next(self._handles)
        self._dirs[fh] = await self._run(self.view.opendir, inode)
        return fh

    @_translate
    async def readdir(self, fh, start_id, token):
        listing = self._dirs[fh]
        for index in range(start_id, len(listing)):
            found = await self._quick(self.view.dir_entry, listing, index)
            if found is None:
                continue  # removed since opendir
            name, attr = found
            entry = self._entry(attr)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, index + 1):
                return
            if name not in (".", ".."):  # the kernel keeps a reference to every other entry
                self._known(entry)

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @_translate
    async def open(self, inode, flags, ctx):
        call = self._run if self.view.writes(flags) else self._quick
        handle = await call(self.view.open, inode, flags)
        fh = next(self._handles)
        self._files[fh] = handle
        # A pristine file's pages stay valid; any other's may have changed since they were read.
        return pyfuse3.FileInfo(fh=fh, keep_cache=handle.pristine is not None, direct_io=False)

    @_translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        handle, attr = await self._run(self.view.create, parent_inode, os.fsdecode(name), mode)
        fh = next(self._handles)
        self._files[fh] = handle
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self._known(self._entry(attr))

    @_translate
    async def read(self, fh, off, size):
        return await self._run(self.view.read, self._files[fh], off, size)

    @_translate
    async def write(self, fh, off, buf):
        return await self._run(self.view.write, self._files[fh], off, buf)

    @_translate
    async def flush(self, fh):
        handle = self._files[fh]
        if handle.writable:
            await self._run(self.view.flush, handle)

    @_translate
    async def release(self, fh):
        handle = self._files.pop(fh)
        if not self.view.release_quickly(handle):
            await self._run(self.view.release, handle)

    @_translate
    async def fsync(self, fh, datasync):
        await self._run(self.view.fsync, self._files[fh])

    @_translate
    async def fsyncdir(self, fh, datasync):
        await self._run(self.view.sync)

    @_translate
    async def unlink(self, parent_inode, name, ctx):
        await self._run(self.view.unlink, parent_inode, os.fsdecode(name))

    @_translate
    async def rmdir(self, parent_inode, name, ctx):
        await self._run(self.view.rmdir, parent_inode, os.fsdecode(name))

    @_translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        attr = await self._run(self.view.mkdir, parent_inode, os.fsdecode(name), mode)
        return self._known(self._entry(attr))

    @_translate
    async def symlink(self, parent_inode, name, target, ctx):
        return self._known(self._entry(await self._run(self.view.symlink, parent_inode, os.fsdecode(name),
                                                       os.fsdecode(target))))

    @_translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run(self.view.rename, parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                        os.fsdecode(name_new), flags)

    @_translate
    async def link(self, inode, new_parent_inode, new_name, ctx):
        self.view.link()

    @_translate
    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        self.view.mknod()

    @_translate
    async def getxattr(self, inode, name, ctx):
        name = os.fsdecode(name)
        if not self.view.may_have_xattr(name):  # answered on the loop: asked before every write
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return await self._run(self.view.getxattr, inode, name)

    @_translate
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in await self._run(self.view.xattrs, inode)]

    @_translate
    async def setxattr(self, inode, name, value, ctx):
        self.view.setxattr()

    @_translate
    async def removexattr(self, inode, name, ctx):
        self.view.setxattr()

    @_translate
    async def statfs(self, ctx):
        data = pyfuse3.StatvfsData()
        for key, value in self.view.statfs().items():
            setattr(data, key, value)
        return data


class _GoneReplies(logging.Filter):
    """pyfuse3 logs an ERROR when a reply finds no request: the kernel dropped it (an interrupted
    call, or a release at the unmount). Nothing is lost (``Overlay.release_all``): say it quietly."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "fuse_reply_* failed with No such file or directory" in record.getMessage():
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def serve(session, mountpoint: str, options: list[str], on_ready) -> None:
    """Mount a draft writable and serve until unmounted (blocking; its own trio loop)."""
    logging.getLogger("pyfuse3").addFilter(_GoneReplies())
    manifest = session.repo.catalog.version(session.version_id)
    ops = WritableOperations(DraftView(session.overlay, manifest, DatasetOf(session.repo.store, manifest)))
    fuse_options = set(pyfuse3.default_options)
    fuse_options.update({"subtype=dsfs", *options})
    if not any(o.startswith("fsname=") for o in fuse_options):
        fuse_options.add("fsname=dsfs")
    fuse_options.discard("ro")
    pyfuse3.init(ops, mountpoint, fuse_options)
    try:
        trio.run(_main, session, mountpoint, on_ready)
    finally:
        pyfuse3.close(unmount=True)


async def _main(session, mountpoint: str, on_ready) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await nursery.start(controld.serve, session, mountpoint)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()
