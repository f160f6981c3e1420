"""Hash trees of big stored files: a small random read fetches and checks about a 64 KiB leaf, not
a 4 MiB block, and still never serves a byte that fails its check.

The cache tests run against a real LocalStore holding zip chunks made by the packer and count
bytes fetched and hashed (never time); the mount tests corrupt a real store and read through a
real FUSE mount, on the local store and on S3.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import random
import shutil
import threading
import time
import zipfile
from pathlib import Path

import pytest

from conftest import write_tree
from dsfs.cache import BlockCache, ReadState
from dsfs.cache.readahead import STREAM_BYTES
from dsfs.changeset.manifest import HASH_BLOCK, STORED, Entry, entry_fields
from dsfs.changeset.tree import LEAF, TreeBuilder, member_name, member_size, top_size
from dsfs.errors import Corrupt
from dsfs.resolver.index import VersionIndex
from dsfs.store import open_store
from test_cache import CountingStore, compressible, old_format, pack_files, random_bytes

SIZE = 2 * HASH_BLOCK + 12345  # two whole blocks and a short one


@pytest.fixture
def store(tmp_path):
    s = CountingStore(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture(scope="module")
def data() -> bytes:
    return random_bytes(SIZE, 7)


def big_entry(store, tmp_path, data: bytes) -> Entry:
    return pack_files(store, tmp_path, {"big.bin": data})["big.bin"]


def flip(store: CountingStore, entry: Entry, at: int) -> None:
    """Flip one byte of the chunk, ``at`` bytes from its start."""
    with open(store.local_path(entry.chunk), "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def new_cache(tmp_path, store, persist: bool, name: str = "cache") -> BlockCache:
    return BlockCache(tmp_path / name, store, size_limit=256 << 20, persist=persist)


# -- the format --------------------------------------------------------------------------------


def test_big_stored_files_get_a_tree_member_right_after_their_bytes(store, tmp_path, data):
    entries = pack_files(store, tmp_path, {"big.bin": data, "big.txt": compressible(HASH_BLOCK + 1),
                                           "edge.bin": data[:HASH_BLOCK]}, compression="auto")
    big, text, edge = entries["big.bin"], entries["big.txt"], entries["edge.bin"]
    assert big.method == STORED and big.blocks is None and big.tree is not None
    assert text.tree is None and edge.tree is None  # deflated: fetched whole; 4 MiB: one block
    builder = TreeBuilder()
    for i in range(0, len(data), 100_000):  # pieces that do not line up with leaves
        builder.update(data[i:i + 100_000])
    root, member = builder.finish()
    assert root == big.tree and len(member) == member_size(SIZE) == 32 * (3 + 129)
    with zipfile.ZipFile(store.local_path(big.chunk)) as z:
        info = z.getinfo(member_name(big.sha256))
        assert info.compress_type == zipfile.ZIP_STORED and z.read(info) == member
        assert sorted(z.namelist()) == sorted(["big.bin", "big.txt", "edge.bin", member_name(big.sha256)])
    raw = Path(store.local_path(big.chunk)).read_bytes()
    assert raw[big.tree_offset:big.tree_offset + len(member)] == member
    assert big.offset + SIZE < big.tree_offset  # the tree follows the file's bytes
    line = big.to_json()
    assert line["tree"] == root and line["tree_offset"] == big.tree_offset and "blocks" not in line
    assert Entry.from_json(line) == big


@pytest.mark.parametrize("bad, message", [
    ({"type": "fifo"}, "unknown type"),
    ({"path": "../x"}, "'..' components"),
    ({"path": "/x"}, "must be relative"),
    ({"path": "a\x00b"}, "nul byte"),
    ({"sha256": "a" * 63}, "bad size or sha256"),
    ({"size": -1}, "bad size or sha256"),
    ({"method": 12}, "bad byte location"),
    ({"offset": -5}, "bad byte location"),
    ({"blocks": "zz"}, "bad block hashes"),
    ({"mode": "rw"}, "bad field"),
    ({"size": None}, "bad field"),
])
def test_bad_manifest_entries_are_rejected_by_the_index_build_too(bad, message):
    """The index build reads adds as field tuples (entry_fields), not Entry objects: both reject
    the same lines with the same errors, and agree on good ones."""
    good = {"op": "add", "path": "d/f", "type": "file", "mode": 0o644, "mtime_ns": 5, "size": 3, "sha256": "a" * 64,
            "chunk": "c", "offset": 0, "csize": 3, "method": 0}
    for line in (good, {**good, "type": "dir"}, {**good, "type": "symlink", "target": "../t"},
                 {k: v for k, v in good.items() if k not in ("chunk", "offset", "csize", "method")} | {"size": 0}):
        assert Entry(*entry_fields(line)) == Entry.from_json(line)
    for parse in (Entry.from_json, entry_fields):
        with pytest.raises(Corrupt, match=message):
            parse({**good, **bad})
    with pytest.raises(Corrupt, match="bytes but no chunk"):
        entry_fields({k: v for k, v in good.items() if k != "chunk"})


def test_bad_hash_trees_in_a_manifest_are_rejected():
    good = {"op": "add", "path": "f", "type": "file", "mode": 0o644, "mtime_ns": 0, "size": HASH_BLOCK + 1,
            "sha256": "a" * 64, "chunk": "c", "offset": 0, "csize": HASH_BLOCK + 1, "method": 0,
            "tree": "b" * 64, "tree_offset": 9}
    assert Entry.from_json(good).tree_offset == 9
    for bad in ({"tree": "b" * 63}, {"tree": "B" * 64}, {"tree_offset": -1}, {"size": HASH_BLOCK, "csize": HASH_BLOCK},
                {"method": 8}):
        with pytest.raises(Corrupt, match="bad hash tree"):
            Entry.from_json({**good, **bad})
    with pytest.raises(Corrupt, match="bad field"):
        Entry.from_json({k: v for k, v in good.items() if k != "tree_offset"})


# -- what a random read costs --------------------------------------------------------------------


@pytest.mark.parametrize("persist", [True, False])
def test_a_random_small_read_fetches_and_hashes_about_a_leaf(store, tmp_path, data, persist):
    """A cold 4 KiB read: with a tree, the leaf it touches plus the file's block digests and the
    leaf digests of the blocks up to its own (one ranged read for both); before trees, the whole
    4 MiB block."""
    new = big_entry(store, tmp_path, data)
    costs = {}
    for name, entry in (("tree", new), ("blocks", old_format(new, data))):
        with new_cache(tmp_path, store, persist, f"cache-{name}") as cache:
            store.gets = 0
            at = HASH_BLOCK + 5 * LEAF + 1000
            assert cache.read(store, entry, at, 4096) == data[at:at + 4096]
            costs[name] = {**{k: cache.stats()[k] for k in ("fetched", "hashed", "tree_fetched")},
                           "gets": store.gets}
    print("cold random 4 KiB read:", costs)
    assert costs["tree"] == {"fetched": LEAF + top_size(SIZE) + 2 * 32 * 64, "hashed": LEAF,
                             "tree_fetched": top_size(SIZE) + 2 * 32 * 64, "gets": 2}
    assert costs["blocks"] == {"fetched": HASH_BLOCK, "hashed": HASH_BLOCK, "tree_fetched": 0, "gets": 1}


@pytest.mark.parametrize("persist", [True, False])
def test_later_reads_need_only_their_leaves(store, tmp_path, data, persist):
    entry = big_entry(store, tmp_path, data)
    with new_cache(tmp_path, store, persist) as cache:
        cache.read(store, entry, 10, 100)
        store.gets, before = 0, cache.stats()
        at = 7 * LEAF - 100  # in block 0, across two leaves: one ranged read for both
        assert cache.read(store, entry, at, 200) == data[at:at + 200]
        at = HASH_BLOCK + 3  # block 1: its leaf digests (2 KiB, kept since), then its leaf
        assert cache.read(store, entry, at, 5000) == data[at:at + 5000]
        at = 2 * HASH_BLOCK + 3  # block 2 is one short leaf: checked against its block digest
        assert cache.read(store, entry, at, 5000) == data[at:at + 5000]
        after = cache.stats()
        tail = SIZE - 2 * HASH_BLOCK
        assert store.gets == 4
        assert after["fetched"] - before["fetched"] == 2 * LEAF + 32 * 64 + LEAF + tail
        assert after["hashed"] - before["hashed"] == 2 * LEAF + LEAF + tail


@pytest.mark.parametrize("persist", [True, False])
def test_reads_in_order_take_whole_blocks_and_read_ahead(store, tmp_path, data, persist):
    """Once reads stream (two in a row that each moved on, over a run of STREAM_BYTES), a file
    with a hash tree is read in whole 4 MiB blocks, checked against their block digests, with
    read-ahead; only the reads before take leaves. No byte is fetched twice but those reads'
    leaves."""
    entry = big_entry(store, tmp_path, data)
    step = 128 << 10
    with new_cache(tmp_path, store, persist) as cache:
        state = ReadState()
        for offset in range(0, SIZE, step):
            assert cache.read(store, entry, offset, step, state) == data[offset:offset + step]
        cache.drain()
        stats = cache.stats()
    leaf_reads = STREAM_BYTES // step - 1  # the read that completes the run takes a block
    assert stats["leaf_reads"] == leaf_reads and stats["readahead"] >= 1
    # The leaf reads' bytes (two leaves each) are fetched again as part of block 0; nothing
    # else twice, whichever of the reader and a queued read-ahead gets to a block first.
    assert stats["fetched"] - stats["tree_fetched"] == SIZE + leaf_reads * step
    assert stats["tree_fetched"] == top_size(SIZE) + 32 * 64  # block digests, and block 0's leaves


def test_a_random_read_near_the_last_one_stays_small(store, tmp_path, data):
    entry = big_entry(store, tmp_path, data)
    with new_cache(tmp_path, store, False) as cache:
        state = ReadState()
        for offset in (HASH_BLOCK + 500_000, HASH_BLOCK + 300_000, HASH_BLOCK + 600_000, HASH_BLOCK + 300_000):
            assert cache.read(store, entry, offset, 4096, state) == data[offset:offset + 4096]
        stats = cache.stats()
    # the fourth read's leaf passed its check at the second: read again in place, unhashed
    assert stats["leaf_reads"] == 3 and stats["readahead"] == 0 and stats["fetched"] < 5 * LEAF


def test_a_local_store_rereads_checked_leaves_in_place(store, tmp_path, data):
    """Without a disk cache (a local store), leaves that passed their check in this process are
    read again in place: no second hash, no block bookkeeping; a persisting cache keeps its own."""
    entry = big_entry(store, tmp_path, data)
    with new_cache(tmp_path, store, False) as cache:
        at = HASH_BLOCK + 3 * LEAF + 100
        assert cache.read(store, entry, at, 100_000, ReadState()) == data[at:at + 100_000]
        before = cache.stats()
        for shift in (0, 5000, -100):
            got = cache.read(store, entry, at + shift, 90_000, ReadState())
            assert got == data[at + shift:at + shift + 90_000]
        after = cache.stats()
    assert after["hashed"] == before["hashed"] and after["leaf_reads"] == before["leaf_reads"]
    assert after["fetched"] - before["fetched"] == 3 * 90_000


def test_a_local_store_keeps_no_leaf_in_memory_and_hashes_each_leaf_once(store, tmp_path, data):
    """Without a disk cache, leaves are not kept in the memory tier (the kernel caches the chunk):
    a read that runs from a checked leaf into new ones reads the checked one in place and hashes
    only the new ones, and random reads leave the memory tier empty."""
    entry = big_entry(store, tmp_path, data)
    with new_cache(tmp_path, store, False) as cache:
        at = HASH_BLOCK + 3 * LEAF
        assert cache.read(store, entry, at + 10, 4096) == data[at + 10:at + 4106]  # checks leaf 3 of block 1
        before = cache.stats()
        got = cache.read(store, entry, at + 5000, 2 * LEAF)  # leaf 3 again, then leaves 4 and 5
        assert got == data[at + 5000:at + 5000 + 2 * LEAF]
        after = cache.stats()
        assert after["hashed"] - before["hashed"] == 2 * LEAF
        rng = random.Random(5)
        for _ in range(50):
            offset = rng.randrange(0, SIZE - LEAF)
            assert cache.read(store, entry, offset, 3000) == data[offset:offset + 3000]
        assert cache._memory.size == 0


class HintingStore(CountingStore):
    """A CountingStore that records, in order, the hints it is given and the ranges read."""

    def __init__(self, root) -> None:
        super().__init__(root)
        self.events: list[tuple] = []

    def will_need(self, key: str, start: int, length: int) -> None:
        self.events.append(("hint", key, start, length))
        super().will_need(key, start, length)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self.events.append(("get", key, start, length))
        return super().get_range(key, start, length)


@pytest.mark.parametrize("persist", [True, False])
def test_the_digests_a_check_reads_are_named_before_the_bytes_are_read(tmp_path, data, persist):
    """A cold read of a big file tells the store which digests its check will read (past the
    file's end in the chunk) before reading the bytes: a local folder's kernel then reads both at
    once. The hints are exactly the digest reads, and nothing is hinted that is at hand."""
    store = HintingStore(tmp_path / "store")
    entry = big_entry(store, tmp_path, data)
    top_and_leaves = (entry.chunk, entry.tree_offset, top_size(SIZE) + 2 * 32 * 64)
    try:
        with new_cache(tmp_path, store, persist) as cache:
            for at, length, digests in ((HASH_BLOCK + 5 * LEAF + 1000, 4096, [top_and_leaves]),
                                        (100, 4096, []), (HASH_BLOCK - 100, 200, []),
                                        (2 * HASH_BLOCK + 3, 5000, [])):
                store.events.clear()
                assert cache.read(store, entry, at, length) == data[at:at + length]
                hints = [e[1:] for e in store.events if e[0] == "hint"]
                reads = [e[1:] for e in store.events if e[0] == "get"]
                assert hints == digests and [r for r in reads if r[1] >= entry.tree_offset] == digests
                if hints:
                    assert store.events.index(("hint", *hints[0])) < store.events.index(("get", *reads[0]))
                    assert reads[0][1] < entry.tree_offset  # the bytes, then the digests
    finally:
        store.close()


# -- correct bytes, old format and new ---------------------------------------------------------

_RANGES = [(0, 1), (0, 4096), (LEAF - 1, 2), (LEAF, LEAF), (3 * LEAF - 7, 2 * LEAF + 14),
           (HASH_BLOCK - 1, 2), (HASH_BLOCK - LEAF, 2 * LEAF), (HASH_BLOCK, 4096), (2 * HASH_BLOCK - 5, 10),
           (HASH_BLOCK - 100, HASH_BLOCK + 200), (SIZE - LEAF, LEAF), (SIZE - 1, 1), (SIZE - 100, 4096),
           (SIZE - 12345, 12345), (1234567, 131072), (SIZE, 10)]


@pytest.mark.parametrize("persist", [True, False])
@pytest.mark.parametrize("fmt", ["tree", "blocks"])
def test_random_reads_at_leaf_and_block_boundaries(store, tmp_path, data, fmt, persist):
    entry = big_entry(store, tmp_path, data)
    entry = entry if fmt == "tree" else old_format(entry, data)
    with new_cache(tmp_path, store, persist) as cache:
        for offset, length in _RANGES + _RANGES[::-1]:  # cold, then from what the first pass kept
            assert cache.read(store, entry, offset, length) == data[offset:offset + length], (offset, length)
        state, parts = ReadState(), []
        for offset in range(0, SIZE, 128 << 10):  # in order, as a sequential reader would
            parts.append(cache.read(store, entry, offset, 128 << 10, state))
        assert b"".join(parts) == data
        cache.drain()
        assert cache.read_all(store, entry) == data
        for offset, length in _RANGES:  # whole blocks are at hand now (with a disk cache)
            assert cache.read(store, entry, offset, length) == data[offset:offset + length], (offset, length)


def test_leaves_and_blocks_share_the_disk_cache_under_their_own_keys(store, tmp_path, data):
    entry = big_entry(store, tmp_path, data)
    with new_cache(tmp_path, store, True) as cache:
        cache.read(store, entry, HASH_BLOCK + 100, 100)
        cache.drain()
    store.gets = 0
    with new_cache(tmp_path, store, True) as cache:  # another process: leaf and digests on disk
        assert cache.read(store, entry, HASH_BLOCK + 50, 200) == data[HASH_BLOCK + 50:HASH_BLOCK + 250]
        assert store.gets == 0 and cache.stats()["fetched"] == 0
        state = ReadState()
        for offset in range(0, SIZE, 1 << 20):
            assert cache.read(store, entry, offset, 1 << 20, state) == data[offset:offset + (1 << 20)]
        cache.drain()
    store.gets = 0
    with new_cache(tmp_path, store, True) as cache:  # random reads of cached blocks fetch nothing
        for offset, length in _RANGES:
            assert cache.read(store, entry, offset, length) == data[offset:offset + length]
        assert store.gets == 0 and cache.stats()["misses"] == 0


# -- corruption ----------------------------------------------------------------------------------


@pytest.mark.parametrize("persist", [True, False])
def test_a_corrupt_byte_fails_only_reads_of_its_leaf(store, tmp_path, data, persist):
    entry = big_entry(store, tmp_path, data)
    bad = HASH_BLOCK + 3 * LEAF + 100  # leaf 67, in block 1
    flip(store, entry, entry.offset + bad)
    with new_cache(tmp_path, store, persist) as cache:
        with pytest.raises(Corrupt, match=r"leaf 67 \(block 1\)"):
            cache.read(store, entry, bad - 50, 4096)
        stats = cache.stats()
        assert stats["corrupt"] == 1 and stats["fetched"] < 4 * LEAF  # the leaf, twice, and digests
        with pytest.raises(Corrupt, match="leaf 67"):
            cache.read(store, entry, bad - 100 - 10, 20)  # across into the bad leaf
        for at in (bad - 100 - 4096, bad - 100 + LEAF, HASH_BLOCK, 2 * HASH_BLOCK):
            assert cache.read(store, entry, at, 4096) == data[at:at + 4096]
        state = ReadState()
        with pytest.raises(Corrupt, match="block 1"):  # in order: whole blocks, checked as such
            for offset in range(0, SIZE, 1 << 20):
                assert cache.read(store, entry, offset, 1 << 20, state) == data[offset:offset + (1 << 20)]
        assert offset == HASH_BLOCK
        with pytest.raises(Corrupt):
            cache.read_all(store, entry)


@pytest.mark.parametrize("persist", [True, False])
@pytest.mark.parametrize("where, message", [(5, "does not match its root"),
                                           (top_size(SIZE) + 64 * 32 + 7, "leaf digests of block 1")])
def test_a_corrupt_hash_tree_serves_nothing(store, tmp_path, data, persist, where, message):
    entry = big_entry(store, tmp_path, data)
    flip(store, entry, entry.tree_offset + where)
    with new_cache(tmp_path, store, persist) as cache:
        with pytest.raises(Corrupt, match=message):
            cache.read(store, entry, HASH_BLOCK + 10, 100)


# -- through a mount ---------------------------------------------------------------------------


def _publish(cli, tmp_path, name: str, files: dict) -> str:
    src = write_tree(tmp_path / f"src-{name}", files)
    vid = cli("create", name, "--root").strip()
    cli("add", vid, str(src))
    cli("publish", vid)
    return vid


def _corrupt(store_url: str, vid: str, needle: bytes) -> None:
    """Flip the first byte of ``needle`` where it sits in the version's chunk, on any store."""
    store = open_store(store_url)
    try:
        [chunk] = [o.key for o in store.list(f"versions/{vid}/chunks/")]
        raw, _ = store.get(chunk)
        at = raw.index(needle)
        store.put(chunk, raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1:])
    finally:
        store.close()


