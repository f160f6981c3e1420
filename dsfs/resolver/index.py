"""The materialized view of one version: a SQLite file the mount daemon serves from.

``nodes`` holds one row per path of the merged view; its rowid is the inode number (the root is
inode 1) and rows are numbered in path order, so inodes are stable for a version. Lookup is by
(parent, name), listing is in name order from the same index, and each row keeps its provenance:
the version whose change-set put it there. Published indexes are opened ``immutable`` (no locking).

Names, paths and symlink targets are stored as BLOBs of their raw bytes (see dsfs/paths.py), so
any byte name fits. SQLite compares BLOBs bytewise, so listings and walks are in byte order, and
a folder's subtree is the range [path + '/', path + '0') ('0' is the byte after '/').

Threading: a ``VersionIndex`` may be shared by threads; each thread gets its own connection.
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import sqlite3
import threading
from collections.abc import Iterator

from ..changeset.manifest import DIR, FILE, SYMLINK, Entry
from ..paths import name_bytes, name_str

ROOT_INO = 1
TYPE_CODES = {FILE: 0, DIR: 1, SYMLINK: 2}
TYPE_NAMES = {v: k for k, v in TYPE_CODES.items()}

SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE chunks(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE providers(id INTEGER PRIMARY KEY, version TEXT NOT NULL UNIQUE);
CREATE TABLE nodes(
    ino INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    path BLOB NOT NULL,
    type INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 TEXT,
    target BLOB,
    chunk_id INTEGER,
    offset INTEGER,
    csize INTEGER,
    method INTEGER,
    provider_id INTEGER NOT NULL,
    nlink INTEGER NOT NULL DEFAULT 1,
    blocks TEXT,
    tree TEXT,
    tree_offset INTEGER
);
"""
INDEX_SQL = """
CREATE UNIQUE INDEX nodes_by_parent ON nodes(parent, name);
CREATE UNIQUE INDEX nodes_by_path ON nodes(path);
CREATE INDEX nodes_by_sha ON nodes(sha256) WHERE sha256 IS NOT NULL;
CREATE INDEX nodes_by_chunk ON nodes(chunk_id, offset) WHERE chunk_id IS NOT NULL;
"""
INDEX_FORMAT = "5"  # an index file of another format is rebuilt (it is only a cache)

# Chunk keys and provider versions are few and fixed once an index is built: they are mapped
# in Python (``VersionIndex._names``), so a node lookup is one rowid probe with no join.
_NODE_SELECT = (
    "SELECT n.ino, n.parent, n.name, n.path, n.type, n.size, n.mode, n.mtime_ns, n.sha256, "
    "n.target, n.chunk_id, n.offset, n.csize, n.method, n.provider_id, n.nlink, n.blocks, n.tree, "
    "n.tree_offset FROM nodes n "
)


@dataclasses.dataclass(slots=True, frozen=True)
class Node:
    ino: int
    parent: int
    name: str
    path: str
    type: str
    size: int
    mode: int
    mtime_ns: int
    sha256: str | None
    target: str | None
    chunk: str | None
    offset: int | None
    csize: int | None
    method: int | None
    version: str
    nlink: int = 1
    blocks: str | None = None
    tree: str | None = None
    tree_offset: int | None = None

    @property
    def is_dir(self) -> bool:
        return self.type == DIR

    def to_entry(self) -> Entry:
        return Entry(self.path, self.type, self.size, self.sha256 or "", self.mode, self.mtime_ns,
                     self.target, self.chunk, self.offset or 0, self.csize or 0, self.method or 0,
                     self.blocks, self.tree, self.tree_offset or 0)


def path_order(path: str) -> bytes:
    """The sort key of a path in an index (its bytes): merges of index walks compare with it."""
    return name_bytes(path)


