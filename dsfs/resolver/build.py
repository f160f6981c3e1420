"""Building a version's merged view into an index file.

The merge, for a version V::

    view(V) = apply(change-sets of V, overlay(view(P1), view(P2), ...))

where a later parent wins on the same path (a file replacing a folder drops the folder's
subtree), and inside a change-set removals apply first (a folder tombstone takes its subtree),
then adds. A change-set that would make a path both a file and a folder is rejected.

The work happens in a scratch SQLite table keyed by path, so memory stays bounded by the number
of folders, not files: a single-parent chain is replayed change-set by change-set into one
table, and a cached index of a published ancestor is bulk-copied instead of replayed.

A draft's index is not built again for each change-set it gains: it is updated in place from
its previous one (dsfs/resolver/update.py), and built only when there is none to extend.
"""

from __future__ import annotations

import collections
import contextlib
import datetime as _dt
import functools
import hashlib
import logging
import operator
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterable, Iterator
from typing import BinaryIO

from ..catalog import Catalog
from ..changeset.manifest import DIR, ChangeSetRef, Removal, VersionManifest, entry_fields, iter_changeset
from ..errors import Corrupt, InvalidInput
from ..paths import ancestors, name_bytes, name_str
from .index import INDEX_FORMAT, INDEX_SQL, NODES_SQL, ROOT_INO, SCHEMA_SQL, TYPE_CODES, VersionIndex
from .parse import Reader, intern
from .update import IndexUpdate, PathConflict, folder_row, lineage_digests, unsorted_limit

log = logging.getLogger(__name__)

_DIR = TYPE_CODES[DIR]
_BATCH = 20000
_CACHE_KIB = 131072  # SQLite's page cache during a build
# ``nlen`` is the length of the path's last name (its bytes), so SQL can split a path. Chunk keys
# and provider versions are interned (``_Work.chunks``, ``_Work.providers``): they are most of a
# row's bytes otherwise.
_WORK_COLUMNS = ("path, nlen, type, size, mode, mtime_ns, sha256, target, chunk_id, offset, csize, method, "
                 "provider_id, blocks, tree, tree_offset")
# A plain file's row (no target, block hashes or tree) is bound as 12 values, not 16: the four
# Nones made inserting a million rows a third slower (each goes through the adapter protocol).
_PLAIN_COLUMNS = "path, nlen, type, size, mode, mtime_ns, sha256, chunk_id, offset, csize, method, provider_id"
_INSERT = {16: f"INSERT OR REPLACE INTO scratch.work VALUES ({','.join('?' * 16)})",
           12: f"INSERT OR REPLACE INTO scratch.work({_PLAIN_COLUMNS}) VALUES ({','.join('?' * 12)})"}
_PATH = operator.itemgetter(0)
# Every node of an attached index with its path, built down from the root's children.
_COPY_SELECT = (
    "WITH RECURSIVE t(path, nlen, ino, type, size, mode, mtime_ns, sha256, target, chunk_id, offset, csize, "
    "method, provider_id, blocks, tree, tree_offset) AS ("
    "SELECT name, length(name), ino, type, size, mode, mtime_ns, sha256, target, chunk_id, offset, "
    "coalesce(csize, size), method, provider_id, blocks, tree, tree_offset FROM src.nodes "
    "WHERE parent = 1 AND ino != 1 "
    "UNION ALL SELECT CAST(t.path || X'2f' || n.name AS BLOB), length(n.name), n.ino, n.type, n.size, n.mode, "
    "n.mtime_ns, n.sha256, n.target, n.chunk_id, n.offset, coalesce(n.csize, n.size), n.method, n.provider_id, "
    "n.blocks, n.tree, n.tree_offset FROM t JOIN src.nodes n ON n.parent = t.ino WHERE t.type = ?) "
    "SELECT t.path, t.nlen, t.type, t.size, t.mode, t.mtime_ns, t.sha256, t.target, c.id, t.offset, "
    "t.csize, t.method, p.id, t.blocks, t.tree, t.tree_offset "
    "FROM t LEFT JOIN scratch.src_chunks c ON c.src = t.chunk_id "
    "JOIN scratch.src_providers p ON p.src = t.provider_id"
)