def _cache_stats(mnt: Path) -> dict:
    return json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]


def test_a_corrupted_byte_in_a_big_file_is_caught_by_a_random_read(cli, mounts, tmp_path, data):
    """The issue's test: a byte damaged in the store fails a random read of its leaf with EIO,
    without the read fetching the 4 MiB block around it; the rest of that block still reads."""
    mounts.allow(r"refetching leaves|sha256 mismatch for leaf")
    vid = _publish(cli, tmp_path, "ds", {"big.bin": data})
    bad = HASH_BLOCK + 3 * LEAF + 100
    _corrupt(cli.store, vid, data[bad:bad + 64])
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4096, bad - 100)
        assert exc.value.errno == errno.EIO
        stats = _cache_stats(mnt)
        # The kernel may retry the failed read once: the leaf again, never its block.
        assert 1 <= stats["corrupt"] <= 2 and stats["fetched"] < 1 << 20, stats
        for at in (HASH_BLOCK + 20 * LEAF, 10):
            assert os.pread(fd, 4096, at) == data[at:at + 4096]
        assert _cache_stats(mnt)["fetched"] < 2 << 20
    finally:
        os.close(fd)


def test_a_random_read_hands_the_kernel_the_rest_of_its_leaf(cli, mounts, tmp_path, data):
    """A small read inside a leaf fetches and checks the whole leaf; the checked bytes before
    the read go into the kernel's page cache (the spill), so reading them later is answered by
    the kernel, not by another read request, and with the right bytes."""
    vid = _publish(cli, tmp_path, "ds", {"big.bin": data})
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    at = HASH_BLOCK + 5 * LEAF
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, at + 8192) == data[at + 8192:at + 12288]
        deadline = time.monotonic() + 30
        while (doc := json.loads(os.getxattr(mnt, "user.dsfs.stats"))).get("spill", {}).get("pushed", 0) < 1:
            assert time.monotonic() < deadline, doc
            time.sleep(0.02)
        assert doc["spill"]["pushed_bytes"] >= 8192, doc
        reads = doc["requests"]["read"]
        assert os.pread(fd, 8192, at) == data[at:at + 8192]
        assert json.loads(os.getxattr(mnt, "user.dsfs.stats"))["requests"]["read"] == reads
    finally:
        os.close(fd)
    assert (mnt / "big.bin").read_bytes() == data


