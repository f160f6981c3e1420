"""The local cache of fetched file bytes, shared by every mount and version on the machine.

Bytes are cached per file content, not per chunk: block ``i`` of a file holds its bytes
``[i*block_size, (i+1)*block_size)`` under the key ``<sha256>:<block_size>:<i>``, so the same bytes
named by many versions or paths are fetched and stored once. STORED members are fetched block by
block with ranged GETs; DEFLATED members (and files that fit in one block) are fetched whole,
inflated with bounded memory, checked against their sha256 and then cut into the same blocks.

Blocks are kept in two tiers (tiers.py): a small in-process memory LRU and the disk tier shared
by every process, whose values carry a checked envelope (a bad one is dropped and fetched again). Whole-file sha256 checks happen
whenever a whole file passes through: whole-fetched members, ``read_all``/``prefetch``, and a
handle that reads a multi-block STORED file in order from its start (checked at its end).

Threading model: one ``BlockCache`` serves every thread of a process and its blocks serve every
process (diskcache's SQLite serialises them), while concurrent misses of one block in a process
wait for a single fetch. Every method blocks; read-ahead runs in a small pool owned by the cache,
and a ``ReadState`` belongs to one open file handle.
"""

from __future__ import annotations

import collections
import contextlib
import concurrent.futures
import functools
import hashlib
import io
import logging
import os
import shutil
import tempfile
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from ..changeset.manifest import EMPTY_SHA256, HASH_BLOCK, STORED, Entry
from ..changeset.reader import iter_member, read_range
from ..changeset.tree import LEAF
from ..errors import Corrupt, InvalidInput, NotFound
from ..store.base import ObjectStore, Progress
from . import readahead
from .hashtree import TreeCheck
from .readahead import ReadState
from .tiers import DiskTier, MemoryTier

log = logging.getLogger(__name__)

