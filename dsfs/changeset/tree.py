"""The hash tree of a big stored file: what lets a small read of it be checked on its own.

A stored file larger than ``HASH_BLOCK`` (4 MiB) is hashed at add in leaves of ``LEAF`` (64 KiB)
bytes. The digest of a 4 MiB block is the sha256 of its (at most 64) leaf digests, concatenated
as raw 32-byte values; the root is the sha256 of the block digests, concatenated the same way.
The chunk holds the digests in a stored zip member of their own right after the file's ("the
tree member"): every block digest, then every leaf digest. The manifest entry carries only the
root (``tree``, hex) and where that member's data starts (``tree_offset``), so a change-set line
stays small whatever the file's size. docs/FORMAT.md §7.6 has the layout and why.

Checking a read costs little: the block digests (32 bytes per 4 MiB) are read once per file and
checked against the root, a block's leaf digests (2 KiB) once per block and checked against its
block digest, and then each 64 KiB leaf a read touches against its own digest. A whole 4 MiB
block read in order is checked against its block digest directly, with no leaf list at all.
"""

from __future__ import annotations

import hashlib

from .manifest import HASH_BLOCK

LEAF = 64 << 10
FANOUT = HASH_BLOCK // LEAF  # leaves per block
DIGEST = 32  # bytes of one sha256 digest in the tree member


def leaf_count(size: int) -> int:
    return (size + LEAF - 1) // LEAF


def top_size(size: int) -> int:
    """Bytes of block digests at the start of a file's tree member."""
    return DIGEST * ((size + HASH_BLOCK - 1) // HASH_BLOCK)


def member_size(size: int) -> int:
    """Bytes of a file's tree member: its block digests, then its leaf digests."""
    return top_size(size) + DIGEST * leaf_count(size)


def leaf_span(size: int, block: int) -> tuple[int, int]:
    """(start, length) of block ``block``'s leaf digests within the tree member."""
    first = block * FANOUT
    count = min(FANOUT, leaf_count(size) - first)
    return top_size(size) + DIGEST * first, DIGEST * count


def leaf_digests(data: bytes | memoryview) -> bytes:
    """The leaf digests of ``data``, which starts on a leaf boundary (its last leaf may be short)."""
    view = memoryview(data)
    return b"".join(hashlib.sha256(view[i:i + LEAF]).digest() for i in range(0, len(view), LEAF))


def node_digest(digests: bytes | memoryview) -> bytes:
    """A block's digest from its leaf digests, or the root from the block digests."""
    return hashlib.sha256(digests).digest()


def member_name(sha256: str) -> str:
    """The zip name of a tree member: not a path any dataset file could have in the same chunk
    (the dataset path would have to be named after the sha256 of a file packed beside it)."""
    return f".dsfs-tree/{sha256}"


class TreeBuilder:
    """Hashes a file's bytes, fed in pieces of any size, into its tree member and root."""

    def __init__(self) -> None:
        self._leaves: list[bytes] = []
        self._leaf = hashlib.sha256()
        self._filled = 0

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            take = min(LEAF - self._filled, len(view))
            self._leaf.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == LEAF:
                self._leaves.append(self._leaf.digest())
                self._leaf, self._filled = hashlib.sha256(), 0

    def finish(self) -> tuple[str, bytes]:
        """(root as hex, tree member bytes)."""
        if self._filled:
            self._leaves.append(self._leaf.digest())
            self._leaf, self._filled = hashlib.sha256(), 0
        blocks = [node_digest(b"".join(self._leaves[i:i + FANOUT]))
                  for i in range(0, len(self._leaves), FANOUT)]
        top = b"".join(blocks)
        return node_digest(top).hex(), top + b"".join(self._leaves)