def _as_before_trees(store_url: str, cache_dir: Path, vid: str, data: bytes) -> None:
    """Rewrite a version's change-set as a dsfs from before hash trees wrote it ("blocks")."""
    store = open_store(store_url)
    try:
        [key] = [o.key for o in store.list(f"versions/{vid}/changesets/")]
        raw, _ = store.get(key)
        lines = [json.loads(line) for line in gzip.decompress(raw).splitlines()]
        for line in lines:
            if line.pop("tree", None) is not None:
                del line["tree_offset"]
                line["blocks"] = "".join(hashlib.sha256(data[i:i + HASH_BLOCK]).hexdigest()
                                         for i in range(0, len(data), HASH_BLOCK))
        store.put(key, gzip.compress(b"".join(json.dumps(line).encode() + b"\n" for line in lines)))
    finally:
        store.close()
    shutil.rmtree(cache_dir / "index", ignore_errors=True)


def test_change_sets_with_and_without_trees_read_alike(local_cli, local_mounts, tmp_path, cache_dir, data):
    new = _publish(local_cli, tmp_path, "new", {"big.bin": data})
    old = _publish(local_cli, tmp_path, "old", {"big.bin": data})
    _as_before_trees(local_cli.store, cache_dir, old, data)
    (line,) = [e for e in json.loads(local_cli("ls", old, "--json"))]
    for vid in (new, old):
        assert local_cli("verify", "--hash", vid) == ""
        mnt = tmp_path / f"mnt-{vid}"
        local_mounts.mount(vid, mnt)
        index = VersionIndex(str(cache_dir / "index" / f"{vid}.sqlite"), immutable=True)
        node = index.by_path("big.bin")
        index.close()
        assert (node.tree is not None, node.blocks is not None) == (vid == new, vid == old)
        fd = os.open(mnt / "big.bin", os.O_RDONLY)
        try:
            for offset, length in _RANGES:
                assert os.pread(fd, length, offset) == data[offset:offset + length], (vid, offset)
        finally:
            os.close(fd)
        assert (mnt / "big.bin").read_bytes() == data
        local_mounts.umount(mnt)
    assert line["size"] == SIZE


