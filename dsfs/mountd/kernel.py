"""Kernel settings of a mount that the FUSE protocol does not negotiate.

The kernel reads a FUSE file ahead in windows no larger than the mount's backing-device
read-ahead (``/sys/class/bdi/<major>:<minor>/read_ahead_kb``, 128 KiB by default), so a
sequential reader costs one daemon request per 128 KiB however large its reads. libfuse already
lets a request carry up to 1 MiB (max_pages 256), and the bdi value can be raised once the mount
exists: sequential reads then arrive in requests of up to 1 MiB, eight times fewer. Only root
(CAP_SYS_ADMIN) may write it; for anyone else the kernel's default stays.
"""

from __future__ import annotations

import logging
import os
import subprocess

log = logging.getLogger(__name__)


def bdi_path(mountpoint: str, *, timeout: float | None = None) -> str:
    """The sysfs file of the mount's read-ahead (its anonymous device's bdi). The daemon asks
    through a ``stat`` child process: a stat of its own mount from inside it could outlive the
    daemon's death (the process could not exit, and the mount would hang), while a child, which
    does not hold ``/dev/fuse``, just gets an error once the mount is torn down."""
    if timeout is None:
        dev = os.stat(mountpoint).st_dev
    else:
        out = subprocess.run(["stat", "-c", "%d", "--", mountpoint], capture_output=True, text=True,
                             timeout=timeout, check=True).stdout
        dev = int(out)
    return f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"


def set_read_ahead(mountpoint: str, size: int, timeout: float = 60) -> int | None:
    """Set the mount's read-ahead to ``size`` bytes (whole KiB; 0 leaves the kernel's). Returns
    the KiB in force after, or None when it could not be read or set (not root, no sysfs, no
    answer within ``timeout``). Call it once the daemon serves: the kernel sets its own value on
    the daemon's INIT answer, and the stat that finds the device waits for that answer."""
    try:
        path = bdi_path(mountpoint, timeout=timeout)
        if size > 0:
            with open(path, "w") as f:
                f.write(f"{max(4, size // 1024)}\n")
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, exc)
        return None
