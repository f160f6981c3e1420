"""Progress bars on stderr (tqdm: total, rate, ETA), drawn only when stderr is a terminal.

A ``Progress`` is what long operations report to: called with an amount from any thread, used as
a context manager that closes the bar. Disabled (``-q``, not a terminal, nothing to measure) it
only counts.
"""

from __future__ import annotations

import os
import sys
import threading


class Progress:
    def __init__(self, label: str, total: int, *, unit: str = "B", enabled: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.enabled = bool(total) and (sys.stderr.isatty() if enabled is None else enabled)
        self._lock = threading.Lock()
        self._bar = None
        if self.enabled:
            from tqdm import tqdm  # only for a bar: the mount daemon never draws one

            # A terminal that reports no size (a bare pty) gets 80x24, not a hidden bar.
            sized = _has_size()
            # Decimal prefixes: tqdm labels sizes kB/MB/GB, which are powers of 1000.
            self._bar = tqdm(total=total, desc=label, unit=unit, unit_scale=True,
                             unit_divisor=1000, file=sys.stderr,
                             dynamic_ncols=sized, ncols=None if sized else 80,
                             nrows=None if sized else 24, mininterval=0.1, leave=True)

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            if self._bar is not None:
                self._bar.update(amount)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def _has_size() -> bool:
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
    except (OSError, ValueError):
        return False
    return size.columns > 0 and size.lines > 0


def plural(n: int, noun: str) -> str:
    """'1 file', '2 files', '2 entries'."""
    if n == 1:
        return f"{n} {noun}"
    return f"{n} {noun[:-1]}ies" if noun.endswith("y") else f"{n} {noun}s"


def human_size(n: int) -> str:
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    return f"{n:.1f} TiB"
