"""The block cache: ranged and whole-member reads, content dedup, single-flight, read-ahead,
eviction, and integrity checks (corrupt cached blocks, corrupt or missing chunks).

Everything runs against a real LocalStore holding real zip chunks made by the packer; a thin
LocalStore subclass counts (and can hold) ranged GETs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import subprocess
import sys
import threading
import time

import diskcache
import pytest

from dsfs.cache import BlockCache, ReadState, blocks, default_cache_size
from dsfs.cache.readahead import advance
from dsfs.changeset.manifest import DEFLATED, STORED, Entry, new_id
from dsfs.changeset.packer import Source, hash_sources, pack
from dsfs.config import Settings
from dsfs.errors import Corrupt, StoreUnavailable
from dsfs.store.local import LocalStore

BS = 1024


class CountingStore(LocalStore):
    """A LocalStore that counts ranged GETs and can hold them until ``gate`` is set."""

    def __init__(self, root) -> None:
        super().__init__(root, create=True)
        self.gets = 0
        self.lock = threading.Lock()
        self.gate: threading.Event | None = None
        self.fail: Exception | None = None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self.lock:
            self.gets += 1
        if self.gate is not None:
            assert self.gate.wait(30), "test never released the gate"
        if self.fail is not None:
            raise self.fail
        return super().get_range(key, start, length)


@pytest.fixture
def store(tmp_path):
    s = CountingStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def block_by_block(monkeypatch):
    """The block-by-block path of a stored file with only its own sha256 and too big to check
    whole (a change-set older than hash trees), reachable at these tests' sizes."""
    monkeypatch.setattr(blocks, "WHOLE_CHECK_MAX", 0)


@pytest.fixture
def cache_dir(tmp_path):
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir):
    c = BlockCache(cache_dir, block_size=BS, size_limit=64 << 20)
    yield c
    c.close()


def pack_files(store, tmp_path, files: dict[str, bytes], compression: str = "store") -> dict[str, Entry]:
    """Pack ``files`` into one new change-set's zip chunks; their entries by path."""
    src_dir = tmp_path / f"src-{new_id()}"
    sources = []
    for path, data in files.items():
        local = src_dir / path
        local.parent.mkdir(parents=True, exist_ok=True)
        local.write_bytes(data)
        sources.append(Source.from_local(path, str(local)))
    hash_sources(sources)
    settings = Settings(chunk_size=64 << 20, compression=compression)
    entries, _ = pack(store, new_id(), new_id(), sources, lambda shas: {}, settings,
                      str(tmp_path / "pack-tmp"))
    return {e.path: e for e in entries}


def flip_store_byte(store: LocalStore, entry: Entry, at: int) -> None:
    with open(store.local_path(entry.chunk), "r+b") as f:
        f.seek(entry.offset + at)
        byte = f.read(1)
        f.seek(entry.offset + at)
        f.write(bytes([byte[0] ^ 0xFF]))


_CHILD = (
    "import sys, json, os\n"
    "from dsfs.cache import BlockCache\n"
    "from dsfs.changeset.manifest import Entry\n"
    "from dsfs.store.local import LocalStore\n"
    "store, entry = LocalStore(sys.argv[2]), Entry(**json.loads(sys.argv[3]))\n"
    "def cache(**options):\n"
    "    return BlockCache(sys.argv[1], block_size=int(sys.argv[4]), **options)\n"
)


def run_in_child(body: str, cache_dir, store, entry: Entry) -> bytes:
    """Run ``body`` in a new Python process that has ``store``, ``entry`` and ``cache(**options)``
    (a BlockCache on ``cache_dir``); its stdout."""
    fields = {f: getattr(entry, f) for f in entry.__slots__}
    return subprocess.run([sys.executable, "-c", _CHILD + body, str(cache_dir), str(store.root),
                           json.dumps(fields), str(BS)], capture_output=True, check=True).stdout


