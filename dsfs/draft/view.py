"""The filesystem view of a writable draft, with no FUSE import.

``DraftView`` is to a draft mount what ``VersionView`` (dsfs/mountd/view.py) is to a published
one: the writable adapter (dsfs/mountd/writable.py) only translates requests into its calls and
its ``DsfsError``s (each with its errno) into replies. It answers over the overlay: stat fields,
lookups, folder listings taken as snapshots, the ``user.dsfs.*`` attributes, and file handles
(``Handle``) whose reads, writes and closes go to the overlay.

Every method is blocking. The short metadata ones (``lookup``, ``getattr``, ``dir_entry``) take
only ``lock`` (the overlay's), so an adapter may call them inline when the lock is free; the
others may move file data or ask the catalog and belong in worker threads.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat

from ..changeset.manifest import DIR, FILE, SYMLINK, VersionManifest
from ..errors import NotFound
from ..xattrs import DatasetOf, NoAttribute, file_xattrs
from ..resolver.index import Node
from .overlay import Attr, FsError, Overlay

XATTR_PREFIX = "user.dsfs."  # the only extended attributes a draft mount has
BLOCK_SIZE = 1 << 17
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR
_KIND = {DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}


@dataclasses.dataclass(slots=True, frozen=True)
class Handle:
    """An open file. ``pristine``: the base node of a read-only handle on a file the draft had
    not touched when it was opened; its pages stay valid, as a published file's do."""

    ino: int
    writable: bool
    pristine: Node | None = None


@dataclasses.dataclass(slots=True, frozen=True)
class Listing:
    """A folder's entries as they were at opendir: ``(name, inode)``, '.' and '..' first ('..'
    is looked up when read: a folder moved since lists its new parent)."""

    folder: int
    entries: list[tuple[str, int | None]]

    def __len__(self) -> int:
        return len(self.entries)


