"""Adapter: a writable draft mount, pyfuse3 on trio, over the overlay.

Handlers stay on the trio loop only to translate. Overlay calls that move file data (reads,
writes, closes, copy-up fetches) run in worker threads behind a capacity limiter; the short
metadata ones (lookup, stat, xattrs) run on the loop when the overlay's lock is free, since a
hop to a worker thread costs more than they do, and in a worker when it is not.

Nodes of the draft's base that the overlay never touched are immutable until changed through
this mount, and the kernel learns of every such change itself: their names and attributes are
cached for a day and their pages kept across opens, as on a published mount.
"""

from __future__ import annotations

import errno
import functools
import itertools
import logging
import os

import pyfuse3
import trio

from ..changeset.manifest import FILE, VersionManifest
from ..errors import DsfsError, InvalidInput
from .lowlevel import LONG_TIMEOUT
from .lowlevel import translate_errors as _translate
from ..resolver.index import Node
from ..draft.overlay import Attr, Overlay, stat_mode
from .view import DatasetOf, file_xattrs

log = logging.getLogger(__name__)

TIMEOUT = 1.0
XATTR_PREFIX = "user.dsfs."  # the only extended attributes a draft mount has
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR


class WritableOperations(pyfuse3.Operations):
    supports_dot_lookup = True
    enable_writeback_cache = False  # +1 setattr per small file (measured): more requests, not fewer
    enable_acl = False

    def __init__(self, overlay: Overlay, manifest: VersionManifest, dataset_of: DatasetOf,
                 threads: int = 8) -> None:
        super().__init__()
        self.overlay = overlay
        self.manifest = manifest
        self.dataset_of = dataset_of
        self.limiter = trio.CapacityLimiter(threads)
        self.uid, self.gid = os.getuid(), os.getgid()
        self._handles = itertools.count(1)
        # handle -> (inode, writable, the base node of a read-only handle on a pristine file)
        self._files: dict[int, tuple[int, bool, Node | None]] = {}
        self._dirs: dict[int, list[tuple[str, int]]] = {}
        self._lookups: dict[int, int] = {}  # inode -> the kernel's lookup count

    def _known(self, entry: pyfuse3.EntryAttributes) -> pyfuse3.EntryAttributes:
        """An entry the kernel will hold a reference to until it forgets it."""
        self._lookups[entry.st_ino] = self._lookups.get(entry.st_ino, 0) + 1
        return entry

    async def _run(self, fn, *args):
        return await trio.to_thread.run_sync(fn, *args, limiter=self.limiter)

    async def _quick(self, fn, *args):
        """A short metadata call: on the loop if the overlay's lock is free, else in a worker."""
        lock = self.overlay.lock
        if lock.acquire(blocking=False):
            try:
                return fn(*args)
            finally:
                lock.release()
        return await self._run(fn, *args)

    def _entry(self, attr: Attr) -> pyfuse3.EntryAttributes:
        e = pyfuse3.EntryAttributes()
        e.st_ino = attr.ino
        e.st_mode = stat_mode(attr)
        # Folders too: 1 is "unknown", so tools never skip a subfolder on nlink. An unlinked
        # inode still open somewhere has none.
        e.st_nlink = 0 if attr.parent is None else 1
        e.st_size = attr.size
        e.st_uid, e.st_gid = self.uid, self.gid
        e.st_mtime_ns, e.st_ctime_ns, e.st_atime_ns = attr.mtime_ns, attr.ctime_ns, attr.atime_ns
        e.st_blksize = 1 << 17
        e.st_blocks = (attr.size + 511) // 512
        e.entry_timeout = e.attr_timeout = LONG_TIMEOUT if attr.pristine else TIMEOUT
        e.generation = 0
        return e

    @_translate
    async def lookup(self, parent_inode, name, ctx=None):
        name = os.fsdecode(name)
        if name == ".":
            return self._known(self._entry(await self._quick(self.overlay.getattr, parent_inode)))
        if name == "..":
            attr = await self._quick(self.overlay.getattr, parent_inode)
            if attr.parent is None:
                raise pyfuse3.FUSEError(errno.ENOENT)  # a removed folder has no parent
            return self._known(self._entry(await self._quick(self.overlay.getattr, attr.parent)))
        return self._known(self._entry(await self._quick(self.overlay.lookup, parent_inode, name)))

    async def forget(self, inode_list):
        gone = []
        for inode, nlookup in inode_list:
            left = self._lookups.pop(inode, 0) - nlookup
            if left > 0:
                self._lookups[inode] = left
            elif self.overlay.is_detached(inode):
                gone.append(inode)
        if gone:
            try:
                await self._run(self.overlay.forget, gone)
            except Exception:  # forget answers no request: nothing may leave it
                log.exception("forget(%s) failed", gone)

    @_translate
    async def getattr(self, inode, ctx=None):
        return self._entry(await self._quick(self.overlay.getattr, inode))

    @_translate
    async def setattr(self, inode, attr, fields, fh, ctx):
        mode = attr.st_mode & 0o7777 if fields.update_mode else None
        mtime = attr.st_mtime_ns if fields.update_mtime else None
        atime = attr.st_atime_ns if fields.update_atime else None
        size = attr.st_size if fields.update_size else None
        if (fields.update_uid and attr.st_uid not in (self.uid, -1)) or \
                (fields.update_gid and attr.st_gid not in (self.gid, -1)):
            raise pyfuse3.FUSEError(errno.EPERM)
        return self._entry(await self._run(
            functools.partial(self.overlay.setattr, inode, mode=mode, mtime_ns=mtime, atime_ns=atime,
                              size=size)))

    @_translate
    async def readlink(self, inode, ctx):
        attr = await self._run(self.overlay.getattr, inode)
        if attr.target is None:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return os.fsencode(attr.target)

    @_translate
    async def opendir(self, inode, ctx):
        entries = await self._run(self.overlay.listdir, inode)
        fh = next(self._handles)
        self._dirs[fh] = [(".", inode), ("..", None)] + entries
        self._dirs[fh].append(("", inode))  # sentinel: remembers the folder's own inode
        return fh

    @_translate
    async def readdir(self, fh, start_id, token):
        entries = self._dirs[fh]
        folder = entries[-1][1]
        for index in range(start_id, len(entries) - 1):
            name, ino = entries[index]
            if name == "..":
                ino = (await self._quick(self.overlay.getattr, folder)).parent
            try:
                attr = await self._quick(self.overlay.getattr, ino)
            except DsfsError:
                continue  # removed since opendir
            entry = self._entry(attr)
            if not pyfuse3.readdir_reply(token, os.fsencode(name), entry, index + 1):
                return
            if name not in (".", ".."):  # the kernel keeps a reference to every other entry
                self._known(entry)

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    @_translate
    async def open(self, inode, flags, ctx):
        writable = bool(flags & _WRITE_FLAGS)
        pristine = None
        if writable or flags & os.O_TRUNC:
            await self._run(self.overlay.open_write, inode, bool(flags & os.O_TRUNC))
            writable = True
        else:
            attr = await self._quick(self.overlay.getattr, inode)
            if attr.type != FILE:
                raise pyfuse3.FUSEError(errno.EISDIR)
            pristine = attr.base_node if attr.pristine else None
        fh = next(self._handles)
        self._files[fh] = (inode, writable, pristine)
        # A pristine file's pages stay valid; any other's may have changed since they were read.
        return pyfuse3.FileInfo(fh=fh, keep_cache=pristine is not None, direct_io=False)

    @_translate
    async def create(self, parent_inode, name, mode, flags, ctx):
        attr = await self._run(self.overlay.create, parent_inode, os.fsdecode(name), mode)
        fh = next(self._handles)
        self._files[fh] = (attr.ino, True, None)
        return pyfuse3.FileInfo(fh=fh, keep_cache=False, direct_io=False), self._known(self._entry(attr))

    @_translate
    async def read(self, fh, off, size):
        inode, _, pristine = self._files[fh]
        return await self._run(self.overlay.read, inode, off, size, pristine)

    @_translate
    async def write(self, fh, off, buf):
        inode, writable, _ = self._files[fh]
        if not writable:
            raise pyfuse3.FUSEError(errno.EBADF)
        return await self._run(self.overlay.write, inode, off, buf)

    @_translate
    async def flush(self, fh):
        # close(2) waits for flush (not for release): journaling here makes a closed file
        # durable by the time close returns.
        inode, writable, _ = self._files[fh]
        if writable:
            await self._run(self.overlay.flush_write, inode)

    @_translate
    async def release(self, fh):
        inode, writable, _ = self._files.pop(fh)
        if writable and not self.overlay.release_quickly(inode):
            await self._run(self.overlay.release_write, inode)

    @_translate
    async def fsync(self, fh, datasync):
        inode, _, _ = self._files[fh]
        await self._run(self.overlay.fsync, inode)

    @_translate
    async def fsyncdir(self, fh, datasync):
        await self._run(self.overlay.sync)  # a folder's entries are in the journal

    @_translate
    async def unlink(self, parent_inode, name, ctx):
        await self._run(self.overlay.unlink, parent_inode, os.fsdecode(name))

    @_translate
    async def rmdir(self, parent_inode, name, ctx):
        await self._run(self.overlay.rmdir, parent_inode, os.fsdecode(name))

    @_translate
    async def mkdir(self, parent_inode, name, mode, ctx):
        return self._known(self._entry(await self._run(self.overlay.mkdir, parent_inode, os.fsdecode(name),
                                                       mode)))

    @_translate
    async def symlink(self, parent_inode, name, target, ctx):
        return self._known(self._entry(await self._run(self.overlay.symlink, parent_inode, os.fsdecode(name),
                                                       os.fsdecode(target))))

    @_translate
    async def rename(self, parent_inode_old, name_old, parent_inode_new, name_new, flags, ctx):
        await self._run(self.overlay.rename, parent_inode_old, os.fsdecode(name_old), parent_inode_new,
                        os.fsdecode(name_new), flags)

    async def link(self, inode, new_parent_inode, new_name, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # hard links are not versioned (docs/SEMANTICS.md)

    async def mknod(self, parent_inode, name, mode, rdev, ctx):
        raise pyfuse3.FUSEError(errno.EPERM)  # device nodes, fifos and sockets are not versioned

    @_translate
    async def getxattr(self, inode, name, ctx):
        name = os.fsdecode(name)
        if not name.startswith(XATTR_PREFIX):  # security.capability, asked before every write
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        attrs = await self._run(self._xattrs, inode)
        value = attrs.get(name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    @_translate
    async def listxattr(self, inode, ctx):
        return [os.fsencode(n) for n in await self._run(self._xattrs, inode)]

    def _xattrs(self, inode: int) -> dict[str, bytes]:
        attr = self.overlay.getattr(inode)
        node = attr.base_node
        sha256 = source = None
        if attr.type == FILE and not attr.data and not attr.writing and node is not None:
            sha256, source = node.sha256 or "", node.version
        elif attr.type == FILE and attr.data and attr.sha256:
            sha256, source = attr.sha256, self.manifest.id  # written here, not committed yet
        return file_xattrs(self.manifest, sha256, source, self.dataset_of)

    async def setxattr(self, inode, name, value, ctx):
        raise pyfuse3.FUSEError(errno.ENOTSUP)  # extended attributes are not versioned

    async def removexattr(self, inode, name, ctx):
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    @_translate
    async def statfs(self, ctx):
        st = os.statvfs(self.overlay.dir)
        data = pyfuse3.StatvfsData()
        for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail", "f_files", "f_ffree",
                    "f_favail"):
            setattr(data, key, getattr(st, key))
        data.f_namemax = 255
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
    ops = WritableOperations(session.overlay, manifest, DatasetOf(session.repo.store, manifest))
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
    from .lowlevel import _stop_on_signal

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_stop_on_signal, nursery.cancel_scope)
        await nursery.start(_control_server, session, mountpoint)
        on_ready()
        await pyfuse3.main()
        nursery.cancel_scope.cancel()


async def _control_server(session, mountpoint: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Requests from `dsfs commit` / `dsfs umount` on an abstract unix socket."""
    import socket as _socket

    from .registry import control_address

    sock = trio.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    await sock.bind(control_address(mountpoint))
    sock.listen(8)
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(_control_request, session, conn)


async def _control_request(session, conn) -> None:
    import dataclasses
    import json

    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = await conn.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            request = json.loads(data or b"{}")
            op = request.get("op")
            if op == "commit":
                summary = await trio.to_thread.run_sync(session.commit_now)
                reply = {"ok": True, "summary": dataclasses.asdict(summary)}
            elif op == "finish":
                mode = request.get("mode", "commit")
                if mode not in ("commit", "discard", "publish"):
                    raise InvalidInput(f"unknown finish mode: {mode!r}")
                session.exit_mode = mode
                reply = {"ok": True}
            elif op == "pending":
                reply = {"ok": True, "pending": await trio.to_thread.run_sync(session.overlay.has_changes)}
            else:
                raise InvalidInput(f"unknown control request: {op!r}")
        except DsfsError as exc:
            reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:
            log.exception("control request failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        await conn.send(json.dumps(reply).encode() + b"\n")
