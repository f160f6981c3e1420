"""Helpers for tests with real FUSE mounts: mount through the real CLI path (a detached daemon),
always unmount and kill in cleanup; the log check that fails a test whose daemon logged something
unexpected lives here too (conftest applies it to every test's cache folder)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

from dsfs.config import load_settings
from dsfs.mountd import control, registry
from dsfs.mountd.options import MountOptions

UNEXPECTED = re.compile(r"Traceback|\b(WARNING|ERROR|CRITICAL)\b")
# Log lines a test expects from its daemons, by cache folder (the conftest's ``cache_dir``
# fixture checks every daemon log under it when the test ends).
ALLOWED: dict[str, list[str]] = {}


def allow(cache_dir, pattern: str) -> None:
    ALLOWED.setdefault(str(cache_dir), []).append(pattern)


def unexpected_log_lines(cache_dir) -> list[str]:
    allowed = ALLOWED.pop(str(cache_dir), [])
    logs = Path(cache_dir) / "state" / "logs"
    bad = []
    for path in sorted(logs.glob("*.log")) if logs.exists() else []:
        for line in path.read_text(errors="replace").splitlines():
            if UNEXPECTED.search(line) and not any(re.search(p, line) for p in allowed):
                bad.append(line)
    return bad


def wait_dead(pid: int, timeout: float = 30) -> None:
    """Wait until ``pid`` has exited (a killed daemon takes a moment), instead of sleeping."""
    deadline = time.monotonic() + timeout
    while registry.pid_alive(pid):
        assert time.monotonic() < deadline, f"process {pid} still alive after {timeout} s"
        time.sleep(0.01)


class Mounts:
    def __init__(self, store: str, cache_dir: Path, env: dict | None = None) -> None:
        self.store, self.cache_dir = store, cache_dir
        self.settings = load_settings(store=store, cache_dir=str(cache_dir))
        self.live: list[tuple[str, int]] = []

    def mount(self, ref: str, mountpoint: Path, **options) -> registry.MountRecord:
        """``options``: those of ``MountOptions``."""
        mountpoint.mkdir(parents=True, exist_ok=True)
        record = control.spawn(self.settings, ref, str(mountpoint), MountOptions(**options), timeout=120)
        self.live.append((record.mountpoint, record.pid))
        return record

    def umount(self, mountpoint: Path) -> str:
        return control.unmount(self.settings, str(mountpoint))

    def allow(self, pattern: str) -> None:
        """A log line matching ``pattern`` is expected by this test."""
        allow(self.cache_dir, pattern)

    def cleanup(self) -> None:
        for mountpoint, pid in self.live:
            if registry.mount_fstype(mountpoint) is not None:
                subprocess.run(["fusermount3", "-u", "-z", mountpoint], capture_output=True)
            if registry.pid_alive(pid):
                os.kill(pid, signal.SIGKILL)
                wait_dead(pid)
