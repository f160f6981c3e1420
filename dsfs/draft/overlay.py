"""The writable layer of a draft mount: a staging folder plus a SQLite journal (dsfs/draft/journal.py)
above the draft's merged view, with no FUSE import.

Namespace: ``dirents`` rows override the base view's directory entries by (parent inode, name);
a row with a NULL inode is a whiteout. ``inodes`` rows override a node's attributes, or define a
new node (inode numbers above the base index's). Renaming a folder moves one entry: its children
keep pointing at its inode. Hard links are refused, so every inode has exactly one entry.
Names and symlink targets are stored as BLOBs of their bytes, as in the index (dsfs/paths.py).

Data: a file being written has a working copy, ``data/<ino>.w`` (a new file, with no closed
bytes to roll back to, is written in place as ``data/<ino>``); when it is closed — at the FUSE
flush of its only writer, which close(2) waits for, or at the last release — it is hashed
(usually already, as it was written: dsfs/draft/digest.py), renamed to ``data/<ino>`` and its
journal row committed, with every change made before it: the rows of closes that run at the
same time share one commit (group commit). Other operations commit as they end, except a
create's row and a reopen's mark, which wait for the next commit (a crash drops a file never
closed anyway). Commits are WAL appends without fsync: they survive the daemon's death
(kill -9), not the machine's. ``sync`` (fsync of a
file or folder, ``dsfs commit``, unmount) fsyncs every file closed since the last sync, the
staging folder and the journal, and makes everything recorded durable against power loss; with
``durable_close`` every close does that for its own file, as a close did before. After a crash a
file open at the crash is rolled back to its last closed state (absent if it was never closed).
After a reboot (the machine went down, so page-cache data may be lost) every staged file is
hashed again, and one whose bytes are not the journaled ones is dropped, with a warning.

Unlinked inodes: removing an entry only detaches its inode (``parent`` NULL), so open handles
keep reading, writing and stat-ing it; the adapter calls ``forget`` once the kernel drops its
last reference, and only then are the row and its staged bytes deleted. A detached inode never
reaches a commit, and the next open of the journal deletes any left over.

Times: ``ctime_ns`` changes with every change to a node; ``atime_ns`` starts as the node's
mtime (or its creation time) and changes only when set explicitly: reads and writes leave it.
NULL in either (a journal from before they existed) reads as the mtime.

Threading: every public method is blocking and takes ``self.lock`` for its journal work only.
A file's bytes are written, copied up and hashed under that file's own lock, outside the
mount-wide one, so a big (or sparse) file's close never holds up other files; adapters call
the methods from worker threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import itertools
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ..changeset.manifest import DIR, FILE, SYMLINK
from ..errors import AlreadyExists, DsfsError, InvalidInput, NotFound
from ..paths import check_name_length, name_bytes, name_str
from ..procs import boot_id
from ..resolver.index import ROOT_INO, Node, VersionIndex
from ..store.local import fsync_path
from .digest import RunningHash, hash_staged
from .journal import Journal

log = logging.getLogger(__name__)

# The largest file a draft holds, whatever the staging filesystem allows (ext4's limit): a
# sparse file of exabytes would otherwise be hashed for ever at close and never be committed.
MAX_FILE_SIZE = 1 << 44


class FsError(DsfsError):
    """A POSIX error with an explicit errno (ENOTEMPTY, EISDIR, ...)."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err


@dataclasses.dataclass(slots=True)
class Attr:
    """What stat shows for a node of the merged (base + overlay) tree."""

    ino: int
    parent: int | None        # None: unlinked, alive only while the kernel still holds it
    name: str
    type: str
    mode: int
    mtime_ns: int
    size: int
    target: str | None
    base: int | None          # the base inode whose content this node starts from
    data: bool                # closed staged data exists
    sha256: str | None
    writing: bool
    base_node: Node | None = None
    compressible: bool = True
    ctime_ns: int = 0
    atime_ns: int = 0
    pristine: bool = False    # a base node the overlay never touched: immutable until changed here

    @property
    def is_dir(self) -> bool:
        return self.type == DIR


class _Open:
    """State of an inode with open write handles. ``fd`` is the working copy, or None once it
    was journaled at a close while the handle itself stays open (a later write reopens it).
    ``changed_ns`` is the time of the last change to the bytes not yet journaled: stat shows it
    as mtime and ctime right away, the journal records it at close. ``hash`` follows the writes
    while they go front to back (None: close reads the file). ``lock`` orders this file's
    writes, truncates and close; it is taken before ``Overlay.lock``, never after."""

    def __init__(self, fd: int | None, changed_ns: int | None = None,
                 running: RunningHash | None = None, path: str | None = None) -> None:
        self.fd = fd
        self.path = path  # of the working copy
        self.writers = 1
        self.changed_ns = changed_ns
        self.hash = running
        self.lock = threading.Lock()