GiB = 1 << 30
DEFAULT_MAX_SIZE = 10 * GiB
DEFAULT_FREE_FRACTION = 0.8
# Largest ranged GET (and largest inflated piece) when a member is fetched whole.
GET_SIZE = 8 << 20
# Whole fetches are staged in memory up to this size, past it in a temp file in the cache dir.
SPOOL_MEMORY = 64 << 20
# Reads starting this close to where the previous one ended count as sequential (FUSE may
# deliver a stream's reads slightly out of order).
SEQUENTIAL_SLACK = 1 << 20
# A stored file with no hashes but its own is fetched whole up to this size, so that every read
# of it is checked (at most one hash block: a bigger file has a hash tree, or is from a change-set
# older than trees).
WHOLE_CHECK_MAX = HASH_BLOCK
# Verified blocks waiting for the disk cache's writer, at most. Past it, a block a reader fetched
# is served but not kept (the disk is slower than the store: a read never waits for the cache);
# a prefetch, whose point is to keep blocks, waits for the writer instead.
WRITE_BACKLOG = 32 << 20
# Blocks a stream is done with that memory keeps, for the kernel's requests that come in any order
# and may still ask for the end of a block a later request finished; and how many blocks behind
# the one a stream finished it is taken to be done with too.
DONE_BLOCKS = 2
DONE_LOOKBACK = 4
# A miss on a small member of a remote store also fetches the small members around it in the
# same chunk, up to this many bytes in one ranged GET: an epoch over many small files then costs
# one GET per ~1 MiB instead of one per file. Neighbours already cached are left out.
NEIGHBOUR_BYTES = 1 << 20
# read_small_in_place: members this close together in a chunk are read by one ranged read, of
# at most RUN_MAX bytes
RUN_GAP = 64 << 10
RUN_MAX = 8 << 20


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """(first, last) of each run of consecutive numbers in sorted ``indices``."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i - 1:
            runs[-1] = (runs[-1][0], i)
        else:
            runs.append((i, i))
    return runs


def member_runs(members: list, gap: int = RUN_GAP, span: int = RUN_MAX) -> list[list[int]]:
    """Positions of ``members`` (anything with ``chunk``, ``offset`` and ``csize``) in runs that
    one ranged read covers: members of one chunk in offset order, each starting at most ``gap``
    bytes after the one before it ends, a run spanning at most ``span`` bytes."""
    runs: list[list[int]] = []
    for i in sorted(range(len(members)), key=lambda i: (members[i].chunk, members[i].offset)):
        m = members[i]
        if runs:
            first, last = members[runs[-1][0]], members[runs[-1][-1]]
            if last.chunk == m.chunk and 0 <= m.offset - (last.offset + last.csize) <= gap \
                    and m.offset + m.csize - first.offset <= span:
                runs[-1].append(i)
                continue
        runs.append([i])
    return runs


def default_cache_size(cache_dir: str | os.PathLike, used: int = 0) -> int:
    """min(10 GiB, 80% of the free space of the cache dir's filesystem, plus ``used`` bytes
    the cache already holds there)."""
    path = Path(cache_dir).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    free = shutil.disk_usage(path).free
    return min(DEFAULT_MAX_SIZE, int((free + used) * DEFAULT_FREE_FRACTION))


def open_cache(settings, store: ObjectStore | None = None, *, size_limit: int | None = None) -> "BlockCache":
    """The machine's block cache as ``settings`` describe it, for reading ``store`` (a mount, a
    ``dsfs://`` filesystem and the cache commands all open it this way: one cache for all).
    ``size_limit`` overrides the configured size."""
    return BlockCache(settings.cache_dir, store, size_limit=size_limit or settings.cache_size,
                      block_size=settings.block_size,
                      persist=store is None or settings.caches(store),
                      neighbour_bytes=settings.neighbour_bytes)


class _Flight:
    __slots__ = ("done", "value", "error")

    def __init__(self) -> None:
        self.done = threading.Event()
        self.value = None
        self.error: Exception | None = None


class _ChunkSlice:
    """One fetched byte range of a chunk, standing in for the store while members are cut out."""

    def __init__(self, chunk: str, start: int, data: bytes) -> None:
        self.chunk, self.start, self.data = chunk, start, data

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if key != self.chunk:
            raise NotFound(f"object not found in store: {key!r}")
        lo = start - self.start
        return self.data[lo:lo + length]


class BlockCache:
    """Verified, content-addressed blocks of file bytes in ``<cache_dir>/blocks``."""

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        store: ObjectStore | None = None,
        *,
        size_limit: int | None = None,
        block_size: int = 4 << 20,
        readahead_max: int = 8,
        readahead_threads: int = 4,
        memory_limit: int = 64 << 20,
        persist: bool = True,
        neighbour_bytes: int = NEIGHBOUR_BYTES,
    ) -> None:
        if block_size < 1:
            raise InvalidInput(f"block_size must be > 0: {block_size}")
        self.cache_dir = Path(cache_dir).expanduser().absolute()
        self.store = store
        self.block_size = block_size
        self.readahead_max = max(0, readahead_max)
        # persist=False (a local-folder store): verified blocks live in the memory tier only;
        # the disk cache is neither read nor written for this store's bytes.
        self.persist = persist
        self.neighbour_bytes = max(0, neighbour_bytes)
        self._tmp_dir = self.cache_dir / "tmp"
        self._tmp_dir.mkdir(parents=True, exist_ok=True)
        self._disk = DiskTier(self.cache_dir / "blocks", size_limit,
                              lambda used: default_cache_size(self.cache_dir, used=used),
                              on_corrupt=lambda: self._count("corrupt"))
        self._memory = MemoryTier(memory_limit, done_limit=DONE_BLOCKS * block_size)
        self._lock = threading.Lock()
        self._flights: dict[str, _Flight] = {}
        # (sha256, block) pairs whose bytes in the store passed their block hash in this process:
        # a local store's later random reads of them go in place (bounded, least recent out).
        self._verified: collections.OrderedDict[tuple, None] = collections.OrderedDict()
        self._queued: set[str] = set()
        self._pending: set[concurrent.futures.Future] = set()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max(1, readahead_threads), thread_name_prefix="dsfs-readahead")
        self._closed = False
        self._writes: queue.SimpleQueue = queue.SimpleQueue()
        self._writes_pending = 0
        self._writes_bytes = 0  # bytes queued for the writer: bounded by WRITE_BACKLOG
        # The blocks queued for the writer, by key: one that left the memory tier before it was
        # stored (a stream's finished block, an eviction) is still served from here, not fetched.
        self._unwritten: dict[str, bytes | memoryview] = {}
        self._writes_cond = threading.Condition()
        self._filling = threading.local()  # .on while this thread runs prefetch(): it waits to keep blocks
        self._writer_thread = threading.Thread(target=self._writer, name="dsfs-cache-writer", daemon=True)
        self._writer_thread.start()
        self._counts = collections.Counter()
        self._trees = TreeCheck(load=self._load_list, save=self._save_list, count=self._count)

    # -- public API ---------------------------------------------------------------------------

    def read(self, store: ObjectStore | None, entry: Entry, offset: int, length: int,
             state: ReadState | None = None,
             near: Callable[[str, int, int], list[Entry]] | None = None,
             spill: Callable[[int, memoryview], None] | None = None) -> bytes:
        """Bytes ``[offset, offset+length)`` of a file, clipped to its size. ``near(chunk, lo,
        hi)`` lists the files whose bytes start in that range of a chunk: given, a miss on a
        small member fetches its uncached neighbours along with it (disk-cached stores only).
        ``spill(start, data)`` gets the verified bytes a random read of a file with a hash tree
        fetched and checked beyond the range asked (the rest of the leaves its ends fall in)."""
        store = self._store(store)
        if offset < 0 or length < 0:
            raise InvalidInput(f"bad read range: offset {offset}, length {length}")
        if not self._has_bytes(entry):
            return b""
        end = min(entry.size, offset + length)
        if offset >= end:
            return b""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        if state is not None:
            self._read_ahead(store, entry, state, offset, end, first, last)
        if entry.tree is not None and not (state and state.window):
            # A random read of a file with a hash tree costs about its own size: the 64 KiB
            # leaves it touches, each checked on its own (sequential reads take whole blocks).
            return self._read_leaves(store, entry, offset, end, spill)
        if not self.persist and offset == 0 and end == entry.size and self._small_stored(entry):
            # The commonest read of all (a small file read whole) from a local store: one read
            # in place and one hash; anything wrong takes the general path, which refetches,
            # counts and reports it.
            data = self._read_whole_in_place(store, entry)
            if data is not None:
                return data
        if (not self.persist and not self._whole_fetch(entry) and not (state and state.sequential)
                and self._in_place_ok(entry, first, last)):
            # A local store's stored member, read at random: read just the asked range in
            # place (the kernel caches the chunk file) instead of a whole block per read.
            data = read_range(store, entry, offset, end - offset)
            self._count("fetched", len(data))
            if state is not None:
                self._hash_along(entry, state, offset, data)
            return data
        parts = []
        for i in range(first, last + 1):
            # Keep a block in memory only if this read stops inside it: the next read of the
            # handle will want the rest. A small file read whole leaves nothing behind (the
            # kernel's page cache has it).
            keep = end < min((i + 1) * bs, entry.size)
            block = self._block(store, entry, i, foreground=True, remember=keep, near=near)
            parts.append(block[max(offset - i * bs, 0):end - i * bs])
            if not keep and state is not None:
                # A stream is done with this block: under memory pressure it goes before the
                # blocks read ahead of it (plain LRU would drop the next one the reader needs).
                # So are the few before it, which a late request (the kernel's come in any
                # order) may have brought back after they were done with and dropped.
                for j in range(max(i - DONE_LOOKBACK, 0), i + 1):
                    self._memory.demote(self.block_key(entry.sha256, j))
        data = b"".join(parts)
        if state is not None and not self._whole_fetch(entry) and not self._checkable(entry):
            self._hash_along(entry, state, offset, data)
        return data

    def read_all(self, store: ObjectStore | None, entry: Entry,
                 near: Callable[[str, int, int], list[Entry]] | None = None) -> bytes:
        """The whole file, checked against its sha256 (``near``: as for ``read``)."""
        parts: dict[int, memoryview] = {}
        self._scan(self._store(store), entry, parts.__setitem__, None, near)
        return b"".join(parts[i] for i in range(len(parts)))

    def prefetch(self, store: ObjectStore | None, entry: Entry,
                 progress: Progress | None = None) -> int:
        """Cache every block of a file (checking its sha256); returns bytes fetched from the store."""
        tally = [0]

        def sink(_i: int, data: memoryview) -> None:
            if progress:
                progress(len(data))

        with self.keeping():
            self._scan(self._store(store), entry, sink, tally)
        return tally[0]

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        """In this thread, blocks fetched are kept on disk even when that means waiting for the
        cache's writer (prefetch and warm threads; a reader's fetches never wait)."""
        outer = getattr(self._filling, "on", False)
        self._filling.on = True
        try:
            yield
        finally:
            self._filling.on = outer

    @property
    def size_limit(self) -> int:
        return self._disk.size_limit

    def block_key(self, sha256: str, index: int) -> str:
        return f"{sha256}:{self.block_size}:{index}"

    @staticmethod
    def leaf_key(sha256: str, index: int) -> str:
        """A leaf is cached as a block of LEAF bytes would be: the same key names the same bytes."""
        return f"{sha256}:{LEAF}:{index}"

    def stats(self) -> dict:
        """Cache-wide size/limit/count (zeros without a disk cache: a local store's mount keeps
        nothing on disk, and asking would open the disk tier); hits, misses and the rest count
        this instance's work."""
        self._wait_for_writes()
        with self._lock:
            counts = dict(self._counts)
        return {
            **(self._disk.stats() if self.persist else {"size": 0, "limit": 0, "count": 0}),
            "hits": counts.get("hits", 0),
            "misses": counts.get("misses", 0),
            "fetched": counts.get("fetched", 0),
            "coalesced": counts.get("coalesced", 0),
            "neighbour_gets": counts.get("neighbour_gets", 0),
            "neighbours": counts.get("neighbours", 0),
            "corrupt": counts.get("corrupt", 0),
            "readahead": counts.get("readahead", 0),
            "hashed": counts.get("hashed", 0),
            "tree_fetched": counts.get("tree_fetched", 0),
            "leaf_reads": counts.get("leaf_reads", 0),
            "unkept": counts.get("unkept", 0),
        }

    def prune(self) -> int:
        """Evict least-recently-used blocks until the cache fits its limit; returns how many."""
        self._wait_for_writes()
        return self._disk.prune()

    def clear(self) -> None:
        self._wait_for_writes()
        self._memory.clear()
        self._trees.clear()
        self._disk.clear()

    def drain(self) -> None:
        """Wait until every queued read-ahead has finished and its blocks are on disk."""
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                break
            concurrent.futures.wait(pending)
        self._wait_for_writes()

    def _wait_for_writes(self) -> None:
        with self._writes_cond:
            self._writes_cond.wait_for(lambda: self._writes_pending == 0)

    def close(self) -> None:
        with self._lock:
            self._closed = True
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._writes.put(None)
        self._writer_thread.join()
        self._memory.clear()
        self._disk.close()

    def __enter__(self) -> "BlockCache":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- blocks -------------------------------------------------------------------------------

    def _store(self, store: ObjectStore | None) -> ObjectStore:
        store = store or self.store
        if store is None:
            raise InvalidInput("no store given to the block cache")
        return store

    @staticmethod
    def _has_bytes(entry: Entry) -> bool:
        if entry.size == 0:
            return False
        if entry.chunk is None:
            raise Corrupt(f"entry has {entry.size} bytes but no chunk: {entry.path!r}")
        if entry.sha256 == EMPTY_SHA256:
            raise Corrupt(f"entry has {entry.size} bytes but the empty sha256: {entry.path!r}")
        return True

    def _nblocks(self, entry: Entry) -> int:
        return -(-entry.size // self.block_size)

    def _length(self, entry: Entry, i: int) -> int:
        return min(self.block_size, entry.size - i * self.block_size)

    def _whole_fetch(self, entry: Entry) -> bool:
        """Members fetched whole: DEFLATED ones, files that fit in one block, and files that
        have no hashes but their own sha256 and fit in a hash block (only their whole can be
        checked: a configured block under 4 MiB would otherwise serve their blocks unchecked)."""
        return (entry.method != STORED or entry.size <= self.block_size
                or (entry.size <= WHOLE_CHECK_MAX and not self._checkable(entry)))

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def _lookup(self, key: str, length: int, remember: bool) -> memoryview | None:
        """A verified block from memory, the disk writer's queue or disk (a block failing its
        checks is a miss)."""
        data = self._memory.get(key)
        if data is not None or not self.persist:
            return data
        with self._writes_cond:
            data = self._unwritten.get(key)  # left memory before the writer stored it
        if data is not None:
            data = memoryview(data)
        else:
            data = self._disk.get(key, length)
        if data is not None and remember:
            self._memory.put(key, data)
        return data

    def _put(self, key: str, payload: bytes | memoryview, *, remember: bool = True) -> None:
        """Queue a verified block for the disk cache; the writer thread stores it in batches,
        so a reader never waits on SQLite's write lock. Until then it is served from memory.
        Without a disk cache, only blocks worth remembering go to memory."""
        if not self.persist:
            if remember:
                self._memory.put(key, memoryview(payload))
            return
        self._memory.put(key, memoryview(payload))
        with self._writes_cond:
            # Fetching faster than the disk takes the blocks would hold them all in memory:
            # past the backlog bound, a prefetch waits for the writer and a read moves on.
            full = self._writes_bytes >= WRITE_BACKLOG
            if full and getattr(self._filling, "on", False):
                self._writes_cond.wait_for(lambda: self._writes_bytes < WRITE_BACKLOG)
                full = False
            if not full:
                self._writes_pending += 1
                self._writes_bytes += len(payload)
                self._unwritten[key] = payload
        if full:
            self._count("unkept")
        else:
            self._writes.put((key, payload))

    def _writer(self) -> None:
        while True:
            item = self._writes.get()
            batch = [item]
            while len(batch) < 256:
                try:
                    batch.append(self._writes.get_nowait())
                except queue.Empty:
                    break
            stop = any(b is None for b in batch)
            batch = [b for b in batch if b is not None]
            self._disk.put_many(batch)  # on failure the blocks are just not kept: already served
            with self._writes_cond:
                self._writes_pending -= len(batch)
                self._writes_bytes -= sum(len(payload) for _key, payload in batch)
                for key, payload in batch:
                    if self._unwritten.get(key) is payload:
                        del self._unwritten[key]
                self._writes_cond.notify_all()
            if stop:
                return

    def _delete(self, key: str) -> None:
        self._wait_for_writes()  # a queued write of this block must not land after the delete
        self._memory.drop(key)
        self._disk.delete(key)

    def _drop_file(self, entry: Entry) -> None:
        for i in range(self._nblocks(entry)):
            self._delete(self.block_key(entry.sha256, i))

    def _block(self, store: ObjectStore, entry: Entry, i: int, *, foreground: bool = False,
               remember: bool = False, tally: list[int] | None = None,
               near: Callable[[str, int, int], list[Entry]] | None = None,
               wanted: Callable[[], bool] | None = None) -> memoryview | None:
        """Block ``i`` of a file: from memory or disk, else fetched (once across threads).
        ``wanted`` (read-ahead): asked again once this thread leads the fetch; if no longer
        wanted, nothing is fetched and None is returned."""
        key = self.block_key(entry.sha256, i)
        length = self._length(entry, i)
        data = self._lookup(key, length, remember=remember)
        if foreground:
            self._count("hits" if data is not None else "misses")
        whole = self._whole_fetch(entry)
        tries = 0
        while data is None:
            tries += 1
            if whole:
                flight = f"whole:{entry.sha256}:{self.block_size}"
                fetch = functools.partial(self._fill_whole_for, store, entry, i, tally, near)
            else:
                flight, fetch = key, functools.partial(self._recheck_or_fill, store, entry, i, length, tally, wanted)
            if tries > 3:  # evicted every time before this thread could take it
                data = fetch()[1] if whole else fetch()
                if data is None:  # a read-ahead no longer wanted
                    return None
                break
            _leader, value = self._single_flight(flight, fetch)
            if value is None and wanted is not None:
                return None
            if not whole:
                data = value
            elif value[0] == i:  # the whole-file fetch (ours or another thread's) was for our block
                data = value[1]
            else:  # another thread fetched the whole file for another block; ours is cached
                data = self._lookup(key, length, remember=remember)
        if remember:
            self._memory.put(key, data)
        return data

    def _recheck_or_fill(self, store: ObjectStore, entry: Entry, i: int, length: int,
                         tally: list[int] | None, wanted: Callable[[], bool] | None = None) -> memoryview | None:
        """The flight leader's fetch of block ``i``: another flight for it may have ended (and
        cached it) between this thread's lookup and its taking the lead; a read-ahead may no
        longer be wanted (None: not fetched; a reader that joined this flight fetches itself)."""
        data = self._lookup(self.block_key(entry.sha256, i), length, remember=False)
        if data is not None:
            return data
        if wanted is not None and not wanted():
            return None
        return self._fill_block(store, entry, i, tally)

    def _single_flight(self, key: str, fetch: Callable[[], memoryview]) -> tuple[bool, memoryview]:
        """(True, fetch()) in the one thread that runs it; (False, its result) in threads that
        asked for the same key meanwhile; those re-raise its error."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if leader:
                flight = self._flights[key] = _Flight()
            else:
                self._counts["coalesced"] += 1
        if not leader:
            flight.done.wait()
            if flight.error is not None:
                raise flight.error
            return False, flight.value
        try:
            flight.value = fetch()
            return True, flight.value
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            with self._lock:
                del self._flights[key]
            flight.done.set()

    # -- fetching -----------------------------------------------------------------------------

    def _fill_block(self, store: ObjectStore, entry: Entry, i: int,
                    tally: list[int] | None) -> memoryview:
        """One block of a multi-block STORED member, by a ranged GET, checked against the
        block's own sha256 where the manifest has one (retried once if short or wrong)."""
        start, length = i * self.block_size, self._length(entry, i)
        try:
            data = self._checked_range(store, entry, i, start, length)
        except Corrupt as exc:
            log.warning("refetching block %d of %r: %s", i, entry.path, exc)
            try:
                data = self._checked_range(store, entry, i, start, length)
            except Corrupt:
                self._count("corrupt")
                raise
        if tally is not None:
            tally[0] += len(data)
        self._put(self.block_key(entry.sha256, i), data, remember=False)  # the caller decides
        return memoryview(data)

    def _checkable(self, entry: Entry) -> bool:
        """Whether the blocks of ``entry`` can each be checked on their own."""
        return entry.tree is not None or (entry.blocks is not None and self.block_size == HASH_BLOCK)

    def _checked_range(self, store: ObjectStore, entry: Entry, i: int, start: int, length: int) -> bytes:
        if entry.tree is not None:
            return self._tree_checked_range(store, entry, start, length)
        data = read_range(store, entry, start, length)
        self._count("fetched", len(data))  # failed attempts too: counts what the store sent
        if not self._checkable(entry):
            return data
        self._count("hashed", len(data))
        got = hashlib.sha256(data).hexdigest()
        if got != entry.block_sha256(i):
            raise Corrupt(f"sha256 mismatch for block {i} of {entry.path!r} in {entry.chunk!r}: "
                          f"expected {entry.block_sha256(i)}, got {got}")
        self._note_verified([(entry.sha256, i)])
        return data

    def _note_verified(self, keys: list[tuple]) -> None:
        """Remember pieces whose bytes in the store passed their check in this process: blocks
        ``(sha256, i)`` and leaves ``(sha256, LEAF, j)``. Only reads in place (a local store, no
        disk cache) consult the set: they read such pieces again without hashing them again."""
        if self.persist:
            return
        with self._lock:
            for key in keys:
                self._verified[key] = None
                self._verified.move_to_end(key)
            while len(self._verified) > 1 << 16:
                self._verified.popitem(last=False)

    def _tree_checked_range(self, store: ObjectStore, entry: Entry, start: int, length: int) -> bytes:
        """Bytes of a file with a hash tree, read out to leaf boundaries to be checked."""
        lo, hi = start - start % LEAF, min(-(-(start + length) // LEAF) * LEAF, entry.size)
        self._trees.will_check(store, entry, lo, hi)
        data = read_range(store, entry, lo, hi - lo)
        self._count("fetched", len(data))
        self._trees.check(store, entry, lo, data)
        self._note_verified([(entry.sha256, LEAF, j) for j in range(lo // LEAF, -(-hi // LEAF))])
        return data if (lo, hi) == (start, start + length) else data[start - lo:start - lo + length]

    def _read_leaves(self, store: ObjectStore, entry: Entry, offset: int, end: int,
                     spill: Callable[[int, memoryview], None] | None = None) -> bytes:
        """Bytes ``[offset, end)`` of a file with a hash tree: from cached blocks when every one
        the read touches is at hand, else from its leaves, fetching (and checking) only those
        not cached, one ranged read per run of them. ``spill``: as for ``read``, given the
        checked bytes of the first and last leaves before ``offset`` and after ``end``."""
        bs = self.block_size
        blocks = []
        for i in range(offset // bs, (end - 1) // bs + 1):
            block = self._lookup(self.block_key(entry.sha256, i), self._length(entry, i), remember=False)
            if block is None:
                break
            blocks.append(block[max(offset - i * bs, 0):end - i * bs])
        else:
            self._count("hits")
            return b"".join(blocks)
        first, last = offset // LEAF, (end - 1) // LEAF
        if self.persist:
            leaves: dict[int, memoryview | None] = {
                j: self._lookup(self.leaf_key(entry.sha256, j), self._leaf_length(entry, j), remember=False)
                for j in range(first, last + 1)}
            checked: list[int] = []
        else:
            # Without a disk cache no leaf is kept in memory: one that passed its check here
            # before is read again in place (the kernel caches the chunk), unhashed.
            leaves = dict.fromkeys(range(first, last + 1))
            with self._lock:
                checked = [j for j in leaves if (entry.sha256, LEAF, j) in self._verified]
            if len(checked) == len(leaves):  # every leaf it touches: just the range asked
                data = read_range(store, entry, offset, end - offset)
                self._count("fetched", len(data))
                return data
        done = set(checked)
        missing = [j for j, leaf in leaves.items() if leaf is None and j not in done]
        self._count("misses" if missing else "hits")
        self._count("leaf_reads")
        for a, b in _runs(checked):
            data = memoryview(read_range(store, entry, a * LEAF, min((b + 1) * LEAF, entry.size) - a * LEAF))
            self._count("fetched", len(data))
            for j in range(a, b + 1):
                leaves[j] = data[(j - a) * LEAF:(j - a + 1) * LEAF]
        for a, b in _runs(missing):
            key = f"{self.leaf_key(entry.sha256, a)}-{b}"
            _leader, data = self._single_flight(key, functools.partial(self._fill_leaves, store, entry, a, b))
            for j in range(a, b + 1):
                leaves[j] = data[(j - a) * LEAF:(j - a + 1) * LEAF]
        if spill is not None:
            if offset > first * LEAF:
                spill(first * LEAF, memoryview(leaves[first])[:offset - first * LEAF])
            if end < last * LEAF + len(leaves[last]):
                spill(end, memoryview(leaves[last])[end - last * LEAF:])
        return b"".join(leaves[j][max(offset - j * LEAF, 0):end - j * LEAF] for j in range(first, last + 1))

    def _fill_leaves(self, store: ObjectStore, entry: Entry, a: int, b: int) -> memoryview:
        """Leaves ``a..b`` of a file, by one ranged read, checked against its hash tree (read
        once more if short or wrong) and cached."""
        start = a * LEAF
        length = min((b + 1) * LEAF, entry.size) - start
        try:
            data = self._tree_checked_range(store, entry, start, length)
        except Corrupt as exc:
            log.warning("refetching leaves %d-%d of %r: %s", a, b, entry.path, exc)
            try:
                data = self._tree_checked_range(store, entry, start, length)
            except Corrupt:
                self._count("corrupt")
                raise
        view = memoryview(data)
        if self.persist:  # without a disk cache, a checked leaf is read again in place
            for j in range(a, b + 1):
                self._put(self.leaf_key(entry.sha256, j), view[(j - a) * LEAF:(j - a + 1) * LEAF])
        return view

    def _leaf_length(self, entry: Entry, j: int) -> int:
        return min(LEAF, entry.size - j * LEAF)

    def _load_list(self, key: str, length: int) -> memoryview | None:
        """A verified hash tree digest list from the disk cache (see hashtree.py)."""
        return self._lookup(key, length, remember=False) if self.persist else None

    def _save_list(self, key: str, value: bytes) -> None:
        if self.persist:
            self._put(key, value, remember=False)

    def _small_stored(self, entry: Entry) -> bool:
        return entry.method == STORED and entry.size <= self.block_size

    def _read_whole_in_place(self, store: ObjectStore, entry: Entry) -> bytes | None:
        """A small STORED member read whole and checked against its sha256; None if it is
        truncated, missing or wrong."""
        try:
            data = read_range(store, entry, 0, entry.size)
        except Corrupt:
            return None
        self._count("fetched", len(data))
        return self._whole_checked(entry, data)

    def _whole_checked(self, entry: Entry, data: bytes | memoryview) -> bytes | None:
        """``data`` as bytes if it is the whole file (its size and sha256), else None."""
        self._count("hashed", len(data))
        if len(data) == entry.size and hashlib.sha256(data).hexdigest() == entry.sha256:
            return data if isinstance(data, bytes) else bytes(data)
        return None

    def read_small_in_place(self, store: ObjectStore | None, entries: list[Entry]) -> list[bytes | None]:
        """Small STORED members of a store read in place (no disk tier): the members that lie
        close together in a chunk by one ranged read, each checked against its sha256. None for
        a member that is not such a one, or whose read or check failed (``read_all`` of it
        then tries again and reports why)."""
        found: list[bytes | None] = [None] * len(entries)
        if self.persist:
            return found
        store = self._store(store)
        small = [i for i, e in enumerate(entries) if e.chunk and e.size and self._small_stored(e)]
        for run in member_runs([entries[i] for i in small]):
            members = [(small[j], entries[small[j]]) for j in run]
            first, last = members[0][1], members[-1][1]
            try:
                raw = memoryview(store.get_range(first.chunk, first.offset, last.offset + last.csize - first.offset))
            except (NotFound, OSError):
                continue
            self._count("fetched", len(raw))
            for i, e in members:
                found[i] = self._whole_checked(e, raw[e.offset - first.offset:e.offset - first.offset + e.size])
        return found

    def _in_place_ok(self, entry: Entry, first: int, last: int) -> bool:
        """A read in place needs no check, or only blocks already checked in this process."""
        if not self._checkable(entry):
            return True
        with self._lock:
            return all((entry.sha256, i) in self._verified for i in range(first, last + 1))

    def _fill_whole_for(self, store: ObjectStore, entry: Entry, i: int, tally: list[int] | None,
                        near: Callable[[str, int, int], list[Entry]] | None = None) -> tuple[int, memoryview]:
        if near is not None and self.persist and entry.csize < self.neighbour_bytes:
            data = self._fill_with_neighbours(store, entry, i, tally, near)
            if data is not None:
                return i, data
        return i, self._fill_whole(store, entry, want=i, tally=tally)

    def _fill_with_neighbours(self, store: ObjectStore, entry: Entry, i: int, tally: list[int] | None,
                              near: Callable[[str, int, int], list[Entry]]) -> memoryview | None:
        """One ranged GET for ``entry`` and the uncached small members around it; each member
        is checked against its own sha256 before its blocks are cached. None: nothing to add
        (or the combined fetch failed for ``entry``), so the caller fetches it alone."""
        lo = max(0, entry.offset - self.neighbour_bytes // 2)
        hi = entry.offset + entry.csize + self.neighbour_bytes // 2
        others = [e for e in near(entry.chunk, lo, hi)
                  if e.sha256 != entry.sha256 and e.size and self._whole_fetch(e)
                  and e.offset + e.csize <= hi and not self._cached(self.block_key(e.sha256, 0))]
        if not others:
            return None
        start = min(entry.offset, others[0].offset)
        end = max(entry.offset + entry.csize, max(e.offset + e.csize for e in others))
        try:
            piece = _ChunkSlice(entry.chunk, start, store.get_range(entry.chunk, start, end - start))
        except NotFound:
            return None  # the fetch of its own names the missing chunk
        self._count("neighbour_gets")
        for other in others:
            with io.BytesIO() as f:
                if self._inflate_into(piece, other, f, None) is None:
                    self._put_blocks(other, f)
                    self._count("neighbours")
        with io.BytesIO() as f:
            if self._inflate_into(piece, entry, f, tally) is not None:
                return None
            return self._put_blocks(entry, f, want=i)

    def _cached(self, key: str) -> bool:
        return self._memory.get(key) is not None or key in self._disk

    def _put_blocks(self, entry: Entry, f, want: int | None = None,
                    sink: Callable[[int, memoryview], None] | None = None) -> memoryview | None:
        """Cache the blocks of a verified whole file held in ``f``, handing each to ``sink``;
        block ``want`` is returned (and not kept in memory for it)."""
        f.seek(0)
        result = None
        for i in range(self._nblocks(entry)):
            data = memoryview(f.read(self._length(entry, i)))
            self._put(self.block_key(entry.sha256, i), data, remember=i != want)
            if sink is not None:
                sink(i, data)
            if i == want:
                result = data
        return result

    def _fill_whole(self, store: ObjectStore, entry: Entry, *, want: int | None = None,
                    sink: Callable[[int, memoryview], None] | None = None,
                    tally: list[int] | None = None) -> memoryview | None:
        """Fetch a member whole, check its sha256 (one refetch on a mismatch), cache every block;
        returns block ``want`` and hands every block to ``sink``."""
        errors: list[Corrupt] = []
        for _attempt in range(2):
            # Small members (the common case) stay in memory; big ones spool to disk.
            if entry.size <= GET_SIZE:
                spool = contextlib.nullcontext(io.BytesIO())
            else:
                self._tmp_dir.mkdir(parents=True, exist_ok=True)  # in case someone emptied it
                spool = tempfile.SpooledTemporaryFile(SPOOL_MEMORY, dir=self._tmp_dir)
            with spool as f:
                error = self._inflate_into(store, entry, f, tally)
                if error is None:
                    return self._put_blocks(entry, f, want, sink)
            log.warning("fetch of %r failed its checks: %s", entry.path, error)
            errors.append(error)
        raise errors[-1]

    def _inflate_into(self, store: ObjectStore, entry: Entry, f,
                      tally: list[int] | None) -> Corrupt | None:
        """Stream a member into ``f``, checking its size and sha256; the check that failed, if any."""
        error: Corrupt | None = None
        digest = hashlib.sha256()
        try:
            for piece in iter_member(store, entry, GET_SIZE):
                digest.update(piece)
                f.write(piece)
        except Corrupt as exc:
            error = exc
        self._count("fetched", entry.csize)
        if tally is not None:
            tally[0] += entry.csize
        self._count("hashed", entry.size)
        if error is None and digest.hexdigest() != entry.sha256:
            error = Corrupt(f"sha256 mismatch for {entry.path!r} in {entry.chunk!r}: "
                            f"expected {entry.sha256}, got {digest.hexdigest()}")
        return error

    def _scan(self, store: ObjectStore, entry: Entry, sink: Callable[[int, memoryview], None],
              tally: list[int] | None,
              near: Callable[[str, int, int], list[Entry]] | None = None) -> None:
        """Hand every block of a file to ``sink`` in order and check the file's sha256; on a
        mismatch drop its blocks and go through it once more before raising Corrupt."""
        if not self._has_bytes(entry):
            return
        whole = self._whole_fetch(entry)
        for attempt in range(2):
            digest = hashlib.sha256()
            for i in range(self._nblocks(entry)):
                key = self.block_key(entry.sha256, i)
                data = self._lookup(key, self._length(entry, i), remember=False)
                if data is None and whole and near is None:
                    self._fill_whole(store, entry, sink=sink, tally=tally)  # checks the sha256
                    return
                if data is None and whole:  # the same check, with the neighbours fetched along
                    data = self._block(store, entry, i, tally=tally, near=near)
                if data is None:
                    data = self._block(store, entry, i, tally=tally)
                digest.update(data)
                sink(i, data)
            self._count("hashed", entry.size)
            if digest.hexdigest() == entry.sha256:
                return
            log.warning("sha256 mismatch for %r; dropping its cached blocks", entry.path)
            self._count("corrupt")
            self._drop_file(entry)
        raise Corrupt(f"sha256 mismatch for {entry.path!r} in {entry.chunk!r}: "
                      f"expected {entry.sha256}, got {digest.hexdigest()}")

    # -- sequential reads ---------------------------------------------------------------------

    def _read_ahead(self, store: ObjectStore, entry: Entry, state: ReadState,
                    offset: int, end: int, first: int, last: int) -> None:
        todo = readahead.advance(state, offset, end, first, last, nblocks=self._nblocks(entry),
                                 slack=min(SEQUENTIAL_SLACK, self.block_size), max_window=self.readahead_max,
                                 wait_for_stream=entry.tree is not None)
        for i in todo:
            key = self.block_key(entry.sha256, i)
            with self._lock:
                if self._closed or key in self._queued:
                    continue
                self._queued.add(key)
                future = self._pool.submit(self._read_ahead_block, store, entry, i, key, state)
                self._pending.add(future)
            future.add_done_callback(self._done)

    def _read_ahead_block(self, store: ObjectStore, entry: Entry, i: int, key: str, state: ReadState) -> None:
        try:
            # The reader may get to the block first (this task waits for a pool thread): it then
            # reads the block itself, and keeps it only if it still needs it. Fetching it here
            # after that would fetch it twice.
            def wanted() -> bool:
                return state.last_block < i

            if wanted() and self._memory.get(key) is None and (not self.persist or key not in self._disk):
                if self._block(store, entry, i, remember=True, wanted=wanted) is not None:
                    self._count("readahead")
        except Exception as exc:  # the foreground read will meet (and report) it
            log.debug("read-ahead of block %d of %r failed: %s", i, entry.path, exc)
        finally:
            with self._lock:
                self._queued.discard(key)

    def _done(self, future: concurrent.futures.Future) -> None:
        with self._lock:
            self._pending.discard(future)

    def _hash_along(self, entry: Entry, state: ReadState, offset: int, data: bytes) -> None:
        """Keep a running sha256 of a handle that reads a file in order; check it at the end."""
        with state.lock:
            if state.hasher is None or offset > state.hashed:
                state.hasher = None
                return
            if offset + len(data) <= state.hashed:
                return
            state.hasher.update(memoryview(data)[state.hashed - offset:])
            self._count("hashed", offset + len(data) - state.hashed)
            state.hashed = offset + len(data)
            if state.hashed < entry.size:
                return
            digest, state.hasher = state.hasher.hexdigest(), None
        if digest != entry.sha256:
            self._count("corrupt")
            self._drop_file(entry)
            raise Corrupt(f"sha256 mismatch for {entry.path!r} in {entry.chunk!r}: expected "
                          f"{entry.sha256}, got {digest} (read in order; cached blocks dropped)")