def random_bytes(n: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(n)


def compressible(n: int) -> bytes:
    words = [b"alpha ", b"beta ", b"gamma ", b"delta\n"]
    rnd = random.Random(1)
    return b"".join(rnd.choice(words) for _ in range(n))[:n]


def wait_for(predicate, timeout: float = 10.0) -> None:
    """Poll a condition (not a fixed sleep); fail if it never holds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition never held"
        time.sleep(0.001)


# -- reads ----------------------------------------------------------------------------------


def test_stored_member_ranged_reads_at_block_boundaries(block_by_block, store, cache, tmp_path):
    data = random_bytes(5000)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    assert entry.method == STORED
    for offset, length in [(0, BS), (BS - 1, 2), (1000, 48), (BS, BS), (2 * BS - 1, BS + 2),
                           (4096, 1000), (4999, 100), (0, 10_000), (123, 0)]:
        assert cache.read(store, entry, offset, length) == data[offset:offset + length]
    assert cache.read(store, entry, 5000, 10) == b""
    assert cache.read(store, entry, 6000, 5) == b""
    assert store.gets == 5  # one ranged GET per block, however often it is read
    assert cache.stats()["count"] == 5
    assert cache.read_all(store, entry) == data


def test_deflated_member_is_fetched_once_and_served_as_blocks(store, cache, tmp_path):
    data = compressible(20_000)
    entry = pack_files(store, tmp_path, {"text.txt": data}, compression="deflate")["text.txt"]
    assert entry.method == DEFLATED and entry.csize < entry.size
    for offset, length in [(5000, 3000), (0, 10), (BS - 5, 10), (19_990, 100), (0, 20_000)]:
        assert cache.read(store, entry, offset, length) == data[offset:offset + length]
    assert store.gets == 1
    assert cache.stats()["count"] == -(-len(data) // BS)


def test_empty_file_needs_no_fetch(store, cache, tmp_path):
    entry = pack_files(store, tmp_path, {"empty": b""})["empty"]
    assert entry.chunk is None
    assert cache.read(store, entry, 0, 100) == b""
    assert cache.read_all(store, entry) == b""
    assert cache.prefetch(store, entry) == 0
    assert store.gets == 0


def test_same_content_in_two_versions_is_fetched_once(store, cache, tmp_path):
    data = random_bytes(3000, seed=7)
    first = pack_files(store, tmp_path, {"v1/a.bin": data})["v1/a.bin"]
    second = pack_files(store, tmp_path, {"v2/renamed.bin": data})["v2/renamed.bin"]
    assert first.chunk != second.chunk and first.sha256 == second.sha256
    assert cache.read(store, first, 0, len(data)) == data
    gets = store.gets
    assert cache.read(store, second, 0, len(data)) == data
    assert cache.read(store, second, 2000, 500) == data[2000:2500]
    assert store.gets == gets


def test_two_caches_on_one_dir_share_blocks(store, cache_dir, tmp_path):
    data = random_bytes(4000, seed=3)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as one, \
            BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as two:
        assert one.read(store, entry, 0, 4000) == data
        one.drain()  # blocks reach the disk cache asynchronously
        gets = store.gets
        assert two.read(store, entry, 0, 4000) == data
        assert store.gets == gets
        assert two.stats()["hits"] == 4 and two.stats()["misses"] == 0


def test_prefetch_and_read_all(store, cache, tmp_path):
    data = random_bytes(4500, seed=5)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    seen = []
    assert cache.prefetch(store, entry, progress=seen.append) == len(data)
    assert sum(seen) == len(data)
    assert cache.prefetch(store, entry) == 0
    gets = store.gets
    assert cache.read_all(store, entry) == data
    assert store.gets == gets


# -- concurrency ----------------------------------------------------------------------------


def test_concurrent_misses_of_one_block_fetch_it_once(store, cache, tmp_path):
    data = random_bytes(8 * BS, seed=11)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    store.gate = threading.Event()
    results = [None] * 16

    def reader(n: int) -> None:
        results[n] = cache.read(store, entry, 2 * BS + n, 100)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: cache.stats()["coalesced"] == 15)  # 15 threads wait on the one fetch
    store.gate.set()
    for t in threads:
        t.join()
    assert store.gets == 1
    assert results == [data[2 * BS + n:2 * BS + n + 100] for n in range(16)]


def test_concurrent_misses_of_a_deflated_member_fetch_it_once(store, cache, tmp_path):
    data = compressible(10 * BS)
    entry = pack_files(store, tmp_path, {"t.txt": data}, compression="deflate")["t.txt"]
    store.gate = threading.Event()
    results = [None] * 8

    def reader(n: int) -> None:  # each thread wants a different block of the same member
        results[n] = cache.read(store, entry, n * BS, BS)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: cache.stats()["coalesced"] == 7)
    store.gate.set()
    for t in threads:
        t.join()
    assert store.gets == 1
    assert results == [data[n * BS:(n + 1) * BS] for n in range(8)]


def test_a_failed_fetch_fails_every_waiter(store, cache, tmp_path):
    data = random_bytes(4 * BS)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    store.gate = threading.Event()
    store.fail = StoreUnavailable("store down: 'test'")
    errors = []

    def reader() -> None:
        try:
            cache.read(store, entry, BS, 10)
        except StoreUnavailable as exc:
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: cache.stats()["coalesced"] == 3)
    store.gate.set()
    for t in threads:
        t.join()
    assert len(errors) == 4 and store.gets == 1


# -- read-ahead -----------------------------------------------------------------------------


def test_sequential_reads_are_served_by_read_ahead(block_by_block, store, cache, tmp_path):
    data = random_bytes(16 * BS, seed=2)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    state = ReadState()
    out = []
    for offset in range(0, len(data), 256):
        out.append(cache.read(store, entry, offset, 256, state))
        cache.drain()
    assert b"".join(out) == data
    stats = cache.stats()
    assert stats["misses"] == 1  # only the first block; every later block was read ahead
    assert stats["readahead"] == 15
    assert store.gets == 16


def test_blocks_a_stream_is_done_with_go_before_those_read_ahead(block_by_block, store, cache_dir, tmp_path):
    # Two files streamed side by side, with memory for just their windows: plain LRU would drop
    # the block each reader needs next (read ahead longest ago) and keep the ones it finished.
    files = {name: random_bytes(16 * BS, seed=i) for i, name in enumerate(("a.bin", "b.bin"))}
    entries = pack_files(store, tmp_path, files)

    def gets_of_two_streams(memory_limit: int) -> int:
        before, states = store.gets, {name: ReadState() for name in files}
        with BlockCache(cache_dir, block_size=BS, persist=False, readahead_max=2,
                        memory_limit=memory_limit) as cache:
            for offset in range(0, 16 * BS, 256):
                for name, data in files.items():
                    assert cache.read(store, entries[name], offset, 256, states[name]) == data[offset:offset + 256]
                    cache.drain()
        return store.gets - before

    assert gets_of_two_streams(6 * BS) == gets_of_two_streams(64 * BS)  # no block fetched twice


@pytest.mark.parametrize("persist", [True, False])
def test_a_stream_keeps_only_its_window_and_a_few_finished_blocks_in_memory(block_by_block, store, cache_dir,
                                                                              tmp_path, persist):
    """However much room the memory tier has, a stream through a file holds the blocks read ahead
    of it and at most blocks.DONE_BLOCKS it finished (it held every block it had read, up to the
    limit, before); a block a late read brings back just behind the reader is let go when the
    stream finishes the next ones."""
    data = random_bytes(32 * BS, seed=23)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    # finished, read ahead (readahead_max), the current one, and the late read's
    bound = (blocks.DONE_BLOCKS + 2 + 1 + 1) * BS
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20, persist=persist, readahead_max=2,
                    memory_limit=64 * BS) as cache:
        state, peak, late = ReadState(), 0, []
        for offset in range(0, 32 * BS, 256):
            assert cache.read(store, entry, offset, 256, state) == data[offset:offset + 256]
            cache.drain()
            peak = max(peak, cache._memory.size)
            if offset == 20 * BS:  # a late read of block 17 (dropped already), from another handle
                assert cache.read(store, entry, 17 * BS + 10, 100) == data[17 * BS + 10:17 * BS + 110]
                late.append(cache._memory.get(cache.block_key(entry.sha256, 17)) is not None)
        assert peak <= bound
        assert late == [persist]  # a disk cache's block comes back to memory; a local read is in place
        assert cache._memory.get(cache.block_key(entry.sha256, 17)) is None


def test_random_reads_do_not_read_ahead(block_by_block, store, cache, tmp_path):
    data = random_bytes(16 * BS, seed=4)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    state = ReadState()
    for block in (10, 3, 7, 0, 14, 5):
        offset = block * BS + 17
        assert cache.read(store, entry, offset, 100, state) == data[offset:offset + 100]
        cache.drain()
    assert store.gets == 6
    assert cache.stats()["readahead"] == 0


def test_a_read_never_waits_for_the_disk_writer_and_a_prefetch_does(store, cache_dir, tmp_path, monkeypatch):
    """With the disk cache's writer stuck and its backlog full, reads go on (served, counted
    ``unkept``, not kept on disk) where a prefetch waits to keep its blocks; once the writer
    moves, the prefetch finishes and every block it fetched is on disk."""
    monkeypatch.setattr(blocks, "WRITE_BACKLOG", 2 * BS)
    data = random_bytes(16 * BS, seed=21)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    other = pack_files(store, tmp_path, {"b.bin": random_bytes(8 * BS, seed=22)})["b.bin"]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20, readahead_max=0) as cache:
        stuck = threading.Event()
        put_many = cache._disk.put_many
        monkeypatch.setattr(cache._disk, "put_many", lambda items: stuck.wait(30) and put_many(items))
        for i in range(16):  # the first blocks fill the backlog; the rest are not kept
            assert cache.read(store, entry, i * BS + 5, 10) == data[i * BS + 5:i * BS + 15]
        assert cache._counts["unkept"] >= 12
        done = threading.Event()
        thread = threading.Thread(target=lambda: (cache.prefetch(store, other), done.set()))
        thread.start()
        assert not done.wait(0.5)  # waits for the writer
        stuck.set()
        assert done.wait(30)
        thread.join()
        cache.drain()
        assert all(cache.block_key(other.sha256, i) in cache._disk for i in range(8))
        assert cache.stats()["unkept"] >= 12


def test_a_block_that_left_memory_before_the_writer_stored_it_is_not_fetched_again(store, cache_dir, tmp_path,
                                                                                    monkeypatch):
    """A block the memory tier let go (a stream's finished block, an eviction) while it still
    waits for the disk writer is served from the writer's queue, not fetched from the store."""
    data = random_bytes(4 * BS, seed=24)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20, readahead_max=0) as cache:
        stuck = threading.Event()
        put_many = cache._disk.put_many
        monkeypatch.setattr(cache._disk, "put_many", lambda items: stuck.wait(30) and put_many(items))
        assert cache.read(store, entry, BS + 5, 10) == data[BS + 5:BS + 15]
        key = cache.block_key(entry.sha256, 1)
        cache._memory.drop(key)
        gets = store.gets
        assert cache.read(store, entry, BS + 100, 50) == data[BS + 100:BS + 150]
        assert store.gets == gets and key not in cache._disk
        stuck.set()
        cache.drain()
        assert key in cache._disk and not cache._unwritten


