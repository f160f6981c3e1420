"""The materialized view of one version: a SQLite file the mount daemon serves from.

``nodes`` holds one row per path of the merged view; its rowid is the inode number (the root is
inode 1) and rows are numbered in path order, so inodes are stable for a version. Lookup is by
(parent, name), listing is in name order from the same index, and each row keeps its provenance:
the version whose change-set put it there. Published indexes are opened ``immutable`` (no locking).

Names and symlink targets are stored as BLOBs of their raw bytes (see dsfs/paths.py), so any byte
name fits; SQLite compares BLOBs bytewise, so listings are in byte order. Paths are not stored:
a node's path is its folder's (found up the parents, and remembered) plus its name. A folder's
subtree is contiguous in path order, so in inode order: its first child's inode to its ``last``.
A draft's index updated in place (dsfs/resolver/update.py) also has nodes appended after that
order, from ``meta.unsorted_from`` on: a walk merges them in by path.

Threading: a ``VersionIndex`` may be shared by threads; each thread gets its own connection.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import queue
import sqlite3
import threading
from collections.abc import Iterable, Iterator

from ..changeset.manifest import DIR, FILE, SYMLINK, Entry
from ..paths import name_bytes, name_str

# The sqlite3 module binds only int, float, str and bytearray directly; any other value (bytes
# and None among them) first goes through its adapter protocol, which fails an attribute lookup
# and formats the error it then drops, for every value. Identity adapters for the two skip that
# (a tenth of an index build's instructions); what is stored is the same.
sqlite3.register_adapter(bytes, bytes)
sqlite3.register_adapter(type(None), lambda value: value)

ROOT_INO = 1
TYPE_CODES = {FILE: 0, DIR: 1, SYMLINK: 2}
TYPE_NAMES = {v: k for k, v in TYPE_CODES.items()}
_DIR_CODE = TYPE_CODES[DIR]
_DIR_PATHS = 65536  # folder paths remembered per index
_IN_MAX = 500  # names in one IN (...) list (SQLite's default limit is 999 parameters)

SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE chunks(id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE);
CREATE TABLE providers(id INTEGER PRIMARY KEY, version TEXT NOT NULL UNIQUE);
"""
NODES_SQL = """
CREATE TABLE nodes(
    ino INTEGER PRIMARY KEY,
    parent INTEGER NOT NULL,
    name BLOB NOT NULL,
    type INTEGER NOT NULL,
    size INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256 BLOB,
    target BLOB,
    chunk_id INTEGER,
    offset INTEGER,
    csize INTEGER,             -- NULL when equal to size (a stored file)
    method INTEGER,
    provider_id INTEGER NOT NULL,
    nlink INTEGER NOT NULL DEFAULT 1,
    blocks BLOB,
    tree BLOB,
    tree_offset INTEGER,
    last INTEGER
);
"""
SCHEMA_SQL += NODES_SQL
INDEX_SQL = """
CREATE UNIQUE INDEX nodes_by_parent ON nodes(parent, name);
CREATE INDEX nodes_by_sha ON nodes(substr(sha256, 1, 8)) WHERE chunk_id IS NOT NULL;
CREATE INDEX nodes_by_chunk ON nodes(chunk_id, offset) WHERE chunk_id IS NOT NULL;
"""
INDEX_FORMAT = "7"  # an index file of another format is rebuilt (it is only a cache)

# Chunk keys and provider versions are few and fixed once an index is built: they are mapped
# in Python (``VersionIndex._names``), so a node lookup is one rowid probe with no join.
_BLOBS_PER_QUERY = 500
_NODE_SELECT = (
    "SELECT n.ino, n.parent, n.name, n.type, n.size, n.mode, n.mtime_ns, n.sha256, n.target, n.chunk_id, "
    "n.offset, n.csize, n.method, n.provider_id, n.nlink, n.blocks, n.tree, n.tree_offset FROM nodes n "
)
_BY_INO = "WHERE n.ino = ?"
_BY_NAME = "WHERE n.parent = ? AND n.name = ? AND n.ino != 1"
# The names from a node up to (not including) the root, nearest first.
_UP_SQL = (
    "WITH RECURSIVE up(ino, parent, name, depth) AS ("
    "SELECT ino, parent, name, 0 FROM nodes WHERE ino = ? "
    "UNION ALL SELECT n.ino, n.parent, n.name, up.depth + 1 FROM nodes n JOIN up ON n.ino = up.parent "
    "WHERE up.ino != 1) SELECT name FROM up WHERE ino != 1 ORDER BY depth"
)


