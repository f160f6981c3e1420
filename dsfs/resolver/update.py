"""Applying change-sets to an index in place: a draft's next index without a rebuild.

A draft gains change-sets one at a time, and most are small. Its next index starts as a copy of
one that is already built (the draft's own for an earlier state, or its one parent's), and only
the new change-sets' removals and adds are applied to the copy's ``nodes``, under the same rules
as a build (removals first, a folder tombstone takes its subtree, missing folders are made, a
path may not become both a file and a folder). The copy is renamed into place when done, so a
reader of the older file (a pinned read-only mount) keeps its state.

Unchanged nodes keep their inode numbers. New nodes are numbered from the copy's largest inode
on, in the order they are added, so they are not in path order: the index records where that
begins (``meta.unsorted_from``), and ``VersionIndex.walk`` merges them in. A folder's ``last``
counts only the sorted part. Whatever a full build of the same state would serve (types, sizes,
modes, mtimes, nlink, provenance, chunks, counts) is the same; only the numbering differs.

A build's lineage is recorded too (``meta.changesets``: how many of the version's change-sets it
holds; ``meta.lineage``: a digest of the version, its parents and those change-sets' ids), so an
index is only extended from a state that really is a prefix of the draft's.
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable

from ..changeset.manifest import DIR, Removal
from ..paths import name_bytes
from .index import ROOT_INO, TYPE_CODES

_DIR = TYPE_CODES[DIR]
_ATTRS = ("type, size, mode, mtime_ns, sha256, target, chunk_id, offset, csize, method, provider_id, blocks, "
          "tree, tree_offset")


class PathConflict(Exception):
    """A path would be both a file and a folder; callers turn it into their error type."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


def entry_row(fields: tuple, provider: int, chunk_id: int | None) -> tuple:
    """The path's bytes, the length of its last name, then the node's attributes (``_ATTRS``
    order, ``csize`` as given) for an ``entry_fields`` tuple. One flat tuple: a build makes one
    per entry."""
    (path, kind, size, sha256, mode, mtime_ns, target, chunk, offset, csize, method, blocks, tree,
     tree_offset) = fields
    raw = path.encode("utf-8", "surrogateescape")  # name_bytes, inlined
    if kind == DIR:
        return (raw, len(raw) - raw.rfind(b"/") - 1, _DIR, 0, mode, mtime_ns, None, None, None, offset, csize,
                method, provider, None, None, None)
    return (raw, len(raw) - raw.rfind(b"/") - 1, TYPE_CODES[kind], size, mode, mtime_ns, bytes.fromhex(sha256),
            None if target is None else name_bytes(target), chunk_id, offset, csize, method, provider,
            None if blocks is None else bytes.fromhex(blocks), None if tree is None else bytes.fromhex(tree),
            None if tree is None else tree_offset)


def folder_row(raw: bytes, mtime_ns: int, provider: int) -> tuple:
    """``entry_row`` of a folder made because something was added below it."""
    return (raw, len(raw) - raw.rfind(b"/") - 1, _DIR, 0, 0o755, mtime_ns, None, None, None, None, None, None,
            provider, None, None, None)


def _stored(values: tuple) -> tuple:
    """Attributes as the index stores them: ``csize`` NULL when it equals ``size``."""
    return values[:8] + (None if values[8] == values[1] else values[8],) + values[9:]


def lineage_digests(version_id: str, parents: list[str], changeset_ids: Iterable[str]) -> list[str]:
    """``meta.lineage`` of a version holding none, one, two, ... of its change-sets."""
    digest = hashlib.sha256("\0".join([version_id, *parents]).encode())
    out = [digest.hexdigest()]
    for cs_id in changeset_ids:
        digest.update(b"\0" + cs_id.encode())
        out.append(digest.hexdigest())
    return out