# -- eviction -------------------------------------------------------------------------------


def test_reading_more_than_fits_evicts_and_stays_correct(store, cache_dir, tmp_path):
    bs = 64 << 10
    data = random_bytes(32 * bs, seed=9)
    entry = pack_files(store, tmp_path, {"big.bin": data})["big.bin"]
    limit = 512 << 10
    with BlockCache(cache_dir, block_size=bs, size_limit=limit, memory_limit=0) as cache:
        state = ReadState()
        for offset in range(0, len(data), 50_000):
            assert cache.read(store, entry, offset, 50_000, state) == data[offset:offset + 50_000]
        cache.drain()
        stats = cache.stats()
        assert stats["size"] <= limit
        assert 0 < stats["count"] < 32
        rnd = random.Random(0)
        for _ in range(40):
            offset = rnd.randrange(len(data))
            assert cache.read(store, entry, offset, 70_000) == data[offset:offset + 70_000]
        assert cache.stats()["size"] <= limit
        assert cache.read_all(store, entry) == data


def test_a_small_cache_evicts_just_enough_and_keeps_the_newest(block_by_block, store, cache_dir, tmp_path):
    """Eviction drops the least recently stored blocks until the cache fits, never the whole
    cache (diskcache's own culling drops ten at a time, the block just stored included)."""
    bs = 64 << 10
    data = random_bytes(32 * bs, seed=11)
    entry = pack_files(store, tmp_path, {"big.bin": data})["big.bin"]
    limit = 512 << 10
    with BlockCache(cache_dir, block_size=bs, size_limit=limit, memory_limit=0) as cache:
        for i in range(32):
            assert cache.read(store, entry, i * bs, bs) == data[i * bs:(i + 1) * bs]
            cache.drain()
            stats = cache.stats()
            assert stats["size"] <= limit
            assert stats["count"] >= min(i + 1, 5)
            assert cache.block_key(entry.sha256, i) in cache._disk