class Overlay:
    def __init__(self, stage_dir: str | os.PathLike, base: VersionIndex,
                 read_base: Callable[[Node, int, int], bytes], *, durable_close: bool = False) -> None:
        self.dir = Path(stage_dir)
        self.data_dir = self.dir / "data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._data = str(self.data_dir)  # paths of staged files are made per request: strings are cheaper
        self.base = base
        self.read_base = read_base
        self.durable_close = durable_close
        self.lock = threading.RLock()
        self._closes = itertools.count(1)
        self._closed_by: dict[int, int] = {}  # inode -> the close (of self._closes) that wrote its bytes
        self._shut = False
        self._frozen = False  # no change can come any more (``freeze``)
        self.journal = Journal(self.dir / "journal.sqlite", self.lock, durable=durable_close)
        self.db = self.journal.db
        self._open: dict[int, _Open] = {}
        self._detached: set[int] = set()  # unlinked, waiting for the kernel to forget them
        with self.lock:
            with self.journal.change():
                self.journal.set_meta("version", base.version_id)
            self._max_base = self._max_base_ino()
            # Base inodes the draft changed (each got a row): the others read straight from the base.
            self._rowed = {ino for ino, in self.db.execute("SELECT ino FROM inodes WHERE ino <= ?",
                                                            (self._max_base,))}
            row = self.db.execute("SELECT max(ino) FROM inodes").fetchone()
            self._next_ino = max(self._max_base, row[0] or 0) + 1
            self._recover()

    def sync(self) -> None:
        """Make everything recorded so far durable against power loss: the files closed since
        the last sync, the staging folder and the journal (fsync of a file or a folder on the
        mount, ``dsfs commit``, unmount)."""
        with self.lock:
            pending = self.db.execute("SELECT ino, unsynced FROM inodes WHERE unsynced IS NOT NULL").fetchall()
        for ino, _ in pending:
            _fsync_path(self._closed(ino))
        fsync_path(self.data_dir)
        with self.lock, self.journal.durable(), self.journal.change():
            # A file closed again since the snapshot above keeps its newer mark.
            self.db.executemany("UPDATE inodes SET unsynced = NULL WHERE ino = ? AND unsynced = ?", pending)
            self.journal.set_meta("synced_ns", str(time.time_ns()))

    # -- housekeeping ------------------------------------------------------------------------

    def _max_base_ino(self) -> int:
        with self.base._conn() as conn:
            return conn.execute("SELECT max(ino) FROM nodes").fetchone()[0] or ROOT_INO

    def _recover(self) -> None:
        """After the previous daemon's death: keep every closed file, roll back the ones that
        were open, and after a reboot drop closed files whose bytes did not reach the disk."""
        boot = boot_id()  # page-cache data of an earlier boot may not have survived
        rebooted = self.journal.meta("boot_id") not in (None, boot)
        with self.journal.change():
            rows = self.db.execute("SELECT ino, parent, name, base, data FROM inodes "
                                   "WHERE writing = 1 AND parent IS NOT NULL").fetchall()
            for ino, parent, raw, base, data in rows:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._working(ino))
                # Closed before and open again: the last close's rename may be newer than its row.
                closed = data and os.path.exists(self._closed(ino))
                if closed and not rebooted:
                    self._record_closed_file(ino)
                elif closed:  # _verify_staged judges it
                    self.db.execute("UPDATE inodes SET writing = 0 WHERE ino = ?", (ino,))
                else:  # never closed (a new file is written in place: drop what it has)
                    self._roll_back(ino, parent, name_str(raw), base, "never closed before the crash")
            if rebooted:
                self._verify_staged()
            for leftover in self.data_dir.glob("*.w"):
                leftover.unlink()
            # Inodes no entry refers to any more (unlinked while the kernel held them).
            for ino, in self.db.execute("SELECT ino FROM inodes WHERE parent IS NULL").fetchall():
                self._forget_inode(ino)
            # Staged bytes whose row never committed (killed between a close's rename and commit).
            known = {ino for ino, in self.db.execute("SELECT ino FROM inodes WHERE data = 1")}
            for path in self.data_dir.iterdir():
                if path.name.isdigit() and int(path.name) not in known:
                    path.unlink()
            self.journal.set_meta("boot_id", boot)

    def _record_closed_file(self, ino: int) -> None:
        with open(self._closed(ino), "rb") as f:
            digest, size, compressible = hash_staged(f.fileno())
        self.db.execute("UPDATE inodes SET writing = 0, data = 1, sha256 = ?, size = ?, compressible = ? "
                        "WHERE ino = ?", (digest, size, int(compressible), ino))

    def _verify_staged(self) -> None:
        """The machine went down since the journal was last open: a file closed but not synced
        may have lost its bytes (or kept newer ones than its committed row says)."""
        rows = self.db.execute("SELECT ino, parent, name, base, sha256 FROM inodes "
                               "WHERE data = 1 AND parent IS NOT NULL").fetchall()
        for ino, parent, raw, base, sha256 in rows:
            try:
                with open(self._closed(ino), "rb") as f:
                    intact = hash_staged(f.fileno())[0] == sha256
            except FileNotFoundError:
                intact = False
            if intact:
                self.db.execute("UPDATE inodes SET unsynced = NULL WHERE ino = ?", (ino,))
            else:
                log.warning("recovery: %r was not synced when the machine went down; its last "
                            "closed bytes are lost", name_str(raw))
                self._roll_back(ino, parent, name_str(raw), base, "")

    def _roll_back(self, ino: int, parent: int, name: str, base: int | None, why: str) -> None:
        """Back to the base's bytes, or gone if the base has none."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._closed(ino))
        node = self.base.get(base) if base else None
        if node is None or node.type != FILE:
            if why:
                log.info("recovery: dropping %r, %s", name, why)
            self._drop_entry(parent, name)
            self.db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        else:
            self.db.execute("UPDATE inodes SET writing = 0, data = 0, unsynced = NULL, size = ?, sha256 = ? "
                            "WHERE ino = ?", (node.size, node.sha256, ino))

    def close(self) -> None:
        with self.lock:
            if self._shut:
                return
            self._shut = True
            for state in self._open.values():
                if state.fd is not None:
                    os.close(state.fd)
            self._open.clear()
            self.journal.close()

    def _base_node(self, ino: int) -> Node | None:
        """The base's node ``ino``; inodes made here (above the base's) are not asked for."""
        return self.base.get(ino) if ino <= self._max_base else None

    def _base_child(self, parent: int, name: str) -> Node | None:
        return self.base.lookup(parent, name) if parent <= self._max_base else None

    def _working(self, ino: int) -> str:
        return f"{self._data}/{ino}.w"

    def _closed(self, ino: int) -> str:
        return f"{self._data}/{ino}"

    # -- reading the merged tree ---------------------------------------------------------------

    def getattr(self, ino: int) -> Attr:
        with self.lock:
            return self._attr(ino)

    def _attr(self, ino: int) -> Attr:
        row = self.db.execute("SELECT ino, parent, name, type, mode, mtime_ns, size, target, base, "
                              "data, sha256, writing, compressible, ctime_ns, atime_ns FROM inodes "
                              "WHERE ino = ?", (ino,)).fetchone()
        if row is not None:
            name = None if row[2] is None else name_str(row[2])
            target = None if row[7] is None else name_str(row[7])
            attr = Attr(*row[:2], name, *row[3:7], target, row[8], bool(row[9]), row[10], bool(row[11]),
                        compressible=bool(row[12]))
            attr.ctime_ns = row[13] or attr.mtime_ns
            if attr.base is not None:
                attr.base_node = self._base_node(attr.base)
            state = self._open.get(ino)
            if state is not None and state.fd is not None:
                attr.size = os.fstat(state.fd).st_size
            if state is not None and state.changed_ns is not None:
                attr.mtime_ns = state.changed_ns
                attr.ctime_ns = max(attr.ctime_ns, state.changed_ns)
            attr.atime_ns = row[14] or attr.mtime_ns
            return attr
        node = self._base_node(ino)
        if node is None:
            raise NotFound(f"no inode {ino}")
        return _from_base(node)

    def lookup(self, parent: int, name: str) -> Attr:
        check_name_length(name)
        with self.lock:
            return self._attr(self._lookup_ino(parent, name))

    def _lookup_ino(self, parent: int, name: str) -> int:
        check_name_length(name)
        row = self.db.execute("SELECT ino FROM dirents WHERE parent = ? AND name = ?",
                              (parent, name_bytes(name))).fetchone()
        if row is not None:
            if row[0] is None:
                raise NotFound(f"no entry {name!r}")
            return row[0]
        node = self._base_child(parent, name)
        if node is None:
            raise NotFound(f"no entry {name!r}")
        return node.ino

    def _exists(self, parent: int, name: str) -> int | None:
        try:
            return self._lookup_ino(parent, name)
        except NotFound:
            return None

    def listdir(self, ino: int) -> list[tuple[str, int]]:
        """(name, inode) of a folder's entries in name order."""
        with self.lock:
            attr = self._attr(ino)
            if not attr.is_dir:
                raise FsError(errno.ENOTDIR, f"not a folder: {attr.name!r}")
            overlay = {name_str(name): child for name, child in
                       self.db.execute("SELECT name, ino FROM dirents WHERE parent = ?", (ino,))}
            merged: dict[str, int] = {}
            if self._base_node(ino) is not None:
                after = None
                while True:
                    batch = self.base.children(ino, after, 5000)
                    for child in batch:
                        merged[child.name] = child.ino
                    if len(batch) < 5000:
                        break
                    after = batch[-1].name
            for name, child in overlay.items():
                if child is None:
                    merged.pop(name, None)
                else:
                    merged[name] = child
            return sorted(merged.items(), key=lambda item: name_bytes(item[0]))  # byte order, as the index

    def read(self, ino: int, offset: int, size: int, pristine: Node | None = None) -> bytes:
        """``pristine``: the base node of a handle opened on a file the draft had not touched;
        while that holds, its bytes come straight from the base, without lock or journal."""
        if pristine is not None and ino not in self._rowed and ino not in self._open:
            return self.read_base(pristine, offset, size)
        with self.lock:
            state = self._open.get(ino)
            if state is not None and state.fd is not None:
                return os.pread(state.fd, size, offset)
            attr = self._attr(ino)
        if attr.data:
            with open(self._closed(ino), "rb") as f:
                f.seek(offset)
                return f.read(size)
        if attr.base_node is not None and attr.base_node.type == FILE:
            return self.read_base(attr.base_node, offset, size)
        return b""

    # -- changing the tree -------------------------------------------------------------------

    def _new_ino(self) -> int:
        ino = self._next_ino
        self._next_ino += 1
        return ino

    def _ensure_row(self, ino: int) -> None:
        """Give a base node an inodes row (copied from the base) before changing it."""
        if self.db.execute("SELECT 1 FROM inodes WHERE ino = ?", (ino,)).fetchone():
            return
        node = self._base_node(ino)
        if node is None:
            raise NotFound(f"no inode {ino}")
        self.db.execute(
            "INSERT INTO inodes(ino, parent, name, type, mode, mtime_ns, size, target, base, data, sha256, "
            "ctime_ns, atime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?, ?)",
            (ino, node.parent, name_bytes(node.name), node.type, node.mode, node.mtime_ns, node.size,
             None if node.target is None else name_bytes(node.target), ino, node.sha256,
             node.mtime_ns, node.mtime_ns))
        self._rowed.add(ino)

    def _touch(self, ino: int, *, content: bool) -> None:
        """Record a change of ``ino`` now: its ctime, and its mtime as well if its content (a
        folder's entries) changed."""
        self._ensure_row(ino)
        now = time.time_ns()
        if content:
            self.db.execute("UPDATE inodes SET mtime_ns = ?, ctime_ns = ? WHERE ino = ?", (now, now, ino))
        else:
            self.db.execute("UPDATE inodes SET ctime_ns = ? WHERE ino = ?", (now, ino))

    def _drop_entry(self, parent: int, name: str) -> None:
        """Remove the entry (parent, name): a whiteout if the base has it, else delete the row."""
        raw = name_bytes(name)
        if self._base_child(parent, name) is not None and self._base_node(parent) is not None:
            self.db.execute("INSERT OR REPLACE INTO dirents VALUES (?, ?, NULL)", (parent, raw))
        else:
            self.db.execute("DELETE FROM dirents WHERE parent = ? AND name = ?", (parent, raw))

    def _link(self, parent: int, name: str, ino: int) -> None:
        raw = name_bytes(name)
        self.db.execute("INSERT OR REPLACE INTO dirents VALUES (?, ?, ?)", (parent, raw, ino))
        self.db.execute("UPDATE inodes SET parent = ?, name = ? WHERE ino = ?", (parent, raw, ino))

    def _check_dir(self, parent: int) -> Attr:
        attr = self._attr(parent)
        if not attr.is_dir:
            raise FsError(errno.ENOTDIR, f"not a folder: {attr.name!r}")
        return attr

    def _check_name(self, name: str) -> None:
        if not name or "/" in name or "\x00" in name or name in (".", ".."):
            raise InvalidInput(f"invalid name: {name!r}")
        check_name_length(name)

    def _create_node(self, parent: int, name: str, kind: str, mode: int, target: str | None = None,
                     writing: bool = False) -> Attr:
        self._check_name(name)
        self._check_dir(parent)
        if self._exists(parent, name) is not None:
            raise AlreadyExists(f"exists: {name!r}")
        ino = self._new_ino()
        raw_target = name_bytes(target) if target is not None else None
        now = time.time_ns()
        self.db.execute(
            "INSERT INTO inodes(ino, parent, name, type, mode, mtime_ns, size, target, base, data, "
            "sha256, writing, ctime_ns, atime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, NULL, 0, NULL, ?, ?, ?)",
            (ino, parent, name_bytes(name), kind, mode & 0o7777, now, len(raw_target or b""),
             raw_target, int(writing), now, now))
        self.db.execute("INSERT OR REPLACE INTO dirents VALUES (?, ?, ?)", (parent, name_bytes(name), ino))
        self._touch(parent, content=True)
        return self._attr(ino)

    def mkdir(self, parent: int, name: str, mode: int) -> Attr:
        with self.lock, self.journal.change():
            return self._create_node(parent, name, DIR, mode)

    def symlink(self, parent: int, name: str, target: str) -> Attr:
        with self.lock, self.journal.change():
            return self._create_node(parent, name, SYMLINK, 0o777, target=target)

    def create(self, parent: int, name: str, mode: int) -> Attr:
        """A new empty file, open for writing (call ``release_write`` when done)."""
        with self.lock:
            with self.journal.change(defer=True):  # dropped at a crash until closed: its close commits it
                attr = self._create_node(parent, name, FILE, mode, writing=True)
            # Written in place: a new file has no closed bytes a crash must roll back to.
            path = self._closed(attr.ino)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            self._open[attr.ino] = _Open(fd, attr.mtime_ns, RunningHash(), path)
            return attr

    def open_write(self, ino: int, truncate: bool) -> None:
        """Prepare ``ino`` for writing: copy it up into a working file (lazily fetched), under
        the file's own lock only."""
        with self.lock:
            state = self._open.get(ino)
            first = state is None
            if first:
                attr = self._attr(ino)
                if attr.type != FILE:
                    raise FsError(errno.EISDIR if attr.is_dir else errno.EINVAL, f"not a file: {attr.name!r}")
                with self.journal.change(defer=True):  # a crash rolls the file back with or without it
                    self._ensure_row(ino)
                    self.db.execute("UPDATE inodes SET writing = 1 WHERE ino = ?", (ino,))
                state = self._open[ino] = _Open(None)
                state.lock.acquire()  # new: nobody else holds it yet
            else:
                state.writers += 1
        if first:
            self._start_working_copy(ino, state, attr, truncate)
        elif truncate:
            with state.lock:
                self._working_copy(ino, state, empty=True)
                os.ftruncate(state.fd, 0)
                state.changed_ns, state.hash = time.time_ns(), RunningHash()

    def _start_working_copy(self, ino: int, state: _Open, attr: Attr, truncate: bool) -> None:
        """The first writer's copy-up, under the file's lock only (held; released here)."""
        try:
            work = state.path = self._working(ino)
            with _file_size_errors():
                if truncate or not (attr.data or (attr.base_node is not None and attr.size)):
                    _empty(work)
                    state.hash = RunningHash()
                elif attr.data:
                    shutil.copyfile(self._closed(ino), work)
                else:
                    self._copy_up(attr.base_node, work)
            state.fd = os.open(work, os.O_RDWR)
            if truncate:
                state.changed_ns = time.time_ns()
        except BaseException:
            with self.lock:
                state.writers -= 1
                if state.writers == 0:
                    del self._open[ino]
                    with self.journal.change():
                        self.db.execute("UPDATE inodes SET writing = 0 WHERE ino = ?", (ino,))
            raise
        finally:
            state.lock.release()

    def _copy_up(self, node: Node, dest: str) -> None:
        block = 4 << 20
        with open(dest, "wb") as out:
            for offset in range(0, node.size, block):
                data = self.read_base(node, offset, min(block, node.size - offset))
                if not data:
                    raise FsError(errno.EIO, f"short read copying up {node.path!r}")
                out.write(data)

    def _writable_state(self, ino: int) -> _Open:
        state = self._open.get(ino)
        if state is None:
            raise FsError(errno.EBADF, f"inode {ino} is not open for writing")
        return state

    def _working_copy(self, ino: int, state: _Open, empty: bool = False) -> None:
        """A write after the handle's data was journaled starts a new working copy (with
        ``state.lock`` held)."""
        if state.fd is not None:
            return
        state.path = self._working(ino)
        with _file_size_errors():
            if empty:
                _empty(state.path)
            else:
                shutil.copyfile(self._closed(ino), state.path)
        state.fd = os.open(state.path, os.O_RDWR)
        state.hash = RunningHash() if empty else None
        with self.lock, self.journal.change(defer=True):
            self.db.execute("UPDATE inodes SET writing = 1 WHERE ino = ?", (ino,))

    def write(self, ino: int, offset: int, data: bytes) -> int:
        # As the kernel does: a write that crosses the limit is cut short, one at it fails.
        check_file_size(offset + 1)
        data = data[:MAX_FILE_SIZE - offset]
        state = self._writable_state(ino)
        with state.lock:
            self._working_copy(ino, state)
            with _file_size_errors():
                written = os.pwrite(state.fd, data, offset)
            if state.hash is not None and not state.hash.write(offset, data[:written]):
                state.hash = None
            state.changed_ns = time.time_ns()
        return written

    def truncate_open(self, ino: int, size: int) -> None:
        check_file_size(size)
        state = self._writable_state(ino)
        with state.lock:
            self._working_copy(ino, state)
            with _file_size_errors():
                os.ftruncate(state.fd, size)
            if state.hash is not None and not state.hash.truncate(size):
                state.hash = None
            state.changed_ns = time.time_ns()

    def fsync(self, ino: int) -> None:
        """fsync(2) of a file: journal it if it is open for writing by one writer (as its close
        would), then make everything recorded durable."""
        self.flush_write(ino)
        self.sync()

    def flush_write(self, ino: int) -> None:
        """close(2) of a write handle: journal now if it is the file's only writer."""
        state = self._open.get(ino)
        if state is None:
            return
        with state.lock:
            if state.writers == 1 and state.fd is not None:
                self._close_working(ino, state)

    def release_write(self, ino: int) -> None:
        """A writer closed: on the last one, journal the file."""
        with self.lock:
            state = self._open.get(ino)
            if state is None:
                return
            state.writers -= 1
            if state.writers > 0:
                return
        with state.lock:
            if state.writers == 0 and state.fd is not None:
                self._close_working(ino, state)
            with self.lock:
                if state.writers == 0 and self._open.get(ino) is state:
                    del self._open[ino]

    def release_quickly(self, ino: int) -> bool:
        """``release_write`` if it has nothing to journal (the usual case: the flush of close(2)
        did) and no lock is busy; never blocks. False: call ``release_write``."""
        if not self.lock.acquire(blocking=False):
            return False
        try:
            state = self._open.get(ino)
            if state is None or state.writers > 1:
                if state is not None:
                    state.writers -= 1
                return True
            if not state.lock.acquire(blocking=False):
                return False
            try:
                if state.fd is not None:
                    return False
                state.writers = 0
                del self._open[ino]
                return True
            finally:
                state.lock.release()
        finally:
            self.lock.release()

    def freeze(self) -> None:
        """No change can come any more (the mount is gone, or no mount has this staging area):
        a snapshot then hands the commit the staged files themselves, with no hard links."""
        self._frozen = True

    def release_all(self) -> None:
        """The mount is gone, so every writer has closed: journal the files whose last release
        the kernel dropped at the unmount instead of sending."""
        for ino, state in list(self._open.items()):
            with state.lock:
                if state.fd is not None:
                    self._close_working(ino, state)
            with self.lock:
                self._open.pop(ino, None)

    def _close_working(self, ino: int, state: _Open) -> None:
        """Journal the working copy as the file's closed bytes (``state.lock`` held). The bytes
        are hashed (if the writes did not) outside the mount-wide lock."""
        # A detached file is journaled too: its handles still read it, but no commit sees it.
        if self.durable_close:
            os.fsync(state.fd)
        size = os.fstat(state.fd).st_size
        digest, size, compressible = state.hash.finish(size) if state.hash else hash_staged(state.fd)
        with self.lock:
            self._closed_by[ino] = next(self._closes)
            with self.journal.change(defer=True):
                if state.path != self._closed(ino):
                    os.rename(state.path, self._closed(ino))
                changed, state.changed_ns = state.changed_ns, None
                self.db.execute("UPDATE inodes SET data = 1, sha256 = ?, size = ?, writing = 0, "
                                "mtime_ns = coalesce(?, mtime_ns), ctime_ns = coalesce(?, ctime_ns), "
                                "compressible = ?, unsynced = ? WHERE ino = ?",
                                (digest, size, changed, changed, int(compressible),
                                 None if self.durable_close else self._closed_by[ino], ino))
                os.close(state.fd)
                state.fd = state.hash = None
            seq = self.journal.seq
        if self.durable_close:
            fsync_path(self.data_dir)
        self.journal.commit_through(seq)

    def setattr(self, ino: int, *, mode: int | None = None, mtime_ns: int | None = None,
                atime_ns: int | None = None, size: int | None = None) -> Attr:
        if size is not None:
            check_file_size(size)
            self.open_write(ino, truncate=size == 0)
            try:
                self.truncate_open(ino, size)
            finally:
                self.release_write(ino)
        with self.lock:
            if mode is None and mtime_ns is None and atime_ns is None:
                return self._attr(ino)
            with self.journal.change():
                self._touch(ino, content=False)
                if mode is not None:
                    self.db.execute("UPDATE inodes SET mode = ? WHERE ino = ?", (mode & 0o7777, ino))
                if mtime_ns is not None:
                    self.db.execute("UPDATE inodes SET mtime_ns = ? WHERE ino = ?", (mtime_ns, ino))
                    if ino in self._open:
                        self._open[ino].changed_ns = None  # an explicit mtime outlives earlier writes
                if atime_ns is not None:
                    self.db.execute("UPDATE inodes SET atime_ns = ? WHERE ino = ?", (atime_ns, ino))
            return self._attr(ino)

    def unlink(self, parent: int, name: str) -> None:
        with self.lock, self.journal.change():
            ino = self._lookup_ino(parent, name)
            attr = self._attr(ino)
            if attr.is_dir:
                raise FsError(errno.EISDIR, f"is a folder: {name!r}")
            self._remove(parent, name, ino)
            self._touch(parent, content=True)

    def rmdir(self, parent: int, name: str) -> None:
        with self.lock, self.journal.change():
            ino = self._lookup_ino(parent, name)
            attr = self._attr(ino)
            if not attr.is_dir:
                raise FsError(errno.ENOTDIR, f"not a folder: {name!r}")
            if self.listdir(ino):
                raise FsError(errno.ENOTEMPTY, f"folder not empty: {name!r}")
            self._remove(parent, name, ino)
            self._touch(parent, content=True)

    def _remove(self, parent: int, name: str, ino: int) -> None:
        """Drop the entry and detach its inode; ``forget`` frees it."""
        self._drop_entry(parent, name)
        self._touch(ino, content=False)
        self.db.execute("UPDATE inodes SET parent = NULL WHERE ino = ?", (ino,))
        self._detached.add(ino)

    def is_detached(self, ino: int) -> bool:
        """Was ``ino`` unlinked (lock-free: a set lookup the adapter makes on its loop)?"""
        return ino in self._detached

    def forget(self, inodes: list[int]) -> None:
        """The kernel holds no more references to ``inodes``: delete the detached ones."""
        with self.lock, self.journal.change():
            for ino in inodes:
                if ino in self._detached and ino not in self._open:
                    self._detached.discard(ino)
                    self._forget_inode(ino)

    def _forget_inode(self, ino: int) -> None:
        self.db.execute("DELETE FROM inodes WHERE ino = ?", (ino,))
        for path in (self._closed(ino), self._working(ino)):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def rename(self, parent: int, name: str, new_parent: int, new_name: str, flags: int = 0) -> None:
        noreplace, exchange = flags & 1, flags & 2  # RENAME_NOREPLACE, RENAME_EXCHANGE
        with self.lock, self.journal.change():
            self._check_name(new_name)
            ino = self._lookup_ino(parent, name)
            self._check_dir(new_parent)
            target = self._exists(new_parent, new_name)
            if target == ino:
                return
            src = self._attr(ino)
            if src.is_dir and self._is_ancestor(ino, new_parent):
                raise FsError(errno.EINVAL, f"cannot move a folder into itself: {name!r}")
            if exchange:
                if target is None:
                    raise NotFound(f"no entry {new_name!r}")
                dst = self._attr(target)
                if dst.is_dir and self._is_ancestor(target, parent):
                    raise FsError(errno.EINVAL, f"cannot move a folder into itself: {new_name!r}")
                self._touch(target, content=False)
                self._touch(ino, content=False)
                self._link(new_parent, new_name, ino)
                self._link(parent, name, target)
                self._touch_folders(parent, new_parent)
                return
            if target is not None:
                if noreplace:
                    raise AlreadyExists(f"exists: {new_name!r}")
                dst = self._attr(target)
                if dst.is_dir and not src.is_dir:
                    raise FsError(errno.EISDIR, f"is a folder: {new_name!r}")
                if src.is_dir and not dst.is_dir:
                    raise FsError(errno.ENOTDIR, f"not a folder: {new_name!r}")
                if dst.is_dir and self.listdir(target):
                    raise FsError(errno.ENOTEMPTY, f"folder not empty: {new_name!r}")
                self._remove(new_parent, new_name, target)
            self._touch(ino, content=False)
            self._drop_entry(parent, name)
            self._link(new_parent, new_name, ino)
            self._touch_folders(parent, new_parent)

    def _touch_folders(self, *folders: int) -> None:
        for folder in set(folders):
            self._touch(folder, content=True)

    def _is_ancestor(self, ino: int, of: int) -> bool:
        """Is ``ino`` ``of`` itself or one of its ancestors?"""
        current = of
        while True:
            if current == ino:
                return True
            if current == ROOT_INO:
                return False
            current = self._attr(current).parent

    # -- what changed --------------------------------------------------------------------------

    def has_changes(self) -> bool:
        with self.lock:
            return bool(self.db.execute("SELECT 1 FROM dirents LIMIT 1").fetchone()
                        or self.db.execute("SELECT 1 FROM inodes WHERE parent IS NOT NULL LIMIT 1").fetchone())

    def changes(self) -> Iterator[tuple[str, Attr | None, str | None]]:
        """(path, attr, removed_base_path) of everything the overlay touched.

        Yields ``(path, attr, None)`` for every node whose content, attributes or location may
        differ from the base, and ``("", None, base_path)`` for base entries that were removed
        or moved away. Open-for-write files that were never closed are skipped.
        """
        with self.lock:
            # A base entry that is gone, or whose name now holds another node, is removed.
            for parent, name, ino in self.db.execute("SELECT parent, name, ino FROM dirents").fetchall():
                if self._base_node(parent) is None:
                    continue
                node = self._base_child(parent, name_str(name))
                if node is not None and node.ino != ino:
                    yield "", None, node.path
            touched: set[int] = set()
            moved: set[int] = set()
            rows = self.db.execute("SELECT ino, parent FROM inodes WHERE parent IS NOT NULL").fetchall()
            rows += self.db.execute("SELECT ino, parent FROM dirents WHERE ino IS NOT NULL").fetchall()
            for ino, parent in rows:
                base = self._base_node(ino)  # None for a node made here: nothing to compare
                if base is None or (base.parent, base.name) != (parent, self._attr(ino).name):
                    moved.add(ino)
                current = parent
                while current not in touched:
                    touched.add(current)
                    if current == ROOT_INO:
                        break
                    current = self._attr(current).parent
            changed = {r[0] for r in self.db.execute("SELECT ino FROM inodes WHERE parent IS NOT NULL")}
            yield from self._walk_changes(ROOT_INO, "", touched, moved, changed, whole=False)

    def _walk_changes(self, ino, path, touched, moved, changed, whole):
        for name, child in self.listdir(ino):
            child_path = f"{path}/{name}" if path else name
            attr = self._attr(child)
            inside = whole or child in moved
            if inside or child in changed:
                if not (attr.type == FILE and attr.writing and attr.base is None and not attr.data):
                    yield child_path, attr, None
            if attr.is_dir and (inside or child in touched):
                yield from self._walk_changes(child, child_path, touched, moved, changed, inside)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[list[tuple[str, Attr | None, str | None, str | None]]]:
        """The changes as of now, for a commit that runs while writes go on: ``changes()``
        rows plus the path of each closed file's bytes, a hard link that a later close of the
        file does not change (once ``freeze`` was called, the staged file itself), each row's
        size that of those bytes. The links are made outside the lock; a file closed again (or
        removed) meanwhile is linked again under it (or left out: its removal is the next
        commit's)."""
        if self._frozen:  # nothing can close a file again: its staged bytes stay as they are
            with self.lock:
                rows = list(self.changes())
            yield [(path, attr, removed, self._closed(attr.ino) if _staged(attr) else None)
                   for path, attr, removed in rows]
            return
        snap = self.dir / "commit"
        shutil.rmtree(snap, ignore_errors=True)
        snap.mkdir()
        try:
            with self.lock:
                rows = list(self.changes())
                closes = {attr.ino: self._closed_by.get(attr.ino) for _, attr, _ in rows if _staged(attr)}
            missing = {ino for ino in closes if not _link(self._closed(ino), f"{snap}/{ino}")}
            newer: dict[int, Attr] = {}
            with self.lock:
                for ino, close in closes.items():
                    if self._closed_by.get(ino) != close:  # closed again since: take the newer bytes
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(f"{snap}/{ino}")
                        if _link(self._closed(ino), f"{snap}/{ino}"):
                            missing.discard(ino)
                            newer[ino] = self._attr(ino)
                        else:
                            missing.add(ino)
            result = []
            for path, attr, removed in rows:
                if attr is not None and attr.ino in newer:  # its bytes and times, at its place then
                    attr = dataclasses.replace(newer[attr.ino], parent=attr.parent, name=attr.name)
                if attr is None or attr.ino not in missing:
                    local = f"{snap}/{attr.ino}" if attr is not None and attr.ino in closes else None
                    if local is not None:  # a writer's open file shows its live size, not the closed one
                        attr = dataclasses.replace(attr, size=os.path.getsize(local))
                    result.append((path, attr, removed, local))
            yield result
        finally:
            shutil.rmtree(snap, ignore_errors=True)