def unsorted_limit(sorted_rows: int) -> int:
    """How many appended nodes an index may hold before the next change is a full build: a walk
    keeps the appended nodes' paths in memory."""
    return max(4096, sorted_rows // 8)


class IndexUpdate:
    """Change-sets applied to an open, writable index (a private copy)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        end = conn.execute("SELECT max(ino) FROM nodes").fetchone()[0] + 1
        self.unsorted_from = int(meta.get("unsorted_from", end))
        # Never below the sorted part, even when its last nodes (and every appended one) are gone.
        self.next_ino = max(end, self.unsorted_from)
        self.files, self.bytes = int(meta["files"]), int(meta["bytes"])
        self.chunk_ids = {key: cid for cid, key in conn.execute("SELECT id, key FROM chunks")}
        self.provider_ids = {version: pid for pid, version in conn.execute("SELECT id, version FROM providers")}
        self.dropped_chunks: set[int] = set()
        self.dropped_providers: set[int] = set()
        self.folders: dict[str, int] = {"": ROOT_INO}  # folders looked up or made, by path
        self.rows = 0  # nodes inserted, changed or deleted

    @property
    def appended(self) -> int:
        return self.next_ino - self.unsorted_from

    def provider(self, version: str) -> int:
        return self._intern("providers", "version", self.provider_ids, version)

    def _intern(self, table: str, column: str, ids: dict[str, int], key: str) -> int:
        got = ids.get(key)
        if got is None:
            got = ids[key] = self.conn.execute(f"INSERT INTO {table}({column}) VALUES (?)", (key,)).lastrowid
        return got

    # -- finding nodes ----------------------------------------------------------------------

    def _child(self, parent: int, name: str) -> tuple[int, int, int] | None:
        """(ino, type, size) of ``name`` in folder ``parent``."""
        return self.conn.execute("SELECT ino, type, size FROM nodes WHERE parent = ? AND name = ? AND ino != 1",
                                 (parent, name_bytes(name))).fetchone()

    def _folder(self, path: str) -> int | None:
        """The inode of folder ``path``; None if there is none (or a file is there or above)."""
        ino = self.folders.get(path)
        if ino is None:
            parent_path, _, name = path.rpartition("/")
            parent = self._folder(parent_path)
            row = self._child(parent, name) if parent is not None else None
            if row is None or row[1] != _DIR:
                return None
            ino = self.folders[path] = row[0]
        return ino

    def _find(self, path: str) -> tuple[int, int, int, int] | None:
        """(ino, type, size, parent ino) of the node at ``path``."""
        parent_path, _, name = path.rpartition("/")
        parent = self._folder(parent_path)
        row = self._child(parent, name) if parent is not None else None
        return None if row is None else (*row, parent)

    # -- changing nodes ---------------------------------------------------------------------

    def apply(self, items: Iterable[tuple | Removal], version: str) -> None:
        """Apply one change-set's removals and adds (adds as ``entry_fields`` tuples)."""
        provider = self.provider(version)
        for item in items:
            if type(item) is tuple:
                self.add(item, provider)
            else:
                self.remove(item.path)

    def remove(self, path: str) -> None:
        found = self._find(path) if path else None
        if found is None:
            return
        ino, kind, _, parent = found
        conn = self.conn
        conn.execute("CREATE TEMP TABLE IF NOT EXISTS gone(ino INTEGER PRIMARY KEY)")
        conn.execute("INSERT INTO gone WITH RECURSIVE sub(ino, type) AS (SELECT ?, ? UNION ALL "
                     "SELECT n.ino, n.type FROM sub JOIN nodes n ON n.parent = sub.ino WHERE sub.type = ?) "
                     "SELECT ino FROM sub", (ino, kind, _DIR))
        files, size, rows = conn.execute(
            "SELECT count(*) FILTER (WHERE n.type != ?), coalesce(sum(n.size) FILTER (WHERE n.type != ?), 0), "
            "count(*) FROM gone JOIN nodes n USING (ino)", (_DIR, _DIR)).fetchone()
        self.dropped_chunks.update(r[0] for r in conn.execute(
            "SELECT DISTINCT n.chunk_id FROM gone JOIN nodes n USING (ino) WHERE n.chunk_id IS NOT NULL"))
        self.dropped_providers.update(r[0] for r in conn.execute(
            "SELECT DISTINCT n.provider_id FROM gone JOIN nodes n USING (ino)"))
        conn.execute("DELETE FROM nodes WHERE ino IN gone")
        conn.execute("DELETE FROM gone")
        self.files -= files
        self.bytes -= size
        self.rows += rows
        if kind == _DIR:
            conn.execute("UPDATE nodes SET nlink = nlink - 1 WHERE ino = ?", (parent,))
            below = path + "/"
            for folder in [f for f in self.folders if f == path or f.startswith(below)]:
                del self.folders[folder]

    def add(self, fields: tuple, provider: int) -> None:
        """Add one entry (an ``entry_fields`` tuple): a new node, or new attributes for one."""
        path, kind, chunk = fields[0], fields[1], fields[7]
        parent_path, _, name = path.rpartition("/")
        parent = self._folders_for(path, fields[5], provider) if parent_path else ROOT_INO
        chunk_id = None if chunk is None else self._intern("chunks", "key", self.chunk_ids, chunk)
        values = entry_row(fields, provider, chunk_id)[2:]
        row = self._child(parent, name)
        if row is None:
            self._insert(parent, name, values)
            if kind == DIR:
                self.folders[path] = self.next_ino - 1
            return
        ino, old_type, old_size = row
        if (kind == DIR) != (old_type == _DIR):
            raise PathConflict(path)
        old = self.conn.execute("SELECT chunk_id, provider_id FROM nodes WHERE ino = ?", (ino,)).fetchone()
        if old[0] is not None:
            self.dropped_chunks.add(old[0])
        self.dropped_providers.add(old[1])
        self.conn.execute(f"UPDATE nodes SET ({_ATTRS}) = ({','.join('?' * 14)}) WHERE ino = ?",
                          (*_stored(values), ino))
        if kind != DIR:
            self.bytes += values[1] - old_size
        self.rows += 1

    def _folders_for(self, path: str, mtime_ns: int, provider: int) -> int:
        """The inode of ``path``'s folder, making the missing folders above it (a file in the way
        is a conflict)."""
        parent = ROOT_INO
        folder = ""
        for name in path.split("/")[:-1]:
            folder = f"{folder}/{name}" if folder else name
            ino = self.folders.get(folder)
            if ino is None:
                row = self._child(parent, name)
                if row is None:
                    self._insert(parent, name, folder_row(name_bytes(folder), mtime_ns, provider)[2:])
                    ino = self.next_ino - 1
                elif row[1] != _DIR:
                    raise PathConflict(folder)
                else:
                    ino = row[0]
                self.folders[folder] = ino
            parent = ino
        return parent

    def _insert(self, parent: int, name: str, values: tuple) -> None:
        ino = self.next_ino
        self.next_ino += 1
        is_dir = values[0] == _DIR
        self.conn.execute(
            f"INSERT INTO nodes(ino, parent, name, {_ATTRS}, nlink, last) "
            f"VALUES (?, ?, ?, {','.join('?' * 14)}, ?, ?)",
            (ino, parent, name_bytes(name), *_stored(values), 2 if is_dir else 1, ino if is_dir else None))
        if is_dir:
            self.conn.execute("UPDATE nodes SET nlink = nlink + 1 WHERE ino = ?", (parent,))
        else:
            self.files += 1
            self.bytes += values[1]
        self.rows += 1

    # -- the end ------------------------------------------------------------------------------

    def finish(self, own_provider: int, meta: dict[str, str]) -> None:
        """Drop chunks and providers nothing refers to any more, and write ``meta``."""
        conn = self.conn
        for cid in self.dropped_chunks:
            if conn.execute("SELECT 1 FROM nodes WHERE chunk_id = ? LIMIT 1", (cid,)).fetchone() is None:
                conn.execute("DELETE FROM chunks WHERE id = ?", (cid,))
        for pid in self.dropped_providers - {own_provider}:
            if conn.execute("SELECT 1 FROM nodes WHERE provider_id = ? LIMIT 1", (pid,)).fetchone() is None:
                conn.execute("DELETE FROM providers WHERE id = ?", (pid,))
        meta = dict(meta, files=str(self.files), bytes=str(self.bytes))
        if self.appended:
            meta["unsorted_from"] = str(self.unsorted_from)
        conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", list(meta.items()))