def test_prune_evicts_down_to_a_smaller_limit(store, cache_dir, tmp_path):
    bs = 64 << 10
    data = random_bytes(16 * bs, seed=10)
    entry = pack_files(store, tmp_path, {"big.bin": data})["big.bin"]
    with BlockCache(cache_dir, block_size=bs, size_limit=64 << 20) as big:
        big.prefetch(store, entry)
        assert big.stats()["count"] == 16
    with BlockCache(cache_dir, block_size=bs, size_limit=300 << 10) as small:
        assert small.prune() > 0
        assert small.stats()["size"] <= 300 << 10
        assert small.read(store, entry, 5 * bs, 10) == data[5 * bs:5 * bs + 10]


def test_clear_empties_the_cache(store, cache, tmp_path):
    data = random_bytes(3000)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    cache.read_all(store, entry)
    cache.clear()
    assert cache.stats()["count"] == 0
    assert cache.read(store, entry, 0, 3000) == data


def test_default_cache_size(tmp_path):
    size = default_cache_size(tmp_path / "not" / "yet" / "there")
    assert 0 < size <= 10 << 30


# -- integrity ------------------------------------------------------------------------------


@pytest.mark.parametrize("tamper", ["flip-payload-byte", "garbage"])
def test_corrupt_cached_block_is_dropped_and_refetched(store, cache_dir, tmp_path, tamper):
    data = random_bytes(4 * BS, seed=12)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as first:
        first.read_all(store, entry)
        key = first.block_key(entry.sha256, 1)
    raw = diskcache.Cache(str(cache_dir / "blocks"))
    value = raw[key]
    if tamper == "garbage":
        raw[key] = b"not a block"
    else:
        raw[key] = value[:-1] + bytes([value[-1] ^ 1])
    raw.close()
    gets = store.gets
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as second:
        assert second.read(store, entry, BS, BS) == data[BS:2 * BS]
        assert second.stats()["corrupt"] == 1
        assert store.gets == gets + 1
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as third:
        assert third.read(store, entry, BS, BS) == data[BS:2 * BS]  # the refetched copy is good
        assert store.gets == gets + 1


