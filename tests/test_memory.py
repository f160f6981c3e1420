"""Bounds on what the mount daemon keeps in memory, by count: each structure that grows with
the version or with what was read stays within its stated size (bench/README.md, "daemon RSS")."""

from __future__ import annotations

from dsfs.cache.tiers import MemoryTier
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
