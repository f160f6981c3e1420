"""Live mounts on this machine: one small JSON record per mountpoint under the state folder.

The daemon writes its record when the mount is ready and removes it on exit; ``dsfs status``
and ``dsfs umount`` read them and check that the pid and the kernel mount are still there.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
from pathlib import Path

from ..procs import pid_alive  # noqa: F401 (re-exported for callers)

FSTYPE = "fuse.dsfs"


@dataclasses.dataclass
class MountRecord:
    mountpoint: str
    ref: str
    version: str
    dataset: str
    state: str
    writable: bool
    pid: int
    started: str
    adapter: str
    log: str
    cache_dir: str
    cache_limit: int = 0  # the daemon's disk-cache bound (its --cache-size or the default)
    warm: dict | None = None  # --warm's progress: state, done and total bytes
    read_ahead_kb: int | None = None  # the kernel's read-ahead on the mount (None: unknown)
    problem: str | None = None  # a writable mount's: a stale lease, or its last commit failed
    note: str | None = None  # said once at the mount (a lease taken over from a dead writer)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def registry_dir(state_dir: str | os.PathLike) -> Path:
    path = Path(state_dir) / "mounts"
    path.mkdir(parents=True, exist_ok=True)
    return path


def record_path(state_dir, mountpoint: str) -> Path:
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:16]
    return registry_dir(state_dir) / f"{digest}.json"


def result_path(state_dir, mountpoint: str) -> Path:
    """Where a writable mount's daemon leaves what became of its changes, for ``dsfs umount``."""
    return record_path(state_dir, mountpoint).with_suffix(".result")


def write_record(state_dir, record: MountRecord) -> None:
    path = record_path(state_dir, record.mountpoint)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record.to_json(), indent=1))
    os.replace(tmp, path)


def remove_record(state_dir, mountpoint: str, pid: int | None = None) -> None:
    path = record_path(state_dir, mountpoint)
    try:
        if pid is not None and json.loads(path.read_text()).get("pid") != pid:
            return  # a newer daemon owns this mountpoint now
        path.unlink()
    except (FileNotFoundError, ValueError):
        pass


def read_record(state_dir, mountpoint: str) -> MountRecord | None:
    try:
        return MountRecord(**json.loads(record_path(state_dir, mountpoint).read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def all_records(state_dir) -> list[MountRecord]:
    records = []
    for path in sorted(registry_dir(state_dir).glob("*.json")):
        try:
            records.append(MountRecord(**json.loads(path.read_text())))
        except (FileNotFoundError, ValueError, TypeError):
            continue
    return records


def mount_fstype(mountpoint: str) -> str | None:
    """The filesystem type mounted exactly at ``mountpoint``, or None."""
    found = mount_info(mountpoint)
    return found[0] if found else None


def mount_info(mountpoint: str) -> tuple[str, str] | None:
    """(filesystem type, "major:minor") of the mount exactly at ``mountpoint`` (the topmost one),
    read from the mount table: no request reaches the filesystem itself."""
    target = os.path.abspath(mountpoint)
    found = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            point = fields[4].encode().decode("unicode_escape")
            if point == target:
                found = fields[sep + 1], fields[2]
    return found


def is_stale(mountpoint: str) -> bool:
    """A FUSE mount whose daemon is gone: statfs fails with 'transport endpoint is not
    connected'. (Not stat: the kernel may answer that from the root's cached attributes.)"""
    try:
        os.statvfs(mountpoint)
    except OSError as exc:
        return exc.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    return False


def control_address(mountpoint: str) -> bytes:
    """The abstract unix socket a mount's daemon answers control requests on (prefetch hints,
    commit, status)."""
    digest = hashlib.sha256(os.path.abspath(mountpoint).encode()).hexdigest()[:24]
    return b"\0dsfs-" + digest.encode()


def log_file(settings, mountpoint: str) -> Path:
    """The daemon log of the mount at ``mountpoint`` (made ready to append to)."""
    logs = settings.state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    name = os.path.abspath(mountpoint).strip("/").replace("/", "-") or "root"
    return logs / f"mount-{name[-80:]}.log"