@dataclasses.dataclass(slots=True)
class Node:
    """One row of the view. Read-only by convention (nodes are shared through caches), but not
    ``frozen``: a frozen dataclass costs about 8x more to make, and a listing or walk makes one
    per entry."""

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


class _Borrowed:
    """``with index._conn() as conn``: one of the index's pooled connections, given back after."""

    __slots__ = ("index", "conn")

    def __init__(self, index: VersionIndex) -> None:
        self.index = index

    def __enter__(self) -> sqlite3.Connection:
        self.conn = self.index._take()
        return self.conn

    def __exit__(self, *exc) -> None:
        self.index._pool.put(self.conn)


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
            # The statements of a lookup, made ready (and the top pages of the tables they read
            # brought in) before the first request needs them: that one waits less.
            conn.execute(_NODE_SELECT + _BY_NAME, (ROOT_INO, b"")).fetchone()
            conn.execute(_NODE_SELECT + _BY_INO, (ROOT_INO,)).fetchone()
            conn.execute(_UP_SQL, (ROOT_INO,)).fetchall()
        self.version_id = meta["version"]
        self.dataset = meta["dataset"]
        self.files = int(meta["files"])
        self.total_size = int(meta["bytes"])
        self.format = meta.get("format")
        self._unsorted_from = int(meta["unsorted_from"]) if "unsorted_from" in meta else None
        self._unsorted: list[tuple[bytes, int]] | None = None  # (path, ino) of those, in path order
        self._chunk_ids = {key: cid for cid, key in self._chunks.items()}
        self._dir_paths: dict[int, bytes] = {ROOT_INO: b""}

    def _conn(self) -> _Borrowed:
        """A connection of the pool for a ``with`` block (a plain class, not a generator: a
        lookup borrows one per request)."""
        return _Borrowed(self)

    def _take(self) -> sqlite3.Connection:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            flags = "mode=ro&immutable=1" if self.immutable else "mode=ro"
            conn = sqlite3.connect(f"file:{self.path}?{flags}", uri=True, check_same_thread=False)
            conn.execute("PRAGMA query_only=1")
            conn.execute("PRAGMA cache_size=-16384")
            with self._lock:
                self._all.append(conn)
            return conn

    def _node(self, row, parent_path: bytes) -> Node:
        ino, name, chunk_id, target, sha, blocks, tree = row[0], row[2], row[9], row[8], row[7], row[15], row[16]
        path = name if not parent_path else parent_path + b"/" + name
        return Node(ino, row[1], name_str(name), name_str(path),
                    TYPE_NAMES[row[3]], row[4], row[5], row[6], None if sha is None else sha.hex(),
                    None if target is None else name_str(target),
                    None if chunk_id is None else self._chunks[chunk_id], row[10],
                    row[4] if row[11] is None else row[11],
                    row[12], self._providers[row[13]], row[14], None if blocks is None else blocks.hex(),
                    None if tree is None else tree.hex(), row[17])

    def _dir_path(self, conn: sqlite3.Connection, ino: int) -> bytes:
        """The path of folder ``ino`` (remembered: a folder's path is asked for again and again)."""
        path = self._dir_paths.get(ino)
        if path is None:
            path = b"/".join(reversed([r[0] for r in conn.execute(_UP_SQL, (ino,))]))
            if len(self._dir_paths) >= _DIR_PATHS:
                self._dir_paths = {ROOT_INO: b""}
            self._dir_paths[ino] = path
        return path

    def _one(self, sql: str, params: tuple) -> Node | None:
        with self._conn() as conn:
            row = conn.execute(sql, params).fetchone()
            return self._node(row, self._dir_path(conn, row[1])) if row else None

    def get(self, ino: int) -> Node | None:
        return self._one(_NODE_SELECT + _BY_INO, (ino,))

    def lookup(self, parent: int, name: str) -> Node | None:
        return self._one(_NODE_SELECT + _BY_NAME, (parent, name_bytes(name)))

    def by_path(self, path: str) -> Node | None:
        """The node at ``path``, found name by name from the root."""
        if not path:
            return self.get(ROOT_INO)
        folder, _, last = name_bytes(path).rpartition(b"/")
        with self._conn() as conn:
            parent = self._folder_ino(conn, folder, {b"": ROOT_INO})
            if parent is None:
                return None
            row = conn.execute(_NODE_SELECT + _BY_NAME, (parent, last)).fetchone()
            return self._node(row, folder) if row else None

    def by_paths(self, paths: list[str]) -> list[Node | None]:
        """The nodes at ``paths`` (None where there is none), by one query per folder they are in
        (``by_path`` makes one per path component: an order hint of 20k paths took 0.5 s)."""
        found: list[Node | None] = [None] * len(paths)
        wanted: dict[bytes, dict[bytes, list[int]]] = {}  # folder -> name -> positions
        for i, path in enumerate(paths):
            if not path:
                found[i] = self.get(ROOT_INO)
                continue
            folder, _, name = name_bytes(path).rpartition(b"/")
            wanted.setdefault(folder, {}).setdefault(name, []).append(i)
        folders: dict[bytes, int | None] = {b"": ROOT_INO}
        with self._conn() as conn:
            for folder, names in wanted.items():
                ino = self._folder_ino(conn, folder, folders)
                keys = list(names)
                for start in range(0, len(keys) if ino is not None else 0, _IN_MAX):
                    part = keys[start:start + _IN_MAX]
                    sql = _NODE_SELECT + f"WHERE n.parent = ? AND n.ino != 1 AND n.name IN ({','.join('?' * len(part))})"
                    for row in conn.execute(sql, (ino, *part)):
                        node = self._node(row, folder)
                        for i in names[row[2]]:
                            found[i] = node
        return found

    def _folder_ino(self, conn: sqlite3.Connection, folder: bytes, known: dict[bytes, int | None]) -> int | None:
        """The inode of the folder at ``folder`` (None if there is no folder there), ``known``
        holding those found before."""
        if folder in known:
            return known[folder]
        parent_path, _, name = folder.rpartition(b"/")
        parent = self._folder_ino(conn, parent_path, known)
        row = None if parent is None else conn.execute(
            "SELECT ino, type FROM nodes WHERE parent = ? AND name = ? AND ino != 1", (parent, name)).fetchone()
        ino = known[folder] = row[0] if row is not None and row[1] == _DIR_CODE else None
        if ino is not None:
            self._dir_paths.setdefault(ino, folder)
        return ino

    def children(self, ino: int, after: str | None = None, limit: int = 1000) -> list[Node]:
        """Children of a directory in name (byte) order, starting after the name ``after``."""
        sql = _NODE_SELECT + "WHERE n.parent = ? AND n.ino != 1 AND n.name > ? ORDER BY n.name LIMIT ?"
        with self._conn() as conn:
            base = self._dir_path(conn, ino)
            return [self._node(r, base) for r in conn.execute(sql, (ino, name_bytes(after or ""), limit))]

    def children_at(self, ino: int, skip: int, limit: int = 1000) -> list[Node]:
        """Children of a directory in name order, from the ``skip``-th on (seekdir)."""
        sql = _NODE_SELECT + "WHERE n.parent = ? AND n.ino != 1 ORDER BY n.name LIMIT ? OFFSET ?"
        with self._conn() as conn:
            base = self._dir_path(conn, ino)
            return [self._node(r, base) for r in conn.execute(sql, (ino, limit, skip))]

    def walk(self, prefix: str = "") -> Iterator[Node]:
        """Every node at or below ``prefix`` ('' is the whole view), in path order: the order of
        the paths' bytes (``path_order``), which is not Python's str order for every name.

        Inodes are numbered in path order and a folder's subtree is contiguous in it, so this is
        one rowid range: from the folder's first child (by name) to its ``last``."""
        if prefix:
            top = self.by_path(prefix)
            if top is None:
                return
            yield top
            if not top.is_dir:
                return
        else:
            top = self.get(ROOT_INO)
        if self._unsorted_from is None:
            yield from self._walk_sorted(top, None)
            return
        below = self._unsorted_below(name_bytes(top.path))
        yield from (node for _, node in heapq.merge(
            ((name_bytes(node.path), node) for node in self._walk_sorted(top, self._unsorted_from)),
            self._nodes_of(below), key=lambda pair: pair[0]))

    def _walk_sorted(self, top: Node, end: int | None) -> Iterator[Node]:
        """The nodes below folder ``top`` in the sorted part of the index (below inode ``end``)."""
        if end is not None and top.ino >= end:
            return  # an appended folder: all below it is appended too
        bound = "" if end is None else f" AND ino < {end:d}"
        with self._conn() as conn:
            first = conn.execute(f"SELECT ino FROM nodes WHERE parent = ? AND ino != 1{bound} ORDER BY name LIMIT 1",
                                 (top.ino,)).fetchone()
            if first is None:
                return
            last = conn.execute("SELECT last FROM nodes WHERE ino = ?", (top.ino,)).fetchone()[0]
            dirs = {top.ino: name_bytes(top.path)}
            for row in conn.execute(_NODE_SELECT + "WHERE n.ino BETWEEN ? AND ? ORDER BY n.ino",
                                    (first[0], last if end is None else min(last, end - 1))):
                base = dirs[row[1]]
                if row[3] == _DIR_CODE:
                    dirs[row[0]] = base + b"/" + row[2] if base else row[2]
                yield self._node(row, base)

    def _unsorted_below(self, top: bytes) -> list[tuple[bytes, int]]:
        """(path, ino) of the appended nodes below the folder at path ``top``, in path order."""
        if self._unsorted is None:
            paths: dict[int, bytes] = {}
            found = []
            with self._conn() as conn:
                for ino, parent, name, kind in conn.execute("SELECT ino, parent, name, type FROM nodes "
                                                            "WHERE ino >= ? ORDER BY ino", (self._unsorted_from,)):
                    base = paths.get(parent)
                    if base is None:  # a folder of the sorted part (an appended one comes before its nodes)
                        base = self._dir_path(conn, parent)
                    path = base + b"/" + name if base else name
                    if kind == _DIR_CODE:
                        paths[ino] = path
                    found.append((path, ino))
            found.sort()
            self._unsorted = found
        if not top:
            return self._unsorted
        return self._unsorted[bisect.bisect_left(self._unsorted, (top + b"/",)):
                              bisect.bisect_left(self._unsorted, (top + b"0",))]

    def _nodes_of(self, found: list[tuple[bytes, int]]) -> Iterator[tuple[bytes, Node]]:
        """(path, node) for each (path, ino) of ``found``, read a batch at a time."""
        for start in range(0, len(found), 500):
            batch = found[start:start + 500]
            with self._conn() as conn:
                rows = {row[0]: row for row in conn.execute(
                    _NODE_SELECT + f"WHERE n.ino IN ({','.join('?' * len(batch))})", [ino for _, ino in batch])}
            for path, ino in batch:
                yield path, self._node(rows[ino], path.rpartition(b"/")[0])

    def near(self, chunk: str, start: int, end: int, limit: int = 256) -> list[Node]:
        """Files whose bytes begin in ``[start, end)`` of ``chunk``, in chunk order."""
        cid = self._chunk_ids.get(chunk)
        if cid is None:
            return []
        sql = _NODE_SELECT + "WHERE n.chunk_id = ? AND n.offset >= ? AND n.offset < ? ORDER BY n.offset LIMIT ?"
        with self._conn() as conn:
            return [self._node(r, self._dir_path(conn, r[1])) for r in conn.execute(sql, (cid, start, end, limit))]

    def chunks(self) -> list[str]:
        """The keys of the chunks this version's files live in, in key order."""
        return sorted(self._chunks.values())

    def find_blob(self, sha256: str) -> Entry | None:
        return self.find_blobs([sha256]).get(sha256)

    def find_blobs(self, sha256s: Iterable[str]) -> dict[str, Entry]:
        """A stored entry of each of these contents the view holds, by sha256: one query per
        500 digests (a commit asks for a whole batch of files at once)."""
        digests = sorted({bytes.fromhex(sha) for sha in sha256s})
        found: dict[str, Entry] = {}
        with self._conn() as conn:
            for start in range(0, len(digests), _BLOBS_PER_QUERY):
                batch = digests[start:start + _BLOBS_PER_QUERY]
                sql = (f"WITH wanted(d) AS (VALUES {', '.join(['(?)'] * len(batch))}) "
                       + _NODE_SELECT + "JOIN wanted ON n.ino = (SELECT m.ino FROM nodes m "
                       "WHERE substr(m.sha256, 1, 8) = substr(wanted.d, 1, 8) AND m.sha256 = wanted.d "
                       "AND m.chunk_id IS NOT NULL LIMIT 1)")
                for row in conn.execute(sql, batch):
                    found[row[7].hex()] = self._node(row, self._dir_path(conn, row[1])).to_entry()
        return found

    def close(self) -> None:
        with self._lock:
            for conn in self._all:
                conn.close()
            self._all.clear()
