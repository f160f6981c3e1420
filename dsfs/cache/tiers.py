"""Where verified blocks are kept: a small in-process memory tier and the shared disk tier.

Both hold blocks by key (``<sha256>:<block_size>:<i>``, see blocks.py) and know nothing of
stores, files or integrity beyond their own: the disk tier wraps every value in an envelope
(magic, crc32 of key and payload, length) checked on every read, so a torn or stale value is a
miss, never wrong bytes. Disk errors (full, read-only, a locked database past its retries) are
logged and turn into misses or dropped writes: the bytes were verified and served already.

The disk tier is a diskcache (SQLite index, large values as files of their own) opened on first
use, so a mount of a local-folder store, which reads in place and caches nothing on disk, never
imports or opens it.
"""

from __future__ import annotations

import collections
import logging
import sqlite3
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

log = logging.getLogger(__name__)

# diskcache keeps values from this size up as files of their own, smaller ones in SQLite.
FILE_THRESHOLD = 32 << 10
# diskcache opens a SQLite connection per thread that touches the tier (a mount's request,
# read-ahead and prefetch threads: about 25). Each one's memory map of the database counted in
# the daemon's RSS on its own (64 MiB a connection by default: 136 MiB after two epochs of 2000
# small files), so there is none; and each page cache is kept small (pages of 4 KiB).
SQLITE_CACHE_PAGES = 256

_HEADER = struct.Struct("<4sIQ")  # magic, crc32(key + payload), payload length
_MAGIC = b"dsb1"


def _header(key: str, payload: bytes | memoryview) -> bytes:
    return _HEADER.pack(_MAGIC, zlib.crc32(payload, zlib.crc32(key.encode())), len(payload))


def wrap(key: str, payload: bytes | memoryview) -> bytes:
    return _header(key, payload) + payload


class _Wrapped:
    """A wrapped value as the file diskcache copies from: the header, then the payload read out
    in place (joined, and read from a BytesIO, a 4 MiB block was copied twice more)."""

    def __init__(self, key: str, payload: bytes | memoryview) -> None:
        self._parts = [memoryview(_header(key, payload)), memoryview(payload)]

    def read(self, size: int) -> memoryview | bytes:
        while self._parts:
            part = self._parts[0]
            if len(part) > size:
                self._parts[0] = part[size:]
                return part[:size]
            del self._parts[0]
            if len(part):
                return part
        return b""


def unwrap(key: str, value: object, length: int) -> memoryview | None:
    """The payload of a stored value, or None when it fails its checks."""
    if not isinstance(value, bytes) or len(value) != _HEADER.size + length:
        return None
    magic, crc, size = _HEADER.unpack_from(value)
    payload = memoryview(value)[_HEADER.size:]
    if magic != _MAGIC or size != length or zlib.crc32(payload, zlib.crc32(key.encode())) != crc:
        return None
    return payload


def _own(value: memoryview) -> memoryview:
    """``value`` over a buffer of its own size: a slice of a larger buffer (a leaf of a run of
    leaves, a member of a neighbour GET) would keep all of that buffer alive, uncounted."""
    base = value.obj
    if base is not None and memoryview(base).nbytes != value.nbytes:
        return memoryview(bytes(value))
    return value


class MemoryTier:
    """A small in-process LRU of verified blocks, so the many small reads FUSE makes inside one
    block do not each re-read and re-check it from disk. ``limit`` bounds the bytes it keeps
    alive: a value that is a slice of a larger buffer is copied out of it first."""

    def __init__(self, limit: int, done_limit: int | None = None) -> None:
        self.limit = limit
        self.size = 0
        self.items: collections.OrderedDict[str, memoryview] = collections.OrderedDict()
        self.lock = threading.Lock()
        # Keys demoted (their reader is done with them), oldest first, and their bytes: kept up
        # to ``done_limit`` for a reader's late requests, never up to ``limit``.
        self.done_limit = limit if done_limit is None else done_limit
        self.done: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.done_size = 0

    def get(self, key: str) -> memoryview | None:
        with self.lock:
            value = self.items.get(key)
            if value is not None and key not in self.done:  # (a late request: still done with)
                self.items.move_to_end(key)
            return value

    def put(self, key: str, value: memoryview) -> None:
        if len(value) > self.limit:
            return
        value = _own(value)
        with self.lock:
            self._pop(key)
            self.items[key] = value
            self.size += len(value)
            while self.size > self.limit:
                self._pop(next(iter(self.items)))

    def demote(self, key: str) -> None:
        """Make ``key`` the first to go: its reader is done with it (a block read to its end),
        while the blocks read ahead of that reader are still to come. Past ``done_limit`` bytes
        of such keys, the oldest go at once: the kernel holds their pages, and a memory tier
        full of blocks nobody will read again was most of a streaming mount's memory."""
        with self.lock:
            value = self.items.get(key)
            if value is None:
                return
            self.items.move_to_end(key, last=False)
            if key not in self.done:
                self.done[key] = len(value)
                self.done_size += len(value)
            while self.done_size > self.done_limit:
                self._pop(next(iter(self.done)))

    def drop(self, key: str) -> None:
        with self.lock:
            self._pop(key)

    def clear(self) -> None:
        with self.lock:
            self.items.clear()
            self.size = 0
            self.done.clear()
            self.done_size = 0

    def _pop(self, key: str) -> None:
        old = self.items.pop(key, None)
        if old is not None:
            self.size -= len(old)
        n = self.done.pop(key, None)
        if n is not None:
            self.done_size -= n


