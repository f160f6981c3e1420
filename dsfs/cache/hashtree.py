"""Checking byte ranges of big stored files against their hash trees (dsfs/changeset/tree.py).

``TreeCheck.check`` takes bytes that start on a 64 KiB leaf boundary and end on one (or at the
end of the file) and raises Corrupt unless every leaf matches. A 4 MiB block the range covers
whole is checked against its block digest, so a sequential read needs only the file's block
digests; a block covered in part is checked leaf by leaf against its leaf digests. Digests come
from the file's tree member in its chunk, each list checked against the level above it (the
block digests against the manifest's root) before it is kept.

Verified digest lists live in a small in-process LRU, and through ``load``/``save`` in the disk
block cache too (keys ``<sha256>:tree:top`` and ``<sha256>:tree:<block>``, which no block key
can equal): a later mount of the same file fetches them again only when they were evicted.

Threading: every method may be called from any thread; two threads missing the same list at
once may both fetch it (it is small), and both keep the same verified bytes.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable

from ..changeset.manifest import HASH_BLOCK, Entry
from ..changeset.reader import read_tree
from ..changeset.tree import DIGEST, LEAF, leaf_digests, leaf_span, node_digest, top_size
from ..errors import Corrupt
from ..store.base import ObjectStore

# A first touch of block b reads the block digests and the leaf digests of blocks 0..b in one
# ranged read when no more than this lies between them (blocks 0..32 of any file; every block of
# a file up to 132 MiB), and keeps them all.
_JOIN_GAP = 64 << 10


def _whole_block(entry: Entry, b: int, start: int, end: int) -> bool:
    """Whether bytes ``[start, end)`` cover block ``b`` of the file whole."""
    return start <= b * HASH_BLOCK and min((b + 1) * HASH_BLOCK, entry.size) <= end


def _top_read(entry: Entry, block: int) -> int:
    """Bytes from the start of a file's tree member that a first touch at ``block`` reads: the
    block digests, and the leaf digests of blocks 0..block with them when they lie near."""
    start, length = leaf_span(entry.size, block)
    return start + length if start - top_size(entry.size) <= _JOIN_GAP else top_size(entry.size)


class TreeCheck:
    """Verified digests of hash trees, and the checks of file bytes against them."""

    def __init__(self, *, load: Callable[[str, int], memoryview | None],
                 save: Callable[[str, bytes], None], count: Callable[[str, int], None],
                 memory_limit: int = 8 << 20) -> None:
        self._load, self._save, self._count = load, save, count
        self._limit = memory_limit
        self._size = 0
        self._lists: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()

    def check(self, store: ObjectStore, entry: Entry, start: int, data: bytes | memoryview) -> None:
        """Raise Corrupt unless ``data``, bytes ``[start, start+len(data))`` of the file, match its
        tree. ``start`` is a multiple of LEAF; the end is one too, or the end of the file."""
        end = start + len(data)
        if start % LEAF or (end % LEAF and end != entry.size) or end > entry.size:
            raise ValueError(f"range not on leaf boundaries: [{start}, {end}) of {entry.size}")
        view = memoryview(data)
        self._count("hashed", len(view))
        for b in range(start // HASH_BLOCK, (end - 1) // HASH_BLOCK + 1):
            block_end = min((b + 1) * HASH_BLOCK, entry.size)
            lo, hi = max(start, b * HASH_BLOCK), min(end, block_end)
            digests = leaf_digests(view[lo - start:hi - start])
            if _whole_block(entry, b, start, end):  # one digest to compare
                if node_digest(digests) != self._top(store, entry, b)[DIGEST * b:DIGEST * (b + 1)]:
                    raise Corrupt(f"sha256 mismatch for block {b} of {entry.path!r} in {entry.chunk!r}")
                continue
            first = DIGEST * ((lo - b * HASH_BLOCK) // LEAF)
            want = self._leaves(store, entry, b)[first:first + len(digests)]
            for i in range(0, len(digests), DIGEST):
                if digests[i:i + DIGEST] != want[i:i + DIGEST]:
                    raise Corrupt(f"sha256 mismatch for leaf {(lo + i // DIGEST * LEAF) // LEAF} "
                                  f"(block {b}) of {entry.path!r} in {entry.chunk!r}")

    def will_check(self, store: ObjectStore, entry: Entry, start: int, end: int) -> None:
        """Tell ``store`` which digests ``check`` of bytes ``[start, end)`` will read, before the
        caller reads those bytes: from a local folder, the kernel then reads the digests (past
        the end of a big file in its chunk) while the caller waits for the bytes, not after.
        Looks only at the lists in memory."""
        first, last = start // HASH_BLOCK, (end - 1) // HASH_BLOCK
        with self._lock:
            held = self._lists.keys()
            top = f"{entry.sha256}:tree:top" in held
            partial = [b for b in sorted({first, last})
                       if not _whole_block(entry, b, start, end) and f"{entry.sha256}:tree:{b}" not in held]
        ranges = []
        if not top:  # as _top reads them, for the first block checked
            ranges.append((0, _top_read(entry, first)))
            if ranges[0][1] > top_size(entry.size):  # the leaf digests of blocks up to it too
                partial = [b for b in partial if b > first]
        ranges.extend(leaf_span(entry.size, b) for b in partial)
        for span, length in ranges:
            store.will_need(entry.chunk, entry.tree_offset + span, length)

    def _top(self, store: ObjectStore, entry: Entry, block: int) -> bytes:
        """The file's block digests, checked against its root."""
        key = f"{entry.sha256}:tree:top"
        top = self._get(key, top_size(entry.size))
        if top is None:
            raw = self._fetch(store, entry, 0, _top_read(entry, block))
            join = len(raw) > top_size(entry.size)
            top = raw[:top_size(entry.size)]
            self._verify_top(entry, top)
            self._keep(key, top)
            for k in range(block + 1 if join else 0):  # the leaf digests read along with it
                k_start, k_length = leaf_span(entry.size, k)
                self._keep_leaves(entry, k, top, raw[k_start:k_start + k_length])
        return top

    def _leaves(self, store: ObjectStore, entry: Entry, block: int) -> bytes:
        """Block ``block``'s leaf digests, checked against its block digest."""
        key = f"{entry.sha256}:tree:{block}"
        start, length = leaf_span(entry.size, block)
        leaves = self._get(key, length)
        if leaves is None:
            top = self._top(store, entry, block)  # may bring the leaves along
            leaves = self._get(key, length)
            if leaves is None:
                leaves = self._fetch(store, entry, start, length)
                self._keep_leaves(entry, block, top, leaves)
        return leaves

    def _verify_top(self, entry: Entry, top: bytes) -> None:
        if node_digest(top).hex() != entry.tree:
            raise Corrupt(f"hash tree of {entry.path!r} in {entry.chunk!r} does not match its root")

    def _keep_leaves(self, entry: Entry, block: int, top: bytes, leaves: bytes) -> None:
        if node_digest(leaves) != top[DIGEST * block:DIGEST * (block + 1)]:
            raise Corrupt(f"leaf digests of block {block} of {entry.path!r} in {entry.chunk!r} "
                          f"do not match its block digest")
        self._keep(f"{entry.sha256}:tree:{block}", leaves)

    def _fetch(self, store: ObjectStore, entry: Entry, start: int, length: int) -> bytes:
        data = read_tree(store, entry, start, length)
        self._count("fetched", len(data))
        self._count("tree_fetched", len(data))
        return data

    def _get(self, key: str, length: int) -> bytes | None:
        with self._lock:
            value = self._lists.get(key)
            if value is not None:
                self._lists.move_to_end(key)
                return value
        stored = self._load(key, length)
        if stored is None:
            return None
        value = bytes(stored)
        self._remember(key, value)
        return value

    def _keep(self, key: str, value: bytes) -> None:
        self._remember(key, value)
        self._save(key, value)

    def _remember(self, key: str, value: bytes) -> None:
        with self._lock:
            old = self._lists.pop(key, None)
            self._size += len(value) - (len(old) if old is not None else 0)
            self._lists[key] = value
            while self._size > self._limit and len(self._lists) > 1:
                _, dropped = self._lists.popitem(last=False)
                self._size -= len(dropped)

    def clear(self) -> None:
        with self._lock:
            self._lists.clear()
            self._size = 0
