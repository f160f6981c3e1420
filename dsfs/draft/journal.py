"""The overlay's journal: a SQLite file in WAL mode whose transactions are the overlay's
operations.

An operation's changes are one savepoint (``change``): all or nothing. They are committed as
the operation ends, or with ``defer`` by the next commit, so the rows of closes that run at the
same time share one commit (group commit). Commits are WAL appends without fsync: they survive
the daemon's death (kill -9), not the machine's; ``durable`` makes the commits inside it fsync
the journal (``synchronous=FULL``, every commit with ``durable_close``).

The tables ``dirents`` and ``inodes`` are the overlay's (dsfs/draft/overlay.py); ``meta`` holds
the base version, the boot the journal was last opened in and the last sync. Journals of older
formats are upgraded when opened.

Threading: the caller holds ``lock`` (the overlay's) around every call but ``commit_through``,
which takes it.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS dirents(
    parent INTEGER NOT NULL, name BLOB NOT NULL, ino INTEGER,
    PRIMARY KEY(parent, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS inodes(
    ino INTEGER PRIMARY KEY,
    parent INTEGER, name BLOB,
    type TEXT NOT NULL, mode INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    size INTEGER NOT NULL DEFAULT 0, target BLOB,
    base INTEGER,
    data INTEGER NOT NULL DEFAULT 0,
    sha256 TEXT,
    compressible INTEGER NOT NULL DEFAULT 1,
    writing INTEGER NOT NULL DEFAULT 0,
    ctime_ns INTEGER,
    atime_ns INTEGER,
    unsynced INTEGER);
"""
# Columns added after the first journal format, with their definitions (for older journals).
_ADDED_COLUMNS = {"ctime_ns": "INTEGER", "atime_ns": "INTEGER", "unsynced": "INTEGER"}


class Journal:
    def __init__(self, path: Path, lock: threading.RLock, *, durable: bool = False) -> None:
        self.lock = lock
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self._synchronous = "FULL" if durable else "NORMAL"
        self.db.execute(f"PRAGMA synchronous={self._synchronous}")
        self.db.executescript(SCHEMA)
        self._depth = 0  # change blocks open (one thread's, nested)
        self.seq = self.committed = 0  # changes made, and committed
        self._upgrade()

    def _upgrade(self) -> None:
        have = {row[1] for row in self.db.execute("PRAGMA table_info(inodes)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in have:
                self.db.execute(f"ALTER TABLE inodes ADD COLUMN {column} {kind}")
        with self.change():  # names written before they were bytes were text
            self.db.execute("UPDATE dirents SET name = CAST(name AS BLOB) WHERE typeof(name) = 'text'")
            self.db.execute("UPDATE inodes SET name = CAST(name AS BLOB) WHERE typeof(name) = 'text'")
            self.db.execute("UPDATE inodes SET target = CAST(target AS BLOB) WHERE typeof(target) = 'text'")

    @contextlib.contextmanager
    def change(self, defer: bool = False) -> Iterator[None]:
        """One operation's changes, all or nothing, committed when it ends, or with ``defer``
        by the next commit: a close's (shared by the closes running at the same time) or any
        later operation's."""
        if not self.db.in_transaction:
            self.db.execute("BEGIN")
        self._depth += 1
        self.db.execute("SAVEPOINT op")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK TO op")
            raise
        finally:
            self.db.execute("RELEASE op")
            self._depth -= 1
        self.seq += 1
        if not defer:
            self.commit()

    def commit(self) -> None:
        """Commit every change made so far (not inside a change)."""
        if self._depth:
            return  # inside an operation: the group commit after it takes this change along
        if self.db.in_transaction:
            self.db.execute("COMMIT")
        self.committed = self.seq

    def commit_through(self, seq: int) -> None:
        """Commit at least the changes up to ``seq``: a closer finding its row committed by a
        concurrent one's commit has nothing left to do."""
        with self.lock:
            if self.committed < seq:
                self.commit()

    @contextlib.contextmanager
    def durable(self) -> Iterator[None]:
        """Commits inside this block fsync the journal."""
        self.commit()  # the level cannot change inside a transaction
        self.db.execute("PRAGMA synchronous=FULL")
        try:
            yield
        finally:
            self.db.execute(f"PRAGMA synchronous={self._synchronous}")

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def meta(self, key: str) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def close(self) -> None:
        self.commit()
        self.db.close()
