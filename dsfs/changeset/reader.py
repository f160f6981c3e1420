"""Reading a file's bytes back out of a zip chunk, by the location its manifest entry gives.

STORED members are plain byte ranges of the chunk, so any part of them can be fetched alone;
DEFLATED members are fetched whole and inflated once. Short reads and bad inflation are
``Corrupt``: a truncated chunk never turns into silently short data.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from ..errors import Corrupt, NotFound
from ..store.base import ObjectStore
from .manifest import DEFLATED, STORED, Entry


def iter_member(store: ObjectStore, entry: Entry, block: int = 8 << 20) -> Iterator[bytes]:
    """Stream a file entry's content in pieces of at most ``block`` bytes; raises Corrupt on
    truncation, bad inflation or a size other than the manifest's. DEFLATED members inflate
    with bounded output per step, so a highly compressed member cannot balloon in memory."""
    if entry.chunk is None:
        return
    if entry.method == STORED:
        for pos in range(0, entry.size, block):
            yield read_range(store, entry, pos, block)
        return
    if entry.method != DEFLATED:
        raise Corrupt(f"unknown compression method {entry.method} for {entry.path!r}")
    inflater = zlib.decompressobj(-15)
    produced = 0
    for pos in range(0, entry.csize, block):
        want = min(block, entry.csize - pos)
        raw = _get(store, entry, entry.offset + pos, want)
        if len(raw) != want:
            raise Corrupt(f"chunk is truncated: {entry.chunk!r} (member {entry.path!r})")
        while raw:
            try:
                out = inflater.decompress(raw, block)
            except zlib.error as exc:
                raise Corrupt(f"cannot inflate {entry.path!r} from {entry.chunk!r}: {exc}") from None
            raw = inflater.unconsumed_tail
            produced += len(out)
            if produced > entry.size:
                raise Corrupt(f"size mismatch for {entry.path!r} in {entry.chunk!r}: "
                              f"expected {entry.size}, got more")
            if out:
                yield out
    tail = inflater.flush()
    produced += len(tail)
    if produced != entry.size:
        raise Corrupt(f"size mismatch for {entry.path!r} in {entry.chunk!r}: "
                      f"expected {entry.size}, got {produced}")
    if tail:
        yield tail


def read_member(store: ObjectStore, entry: Entry) -> bytes:
    """The whole content of a file entry (checked against its size, not its hash)."""
    return b"".join(iter_member(store, entry, block=max(entry.csize, 1)))


def read_range(store: ObjectStore, entry: Entry, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a STORED member (clipped to the file's size)."""
    if entry.method != STORED:
        raise ValueError("read_range needs a stored member")
    length = max(0, min(length, entry.size - start))
    if length == 0:
        return b""
    data = _get(store, entry, entry.offset + start, length)
    if len(data) != length:
        raise Corrupt(f"chunk is truncated: {entry.chunk!r} (member {entry.path!r})")
    return data


def read_tree(store: ObjectStore, entry: Entry, start: int, length: int) -> bytes:
    """Bytes [start, start+length) of a file's tree member (see tree.py), which the caller
    checks against the entry's root."""
    data = _get(store, entry, entry.tree_offset + start, length)
    if len(data) != length:
        raise Corrupt(f"chunk is truncated: {entry.chunk!r} (hash tree of {entry.path!r})")
    return data


def _get(store: ObjectStore, entry: Entry, start: int, length: int) -> bytes:
    try:
        return store.get_range(entry.chunk, start, length)
    except NotFound:
        raise Corrupt(f"chunk missing from store: {entry.chunk!r} (needed by {entry.path!r})") from None
