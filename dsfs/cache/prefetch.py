"""Order-aware prefetch policy: which files to bring in next, and when to stop. No I/O here.

A ``Prefetcher`` holds one order of files (``Item``: a key, the inode, and a size), either an
explicit hint (``hint``: the order a loader will read in) or the folder order that follows a
cold read (``follow``, extended on demand through a callback). Demand reads are reported with
``saw``; the reader's position is the furthest item of the order it has read. Jobs (``take``)
are the items after that position not yet prepared, no further ahead than ``ahead_files`` items
and ``ahead_bytes`` bytes: the bytes prepared ahead of the reader (page cache or disk cache) stay
bounded, and nothing the reader needs next is pushed out by what it needs later.

- A reader that jumps ahead moves the window with it: items it passed are skipped, not fetched.
- Prepared items may be pushed into the kernel's page cache, after which their reads never
  reach the daemon; every ``mark_every``-th item is prepared but not pushed, so its read still
  reports where the reader is and the window moves on before the pushed items run out.
- ``leave_after`` reads in a row outside the order stop the prefetch (the reader left it); a read
  in the order resumes it. ``idle`` seconds without a read in the order (or a new hint) stop it too.

Threading: every method takes the one lock; ``wait`` blocks a worker until a job may be there.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable

AHEAD_FILES = 512
AHEAD_BYTES = 64 << 20
MARK_EVERY = 16
LEAVE_AFTER = 64
IDLE = 30.0


@dataclasses.dataclass(frozen=True)
class Item:
    key: int
    size: int


@dataclasses.dataclass(frozen=True)
class Job:
    key: int
    size: int
    push: bool  # may go into the page cache (False: a position mark, kept where reads reach us)


class Prefetcher:
    def __init__(self, *, ahead_files: int = AHEAD_FILES, ahead_bytes: int = AHEAD_BYTES,
                 mark_every: int = MARK_EVERY, leave_after: int = LEAVE_AFTER, idle: float = IDLE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ahead_files = max(1, ahead_files)
        self.ahead_bytes = max(1, ahead_bytes)
        self.mark_every = max(1, mark_every)
        self.leave_after = max(1, leave_after)
        self.idle = idle
        self.clock = clock
        self._cond = threading.Condition()
        self._order: list[Item] = []
        self._sums = [0]  # the sizes of the order summed: _sums[i] is that of items before i
        self._pos: dict[int, int] = {}
        self._extend: Callable[[Item], list[Item]] | None = None
        self._hinted = False
        self._cursor = -1  # furthest position read
        self._next = 0  # first position not yet handed out
        self._state: dict[int, str] = {}  # key -> "busy" | "ready"
        self._off = 0  # reads in a row outside the order
        self._active = 0.0
        self._stopped = False
        self.counts = {"ahead": 0, "late": 0, "misses": 0, "off_order": 0, "skipped": 0}

    # -- the order ------------------------------------------------------------------------------

    def hint(self, items: list[Item]) -> None:
        """Replace the order with an explicit one (a loader's next epoch)."""
        with self._cond:
            self._reset(items, None)
            self._hinted = True
            self._cond.notify_all()

    def follow(self, items: list[Item], extend: Callable[[Item], list[Item]] | None = None) -> None:
        """Follow a cold read in folder order: ``items[0]`` was just read; ``extend(last)`` gives
        the items after ``last`` when the window reaches the end."""
        with self._cond:
            self._reset(items, extend)
            self._hinted = False
            if items:  # the first item is the read that started it
                self._cursor = 0
                self._state[items[0].key] = "ready"
            self._cond.notify_all()

    def wants_follow(self) -> bool:
        """Whether a read outside the order may start a folder-order follow (no live hint)."""
        with self._cond:
            return not self._hinted or self._off >= self.leave_after

    def _reset(self, items: list[Item], extend) -> None:
        self._order, self._extend, self._sums = [], extend, [0]
        self._pos, self._state = {}, {}
        self._append(items)
        self._cursor, self._next, self._off = -1, 0, 0
        self._active = self.clock()

    def _append(self, items: list[Item]) -> None:
        for item in items:
            if item.key not in self._pos:
                self._pos[item.key] = len(self._order)
                self._order.append(item)
                self._sums.append(self._sums[-1] + item.size)

    # -- demand reads ---------------------------------------------------------------------------

    def saw(self, key: int) -> str:
        """A demand read of a file from its start. Returns what prefetch had done for it:
        "ahead" (prepared before the read), "late" (being prepared), "miss" (in the order, not
        started) or "off" (not in the order)."""
        with self._cond:
            pos = self._pos.get(key)
            if pos is None:
                self._off += 1
                outcome = "off_order"
            else:
                self._off = 0
                self._active = self.clock()
                state = self._state.get(key)
                outcome = {"ready": "ahead", "busy": "late"}.get(state, "misses")
                if pos > self._cursor:
                    self._cursor = pos
                    self._cond.notify_all()
            self.counts[outcome] += 1
            return {"off_order": "off", "misses": "miss"}.get(outcome, outcome)

    # -- jobs -----------------------------------------------------------------------------------

    def take(self, limit: int = 1) -> list[Job]:
        """Up to ``limit`` jobs, nearest first; none when the window is full, done or stopped."""
        with self._cond:
            return self._take(limit)

    def _take(self, limit: int) -> list[Job]:
        if self._stopped or self._off >= self.leave_after or not self._order:
            return []
        if self.clock() - self._active > self.idle:
            return []
        start = self._cursor + 1
        if self._next < start:
            passed = range(self._next, min(self._cursor, len(self._order)))  # the cursor's was read
            self.counts["skipped"] += sum(1 for i in passed if self._order[i].key not in self._state)
            self._next = start
        # Every item from the cursor to _next was handed out: the scan resumes at _next, and the
        # window is measured from the cursor (``_sums``: the order's sizes summed up to each item).
        jobs: list[Job] = []
        pos = self._next
        while len(jobs) < limit:
            if pos >= len(self._order) and not self._grow():
                break
            files, used = pos - start + 1, self._sums[pos + 1] - self._sums[start]
            if files > self.ahead_files or (used > self.ahead_bytes and files > 1):
                break
            item = self._order[pos]
            if item.key not in self._state:
                self._state[item.key] = "busy"
                jobs.append(Job(item.key, item.size, push=pos % self.mark_every != self.mark_every - 1))
            pos += 1
        self._next = pos
        return jobs

    def _grow(self) -> bool:
        if self._extend is None or not self._order:
            return False
        before = len(self._order)
        self._append(self._extend(self._order[-1]))
        if len(self._order) == before:
            self._extend = None
            return False
        return True

    def done(self, job: Job, ok: bool = True) -> None:
        """A job finished; a failed one is left for the demand read (never retried here)."""
        with self._cond:
            if job.key in self._pos:
                self._state[job.key] = "ready" if ok else "failed"
            self._cond.notify_all()

    def wait(self, limit: int, timeout: float) -> list[Job]:
        """Block until there are jobs (or ``timeout`` passes or ``stop`` is called)."""
        with self._cond:
            jobs = self._take(limit)
            if not jobs and not self._stopped:
                self._cond.wait(timeout)
                jobs = self._take(limit)
            return jobs

    def stop(self) -> None:
        """For good (the mount is going away): no more jobs, waiting workers wake up."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    @property
    def hinted(self) -> bool:
        """Whether the order is an explicit hint (not a folder-order follow)."""
        return self._hinted

    @property
    def stopped(self) -> bool:
        return self._stopped

    def stats(self) -> dict:
        with self._cond:
            return dict(self.counts, order=len(self._order), position=self._cursor,
                        hinted=self._hinted)