class DraftView:
    def __init__(self, overlay: Overlay, manifest: VersionManifest, dataset_of: DatasetOf) -> None:
        self.overlay = overlay
        self.manifest = manifest
        self.dataset_of = dataset_of
        self.lock = overlay.lock
        self.uid, self.gid = os.getuid(), os.getgid()

    # -- names and attributes ------------------------------------------------------------------

    def stat_into(self, attr: Attr, out) -> None:
        """Set the stat(2) fields (``st_ino``, ``st_mode``...) of a node on ``out``, the
        adapter's reply object: no dict in between, as this runs for most requests."""
        out.st_ino = attr.ino
        out.st_mode = _KIND.get(attr.type, stat.S_IFREG) | attr.mode
        # Folders too: 1 is "unknown", so tools never skip a subfolder on nlink. An unlinked
        # inode still open somewhere has none.
        out.st_nlink = 0 if attr.parent is None else 1
        out.st_size = attr.size
        out.st_uid, out.st_gid = self.uid, self.gid
        out.st_mtime_ns, out.st_ctime_ns, out.st_atime_ns = attr.mtime_ns, attr.ctime_ns, attr.atime_ns
        out.st_blksize = BLOCK_SIZE
        out.st_blocks = (attr.size + 511) // 512

    def getattr(self, ino: int) -> Attr:
        return self.overlay.getattr(ino)

    def lookup(self, parent: int, name: str) -> Attr:
        if name == ".":
            return self.overlay.getattr(parent)
        if name == "..":
            with self.lock:
                up = self.overlay.getattr(parent).parent
                if up is None:
                    raise NotFound(f"no entry '..' in inode {parent}: the folder was removed")
                return self.overlay.getattr(up)
        return self.overlay.lookup(parent, name)

    def readlink(self, ino: int) -> str:
        attr = self.overlay.getattr(ino)
        if attr.target is None:
            raise FsError(errno.EINVAL, f"not a symlink: {attr.name!r}")
        return attr.target

    def setattr(self, ino: int, *, mode: int | None = None, mtime_ns: int | None = None,
                atime_ns: int | None = None, size: int | None = None, uid: int | None = None,
                gid: int | None = None) -> Attr:
        """Change what a draft keeps (mode, times, size); an owner other than the mounting
        user's is refused (None or -1: unchanged)."""
        if uid not in (None, -1, self.uid) or gid not in (None, -1, self.gid):
            raise FsError(errno.EPERM, f"ownership is not versioned: uid {uid}, gid {gid}")
        return self.overlay.setattr(ino, mode=mode, mtime_ns=mtime_ns, atime_ns=atime_ns, size=size)

    # -- folders -----------------------------------------------------------------------------

    def opendir(self, ino: int) -> Listing:
        return Listing(ino, [(".", ino), ("..", None)] + self.overlay.listdir(ino))

    def dir_entry(self, listing: Listing, index: int) -> tuple[str, Attr] | None:
        """Entry ``index`` of a listing with its attributes now; None if removed since."""
        name, ino = listing.entries[index]
        with self.lock:
            if name == "..":
                ino = self.overlay.getattr(listing.folder).parent
            try:
                return name, self.overlay.getattr(ino)
            except NotFound:
                return None

    def mkdir(self, parent: int, name: str, mode: int) -> Attr:
        return self.overlay.mkdir(parent, name, mode)

    def rmdir(self, parent: int, name: str) -> None:
        self.overlay.rmdir(parent, name)

    def symlink(self, parent: int, name: str, target: str) -> Attr:
        return self.overlay.symlink(parent, name, target)

    def unlink(self, parent: int, name: str) -> None:
        self.overlay.unlink(parent, name)

    def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int = 0) -> None:
        self.overlay.rename(parent, name, new_parent, new_name, flags)

    def link(self) -> None:
        raise FsError(errno.EPERM, "hard links are not versioned")  # docs/SEMANTICS.md

    def mknod(self) -> None:
        raise FsError(errno.EPERM, "device nodes, fifos and sockets are not versioned")

    def is_detached(self, ino: int) -> bool:
        return self.overlay.is_detached(ino)

    def forget(self, inodes: list[int]) -> None:
        """The kernel dropped its last reference to ``inodes``: free the unlinked ones."""
        self.overlay.forget(inodes)

    # -- files ---------------------------------------------------------------------------------

    @staticmethod
    def writes(flags: int) -> bool:
        """Does an open with ``flags`` write (or truncate)?"""
        return bool(flags & (_WRITE_FLAGS | os.O_TRUNC))

    def open(self, ino: int, flags: int) -> Handle:
        if self.writes(flags):
            self.overlay.open_write(ino, bool(flags & os.O_TRUNC))
            return Handle(ino, True)
        attr = self.overlay.getattr(ino)
        if attr.type != FILE:
            raise FsError(errno.EISDIR, f"is a folder: {attr.name!r}")
        return Handle(ino, False, attr.base_node if attr.pristine else None)

    def create(self, parent: int, name: str, mode: int) -> tuple[Handle, Attr]:
        attr = self.overlay.create(parent, name, mode)
        return Handle(attr.ino, True), attr

    def read(self, handle: Handle, offset: int, size: int) -> bytes:
        return self.overlay.read(handle.ino, offset, size, handle.pristine)

    def write(self, handle: Handle, offset: int, data: bytes) -> int:
        if not handle.writable:
            raise FsError(errno.EBADF, f"inode {handle.ino} is not open for writing")
        return self.overlay.write(handle.ino, offset, data)

    def flush(self, handle: Handle) -> None:
        """close(2) waits for this (not for release): a closed file is journaled by then."""
        if handle.writable:
            self.overlay.flush_write(handle.ino)

    def release_quickly(self, handle: Handle) -> bool:
        """Release ``handle`` if that needs no wait (the usual case); False: call ``release``."""
        return not handle.writable or self.overlay.release_quickly(handle.ino)

    def release(self, handle: Handle) -> None:
        if handle.writable:
            self.overlay.release_write(handle.ino)

    def fsync(self, handle: Handle) -> None:
        self.overlay.fsync(handle.ino)

    def sync(self) -> None:
        """Everything recorded so far made durable (a folder's entries are in the journal)."""
        self.overlay.sync()

    # -- the rest ------------------------------------------------------------------------------

    @staticmethod
    def may_have_xattr(name: str) -> bool:
        """False for a name no path has (security.capability, asked before every write)."""
        return name.startswith(XATTR_PREFIX)

    def xattrs(self, ino: int) -> dict[str, bytes]:
        attr = self.overlay.getattr(ino)
        node = attr.base_node
        sha256 = source = None
        if attr.type == FILE and not attr.data and not attr.writing and node is not None:
            sha256, source = node.sha256 or "", node.version
        elif attr.type == FILE and attr.data and attr.sha256:
            sha256, source = attr.sha256, self.manifest.id  # written here, not committed yet
        return file_xattrs(self.manifest, sha256, source, self.dataset_of)

    def getxattr(self, ino: int, name: str) -> bytes:
        value = self.xattrs(ino).get(name) if self.may_have_xattr(name) else None
        if value is None:
            raise NoAttribute(f"no attribute {name!r} on inode {ino}")
        return value

    def setxattr(self) -> None:
        raise FsError(errno.ENOTSUP, "extended attributes are not versioned")

    def statfs(self) -> dict:
        """The staging filesystem's space, as the draft's."""
        st = os.statvfs(self.overlay.dir)
        fields = {key: getattr(st, key) for key in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                                     "f_bavail", "f_files", "f_ffree", "f_favail")}
        fields["f_namemax"] = 255
        return fields