def test_corrupt_cached_block_of_a_deflated_member_is_refetched(store, cache_dir, tmp_path):
    data = compressible(6 * BS)
    entry = pack_files(store, tmp_path, {"t.txt": data}, compression="deflate")["t.txt"]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as first:
        first.read(store, entry, 0, 1)
        key = first.block_key(entry.sha256, 3)
    with diskcache.Cache(str(cache_dir / "blocks")) as raw:
        value = raw[key]
        raw[key] = value[:20] + bytes([value[20] ^ 1]) + value[21:]
    with BlockCache(cache_dir, block_size=BS, size_limit=64 << 20) as second:
        assert second.read(store, entry, 3 * BS, BS) == data[3 * BS:4 * BS]
        assert second.stats()["corrupt"] == 1
    assert store.gets == 2


def test_corrupt_chunk_raises_after_one_refetch(store, cache, tmp_path):
    data = random_bytes(900, seed=13)  # fits one block: fetched whole and checked
    entry = pack_files(store, tmp_path, {"small.bin": data})["small.bin"]
    flip_store_byte(store, entry, 100)
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'small.bin'"):
        cache.read(store, entry, 0, 10)
    assert store.gets == 2
    assert cache.stats()["count"] == 0  # nothing wrong was kept


def test_a_corrupt_small_file_read_whole_in_place_is_refused(store, cache_dir, tmp_path):
    """A local store's small files read whole take one read in place and one hash; a wrong or
    truncated one falls to the general path, which refetches once and refuses it."""
    data = random_bytes(900, seed=13)
    entry = pack_files(store, tmp_path, {"small.bin": data})["small.bin"]
    with BlockCache(cache_dir, store, block_size=BS, persist=False) as c:
        assert c.read(store, entry, 0, 1 << 20) == data and store.gets == 1
        flip_store_byte(store, entry, 100)
        store.gets = 0
        with pytest.raises(Corrupt, match=r"sha256 mismatch for 'small.bin'"):
            c.read(store, entry, 0, 1 << 20)
        assert store.gets == 3  # in place, then the general path's fetch and refetch
        short = Entry(**{**{f: getattr(entry, f) for f in entry.__slots__}, "offset": store.head(entry.chunk).size - 10})
        with pytest.raises(Corrupt, match="truncated"):
            c.read(store, short, 0, 1 << 20)


