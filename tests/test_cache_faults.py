"""The block cache over a store that misbehaves (dsfs/store/faulty.py): no server, no FUSE.

Errors, bodies cut short and bodies with a flipped bit are injected at random into the reads of
an in-memory store (dsfs/store/memory.py); random, sequential, whole-file and neighbour reads go
through a small disk cache. A read may fail (StoreUnavailable, Corrupt), but every byte a read
returns is right, and nothing wrong is left in the cache: with the faults off, every file reads
back whole.
"""

from __future__ import annotations

import random

import pytest

from dsfs.cache import BlockCache, ReadState
from dsfs.changeset.manifest import DEFLATED, HASH_BLOCK
from dsfs.errors import Corrupt, StoreUnavailable
from dsfs.store.faulty import FaultyStore
from dsfs.store.memory import MemoryStore
from test_cache import compressible, pack_files, random_bytes

BS = 256 << 10


@pytest.fixture
def files(tmp_path):
    store = MemoryStore()
    data = {f"small/{i:03d}.bin": random_bytes(random.Random(i).randint(1, 30_000), seed=i) for i in range(60)}
    data["big.bin"] = random_bytes(HASH_BLOCK + 3 * BS + 12_345, seed=100)  # stored, with a hash tree
    data["mid.bin"] = random_bytes(BS - 7, seed=101)  # stored, one block: fetched whole
    # Stored, several blocks of this test's BS but at most 4 MiB: no hashes but its own, so it is
    # fetched whole too, whatever the read.
    data["multi.bin"] = random_bytes(3 * BS + 99, seed=102)
    entries = pack_files(store, tmp_path, data)
    text = {"text/a.txt": compressible(3 * BS + 77), "text/b.txt": compressible(40_000)}
    entries.update(pack_files(store, tmp_path, text, compression="deflate"))
    data.update(text)
    assert entries["big.bin"].tree is not None and entries["mid.bin"].size <= BS
    assert entries["multi.bin"].tree is None and entries["multi.bin"].size > BS
    assert entries["text/a.txt"].method == DEFLATED
    return store, entries, data


def lister(entries):
    by_chunk: dict[str, list] = {}
    for e in entries.values():
        by_chunk.setdefault(e.chunk, []).append(e)

    def near(chunk: str, lo: int, hi: int):
        return [e for e in by_chunk.get(chunk, []) if lo <= e.offset < hi]

    return near


@pytest.mark.parametrize("seed", [1, 2])
def test_no_injected_fault_is_ever_served_as_bytes(files, tmp_path, seed):
    store, entries, data = files
    faulty = FaultyStore(store, errors=0.15, cuts=0.15, flips=0.15, seed=seed)
    rng = random.Random(seed)
    names = sorted(entries)
    near = lister(entries)
    served = failed = 0
    with BlockCache(tmp_path / "cache", block_size=BS, size_limit=1 << 20, memory_limit=BS) as cache:
        for _ in range(400):
            name = rng.choice(names)
            entry, want = entries[name], data[name]
            kind = rng.random()
            try:
                if kind < 0.5:  # a random read
                    offset = rng.randrange(len(want))
                    length = rng.choice([1, 4096, 70_000, BS + 3])
                    got = cache.read(faulty, entry, offset, length, near=near)
                    assert got == want[offset:offset + length], f"wrong bytes served from {name}"
                elif kind < 0.8:  # a handle reading in order
                    state, got, offset = ReadState(), [], 0
                    while offset < len(want):
                        got.append(cache.read(faulty, entry, offset, 128 << 10, state, near=near))
                        offset += 128 << 10
                    assert b"".join(got) == want, f"wrong bytes served from {name}"
                else:
                    assert cache.read_all(faulty, entry) == want, f"wrong bytes served from {name}"
                served += 1
            except (StoreUnavailable, Corrupt):
                failed += 1
        cache.drain()
        assert faulty.counts["errors"] and faulty.counts["cuts"] and faulty.counts["flips"]
        assert served > 100 and failed > 0
        # Nothing wrong was kept: with the faults off every file reads back whole.
        for name in names:
            assert cache.read_all(store, entries[name]) == data[name]
            assert cache.read(store, entries[name], 0, 1 << 30, ReadState()) == data[name]
