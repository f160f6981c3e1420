"""Bounds on what the mount daemon keeps in memory, by count: each structure that grows with
the version or with what was read stays within its stated size (bench/README.md, "daemon RSS")."""

from __future__ import annotations

import threading

from dsfs.cache.tiers import SQLITE_CACHE_PAGES, DiskTier, MemoryTier
from dsfs.mountd.direct import LookupCounts


def test_lookup_counts_take_4_bytes_an_inode_and_free_forgotten_pages():
    counts = LookupCounts()
    inodes = range(1, 200_001)
    for ino in inodes:
        counts.add(ino, 1)
    counts.add(7, 2)
    assert len(counts) == 200_000 and counts[7] == 3 and counts[200_001] == 0
    pages = -(-200_001 // LookupCounts.PAGE)
    assert counts.nbytes == pages * LookupCounts.PAGE * 4 <= 4 * 200_000 + 4 * LookupCounts.PAGE
    for ino in inodes:
        counts.add(ino, -1)
    assert counts[7] == 2 and len(counts) == 1 and counts.nbytes == LookupCounts.PAGE * 4
    counts.add(7, -5)  # the kernel never forgets more than it looked up; a count stops at 0
    assert counts[7] == 0 and len(counts) == 0 and counts.nbytes == 0
    counts.add(9, -1)  # forgetting an inode never learnt makes no page
    counts.add(9, LookupCounts.MAX + 5)
    assert counts[9] == LookupCounts.MAX and counts.nbytes == LookupCounts.PAGE * 4


def test_the_memory_tier_keeps_alive_only_the_bytes_it_counts():
    # A leaf cut from a run of leaves (or a member from a neighbour GET) is a slice of a larger
    # buffer: kept as it is, the tier would count 64 KiB and hold the whole run.
    tier = MemoryTier(limit=1 << 20)
    run = bytes(range(256)) * 1024  # 256 KiB
    tier.put("leaf", memoryview(run)[65536:131072])
    whole = memoryview(bytes(4096))
    tier.put("block", whole)
    leaf = tier.get("leaf")
    assert bytes(leaf) == run[65536:131072] and memoryview(leaf.obj).nbytes == 65536
    assert tier.get("block").obj is whole.obj  # a value over its own buffer is not copied
    assert tier.size == 65536 + 4096


def test_the_memory_tier_keeps_only_a_few_blocks_their_readers_are_done_with():
    # A stream's finished blocks are demoted: past done_limit bytes of them the oldest go at once,
    # however much room the tier has; a late request's get leaves a done block done (not recent);
    # putting it again makes it an ordinary block.
    tier = MemoryTier(limit=1 << 20, done_limit=2 * 4096)
    for i in range(6):
        tier.put(f"b{i}", memoryview(bytes(4096)))
    for i in range(4):
        tier.demote(f"b{i}")
    assert list(tier.items) == ["b3", "b2", "b4", "b5"] and tier.size == 4 * 4096
    assert list(tier.done) == ["b2", "b3"] and tier.done_size == 2 * 4096
    assert tier.get("b2") is not None and list(tier.done) == ["b2", "b3"] and next(iter(tier.items)) == "b3"
    tier.demote("b4")
    assert "b2" not in tier.items and list(tier.done) == ["b3", "b4"]
    tier.put("b3", memoryview(bytes(4096)))
    assert list(tier.done) == ["b4"] and tier.done_size == 4096 and list(tier.items)[-1] == "b3"
    tier.drop("b4")
    assert tier.done_size == 0 and tier.size == 2 * 4096
    tier.clear()
    assert tier.size == tier.done_size == 0 and not tier.done


def test_each_disk_cache_connection_has_no_memory_map_and_a_small_page_cache(tmp_path):
    # diskcache opens a connection per thread: each one's map of the database would count in the
    # daemon's RSS on its own, so none maps it and each caches at most SQLITE_CACHE_PAGES pages.
    tier = DiskTier(tmp_path / "blocks", 1 << 30, lambda used: 1 << 30)
    tier.put_many([("k", b"x" * 100)])

    def pragmas() -> tuple:
        con = tier._db._con
        return con.execute("PRAGMA mmap_size").fetchone()[0], con.execute("PRAGMA cache_size").fetchone()[0]

    seen = []
    worker = threading.Thread(target=lambda: seen.append((bytes(tier.get("k", 100)), pragmas())))
    worker.start()
    worker.join()
    assert seen == [(b"x" * 100, (0, SQLITE_CACHE_PAGES))] and pragmas() == (0, SQLITE_CACHE_PAGES)
    tier.close()


def test_a_big_block_is_written_to_its_file_from_the_payload_in_place(tmp_path):
    tier = DiskTier(tmp_path / "blocks", 1 << 30, lambda used: 1 << 30)
    payload = bytes(range(256)) * 1024  # 256 KiB: a file of its own
    tier.put_many([("big", memoryview(payload)[:200_000])])
    assert bytes(tier.get("big", 200_000)) == payload[:200_000]
    assert tier.get("big", 199_999) is None  # the envelope's length is checked
    tier.close()