class DiskTier:
    """Blocks in ``path``, shared by every process on the machine, bounded by ``size_limit``
    (``default_limit(used)`` picks one when None, given the bytes already held).

    LRU without a write per hit: diskcache evicts by store time ("least recently stored"), reads
    stay lock-free, and hits are batched into store-time touches (``touch``), which turns that
    order into least-recently-used at ~1 s granularity. One writer at a time inside a process:
    SQLite's own busy handler sleeps for milliseconds when threads collide on the write lock."""

    def __init__(self, path: Path, size_limit: int | None, default_limit: Callable[[int], int],
                 on_corrupt: Callable[[], None] = lambda: None) -> None:
        self.path = path
        self._size_limit = size_limit
        self._default_limit = default_limit
        self._on_corrupt = on_corrupt
        self._lock = threading.Lock()  # one writer at a time
        self._touch_lock = threading.Lock()  # the touched set only: a hit never waits on a write
        self._open_lock = threading.Lock()
        self._opened = None
        self._errors: tuple = (OSError, sqlite3.Error)
        self._touched: set[str] = set()
        self._last_touch = 0.0

    @property
    def _db(self):
        db = self._opened
        if db is not None:
            return db
        with self._open_lock:
            if self._opened is None:
                self._opened = self._open()
            return self._opened

    def _open(self):
        import diskcache

        db = diskcache.Cache(
            str(self.path),
            eviction_policy="least-recently-stored",
            disk_min_file_size=FILE_THRESHOLD,
            # Every value is checked on read, so the index need not survive a power cut;
            # skipping fsyncs keeps writes cheap.
            sqlite_synchronous=0,
            sqlite_mmap_size=0,
            sqlite_cache_size=SQLITE_CACHE_PAGES,
            # diskcache's own culling drops ten items per step, the one just stored included:
            # a small cache would empty itself. ``put_many`` evicts just enough instead.
            cull_limit=0,
            **({} if self._size_limit is None else {"size_limit": self._size_limit}),
        )
        if self._size_limit is None:
            db.reset("size_limit", self._default_limit(db.volume()))
        self._errors = (OSError, sqlite3.Error, diskcache.Timeout)
        return db

    @property
    def size_limit(self) -> int:
        if self._opened is None and self._size_limit is not None:
            return self._size_limit  # known without opening the tier
        return self._db.size_limit

    def stats(self) -> dict:
        return {"size": self._db.volume(), "limit": self._db.size_limit, "count": len(self._db)}

    def get(self, key: str, length: int) -> memoryview | None:
        """The verified payload under ``key``; a value failing its checks is dropped (a miss)."""
        db = self._db
        try:
            value = db.get(key, retry=True)
        except self._errors as exc:
            log.warning("block cache read failed for %s: %s", key, exc)
            return None
        if value is None:
            return None
        data = unwrap(key, value, length)
        if data is None:
            log.warning("dropping corrupt cached block %s", key)
            self._on_corrupt()
            self.delete(key)
            return None
        self._touch(key)
        return data

    def __contains__(self, key: str) -> bool:
        db = self._db
        try:
            return key in db
        except self._errors:
            return False

    def put_many(self, items: Iterable[tuple[str, bytes | memoryview]]) -> None:
        """Store a batch in one transaction, then evict down to the limit."""
        items = list(items)
        if not items:
            return
        db = self._db
        try:
            with self._lock:
                with db.transact(retry=True):
                    for key, payload in items:
                        if _HEADER.size + len(payload) >= FILE_THRESHOLD:
                            # As a file object: diskcache writes bytes values by iterating them,
                            # which yields lines (a write per ~256 random bytes: 160 MB/s).
                            db.set(key, _Wrapped(key, payload), read=True, retry=True)
                        else:
                            db.set(key, wrap(key, payload), retry=True)
                self._evict()
        except self._errors as exc:
            log.warning("block cache write failed for %d blocks: %s", len(items), exc)

    def delete(self, key: str) -> None:
        db = self._db
        try:
            with self._lock:
                db.delete(key, retry=True)
        except self._errors as exc:
            log.warning("block cache delete failed for %s: %s", key, exc)

    def prune(self) -> int:
        """Evict least-recently-used blocks until the tier fits its limit; returns how many."""
        with self._lock:
            return self._evict()

    def _evict(self) -> int:
        """Drop the least recently stored values, just enough to fit the limit (the caller holds
        ``_lock``); returns how many."""
        db = self._db
        dropped = 0
        while (over := db.volume() - db.size_limit) > 0:
            rows = db._sql("SELECT key, size FROM Cache ORDER BY store_time LIMIT 64").fetchall()
            if not rows:
                break
            for key, size in rows:
                db.delete(key, retry=True)
                dropped += 1
                over -= size
                if over <= 0:
                    break
        return dropped

    def _touch(self, key: str) -> None:
        """Mark a hit; touched keys get a fresh store time in one batch per second."""
        now = time.monotonic()
        with self._touch_lock:
            self._touched.add(key)
            if now - self._last_touch < 1.0:
                return
            keys, self._touched = list(self._touched), set()
            self._last_touch = now
        self._flush_touches(keys)

    def _flush_touches(self, keys: list[str]) -> None:
        if not keys:
            return
        db = self._db
        try:
            now = time.time()
            with self._lock, db.transact(retry=True):
                # diskcache has no public "touch"; store_time is what its LRS policy culls by.
                db._con.executemany("UPDATE Cache SET store_time = ? WHERE key = ? AND raw = 1",
                                    [(now, k) for k in keys])
        except self._errors as exc:
            log.warning("block cache touch failed: %s", exc)

    def clear(self) -> None:
        self._db.clear(retry=True)

    def close(self) -> None:
        """Write pending touches and close, if the tier was ever opened."""
        if self._opened is None:
            return
        with self._touch_lock:
            keys, self._touched = list(self._touched), set()
        self._flush_touches(keys)
        self._db.close()
