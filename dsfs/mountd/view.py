"""The read-only filesystem view of one version, with no FUSE import.

The adapters (``direct.py``: libfuse's low-level API through ctypes, for published versions;
``lowlevel.py``: pyfuse3) only translate: this module answers lookups from the version's index and reads bytes
through the shared block cache, raising ``DsfsError`` subclasses that carry their errno.
Every method is blocking and thread-safe; adapters call it from worker threads.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections.abc import Callable

from ..cache import BlockCache, ReadState
from ..changeset.manifest import DIR, SYMLINK, VersionManifest
from ..errors import DsfsError, InvalidInput, NotFound
from ..paths import check_name_length
from ..resolver.index import ROOT_INO, Node, VersionIndex
from ..xattrs import DatasetOf, NoAttribute, file_xattrs
from ..store.base import ObjectStore

log = logging.getLogger(__name__)

BLOCK_SIZE = 4096
ST_BLKSIZE = 1 << 17  # the st_blksize files report (the size tools read in)
_KINDS = {DIR: stat.S_IFDIR, SYMLINK: stat.S_IFLNK}
NODE_MEMO = 32768  # nodes of a published version remembered (about 10 MiB); then it starts over


class NotADirectory(DsfsError):
    errno = errno.ENOTDIR


class VersionView:
    def __init__(self, manifest: VersionManifest, index: VersionIndex, store: ObjectStore,
                 cache: BlockCache) -> None:
        self.manifest = manifest
        self.index = index
        self.store = store
        self.cache = cache
        self.uid = os.getuid()
        self.gid = os.getgid()
        self.dataset_of = DatasetOf(store, manifest)
        # A published index never changes, so the nodes it gave out are remembered by inode:
        # those asked for, and every entry of a listing, which the kernel reads next (a read asks
        # for its file's node, so a walk or an epoch over listed folders asks SQLite nothing).
        self._nodes: dict[int, Node] | None = {} if self.immutable else None

    @property
    def immutable(self) -> bool:
        return self.manifest.is_published

    def _remember(self, nodes: list[Node]) -> list[Node]:
        memo = self._nodes
        if memo is not None:
            if len(memo) + len(nodes) > NODE_MEMO:
                self._nodes = memo = {}
            for node in nodes:
                memo[node.ino] = node
        return nodes

    def getattr(self, ino: int) -> Node:
        memo = self._nodes
        node = memo.get(ino) if memo is not None else None
        if node is None:
            node = self.index.get(ino)
            if node is None:
                raise NotFound(f"no inode {ino}")
            self._remember([node])
        return node

    def lookup(self, parent: int, name: str) -> Node:
        if name == ".":
            return self.getattr(parent)
        if name == "..":
            return self.getattr(self.getattr(parent).parent)
        node = self.index.lookup(parent, check_name_length(name))
        if node is None:
            raise NotFound(f"no entry {name!r} in inode {parent}")
        return self._remember([node])[0]

    def by_path(self, path: str) -> Node:
        """A node by its path ('' or '/' is the root)."""
        rel = path.strip("/")
        node = self.index.get(ROOT_INO) if not rel else self.index.by_path(rel)
        if node is None:
            raise NotFound(f"no such path: {path!r}")
        return node

    def by_paths(self, paths: list[str]) -> list[Node | None]:
        """Nodes by their paths, None where there is none (see ``VersionIndex.by_paths``)."""
        return self.index.by_paths([path.strip("/") for path in paths])

    def children(self, ino: int, after: str | None = None, limit: int = 1000) -> list[Node]:
        node = self.getattr(ino)
        if not node.is_dir:
            raise NotADirectory(f"not a folder: {node.path!r}")
        return self._remember(self.index.children(ino, after, limit))

    def children_at(self, ino: int, skip: int, limit: int = 1000) -> list[Node]:
        node = self.getattr(ino)
        if not node.is_dir:
            raise NotADirectory(f"not a folder: {node.path!r}")
        return self._remember(self.index.children_at(ino, skip, limit))

    def readlink(self, node: Node) -> str:
        if node.type != SYMLINK:
            raise InvalidInput(f"not a symlink: {node.path!r}")
        return node.target

    def read(self, node: Node, offset: int, size: int, state: ReadState | None = None,
             spill: Callable[[int, memoryview], None] | None = None) -> bytes:
        """``spill``: see BlockCache.read."""
        if node.is_dir:
            raise _IsADirectory(f"is a folder: {node.path!r}")
        if offset >= node.size or size <= 0 or node.chunk is None:
            return b""
        return self.cache.read(self.store, node.to_entry(), offset, min(size, node.size - offset), state,
                               near=self._near, spill=spill)

    def read_all(self, node: Node) -> bytes:
        """A whole file, checked against its sha256."""
        if node.is_dir:
            raise _IsADirectory(f"is a folder: {node.path!r}")
        return self.cache.read_all(self.store, node.to_entry(), near=self._near)

    def _near(self, chunk: str, lo: int, hi: int) -> list:
        return [n.to_entry() for n in self.index.near(chunk, lo, hi)]

    def xattrs(self, node: Node) -> dict[str, bytes]:
        if node.is_dir or node.type == SYMLINK:
            return file_xattrs(self.manifest, None, None, self.dataset_of)
        return file_xattrs(self.manifest, node.sha256 or "", node.version, self.dataset_of)

    def getxattr(self, node: Node, name: str) -> bytes:
        value = self.xattrs(node).get(name)
        if value is None:
            raise NoAttribute(f"no attribute {name!r} on {node.path!r}")
        return value

    def stat_mode(self, node: Node) -> int:
        """A node's st_mode: its kind and permission bits (published data without write bits)."""
        kind = _KINDS.get(node.type, stat.S_IFREG)
        if self.immutable and kind != stat.S_IFLNK:
            return kind | (node.mode & ~0o222)  # published data is read-only; say so in the bits too
        return kind | node.mode

    def stat_fields(self, node: Node) -> dict:
        """The stat(2) fields of a node, shared by both adapters (the direct one sets them from
        ``stat_mode`` and the node straight into its C struct: a listing fills one per entry)."""
        return {
            "st_ino": node.ino,
            "st_mode": self.stat_mode(node),
            "st_nlink": node.nlink,
            "st_size": node.size,
            "st_uid": self.uid,
            "st_gid": self.gid,
            "st_mtime_ns": node.mtime_ns,
            "st_ctime_ns": node.mtime_ns,
            "st_atime_ns": node.mtime_ns,
            "st_blksize": ST_BLKSIZE,
            "st_blocks": (node.size + 511) // 512,
        }

    def statfs(self) -> dict:
        return {
            "f_bsize": BLOCK_SIZE,
            "f_frsize": BLOCK_SIZE,
            "f_blocks": (self.index.total_size + BLOCK_SIZE - 1) // BLOCK_SIZE,
            "f_bfree": 0,
            "f_bavail": 0,
            "f_files": self.index.files,
            "f_ffree": 0,
            "f_favail": 0,
            "f_namemax": 255,
        }


class _IsADirectory(DsfsError):
    errno = errno.EISDIR