def test_corrupt_deflated_chunk_raises_after_one_refetch(store, cache, tmp_path):
    data = compressible(8 * BS)
    entry = pack_files(store, tmp_path, {"t.txt": data}, compression="deflate")["t.txt"]
    flip_store_byte(store, entry, entry.csize // 2)
    with pytest.raises(Corrupt, match=r"'t.txt'"):
        cache.read(store, entry, 0, 10)
    assert store.gets == 2
    assert cache.stats()["count"] == 0


def test_corrupt_multi_block_file_fails_whole_file_checks(block_by_block, store, cache, tmp_path):
    data = random_bytes(6 * BS, seed=14)
    entry = pack_files(store, tmp_path, {"big.bin": data})["big.bin"]
    flip_store_byte(store, entry, 4 * BS + 3)
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'big.bin'"):
        cache.read_all(store, entry)
    assert store.gets == 12  # every block fetched twice
    assert cache.stats()["count"] == 0
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'big.bin'"):
        cache.prefetch(store, entry)
    # A handle reading the file in order learns at its last read (a ranged block alone
    # cannot be checked against the file's sha256).
    state = ReadState()
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'big.bin'"):
        for offset in range(0, len(data), 500):
            cache.read(store, entry, offset, 500, state)
            cache.drain()
    assert offset >= len(data) - 500
    assert cache.stats()["count"] == 0  # its blocks were dropped


def test_a_random_read_of_a_file_without_block_hashes_checks_the_whole_file(store, cache, tmp_path):
    """With blocks smaller than a hash block, a stored file that has only its own sha256 is
    fetched and checked whole on any read: a corrupt byte far from the bytes asked for is found,
    never served past."""
    data = random_bytes(5 * BS, seed=17)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    assert entry.tree is None and entry.size > BS
    flip_store_byte(store, entry, 4 * BS + 1)
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'a.bin'"):
        cache.read(store, entry, 10, 100)
    with pytest.raises(Corrupt, match=r"sha256 mismatch for 'a.bin'"):
        cache.read(store, entry, 2 * BS, 100, ReadState())
    flip_store_byte(store, entry, 4 * BS + 1)  # repaired: served, and cached as blocks
    assert cache.read(store, entry, 2 * BS, 100) == data[2 * BS:2 * BS + 100]
    assert cache.read(store, entry, 10, 100) == data[10:110]
    assert cache.stats()["count"] == 5


def test_missing_chunk_is_corrupt_naming_the_chunk(store, cache, tmp_path):
    stored = pack_files(store, tmp_path, {"a.bin": random_bytes(3 * BS)})["a.bin"]
    deflated = pack_files(store, tmp_path, {"t.txt": compressible(3 * BS)}, "deflate")["t.txt"]
    for entry in (stored, deflated):
        store.delete(entry.chunk)
        with pytest.raises(Corrupt, match=f"chunk missing from store: '{entry.chunk}'"):
            cache.read(store, entry, BS, 10)


def test_store_unavailable_propagates(store, cache, tmp_path):
    entry = pack_files(store, tmp_path, {"t.txt": compressible(3 * BS)}, "deflate")["t.txt"]
    store.fail = StoreUnavailable("cannot reach store: 'test'")
    with pytest.raises(StoreUnavailable):
        cache.read(store, entry, 0, 10)
    store.fail = None
    assert cache.read(store, entry, 0, 10) == compressible(3 * BS)[:10]


def test_sha256_of_whole_reads_is_checked(store, cache, tmp_path):
    data = random_bytes(2500, seed=15)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    assert hashlib.sha256(cache.read_all(store, entry)).hexdigest() == entry.sha256
    lying = Entry(**{**{f: getattr(entry, f) for f in entry.__slots__}, "sha256": "0" * 64})
    with pytest.raises(Corrupt, match="sha256 mismatch for 'a.bin'"):
        cache.read_all(store, lying)


def test_another_process_reads_blocks_this_one_cached(store, cache, cache_dir, tmp_path):
    data = random_bytes(5 * BS, seed=16)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    cache.prefetch(store, entry)
    store.delete(entry.chunk)  # the other process can only be served by the shared cache
    out = run_in_child("with cache(size_limit=64 << 20) as c:\n"
                       "    sys.stdout.buffer.write(c.read_all(store, entry))\n", cache_dir, store, entry)
    assert out == data


def test_without_a_disk_cache_memory_keeps_only_what_a_reader_still_needs(block_by_block, store, cache_dir, tmp_path):
    """persist=False (a local-folder store): nothing reaches the disk cache; a small file read
    whole leaves nothing in memory; a multi-block deflated member is inflated once however it is
    read in pieces; sequential pieces of a stored member reuse the block they start in."""
    rng = random.Random(9)
    small = rng.randbytes(700)
    deflated = b"abcdefgh" * 2000  # 16 blocks, compressible
    stored = rng.randbytes(8 * BS)
    entries = pack_files(store, tmp_path, {"small": small, "deflated": deflated}, compression="deflate")
    entries.update(pack_files(store, tmp_path, {"stored": stored}))
    assert entries["deflated"].method == DEFLATED and entries["stored"].method == STORED
    c = BlockCache(cache_dir, store, block_size=BS, size_limit=64 << 20, readahead_max=0, persist=False)
    try:
        assert c.read(store, entries["small"], 0, 1 << 20) == small
        assert c._memory.size == 0
        store.gets = 0
        got = b"".join(c.read(store, entries["deflated"], off, 300) for off in range(0, len(deflated), 300))
        assert got == deflated and store.gets == 1  # one whole fetch for 54 reads
        store.gets = 0
        state = ReadState()
        got = b"".join(c.read(store, entries["stored"], off, 256, state) for off in range(0, len(stored), 256))
        assert got == stored and store.gets == 1 + 8  # the first read in place, then per block
        store.gets = 0
        assert c.read(store, entries["stored"], 3000, 100) == stored[3000:3100]
        assert c.read(store, entries["stored"], 10, 5, ReadState()) == stored[10:15]
        assert store.gets == 2  # random reads take just their range, in place
        assert c.stats()["count"] == 0
    finally:
        c.close()


def test_without_a_disk_cache_the_disk_tier_is_never_opened(store, cache_dir, tmp_path):
    """A local-folder store's mount reads in place: its process neither imports diskcache nor
    creates the disk tier (mount start-up pays for neither)."""
    data = random_bytes(3 * BS, seed=17)
    entry = pack_files(store, tmp_path, {"a.bin": data})["a.bin"]
    out = run_in_child("with cache(size_limit=1 << 20, persist=False) as c:\n"
                       "    assert c.read_all(store, entry) == c.read(store, entry, 0, 1 << 30)\n"
                       "print('diskcache' in sys.modules, os.path.exists(os.path.join(sys.argv[1], 'blocks')))\n",
                       cache_dir, store, entry)
    assert out.split() == [b"False", b"False"]


def test_a_small_miss_fetches_its_uncached_neighbours_in_one_get(store, cache_dir, tmp_path):
    """With a neighbour lister (as a mount gives), a miss on a small member also fetches and
    caches the small members around it in one ranged GET; each is checked against its own
    sha256, and a corrupt neighbour is simply left out."""
    rng = random.Random(12)
    files = {f"f{i:02d}": rng.randbytes(rng.randint(100, 3000)) for i in range(40)}
    files["text"] = b"hello " * 500  # deflated
    entries = pack_files(store, tmp_path, files, compression="auto")
    by_chunk = sorted(entries.values(), key=lambda e: e.offset)

    def near(chunk, lo, hi):
        return [e for e in by_chunk if e.chunk == chunk and lo <= e.offset < hi]

    c = BlockCache(cache_dir, store, block_size=BS * 4, size_limit=64 << 20)
    try:
        store.gets = 0
        assert c.read(store, entries["f20"], 0, 1 << 20, near=near) == files["f20"]
        assert store.gets == 1
        stats = c.stats()
        assert stats["neighbour_gets"] == 1 and stats["neighbours"] == len(files) - 1
        for path, data in files.items():
            assert c.read(store, entries[path], 0, 1 << 20, near=near) == data
        assert store.gets == 1  # everything else came from that one GET
    finally:
        c.close()
    # A neighbour whose bytes are corrupt in the store is not cached; the file asked for is.
    bad = entries["f05"]
    chunk_path = store.root / bad.chunk
    raw = bytearray(chunk_path.read_bytes())
    raw[bad.offset] ^= 0xFF
    chunk_path.write_bytes(bytes(raw))
    c = BlockCache(tmp_path / "cache2", store, block_size=BS * 4, size_limit=64 << 20)
    try:
        assert c.read(store, entries["f06"], 0, 1 << 20, near=near) == files["f06"]
        assert c.stats()["neighbours"] == len(files) - 2
        with pytest.raises(Corrupt):
            c.read(store, entries["f05"], 0, 1 << 20, near=near)
    finally:
        c.close()


def old_format(entry: Entry, data: bytes) -> Entry:
    """``entry`` as a change-set written before hash trees says it: a sha256 per 4 MiB block."""
    from dsfs.changeset.manifest import HASH_BLOCK

    blocks = "".join(hashlib.sha256(data[i:i + HASH_BLOCK]).hexdigest() for i in range(0, len(data), HASH_BLOCK))
    return dataclasses.replace(entry, tree=None, tree_offset=0, blocks=blocks)


@pytest.mark.parametrize("persist", [True, False])
def test_block_hashes_catch_corruption_in_any_part_of_a_big_file(store, cache_dir, tmp_path, persist):
    """A big stored file of an older change-set carries a sha256 per 4 MiB block: a read anywhere
    in a block whose bytes were damaged in the store fails (after one refetch) without reading
    the whole file, and the other blocks still read, with or without a disk cache."""
    from dsfs.changeset.manifest import HASH_BLOCK

    data = random.Random(21).randbytes(2 * HASH_BLOCK + 12345)
    entry = old_format(pack_files(store, tmp_path, {"big": data})["big"], data)
    assert entry.method == STORED and len(entry.blocks) == 3 * 64
    assert entry.block_sha256(1) == hashlib.sha256(data[HASH_BLOCK:2 * HASH_BLOCK]).hexdigest()
    chunk = store.root / entry.chunk
    raw = bytearray(chunk.read_bytes())
    raw[entry.offset + HASH_BLOCK + 777] ^= 0x01
    chunk.write_bytes(bytes(raw))
    c = BlockCache(cache_dir, store, block_size=HASH_BLOCK, size_limit=64 << 20, persist=persist)
    try:
        assert c.read(store, entry, 100, 4096) == data[100:4196]
        with pytest.raises(Corrupt, match="block 1"):
            c.read(store, entry, HASH_BLOCK + 5000, 100)
        tail = 2 * HASH_BLOCK + 10
        assert c.read(store, entry, tail, 100) == data[tail:tail + 100]
        assert c.read(store, entry, 200, 50) == data[200:250]  # block 0: checked once, then in place
        assert c.stats()["corrupt"] >= 1
    finally:
        c.close()


def test_bad_block_hashes_in_a_manifest_are_rejected():
    from dsfs.changeset.manifest import HASH_BLOCK

    good = {"op": "add", "path": "f", "type": "file", "mode": 0o644, "mtime_ns": 0,
            "size": HASH_BLOCK + 1, "sha256": "a" * 64, "chunk": "c", "offset": 0, "csize": HASH_BLOCK + 1,
            "method": 0, "blocks": "b" * 128}
    assert Entry.from_json(good).block_sha256(1) == "b" * 64
    for bad in ("b" * 64, "B" * 128, "x" * 128, "b" * 192):
        with pytest.raises(Corrupt, match="bad block hashes"):
            Entry.from_json({**good, "blocks": bad})


def test_read_ahead_opens_only_on_streams_and_doubles_to_its_bound():
    """The policy alone (dsfs/cache/readahead.py): random reads queue nothing; reads in order
    open a window of one block that doubles as the reader enters new blocks, up to the bound; a
    file with a hash tree waits for two reads that each moved on and a run of at least
    STREAM_BYTES (the pieces of one split pread are no stream); a jump closes the window; a
    stream's reads that overtake each other keep it open, and reads merely near each other never
    open one."""
    mib = 1 << 20

    def reads(offsets, *, tree=False, size=mib):
        state, out = ReadState(), []
        for off in offsets:
            end = off + size
            out.append(list(advance(state, off, end, off // (4 * mib), (end - 1) // (4 * mib), nblocks=64,
                                    slack=mib, max_window=8, wait_for_stream=tree)))
        return out

    assert reads([40 * mib, 3 * mib, 90 * mib]) == [[], [], []]
    streamed = reads([i * mib for i in range(24)])
    assert streamed[0] == [] and streamed[1] == [1]  # the second read shows the stream
    assert max(len(q) for q in streamed) <= 8 and sum(map(len, streamed)) >= 8
    queued = [b for q in streamed for b in q]
    assert queued == sorted(set(queued))  # each block queued once, in order
    assert reads([0, mib, 2 * mib], tree=True)[:2] == [[], []]  # a tree waits for two moves
    assert reads([0, mib, 2 * mib], tree=True)[2] == [1]  # ... then streams
    # One random pread the kernel split around pages it holds: pieces in order, but a short run.
    kib = 1 << 10
    assert reads([0, 80 * kib, 160 * kib, 240 * kib, 320 * kib], tree=True, size=64 * kib) == [[]] * 5
    assert reads([0, mib, 50 * mib])[2] == []  # a jump closes the window
    # Requests of 1 MiB answered out of order (three in flight): the window stays open and
    # still reaches every block once, in order.
    shuffled = [o * mib for base in range(0, 255, 3) for o in (base + 2, base, base + 1)]
    overtaken = reads(shuffled)
    queued = [b for q in overtaken for b in q]
    assert queued == sorted(set(queued)) and queued[-1] == 63
    assert reads(shuffled[:6] + [40 * mib])[-1] == []  # a real jump still closes it
    # A columnar reader's chunks that land near each other, out of order, open nothing.
    assert reads([9 * mib, 6 * mib, 11 * mib, 3 * mib, 8 * mib], size=mib // 2) == [[]] * 5