class _Work:
    """The view under construction: a path-keyed table plus the set of its folders' paths.

    The table holds paths and targets as bytes, as the index does, and so does ``dirs``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        conn.execute(f"CREATE TABLE scratch.work({_WORK_COLUMNS.replace('path', 'path BLOB PRIMARY KEY', 1)}) "
                     "WITHOUT ROWID")
        self.dirs: set[bytes] = set()
        self.pending: list[tuple] = []  # rows of one width (see _INSERT), in the order they came
        self.removals: list[bytes] = []  # paths whose removal is not applied yet
        self.chunks: dict[str, int] = {}  # key -> id, as the index's ``chunks`` table will have them
        self.providers: dict[str, int] = {}  # version -> id, likewise
        self.reader = Reader()

    def flush(self) -> None:
        """Insert the pending rows, in path order: an insert near the last one finds its pages at
        hand (a change-set's modifications land all over the table). The sort is stable, so of two
        rows of one path the later still replaces the earlier."""
        if self.pending:
            self.pending.sort(key=_PATH)
            self.conn.executemany(_INSERT[len(self.pending[0])], self.pending)
            self.pending.clear()

    def _push(self, row: tuple) -> None:
        pending = self.pending
        if pending and len(row) != len(pending[0]):
            self.flush()
        pending.append(row)
        if len(pending) >= _BATCH:
            self.flush()

    def _type_at(self, raw: bytes) -> int | None:
        self.flush()
        row = self.conn.execute("SELECT type FROM scratch.work WHERE path = ?", (raw,)).fetchone()
        return row[0] if row else None

    def remove_now(self) -> None:
        """Apply the removals gathered: a folder's takes its subtree."""
        self.flush()
        conn, dirs = self.conn, self.dirs
        for raw in self.removals:
            if raw in dirs:
                lo, hi = raw + b"/", raw + b"0"
                dirs.difference_update(r[0] for r in conn.execute(
                    "SELECT path FROM scratch.work WHERE type = ? AND path >= ? AND path < ?", (_DIR, lo, hi)))
                dirs.discard(raw)
                conn.execute("DELETE FROM scratch.work WHERE path >= ? AND path < ?", (lo, hi))
        conn.executemany("DELETE FROM scratch.work WHERE path = ?", [(raw,) for raw in self.removals])
        self.removals.clear()

    def _add_folders(self, raw: bytes, mtime_ns: int, provider: int) -> None:
        """Make the missing folders above ``raw`` (a file in the way is a conflict)."""
        end = raw.find(b"/")
        while end != -1:
            folder = raw[:end]
            end = raw.find(b"/", end + 1)
            if folder in self.dirs:
                continue
            kind = self._type_at(folder)
            if kind is not None and kind != _DIR:
                raise PathConflict(name_str(folder))
            if kind is None:
                self._push(folder_row(folder, mtime_ns, provider))
            self.dirs.add(folder)

    def apply(self, batches_of: Callable[[dict[str, int], int], Iterable[list[tuple | Removal]]], version: str
              ) -> None:
        """Apply a change-set's removals and adds: ``batches_of(chunks, provider)`` streams them in
        lists, the adds as rows of ``row_maker(chunks, provider)``. Each add gets the folders
        missing above it; a path that would be both a file and a folder is refused. (One loop,
        no call per row: it runs a million times.)"""
        provider = intern(self.providers, version)
        dirs, pending, removals = self.dirs, self.pending, self.removals
        for batch in batches_of(self.chunks, provider):
            for row in batch:
                if type(row) is not tuple:
                    removals.append(name_bytes(row.path))
                    if len(removals) >= _BATCH:
                        self.remove_now()
                    continue
                if removals:
                    self.remove_now()
                raw = row[0]
                cut = len(raw) - row[1] - 1
                if cut > 0 and raw[:cut] not in dirs:
                    self._add_folders(raw, row[5], provider)
                if row[2] == _DIR:
                    if raw not in dirs:
                        if self._type_at(raw) is not None:
                            raise PathConflict(name_str(raw))
                        dirs.add(raw)
                elif raw in dirs:
                    raise PathConflict(name_str(raw))
                if pending and len(row) != len(pending[0]):
                    self.flush()
                pending.append(row)
                if len(pending) >= _BATCH:
                    self.flush()
        if removals:
            self.remove_now()
        self.flush()

    def overlay(self, index_path: str) -> None:
        """Merge another view on top: its paths win; its files replace our folders whole."""
        self.flush()
        self.conn.execute("ATTACH DATABASE ? AS src", (f"file:{index_path}?mode=ro",))
        try:
            src_dirs = _folders(self.conn)
            self.removals.extend(d for d in self.dirs if self._file_in(src_dirs, d))
            self.remove_now()
            for table, ids, sql in (("src_chunks", self.chunks, "SELECT id, key FROM src.chunks"),
                                    ("src_providers", self.providers, "SELECT id, version FROM src.providers")):
                self.conn.execute(f"CREATE TABLE scratch.{table}(src INTEGER PRIMARY KEY, id INTEGER NOT NULL)")
                self.conn.executemany(f"INSERT INTO scratch.{table} VALUES (?, ?)",
                                      [(src, intern(ids, key)) for src, key in self.conn.execute(sql)])
            self.conn.execute(f"INSERT OR REPLACE INTO scratch.work({_WORK_COLUMNS}) {_COPY_SELECT}", (_DIR,))
            self.conn.execute("DROP TABLE scratch.src_chunks")
            self.conn.execute("DROP TABLE scratch.src_providers")
            self.dirs.update(path for path in src_dirs if path)
            self.conn.commit()
        finally:
            self.conn.execute("DETACH DATABASE src")

    def _file_in(self, src_dirs: dict[bytes, int], path: bytes) -> bool:
        """Whether the attached index has a file or symlink at ``path``."""
        if path in src_dirs:
            return False
        parent, _, name = path.rpartition(b"/")
        if parent not in src_dirs:
            return False  # nothing there, or an ancestor is a file (that one is a clash itself)
        row = self.conn.execute("SELECT type FROM src.nodes WHERE parent = ? AND name = ? AND ino != 1",
                                (src_dirs[parent], name)).fetchone()
        return row is not None and row[0] != _DIR


def _folders(conn: sqlite3.Connection) -> dict[bytes, int]:
    """The attached index's folders: path -> inode (the root is b'')."""
    paths = {ROOT_INO: b""}
    for ino, parent, name in conn.execute("SELECT ino, parent, name FROM src.nodes WHERE type = ? AND ino != 1 "
                                          "ORDER BY ino", (_DIR,)):
        base = paths[parent]  # a folder's parent comes before it in inode (path) order
        paths[ino] = base + b"/" + name if base else name
    return {path: ino for ino, path in paths.items()}


class ViewBuilder:
    """Finds or builds the index of a version's merged view under ``index_dir``.

    ``stats`` counts full builds (``built``), in-place updates (``updated``), the nodes those
    updates inserted, changed or deleted (``rows_updated``), and the change-sets a build read in a
    second process (``parsed_apart``)."""

    def __init__(self, catalog: Catalog, index_dir: str) -> None:
        self.catalog = catalog
        self.index_dir = index_dir
        self.stats: collections.Counter[str] = collections.Counter()
        os.makedirs(index_dir, exist_ok=True)

    def _published_path(self, version_id: str) -> str:
        return os.path.join(self.index_dir, f"{version_id}.sqlite")

    def index_for(self, manifest: VersionManifest) -> VersionIndex:
        """The index of ``manifest``'s merged view, built now if there is no current one."""
        if manifest.is_published:
            path = self._published_path(manifest.id)
            if not os.path.exists(path) or not _current(path):
                self._build(manifest, path)
            return VersionIndex(path, immutable=True)
        # A draft's index is named after its record's etag: any change-set makes a new one.
        etag = self.catalog.draft_etag(manifest.id) or ""
        tag = hashlib.sha256(etag.encode()).hexdigest()[:16]
        path = os.path.join(self.index_dir, f"{manifest.id}.draft-{tag}.sqlite")
        if not os.path.exists(path) or not _current(path):
            manifest = self.catalog.version(manifest.id)
            # (A writer racing this one may have made it meanwhile, from the file this one wanted.)
            if not self._update(manifest, path) and not _current(path):
                self._build(manifest, path)
            for old in os.listdir(self.index_dir):
                if old.startswith(f"{manifest.id}.draft-") and not path.endswith(old):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(os.path.join(self.index_dir, old))
        return VersionIndex(path, immutable=False)

    @contextlib.contextmanager
    def merged(self, manifest: VersionManifest) -> Iterator[VersionIndex]:
        """The merged view of a manifest the catalog does not hold (a squash's: its parents in
        order, no change-sets), built by the same bounded merge into a temp file that goes when
        the block ends."""
        fd, path = tempfile.mkstemp(dir=self.index_dir, prefix=".merged-", suffix=".sqlite")
        os.close(fd)
        try:
            self._build(manifest, path)
            index = VersionIndex(path, immutable=True)
            try:
                yield index
            finally:
                index.close()
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def _update(self, manifest: VersionManifest, dest: str) -> bool:
        """Make a draft's index from a copy of an index of an earlier state of it (or of its one
        parent's), applying only the change-sets that one lacks. False when there is no such
        index, or the change would leave too many nodes out of path order (then a full build
        sorts them again)."""
        digests = lineage_digests(manifest.id, manifest.parents, [ref.id for ref in manifest.changesets])
        base = self._update_base(manifest, digests)
        if base is None:
            return False
        src, held = base
        log.debug("updating index of %s at %s from %s (%d change-sets to apply)", manifest.id, dest, src,
                  len(manifest.changesets) - held)
        try:
            source = open(src, "rb")  # held open: another process may replace it meanwhile
        except FileNotFoundError:
            return False
        with source, _written_as(dest, ".build-") as tmp:
            _copy(source, tmp)  # a copy: a reader of src (a pinned mount) keeps its state
            conn = sqlite3.connect(tmp)
            try:
                conn.execute("PRAGMA journal_mode=OFF")
                conn.execute("PRAGMA synchronous=OFF")
                update = IndexUpdate(conn)
                own = update.provider(manifest.id)
                root = conn.execute("SELECT provider_id FROM nodes WHERE ino = 1").fetchone()[0]
                update.dropped_providers.add(root)
                conn.execute("UPDATE nodes SET mtime_ns = ?, provider_id = ? WHERE ino = 1",
                             (_root_mtime(manifest), own))
                fields = functools.partial(iter_changeset, make=entry_fields)
                for ref in manifest.changesets[held:]:
                    with _conflicts_are_corrupt(manifest, ref.id):
                        update.apply(self.catalog.changeset_items(ref, self.index_dir, fields), manifest.id)
                update.finish(own, {"version": manifest.id, "dataset": manifest.dataset, "format": INDEX_FORMAT,
                                    "changesets": str(len(manifest.changesets)), "lineage": digests[-1]})
                conn.commit()
            finally:
                conn.close()
        self.stats["updated"] += 1
        self.stats["rows_updated"] += update.rows
        return True

    def _update_base(self, manifest: VersionManifest, digests: list[str]) -> tuple[str, int] | None:
        """An index to extend into ``manifest``'s, and how many of its change-sets that one holds:
        the draft's own newest index of a state this one extends, else its one parent's."""
        prefix = f"{manifest.id}.draft-"
        own = [os.path.join(self.index_dir, name) for name in os.listdir(self.index_dir) if name.startswith(prefix)]
        for path in sorted(own, key=_mtime, reverse=True):
            meta = _index_meta(path)
            held = int(meta.get("changesets", -1))
            if meta.get("version") == manifest.id and 0 <= held < len(digests) and digests[held] == meta.get("lineage"):
                return (path, held) if _room_for(meta, manifest.changesets[held:]) else None
        if len(manifest.parents) == 1:
            path = self._published_path(manifest.parents[0])
            meta = _index_meta(path)
            if meta.get("version") == manifest.parents[0] and _room_for(meta, manifest.changesets):
                return path, 0
        return None

    def _build(self, manifest: VersionManifest, dest: str) -> None:
        self.stats["built"] += 1
        log.debug("building index of %s at %s", manifest.id, dest)
        with _written_as(dest, ".build-") as tmp:
            scratch = tmp + ".scratch"
            conn = sqlite3.connect(tmp)
            try:
                conn.execute("PRAGMA journal_mode=OFF")
                conn.execute("PRAGMA synchronous=OFF")
                conn.execute("ATTACH DATABASE ? AS scratch", (scratch,))
                conn.execute("PRAGMA scratch.journal_mode=OFF")
                conn.execute("PRAGMA scratch.synchronous=OFF")
                conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
                work = _Work(conn)
                try:
                    self._replay(manifest, work, visiting=set())
                finally:
                    work.reader.close()
                    self.stats["parsed_apart"] += work.reader.apart
                _finalize(conn, manifest, work)
                conn.commit()
                conn.execute("DETACH DATABASE scratch")
            finally:
                conn.close()
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(scratch)

    def _rows(self, ref: ChangeSetRef, reader: Reader, chunks: dict[str, int], provider: int
              ) -> Iterator[list[tuple | Removal]]:
        """A change-set's removals and work rows (``row_maker``) in lists, as ``reader`` reads them."""
        return self.catalog.changeset_items(ref, self.index_dir, functools.partial(
            reader.items, entries=ref.entries, chunks=chunks, provider=provider))

    def _replay(self, manifest: VersionManifest, work: _Work, visiting: set[str]) -> None:
        if manifest.id in visiting:
            raise Corrupt(f"version lineage has a cycle through {manifest.id!r}")
        visiting.add(manifest.id)
        for n, parent_id in enumerate(manifest.parents):
            parent = self.catalog.version(parent_id)
            if not parent.is_published:
                raise Corrupt(f"parent {parent_id!r} of {manifest.id!r} is not published")
            cached = self._published_path(parent_id)
            if n == 0 and not os.path.exists(cached):
                self._replay(parent, work, visiting)
            else:
                work.overlay(self.index_for(parent).path)
        for ref in manifest.changesets:
            with _conflicts_are_corrupt(manifest, ref.id):
                work.apply(functools.partial(self._rows, ref, work.reader), manifest.id)
        visiting.discard(manifest.id)


@contextlib.contextmanager
def _written_as(dest: str, prefix: str) -> Iterator[str]:
    """A new temp file beside ``dest`` that replaces ``dest`` when the block ends well, and is
    deleted when it does not."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dest), prefix=prefix, suffix=".sqlite")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _copy(source: BinaryIO, dest: str) -> None:
    """Copy an open file into ``dest`` inside the kernel (a reflink where the filesystem can)."""
    with open(dest, "wb") as out:
        size, done = os.fstat(source.fileno()).st_size, 0
        try:
            while done < size and (n := os.copy_file_range(source.fileno(), out.fileno(), size - done,
                                                           done, done)):
                done += n
        except OSError:  # not between these filesystems (or kernels): by hand
            source.seek(done)
            out.seek(done)
            shutil.copyfileobj(source, out, 1 << 20)


@contextlib.contextmanager
def _conflicts_are_corrupt(manifest: VersionManifest, changeset_id: str) -> Iterator[None]:
    try:
        yield
    except PathConflict as exc:
        raise Corrupt(f"change-set {changeset_id!r} of version {manifest.id!r} makes a path both "
                      f"a file and a folder: {exc.path!r}") from None


def _mtime(path: str) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0


def _index_meta(path: str) -> dict[str, str]:
    """The ``meta`` of an index file of this code's format, with its largest inode as
    ``max_ino``; empty for a missing, unreadable or older file."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            meta = dict(conn.execute("SELECT key, value FROM meta"))
            if meta.get("format") != INDEX_FORMAT:
                return {}
            meta["max_ino"] = str(conn.execute("SELECT max(ino) FROM nodes").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return {}
    return meta


def _current(path: str) -> bool:
    """Whether an index file has this code's format (older ones are rebuilt)."""
    return bool(_index_meta(path))


def _room_for(meta: dict[str, str], refs: list[ChangeSetRef]) -> bool:
    """Whether the index of ``meta`` can take the adds of ``refs`` and keep few enough nodes out of
    path order."""
    end = int(meta["max_ino"]) + 1
    start = int(meta.get("unsorted_from", end))
    return end - start + sum(ref.entries for ref in refs) <= unsorted_limit(start - 1)


def _root_mtime(manifest: VersionManifest) -> int:
    """The root's mtime: when the version was published (a draft: created)."""
    stamp = manifest.published or manifest.created
    return int(_dt.datetime.fromisoformat(stamp).timestamp() * 1e9) if stamp else 0


def upgrade_pinned(path: str) -> None:
    """Bring a pinned index (a staged draft's base, whose inode numbers its journal names) of
    format 3, 4, 5 or 6 to the current format in place, every row and inode number kept. Format 3
    held names as UTF-8 text, whose order is their byte order; 4 lacked the hash tree columns
    (its files read as those of change-sets without trees); 5 is 6 with paths stored and hashes
    as hex; 6 is 7 with every node in path order. So a rebuild would number them the same. Any
    other old format is refused: its inodes cannot be trusted."""
    if _current(path):
        return
    with open(path, "rb") as source, _written_as(path, ".upgrade-") as tmp:
        _copy(source, tmp)  # a copy: the pin may be a hard link of a shared index
        conn = sqlite3.connect(tmp)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
            if row is None or row[0] not in ("3", "4", "5", "6"):
                raise Corrupt(f"index of format {row and row[0]!r} cannot be upgraded: {path!r}")
            conn.create_function("unhex", 1, lambda h: None if h is None else bytes.fromhex(h),
                                 deterministic=True)
            with conn:
                if row[0] == "3":
                    conn.execute("UPDATE nodes SET name = CAST(name AS BLOB), path = CAST(path AS BLOB), "
                                 "target = CAST(target AS BLOB)")
                if row[0] in ("3", "4"):
                    conn.execute("ALTER TABLE nodes ADD COLUMN tree TEXT")
                    conn.execute("ALTER TABLE nodes ADD COLUMN tree_offset INTEGER")
                if row[0] != "6":
                    _upgrade_5(conn)
                conn.execute("UPDATE meta SET value = ? WHERE key = 'format'", (INDEX_FORMAT,))
        finally:
            conn.close()


def _upgrade_5(conn: sqlite3.Connection) -> None:
    """Format 5 -> 6: drop the paths (each folder gets ``last`` from its path range first) and store
    hashes as bytes."""
    for name in ("nodes_by_parent", "nodes_by_sha", "nodes_by_chunk"):
        conn.execute(f"DROP INDEX IF EXISTS {name}")
    conn.execute("ALTER TABLE nodes RENAME TO old_nodes")
    for statement in (NODES_SQL + INDEX_SQL).split(";"):
        if statement.strip():
            conn.execute(statement)
    conn.execute(
        "INSERT INTO nodes SELECT ino, parent, name, type, size, mode, mtime_ns, unhex(sha256), target, chunk_id, "
        "offset, nullif(csize, size), method, provider_id, nlink, unhex(blocks), unhex(tree), tree_offset, CASE "
        "WHEN o.ino = 1 THEN (SELECT max(ino) FROM old_nodes) "
        "WHEN o.type = ? THEN (SELECT coalesce(max(m.ino), o.ino) FROM old_nodes m "
        "WHERE m.path >= CAST(o.path || '/' AS BLOB) AND m.path < CAST(o.path || '0' AS BLOB)) END "
        "FROM old_nodes o ORDER BY ino", (_DIR,))
    conn.execute("DROP TABLE old_nodes")


def _finalize(conn: sqlite3.Connection, manifest: VersionManifest, work: _Work) -> None:
    """Number the merged paths into inodes (in path order) and write the served tables.

    The folders are numbered first (a row's inode is its rank in path order), then every row is
    copied in path order in SQL, taking the next rowid and its folder's inode as parent."""
    conn.executescript(SCHEMA_SQL)
    own = intern(work.providers, manifest.id)
    for table, ids in (("chunks", work.chunks), ("providers", work.providers)):
        conn.executemany(f"INSERT INTO {table} VALUES (?, ?)", [(i, key) for key, i in ids.items()])
    # Interned along the whole replay: drop what the merged view no longer uses (chunks below,
    # through their index).
    conn.execute("DELETE FROM providers WHERE id != ? AND id NOT IN (SELECT provider_id FROM scratch.work)", (own,))
    conn.execute("INSERT INTO nodes VALUES (1, 1, X'', ?, 0, ?, ?, NULL, NULL, NULL, NULL, NULL, "
                 "NULL, ?, 2, NULL, NULL, NULL, NULL)", (_DIR, 0o755, _root_mtime(manifest), own))
    _number_folders(conn)
    # CROSS JOIN keeps scratch.work the outer loop, read in path order: rowids 2, 3, ... in order.
    conn.execute(
        "INSERT INTO nodes(parent, name, type, size, mode, mtime_ns, sha256, target, chunk_id, offset, csize, "
        "method, provider_id, nlink, blocks, tree, tree_offset) "
        "SELECT f.ino, substr(w.path, length(w.path) - w.nlen + 1), w.type, w.size, w.mode, w.mtime_ns, "
        "w.sha256, w.target, w.chunk_id, w.offset, nullif(w.csize, w.size), w.method, w.provider_id, 1, "
        "w.blocks, w.tree, w.tree_offset FROM scratch.work w CROSS JOIN scratch.folders f "
        "ON f.path = substr(w.path, 1, length(w.path) - w.nlen - 1) ORDER BY w.path")
    rows, = conn.execute("SELECT count(*) FROM scratch.work").fetchone()
    if conn.execute("SELECT max(ino) FROM nodes").fetchone()[0] != rows + 1:  # a row without its folder
        raise RuntimeError("index build lost rows: a path's folder is missing from the merged view")
    # Making an index is a sort: with a small cache SQLite sorts in pieces, merged on two threads
    # (with a large one it sorts all in one piece, on one thread: a third slower on two cores).
    conn.execute("PRAGMA threads=2")
    conn.execute("PRAGMA cache_size=-4096")
    conn.executescript(INDEX_SQL)
    conn.execute(f"PRAGMA cache_size=-{_CACHE_KIB}")
    conn.execute("DELETE FROM chunks WHERE NOT EXISTS (SELECT 1 FROM nodes WHERE nodes.chunk_id = chunks.id)")
    _folder_links(conn)
    files, total = conn.execute("SELECT count(*), sum(size) FROM scratch.work WHERE type != ?", (_DIR,)).fetchone()
    digests = lineage_digests(manifest.id, manifest.parents, [ref.id for ref in manifest.changesets])
    conn.executemany("INSERT INTO meta VALUES (?, ?)", [
        ("version", manifest.id), ("dataset", manifest.dataset), ("files", str(files)),
        ("bytes", str(total or 0)), ("format", INDEX_FORMAT), ("changesets", str(len(manifest.changesets))),
        ("lineage", digests[-1])])


def _number_folders(conn: sqlite3.Connection) -> None:
    """Make ``scratch.folders``: each folder's path and inode, 2 + the rows before it in path order,
    summed from the counts of rows from one folder to the next (a window numbering every row
    costs four times as much)."""
    conn.execute("CREATE TABLE scratch.folders(path BLOB PRIMARY KEY, ino INTEGER NOT NULL) WITHOUT ROWID")
    numbered, before, previous = [(b"", ROOT_INO)], 0, b""
    for (path,) in conn.execute("SELECT path FROM scratch.work WHERE type = ?", (_DIR,)).fetchall():
        before += conn.execute("SELECT count(*) FROM scratch.work WHERE path >= ? AND path < ?",
                               (previous, path)).fetchone()[0]
        numbered.append((path, before + 2))
        previous = path
    conn.executemany("INSERT INTO scratch.folders VALUES (?, ?)", numbered)


def _folder_links(conn: sqlite3.Connection) -> None:
    """Set each folder's nlink (2 + its subfolders) and ``last`` (its subtree's last inode)."""
    ino_of = dict(conn.execute("SELECT path, ino FROM scratch.folders"))
    parent_ino = {ino: ino_of[path.rpartition(b"/")[0]] for path, ino in ino_of.items() if path}
    last = dict(conn.execute("SELECT parent, max(ino) FROM nodes WHERE ino != 1 GROUP BY parent"))
    subdirs = dict.fromkeys(ino_of.values(), 0)
    for folder in sorted(parent_ino, reverse=True):  # a subtree's folders before the folder above
        parent = parent_ino[folder]
        subdirs[parent] += 1
        last[folder] = last.get(folder, folder)
        last[parent] = max(last[parent], last[folder])
    conn.executemany("UPDATE nodes SET nlink = ?, last = ? WHERE ino = ?",
                     [(2 + subdirs[folder], last.get(folder, folder), folder) for folder in subdirs])


def check_against_view(index: VersionIndex | None, removals: Iterable[str],
                       adds: Iterable[tuple[str, bool]]) -> None:
    """Reject a change-set before upload if it would make a path both a file and a folder.

    ``adds`` are (path, is_dir) pairs; ``removals`` are paths removed first by the same change-set.
    """
    removed = set(removals)

    def is_removed(path: str) -> bool:
        return path in removed or any(folder in removed for folder in ancestors(path))

    new_dirs: set[str] = set()
    new_files: set[str] = set()
    checked: dict[str, str | None] = {}

    def view_type(path: str) -> str | None:
        if path not in checked:
            node = index.by_path(path) if index is not None else None
            checked[path] = None if node is None or is_removed(path) else node.type
        return checked[path]

    for path, is_dir in adds:
        for folder in ancestors(path):
            if folder in new_files or view_type(folder) not in (None, DIR):
                raise InvalidInput(f"path is both a file and a folder: {folder!r}")
            new_dirs.add(folder)
        if is_dir:
            if path in new_files or view_type(path) not in (None, DIR):
                raise InvalidInput(f"path is both a file and a folder: {path!r}")
            new_dirs.add(path)
        else:
            if path in new_dirs or view_type(path) == DIR:
                raise InvalidInput(f"path is both a file and a folder: {path!r}")
            new_files.add(path)
