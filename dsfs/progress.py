"""Progress bars (tqdm: total, rate, ETA), drawn on a terminal's stderr or in a notebook.

A ``Progress`` is what long operations report to: called with an amount from any thread, used as
a context manager that closes the bar. Disabled (``-q``, neither a terminal nor a notebook,
nothing to measure) it only counts. Its ``callback``, if set, hears ``(label, done, total)`` after
every amount, bar or not (the Python API's ``progress=`` argument).
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable


ProgressCallback = Callable[[str, int, int], None]


class Progress:
    def __init__(self, label: str, total: int, *, unit: str = "B", enabled: bool | None = None,
                 callback: ProgressCallback | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.callback = callback
        notebook = in_notebook()
        self.enabled = bool(total) and ((sys.stderr.isatty() or notebook) if enabled is None else enabled)
        self._lock = threading.Lock()
        self._bar = None
        if self.enabled and notebook:
            from tqdm.auto import tqdm as notebook_bar  # a widget when ipywidgets is there

            self._bar = notebook_bar(total=total, desc=label, unit=unit, unit_scale=True, unit_divisor=1000)
        elif self.enabled:
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
            if self.callback is not None:
                self.callback(self.label, self.done, self.total)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.close()


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython imported by it, its shell a ZMQ one)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return type(shell).__name__ == "ZMQInteractiveShell"


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
