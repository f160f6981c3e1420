"""The read-ahead policy of one reader of one file: when reads stream, which blocks to fetch
ahead of them.

``ReadState`` belongs to one open file handle (or, without handles, one inode's current pass).
``advance`` is told of each read and returns the blocks to queue: none while access looks
random; once reads stream, a window that starts at one block and doubles with each new block
the reader enters, up to ``max_window``. A file with a hash tree waits for two reads in a row that
each moved on before it opens the window: a random read that lands near the last one, or a read
the kernel retries after an error (it begins where the failed one began), stays leaf-sized; so
does a run shorter than ``STREAM_BYTES``: the kernel splits one random pread into a request per
stretch of pages it does not hold, and those look like reads in order. A
stream's reads overtake each other (the kernel has several requests of a stream in flight, and
the daemon's threads answer them in any order): a read that lands among the blocks an open window
already covers keeps the window open (and grows it when it enters a new block), where a read
anywhere else closes it. Such a read never
opens a window, so reads that merely land near each other (a columnar reader's column chunks)
fetch no more than they ask for. The block cache carries the plan out; this module only decides.
"""

from __future__ import annotations

import hashlib
import threading

STREAM_BYTES = 1 << 20  # the span a run in order must cover before a hash-tree file reads ahead


class ReadState:
    """Per open file handle: where the last read ended (sequential detection and read-ahead)
    and a running sha256 of the bytes read in order from the start."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.end: int | None = None  # offset just past the previous read
        self.last_block = -1  # last block the previous read touched
        self.window = 0  # blocks to read ahead; 0 while access looks random
        self.sequential = False  # whether the last read began where the one before ended
        self.start = -1  # offset of the previous read
        self.streak = 0  # reads in a row that were sequential and began past the one before
        self.run_start = 0  # where the current run of sequential reads began
        self.ahead = -1  # highest block already queued for read-ahead
        self.hasher = hashlib.sha256()  # None once reads left the in-order path
        self.hashed = 0


def advance(state: ReadState, offset: int, end: int, first: int, last: int, *, nblocks: int, slack: int,
            max_window: int, wait_for_stream: bool) -> range:
    """Record a read of ``[offset, end)`` over blocks ``first..last``; the blocks to read ahead
    now (an empty range while access looks random). ``slack``: how far from where the previous
    read ended a read may begin and still count as sequential. ``wait_for_stream``: the file has
    a hash tree (see above)."""
    with state.lock:
        sequential = state.end is not None and abs(offset - state.end) <= slack
        if not sequential and state.window and state.last_block - 1 <= first <= state.ahead:
            # One of the stream's reads, overtaken by another: the stream goes on from the
            # furthest read so far.
            state.sequential = True
            if last > state.last_block:
                state.window = min(state.window * 2, max_window)
            end, last = max(end, state.end or 0), max(last, state.last_block)
            state.end, state.last_block = end, last
            return _ahead(state, last, nblocks)
        state.sequential = sequential
        state.streak = state.streak + 1 if sequential and offset > state.start else 0
        state.start = offset
        if not sequential:
            state.window, state.ahead, state.run_start = 0, -1, offset
        elif state.window == 0 and (not wait_for_stream
                                    or (state.streak >= 2 and end - state.run_start >= STREAM_BYTES)):
            state.window = 1
        elif last > state.last_block:
            state.window = min(state.window * 2, max_window)
        state.end, state.last_block = end, last
        if not max_window:
            return range(0)
        return _ahead(state, last, nblocks)


def _ahead(state: ReadState, last: int, nblocks: int) -> range:
    """The blocks past ``last`` the window covers that are not queued yet (under the lock)."""
    if not state.window:
        return range(0)
    target = min(last + state.window, nblocks - 1)
    todo = range(max(state.ahead + 1, last + 1), target + 1)
    state.ahead = max(state.ahead, target)
    return todo