def _staged(attr: Attr | None) -> bool:
    """Whether a change row's node is a file with closed bytes in the staging folder."""
    return attr is not None and attr.type == FILE and attr.data


def _empty(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))


def _link(src: str, dest: str) -> bool:
    try:
        os.link(src, dest)
        return True
    except FileNotFoundError:  # removed (and forgotten) since
        return False


def check_file_size(size: int) -> None:
    if size > MAX_FILE_SIZE:
        raise FsError(errno.EFBIG, f"file too large: {size} bytes (at most {MAX_FILE_SIZE})")


@contextlib.contextmanager
def _file_size_errors() -> Iterator[None]:
    """The staging filesystem's own file size limit (or RLIMIT_FSIZE) is the caller's EFBIG."""
    try:
        yield
    except OSError as exc:
        if exc.errno != errno.EFBIG:
            raise
        raise FsError(errno.EFBIG, f"file too large for the staging area: {exc.strerror}") from None


def _from_base(node: Node) -> Attr:
    return Attr(node.ino, node.parent, node.name, node.type, node.mode, node.mtime_ns, node.size,
                node.target, node.ino, False, node.sha256, False, node,
                ctime_ns=node.mtime_ns, atime_ns=node.mtime_ns, pristine=True)


def _fsync_path(path: str) -> None:
    """fsync a staged file; one deleted since (unlinked and forgotten) needs none."""
    with contextlib.suppress(FileNotFoundError):
        fsync_path(path)