class VersionIndex:
    """Read access to a built index file."""

    def __init__(self, path: str, *, immutable: bool) -> None:
        self.path = path
        self.immutable = immutable
        # A pool, not thread-locals: libfuse starts and retires worker threads freely, and a
        # fresh connection per new thread costs more than the query it serves.
        self._pool: queue.SimpleQueue[sqlite3.Connection] = queue.SimpleQueue()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        with self._conn() as conn:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            self._chunks = dict(conn.execute("SELECT id, key FROM chunks"))
            self._providers = dict(conn.execute("SELECT id, version FROM providers"))
        self.version_id = meta["version"]
        self.dataset = meta["dataset"]
        self.files = int(meta["files"])
        self.total_size = int(meta["bytes"])
        self.format = meta.get("format")
        self._chunk_ids = {key: cid for cid, key in self._chunks.items()}

    @contextlib.contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        try:
            conn = self._pool.get_nowait()
        except queue.Empty:
            flags = "mode=ro&immutable=1" if self.immutable else "mode=ro"
            conn = sqlite3.connect(f"file:{self.path}?{flags}", uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA cache_size=-16384")
            with self._lock:
                self._all.append(conn)
        try:
            yield conn
        finally:
            self._pool.put(conn)

    def _node(self, row) -> Node:
        chunk_id, provider_id = row[10], row[14]
        target = row[9]
        return Node(row[0], row[1], name_str(row[2]), name_str(row[3]), TYPE_NAMES[row[4]], row[5], row[6],
                    row[7], row[8], None if target is None else name_str(target),
                    None if chunk_id is None else self._chunks[chunk_id], row[11], row[12],
                    row[13], self._providers[provider_id], row[15], row[16], row[17], row[18])

    def _one(self, sql: str, params: tuple) -> Node | None:
        with self._conn() as conn:
            row = conn.execute(sql, params).fetchone()
        return self._node(row) if row else None

    def get(self, ino: int) -> Node | None:
        return self._one(_NODE_SELECT + "WHERE n.ino = ?", (ino,))

    def lookup(self, parent: int, name: str) -> Node | None:
        return self._one(_NODE_SELECT + "WHERE n.parent = ? AND n.name = ? AND n.ino != 1",
                         (parent, name_bytes(name)))

    def by_path(self, path: str) -> Node | None:
        return self._one(_NODE_SELECT + "WHERE n.path = ?", (name_bytes(path),))

    def children(self, ino: int, after: str | None = None, limit: int = 1000) -> list[Node]:
        """Children of a directory in name (byte) order, starting after the name ``after``."""
        sql = _NODE_SELECT + "WHERE n.parent = ? AND n.ino != 1 AND n.name > ? ORDER BY n.name LIMIT ?"
        with self._conn() as conn:
            return [self._node(r) for r in conn.execute(sql, (ino, name_bytes(after or ""), limit))]

    def children_at(self, ino: int, skip: int, limit: int = 1000) -> list[Node]:
        """Children of a directory in name order, from the ``skip``-th on (seekdir)."""
        sql = _NODE_SELECT + "WHERE n.parent = ? AND n.ino != 1 ORDER BY n.name LIMIT ? OFFSET ?"
        with self._conn() as conn:
            return [self._node(r) for r in conn.execute(sql, (ino, limit, skip))]

    def walk(self, prefix: str = "") -> Iterator[Node]:
        """Every node at or below ``prefix`` ('' is the whole view), in path order: the order of
        the paths' bytes (``path_order``), which is not Python's str order for every name."""
        with self._conn() as conn:
            if prefix:
                raw = name_bytes(prefix)
                sql = _NODE_SELECT + "WHERE n.path = ? OR (n.path >= ? AND n.path < ?) ORDER BY n.path"
                rows = conn.execute(sql, (raw, raw + b"/", raw + b"0"))
            else:
                rows = conn.execute(_NODE_SELECT + "WHERE n.ino != 1 ORDER BY n.path")
            for row in rows:
                yield self._node(row)

    def near(self, chunk: str, start: int, end: int, limit: int = 256) -> list[Node]:
        """Files whose bytes begin in ``[start, end)`` of ``chunk``, in chunk order."""
        cid = self._chunk_ids.get(chunk)
        if cid is None:
            return []
        sql = _NODE_SELECT + "WHERE n.chunk_id = ? AND n.offset >= ? AND n.offset < ? ORDER BY n.offset LIMIT ?"
        with self._conn() as conn:
            return [self._node(r) for r in conn.execute(sql, (cid, start, end, limit))]

    def chunks(self) -> list[str]:
        """The keys of the chunks this version's files live in, in key order."""
        return sorted(self._chunks.values())

    def find_blob(self, sha256: str) -> Entry | None:
        node = self._one(_NODE_SELECT + "WHERE n.sha256 = ? AND n.chunk_id IS NOT NULL LIMIT 1", (sha256,))
        return node.to_entry() if node else None

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
