"""Is a process alive? (A zombie is not: it has exited and only waits to be reaped.) And which
boot of the machine is this (processes and page-cache data do not outlive one)?"""

from __future__ import annotations

import os
from pathlib import Path


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):  # gone between the two checks
        return False
