"""POSIX corners of writable draft mounts (those pjdfstest found), one test each, checked with
plain os calls on a real FUSE mount: unlinked open files, folder times, file size limits, times
through open descriptors, over-long names and atime."""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import sqlite3
import time

import pytest

from conftest import write_tree
from dsfs.draft.overlay import MAX_FILE_SIZE
from mounting import wait_dead

PAST_NS = 1_000_000_000_000_000_000  # 2001-09-09


@pytest.fixture
def draft_mount(cli, mounts, tmp_path):
    """A draft child of a published version holding a.txt and d/b.txt, mounted writable;
    returns (mountpoint, draft id, daemon pid)."""
    src = write_tree(tmp_path / "base", {"a.txt": "alpha\n", "d/b.txt": "beta\n"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(src))
    cli("publish", v1)
    vid = cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = mounts.mount(vid, mnt)
    return mnt, vid, record.pid


def _errno(fn, *args) -> int:
    with pytest.raises(OSError) as exc:
        fn(*args)
    return exc.value.errno


def _paths(cli, vid) -> set[str]:
    return {e["path"] for e in json.loads(cli("ls", vid, "-r", "--json"))}


def _staged_files(mounts, vid) -> list[str]:
    return sorted(p.name for p in (mounts.settings.state_dir / "drafts" / vid / "data").iterdir())


def test_unlinked_open_files_keep_working_and_are_not_committed(cli, mounts, draft_mount):
    mnt, vid, _ = draft_mount
    (mnt / "new.txt").write_text("staged\n")
    lower = os.open(mnt / "a.txt", os.O_RDONLY)        # a lower file, never copied up
    staged = os.open(mnt / "new.txt", os.O_RDONLY)     # closed staged bytes
    writing = os.open(mnt / "w.txt", os.O_CREAT | os.O_RDWR, 0o644)  # open for writing
    os.write(writing, b"first ")
    for name in ("a.txt", "new.txt", "w.txt"):
        os.unlink(mnt / name)
        assert _errno(os.stat, mnt / name) == errno.ENOENT
    assert os.fstat(lower).st_nlink == 0 and os.fstat(lower).st_size == 6
    assert os.pread(lower, 100, 0) == b"alpha\n"
    assert os.fstat(staged).st_nlink == 0 and os.pread(staged, 100, 0) == b"staged\n"
    os.write(writing, b"second")
    st = os.fstat(writing)
    assert (st.st_nlink, st.st_size) == (0, 12)
    assert os.pread(writing, 100, 0) == b"first second"
    os.ftruncate(writing, 5)
    assert os.fstat(writing).st_size == 5
    # A new file under a name whose old inode is still open is a different file.
    (mnt / "w.txt").write_text("replacement")
    assert os.pread(writing, 100, 0) == b"first"
    for fd in (lower, staged, writing):
        os.close(fd)
    # Once the kernel forgets them, the staged bytes of the unlinked files are gone.
    deadline = time.monotonic() + 10
    while len(_staged_files(mounts, vid)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(_staged_files(mounts, vid)) == 1  # w.txt's replacement
    mounts.umount(mnt)
    assert _paths(cli, vid) == {"d", "d/b.txt", "w.txt"}


def test_folder_times_change_with_its_entries(draft_mount):
    mnt, _, _ = draft_mount
    (mnt / "other").mkdir()
    (mnt / "d/moving.txt").write_text("m")
    (mnt / "d/gone").mkdir()
    steps = [
        ("create", ["d"], lambda: (mnt / "d/new.txt").write_text("n")),
        ("mkdir", ["d"], lambda: (mnt / "d/sub").mkdir()),
        ("symlink", ["d"], lambda: os.symlink("b.txt", mnt / "d/link")),
        ("unlink", ["d"], lambda: os.unlink(mnt / "d/new.txt")),
        ("rmdir", ["d"], lambda: os.rmdir(mnt / "d/gone")),
        ("rename inside", ["d"], lambda: os.rename(mnt / "d/b.txt", mnt / "d/c.txt")),
        ("rename across", ["d", "other"], lambda: os.rename(mnt / "d/moving.txt", mnt / "other/m.txt")),
        ("rename over", ["d", "other"], lambda: os.rename(mnt / "other/m.txt", mnt / "d/c.txt")),
        ("lower folder", ["."], lambda: (mnt / "top.txt").write_text("t")),
    ]
    for what, folders, step in steps:
        before = {}
        for folder in folders:
            os.utime(mnt / folder, ns=(PAST_NS, PAST_NS))
            before[folder] = os.stat(mnt / folder)
            assert before[folder].st_mtime_ns == PAST_NS
        started = time.time_ns()
        step()
        for folder in folders:
            after = os.stat(mnt / folder)
            assert after.st_mtime_ns >= started, f"{what}: mtime of {folder!r} unchanged"
            assert after.st_ctime_ns > before[folder].st_ctime_ns, f"{what}: ctime of {folder!r} unchanged"


def test_files_past_the_size_limit_are_efbig_and_harm_nothing(cli, mounts, draft_mount):
    mnt, vid, _ = draft_mount
    path = mnt / "big.bin"
    path.write_bytes(b"0123456789")
    # Past dsfs's own limit (any staging filesystem): 8 EiB, and just past 16 TiB.
    for size in (2**63 - 1, MAX_FILE_SIZE + 1):
        assert _errno(os.truncate, path, size) == errno.EFBIG
        assert _errno(os.truncate, mnt / "a.txt", size) == errno.EFBIG  # a lower file too
    fd = os.open(path, os.O_RDWR)
    try:
        assert _errno(os.ftruncate, fd, 2**63 - 1) == errno.EFBIG
        assert _errno(os.pwrite, fd, b"x", 2**62) == errno.EFBIG
        assert os.pread(fd, 100, 0) == b"0123456789"
    finally:
        os.close(fd)
    assert path.read_bytes() == b"0123456789" and (mnt / "a.txt").read_text() == "alpha\n"
    mounts.umount(mnt)
    assert "big.bin" in _paths(cli, vid)


def test_the_staging_filesystems_size_limit_is_efbig(cli, mounts, draft_mount):
    """A limit of the staging area itself (here the daemon's RLIMIT_FSIZE, as a small
    filesystem or a quota would impose) gives EFBIG, and the mount carries on."""
    mnt, vid, pid = draft_mount
    limit = 1 << 20
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    path = mnt / "big.bin"
    with open(path, "wb") as f:
        f.write(b"x" * 1000)
    assert _errno(os.truncate, path, limit + 1) == errno.EFBIG
    fd = os.open(path, os.O_RDWR)
    try:
        assert _errno(os.ftruncate, fd, limit + 1) == errno.EFBIG
        assert _errno(os.pwrite, fd, b"y", limit) == errno.EFBIG
        assert os.pwrite(fd, b"ab", limit - 1) == 1  # cut short at the limit
        os.ftruncate(fd, 2000)
        assert os.pwrite(fd, b"zz", 2000) == 2
    finally:
        os.close(fd)
    assert path.read_bytes() == b"x" * 1000 + b"\0" * 1000 + b"zz"
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    mounts.umount(mnt)
    assert "big.bin" in _paths(cli, vid)


def test_ftruncate_and_write_update_times_at_once(draft_mount):
    mnt, _, _ = draft_mount
    for name in ("a.txt", "new.txt"):  # a lower file and a new one
        path = mnt / name
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            os.utime(fd, ns=(PAST_NS, PAST_NS))
            before = os.fstat(fd)
            started = time.time_ns()
            os.ftruncate(fd, 3)
            st = os.fstat(fd)
            assert st.st_size == 3
            assert st.st_mtime_ns >= started and st.st_ctime_ns > before.st_ctime_ns, name
            os.utime(fd, ns=(PAST_NS, PAST_NS))
            started = time.time_ns()
            os.pwrite(fd, b"x", 0)
            assert os.fstat(fd).st_mtime_ns >= started, name
        finally:
            os.close(fd)
        assert os.stat(path).st_mtime_ns >= started  # the close keeps the time of the last change


def test_names_over_255_bytes_are_enametoolong(draft_mount):
    mnt, _, _ = draft_mount
    for long in ("x" * 256, "é" * 128):  # 256 bytes either way
        path = mnt / "d" / long
        assert _errno(os.stat, path) == errno.ENAMETOOLONG
        assert _errno(os.unlink, path) == errno.ENAMETOOLONG
        assert _errno(os.rmdir, path) == errno.ENAMETOOLONG
        assert _errno(os.rename, path, mnt / "x") == errno.ENAMETOOLONG
        assert _errno(os.rename, mnt / "a.txt", path) == errno.ENAMETOOLONG
        assert _errno(os.chmod, path, 0o600) == errno.ENAMETOOLONG
        assert _errno(os.truncate, path, 0) == errno.ENAMETOOLONG
        assert _errno(os.open, path, os.O_CREAT | os.O_WRONLY) == errno.ENAMETOOLONG
        assert _errno(os.mkdir, path) == errno.ENAMETOOLONG
        assert _errno(os.symlink, "a.txt", path) == errno.ENAMETOOLONG
    longest = mnt / "d" / ("é" * 127 + "x")  # exactly 255 bytes
    longest.write_text("ok")
    assert longest.read_text() == "ok"
    os.unlink(longest)


def test_utimensat_keeps_atime(draft_mount):
    mnt, _, _ = draft_mount
    atime, mtime = PAST_NS + 123, PAST_NS + 456_789
    os.utime(mnt / "a.txt", ns=(atime, mtime))
    st = os.stat(mnt / "a.txt")
    assert (st.st_atime_ns, st.st_mtime_ns) == (atime, mtime)
    assert (mnt / "a.txt").read_text() == "alpha\n"  # reading leaves atime alone
    assert os.stat(mnt / "a.txt").st_atime_ns == atime
    fd = os.open(mnt / "d", os.O_RDONLY)  # futimens on a folder, changing atime only
    try:
        os.utime(fd, ns=(atime, os.fstat(fd).st_mtime_ns))
        assert os.fstat(fd).st_atime_ns == atime
    finally:
        os.close(fd)
    with open(mnt / "a.txt", "a") as f:  # a write moves mtime, not atime
        f.write("more\n")
    st = os.stat(mnt / "a.txt")
    assert st.st_atime_ns == atime and st.st_mtime_ns > mtime


def test_unlinked_files_of_a_killed_daemon_are_dropped_from_an_older_journal(local_cli, local_mounts,
                                                                            tmp_path):
    """The next mount after kill -9 commits the pending staging area without the inodes that
    were unlinked while open, reading a journal written before the ctime/atime columns existed."""
    local_mounts.allow(r"stale mount|recovery")
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    (mnt / "kept.txt").write_text("kept")
    os.utime(mnt / "kept.txt", ns=(PAST_NS, PAST_NS))
    (mnt / "gone.txt").write_text("gone")
    held = os.open(mnt / "gone.txt", os.O_RDWR)
    gone_ino = os.fstat(held).st_ino
    os.unlink(mnt / "gone.txt")
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(record.pid)
    with pytest.raises(OSError):
        os.close(held)
    local_cli.fails("umount", str(mnt), code=10)  # cleans up the dead daemon's mount; changes pending
    stage = local_mounts.settings.state_dir / "drafts" / vid
    with sqlite3.connect(stage / "journal.sqlite") as db:
        for column in ("ctime_ns", "atime_ns"):
            db.execute(f"ALTER TABLE inodes DROP COLUMN {column}")
    assert str(gone_ino) in _staged_files(local_mounts, vid)
    local_mounts.mount(vid, mnt)  # commits what the dead daemon left first
    assert _paths(local_cli, vid) == {"kept.txt"}
    assert os.listdir(mnt) == ["kept.txt"] and os.stat(mnt / "kept.txt").st_mtime_ns == PAST_NS
    local_mounts.umount(mnt)
