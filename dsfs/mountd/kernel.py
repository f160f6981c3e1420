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

log = logging.getLogger(__name__)


def bdi_path(mountpoint: str) -> str:
    """The sysfs file of the mount's read-ahead (its anonymous device's bdi)."""
    dev = os.stat(mountpoint).st_dev
    return f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb"


def set_read_ahead(mountpoint: str, size: int) -> int | None:
    """Set the mount's read-ahead to ``size`` bytes (whole KiB; 0 leaves the kernel's). Returns
    the KiB in force after, or None when it could not be read or set (not root, no sysfs).
    Call it once the mount answers: the kernel sets its own value on the daemon's INIT answer,
    so a stat of the mountpoint (which waits for that answer) comes first."""
    try:
        os.stat(mountpoint)
        path = bdi_path(mountpoint)
        if size > 0:
            with open(path, "w") as f:
                f.write(f"{max(4, size // 1024)}\n")
        with open(path) as f:
            return int(f.read())
    except (OSError, ValueError) as exc:
        log.debug("read-ahead of %s left as it is: %s", mountpoint, exc)
        return None