def test_verify_hash_checks_the_hash_tree(local_cli, tmp_path, data):
    vid = _publish(local_cli, tmp_path, "ds", {"big.bin": data})
    store = open_store(local_cli.store)
    try:
        [chunk] = [o.key for o in store.list(f"versions/{vid}/chunks/")]
        raw, _ = store.get(chunk)
    finally:
        store.close()
    builder = TreeBuilder()
    builder.update(data)
    tree = raw.index(builder.finish()[1])
    path = Path(local_cli.store) / chunk
    damaged = bytearray(raw)
    damaged[tree + 40] ^= 0xFF  # a block digest: the file's bytes are intact
    path.write_bytes(bytes(damaged))
    assert local_cli("verify", vid) == ""  # without --hash: chunks are only sized
    out = local_cli.fails("verify", "--hash", vid, code=5)
    assert "1 problem" in out
    code, stdout, _ = local_cli.run("verify", "--hash", vid)
    assert code == 5 and stdout.strip() == "hash tree mismatch: big.bin"


def test_concurrent_random_reads_with_spills_read_right_and_unmount(local_cli, local_mounts, tmp_path, data):
    """Eight threads reading one big file at random while the spill pushes around their reads
    (into pages other reads may hold locked): every byte right, and the mount then unmounts
    (the spill thread stops; a push waiting on a page would keep it mounted)."""
    vid = _publish(local_cli, tmp_path, "ds", {"big.bin": data})
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    bad = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(150):
            length = rng.randint(1, 128 << 10)
            offset = rng.randrange(0, SIZE - length)
            if os.pread(fd, length, offset) != data[offset:offset + length]:
                bad.append((offset, length))

    try:
        threads = [threading.Thread(target=reader, args=(seed,)) for seed in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.close(fd)
    assert not bad
    doc = json.loads(os.getxattr(mnt, "user.dsfs.stats"))
    assert doc["spill"].get("pushed", 0) > 0 and not doc["spill"].get("refused"), doc["spill"]
    local_mounts.umount(mnt)


def test_a_spill_pushes_only_pages_the_kernel_was_not_sent():
    """The spiller's page bookkeeping: pieces are cut to the runs of pages no read answered and
    no earlier spill pushed, and each goes out once, at its offset."""
    from dsfs.mountd.direct import Spiller

    pushed = []
    done = threading.Event()

    def push(ino, data, start):
        pushed.append((ino, start, bytes(data)))
        if len(pushed) == 3:
            done.set()
        return "pushed"

    spiller = Spiller(push)
    try:
        page = 4096
        blob = bytes(range(256)) * (16 * page // 256)  # 16 pages
        spiller.sent(7, len(blob), 4 * page, 2 * page)  # a read answered pages 4-5
        spiller.offer(7, [(0, memoryview(blob)[:8 * page])])  # pages 0-7: 0-3 and 6-7 go
        spiller.offer(7, [(2 * page, memoryview(blob)[2 * page:10 * page])])  # only 8-9 are new
        assert done.wait(10), pushed
        assert [(ino, start, len(data)) for ino, start, data in pushed] == [
            (7, 0, 4 * page), (7, 6 * page, 2 * page), (7, 8 * page, 2 * page)]
        assert all(data == blob[start:start + len(data)] for _, start, data in pushed)
        deadline = time.monotonic() + 10  # (counted once a queued offer's pieces are all out)
        while spiller.stats() != {"pushed": 3, "pushed_bytes": 8 * page}:
            assert time.monotonic() < deadline, spiller.stats()
            time.sleep(0.01)
    finally:
        spiller.close()


def test_the_spill_keeps_a_bounded_record_of_pages_sent(monkeypatch):
    """The record of pages sent takes a byte a page and stays within its bound: the least
    recently read files' records go first, and a file too big for one is spilled into without."""
    from dsfs.mountd import direct

    monkeypatch.setattr(direct, "_SENT_BYTES", 64)  # pages
    pushed = []
    spiller = direct.Spiller(lambda ino, data, start: pushed.append((ino, start, len(data))) or "pushed")
    try:
        page = 4096
        for ino in (1, 2, 3, 4, 5):  # 16 pages each: the fifth pushes the first out
            spiller.sent(ino, 16 * page, 0, page)
        assert list(spiller._sent) == [2, 3, 4, 5] and spiller._sent_bytes == 64
        spiller.sent(6, 17 * page, 0, page)  # more than a quarter of the bound: no record
        assert 6 not in spiller._sent
        blob = memoryview(bytes(2 * page))
        spiller.offer(6, [(0, blob)])  # all of it goes, page 0 included
        spiller.offer(2, [(0, blob)])  # page 0 was sent: only page 1
        deadline = time.monotonic() + 10
        while len(pushed) < 2:
            assert time.monotonic() < deadline, pushed
            time.sleep(0.01)
        assert pushed == [(6, 0, 2 * page), (2, page, page)]
    finally:
        spiller.close()
