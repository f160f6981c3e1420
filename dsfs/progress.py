"""A progress bar on stderr when it is a terminal; silent otherwise."""

from __future__ import annotations

import sys
import threading
import time


class Progress:
    def __init__(self, label: str, total: int, *, unit: str = "B", enabled: bool | None = None) -> None:
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._lock = threading.Lock()
        self._last = 0.0

    def __call__(self, amount: int) -> None:
        with self._lock:
            self.done += amount
            now = time.monotonic()
            if self.enabled and now - self._last > 0.1:
                self._last = now
                self._draw()

    def _draw(self) -> None:
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        bar = "#" * int(frac * 30)
        sys.stderr.write(f"\r{self.label:<12} [{bar:<30}] {frac * 100:5.1f}% {_human(self.done, self.unit)}")
        sys.stderr.flush()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self._draw()
            sys.stderr.write("\n")


def _human(n: int, unit: str) -> str:
    if unit != "B":
        return f"{n} {unit}"
    for suffix in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.0f} {suffix}" if suffix == "B" else f"{n:.1f} {suffix}"
        n /= 1024
    return f"{n:.1f} TiB"


def human_size(n: int) -> str:
    return _human(n, "B")
