"""Writable draft mounts: POSIX operations, real tools, commit on unmount, dedup, crash safety,
leases, and store failures during commit."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import Cli, tree_digest, write_tree
from mounting import wait_dead


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


BASE = {
    "a.txt": "alpha\n",
    "d/b.bin": _rand(100_000, 1),
    "d/e/c.txt": "deep\n",
    "link": "-> a.txt",
    "empty/": "",
}


@pytest.fixture
def draft(cli, tmp_path):
    """A draft child of a published version holding BASE; returns (draft id, expected tree dir)."""
    src = write_tree(tmp_path / "base", BASE)
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(src))
    cli("publish", v1)
    return cli("create", "ds").strip(), src


def _digest_without_modes(root: Path) -> dict:
    return {k: v[:2] for k, v in tree_digest(root).items()}


def test_posix_operations_then_commit(cli, mounts, draft, tmp_path):
    vid, base = draft
    mnt = tmp_path / "mnt"
    record = mounts.mount(vid, mnt)
    assert record.writable and record.adapter == "writable"
    assert _digest_without_modes(mnt) == _digest_without_modes(base)
    # create, write at offsets (sparse too), append, truncate
    with open(mnt / "new.bin", "wb") as f:
        f.write(b"hello")
        f.seek(10_000)
        f.write(b"end")
    data = (mnt / "new.bin").read_bytes()
    assert len(data) == 10_003 and data[5:10_000] == b"\0" * 9995
    assert (mnt / "a.txt").read_text() == "alpha\n"  # pages of a base file are kept...
    with open(mnt / "a.txt", "a") as f:
        f.write("beta\n")
    assert (mnt / "a.txt").read_text() == "alpha\nbeta\n"  # ...until it changes here
    with open(mnt / "d/b.bin", "r+b") as f:  # copy-up of a lower file, then a write inside it
        f.seek(50_000)
        f.write(b"XYZ")
        f.flush()
        f.seek(49_999)
        assert f.read(5) == BASE["d/b.bin"][49_999:50_000] + b"XYZ" + BASE["d/b.bin"][50_003:50_004]
    assert (mnt / "d/e/c.txt").read_text() == "deep\n"
    os.truncate(mnt / "d/e/c.txt", 2)
    assert (mnt / "d/e/c.txt").read_text() == "de"
    # O_EXCL
    with pytest.raises(FileExistsError):
        os.open(mnt / "a.txt", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    # mkdir, rmdir (empty and non-empty), unlink
    os.makedirs(mnt / "x/y/z")
    with pytest.raises(OSError) as exc:
        os.rmdir(mnt / "d")
    assert exc.value.errno == errno.ENOTEMPTY
    os.rmdir(mnt / "empty")
    os.unlink(mnt / "link")
    # rename: file, folder (O(1)), over an existing target, NOREPLACE via link-less check
    os.rename(mnt / "d/e", mnt / "x/moved")
    assert (mnt / "x/moved/c.txt").read_text() == "de"
    (mnt / "tmp.txt").write_text("replacement")
    os.rename(mnt / "tmp.txt", mnt / "a.txt")
    assert (mnt / "a.txt").read_text() == "replacement"
    # symlink, readlink, chmod, utimens, fsync
    os.symlink("x/moved/c.txt", mnt / "l2")
    assert os.readlink(mnt / "l2") == "x/moved/c.txt" and (mnt / "l2").read_text() == "de"
    os.chmod(mnt / "new.bin", 0o600)
    os.utime(mnt / "new.bin", ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    assert os.stat(mnt / "new.bin").st_mtime_ns == 1_600_000_000_000_000_000
    fd = os.open(mnt / "new.bin", os.O_RDWR)
    os.fsync(fd)
    os.close(fd)
    # refused with a clear errno
    with pytest.raises(OSError) as exc:
        os.link(mnt / "a.txt", mnt / "hard")
    assert exc.value.errno == errno.EPERM
    with pytest.raises(OSError) as exc:
        os.mkfifo(mnt / "fifo")
    assert exc.value.errno == errno.EPERM
    assert os.statvfs(mnt).f_bavail > 0
    # readdir merges lower and upper, in name order
    assert sorted(os.listdir(mnt)) == sorted(["a.txt", "d", "new.bin", "x", "l2"])
    expected = tree_digest(mnt)
    note = mounts.umount(mnt)
    assert "committed" in note
    got = tmp_path / "got"
    cli("get", vid, str(got))
    assert tree_digest(got) == expected
    assert os.stat(got / "new.bin").st_mode & 0o777 == 0o600
    # The lower version is untouched.
    assert (mnt.exists() and not os.path.ismount(mnt))


def test_commit_while_mounted_and_publish_refused(cli, mounts, draft, tmp_path):
    vid, _ = draft
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    (mnt / "n1.txt").write_text("one")
    out = json.loads(cli("commit", str(mnt), "--json"))
    assert (out["added"], out["modified"], out["removed"]) == (1, 0, 0)
    again = json.loads(cli("commit", str(mnt), "--json"))  # nothing new: idempotent
    assert (again["added"], again["modified"], again["removed"]) == (0, 0, 0)
    assert "mounted writable by host" in cli.fails("publish", vid, code=4)
    write_tree(tmp_path / "more", {"m.txt": "m"})
    for argv in (("add", vid, str(tmp_path / "more")), ("remove", vid, "n1.txt"),
                 ("sync", vid, str(tmp_path / "more"))):
        assert "mounted writable by host" in cli.fails(*argv, code=4)  # one writer per draft
    (mnt / "n2.txt").write_text("two")
    note = mounts.umount(mnt)
    assert "1 file added" in note
    assert {e["path"] for e in json.loads(cli("ls", vid, "--json"))} >= {"n1.txt", "n2.txt"}
    cli("publish", vid)


def test_umount_publish_and_discard(cli, mounts, draft, tmp_path):
    vid, _ = draft
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    (mnt / "gone.txt").write_text("x")
    assert "refusing to discard" in cli.fails("umount", "--discard", str(mnt), code=2)
    cli("umount", "--discard", "--yes", str(mnt))
    assert "gone.txt" not in {e["path"] for e in json.loads(cli("ls", vid, "--json"))}
    mounts.mount(vid, mnt)
    (mnt / "kept.txt").write_text("y")
    cli("umount", "--publish", str(mnt))
    shown = json.loads(cli("show", vid, "--json"))
    assert shown["state"] == "published"
    assert "kept.txt" in {e["path"] for e in json.loads(cli("ls", vid, "--json"))}


def test_dedup_rename_of_a_large_lower_file_uploads_nothing(cli, mounts, tmp_path):
    big = tmp_path / "src" / "big.bin"
    big.parent.mkdir()
    with open(big, "wb") as f:
        for i in range(100):
            f.write(_rand(1 << 20, i))
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(big.parent))
    cli("publish", v1)
    vid = cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    os.rename(mnt / "big.bin", mnt / "renamed.bin")
    summary = json.loads(cli("commit", str(mnt), "--json"))
    assert summary["bytes_uploaded"] == 0 and summary["bytes_dedup"] == 100 << 20
    # Rewriting a file with the same content uploads nothing: only its new mtime is recorded.
    (mnt / "small.txt").write_text("same")
    cli("commit", str(mnt))
    (mnt / "small.txt").write_text("same")
    summary = json.loads(cli("commit", str(mnt), "--json"))
    assert (summary["added"], summary["modified"], summary["removed"]) == (0, 1, 0)
    assert summary["bytes_uploaded"] == 0
    assert json.loads(cli("commit", str(mnt), "--json"))["modified"] == 0
    mounts.umount(mnt)
    listing = {e["path"]: e for e in json.loads(cli("ls", vid, "--json"))}
    assert "big.bin" not in listing and listing["renamed.bin"]["size"] == 100 << 20


def _tool(cmd, cwd):
    subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, env={**os.environ, "HOME": str(cwd)})


def test_real_tools_in_a_draft_mount(cli, mounts, draft, tmp_path):
    vid, _ = draft
    src = write_tree(tmp_path / "tools-src", {f"t/{i}/f{j}.txt": f"{i}-{j}\n" * (i + j + 1)
                                              for i in range(5) for j in range(20)})
    (src / "t/link").symlink_to("0/f0.txt")
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    _tool(["cp", "-r", str(src / "t"), str(mnt / "cp")], tmp_path)
    _tool(["rsync", "-a", str(src / "t") + "/", str(mnt / "rs")], tmp_path)
    _tool(["tar", "-cf", str(tmp_path / "t.tar"), "-C", str(src), "t"], tmp_path)
    (mnt / "tx").mkdir()
    _tool(["tar", "-xf", str(tmp_path / "t.tar"), "-C", str(mnt / "tx")], tmp_path)
    # An editor-style save: write a temp file, fsync, rename over the original.
    tmp = mnt / ".a.txt.swp"
    with open(tmp, "w") as f:
        f.write("edited\n")
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, mnt / "a.txt")
    # git
    repo = mnt / "repo"
    repo.mkdir()
    (repo / "file.txt").write_text("tracked\n")
    _tool(["git", "init", "-q"], repo)
    _tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "."], repo)
    _tool(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "first"], repo)
    # sqlite3 creating a database
    db = sqlite3.connect(mnt / "db.sqlite")
    db.execute("CREATE TABLE t(x)")
    db.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    db.commit()
    db.close()
    # python appending to a CSV
    subprocess.run([sys.executable, "-c", f"open({str(mnt / 'data.csv')!r}, 'a').write('1,2\\n')"], check=True)
    subprocess.run([sys.executable, "-c", f"open({str(mnt / 'data.csv')!r}, 'a').write('3,4\\n')"], check=True)
    expected = tree_digest(mnt)
    assert tree_digest(mnt / "cp") == tree_digest(src / "t")
    assert tree_digest(mnt / "rs") == tree_digest(src / "t")
    assert tree_digest(mnt / "tx/t") == tree_digest(src / "t")
    _tool(["git", "fsck", "--no-progress"], repo)
    mounts.umount(mnt)
    got = tmp_path / "got"
    cli("get", vid, str(got))
    assert tree_digest(got) == expected
    assert (got / "data.csv").read_text() == "1,2\n3,4\n"
    assert sqlite3.connect(got / "db.sqlite").execute("SELECT count(*) FROM t").fetchone() == (1000,)
    _tool(["git", "log", "--oneline"], got / "repo")


def test_kill_minus_nine_mid_burst(local_cli, local_mounts, tmp_path):
    local_mounts.allow(r"stale mount|recovery")
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    closed = {}
    for i in range(200):
        data = _rand(5000 + i, i)
        (mnt / f"f{i:03d}.bin").write_bytes(data)
        closed[f"f{i:03d}.bin"] = data
    partial = open(mnt / "open-at-kill.bin", "wb")
    partial.write(_rand(300_000, 999))
    partial.flush()
    os.kill(record.pid, signal.SIGKILL)
    with pytest.raises(OSError):
        partial.close()
    wait_dead(record.pid)
    err = local_cli.fails("umount", str(mnt), code=10)  # cleans up the dead daemon's mount
    assert f"the daemon died before recording the changes; they are kept pending: run 'dsfs commit --pending {vid}'" in err
    status = json.loads(local_cli("status", "--json"))
    assert [s["health"] for s in status] == ["pending"]
    local_mounts.mount(vid, mnt)
    names = set(os.listdir(mnt))
    assert set(closed) <= names
    for name, data in closed.items():
        assert (mnt / name).read_bytes() == data
    if "open-at-kill.bin" in names:  # either absent or complete
        assert (mnt / "open-at-kill.bin").read_bytes() == _rand(300_000, 999)
    local_mounts.umount(mnt)
    listing = {e["path"] for e in json.loads(local_cli("ls", vid, "--json"))}
    assert set(closed) <= listing
    assert json.loads(local_cli("status", "--json")) == []


def test_lease_refuses_a_second_writer(cli, mounts, draft, tmp_path):
    mounts.allow(r"mount failed: draft .* (already mounted writable|has a lease)|taking over")
    vid, _ = draft
    m1, m2, m3 = tmp_path / "m1", tmp_path / "m2", tmp_path / "m3"
    mounts.mount(vid, m1)
    m2.mkdir()
    err = cli.fails("mount", vid, str(m2), code=4)
    assert "already mounted writable by host" in err and "pid" in err
    record = mounts.mount(vid, m3, read_only=True)
    assert not record.writable
    (m1 / "x.txt").write_text("x")
    mounts.umount(m1)


def test_the_lease_of_a_dead_writer_on_this_host_is_taken_over(local_cli, local_mounts, tmp_path):
    """A writer that died without `dsfs umount` cleaning up leaves its lease: a process of this
    boot of this host is known to be gone, so the next mount takes its lease over (and says so)."""
    local_mounts.allow(r"taking over the dead lease")
    vid = local_cli("create", "ds").strip()
    mnt, other = tmp_path / "mnt", tmp_path / "other"
    record = local_mounts.mount(vid, mnt)
    (mnt / "kept.txt").write_text("kept")
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(record.pid)
    taken = local_mounts.mount(vid, other)
    assert "took over the lease of the draft from a writer that died" in taken.note
    assert f"pid {record.pid}" in taken.note
    assert (other / "kept.txt").read_text() == "kept"
    local_mounts.umount(other)
    assert "kept.txt" in {e["path"] for e in json.loads(local_cli("ls", vid, "--json"))}
    local_cli("umount", str(mnt))  # the stale mount of the dead daemon


@pytest.mark.parametrize("holder", [{"host": "elsewhere", "pid": 1},
                                    {"host": socket.gethostname(), "boot": "an-earlier-boot", "pid": 999999}],
                         ids=["other-host", "earlier-boot"])
def test_expired_lease_needs_break_lease(local_cli, local_mounts, tmp_path, holder):
    local_mounts.allow(r"mount failed: draft .* has a lease|taking over the expired lease")
    vid = local_cli("create", "ds").strip()
    lease = Path(local_cli.store) / "leases" / f"{vid}.json"
    lease.parent.mkdir(parents=True)
    lease.write_text(json.dumps(holder | {"since": "2026-01-01T00:00:00Z", "token": "t",
                                          "expires": time.time() - 5}))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    err = local_cli.fails("mount", vid, str(mnt), code=4)
    assert repr(holder["host"]) in err and "expired; use --break-lease" in err
    local_mounts.mount(vid, mnt, break_lease=True)
    local_mounts.umount(mnt)
    assert not lease.exists()


@contextlib.contextmanager
def _s3_draft_mount(moto_server, monkeypatch, tmp_path, cache_dir, *, config: str, allow: str,
                    endpoint: str | None = None):
    """A new draft in a bucket of the moto server (reached through ``endpoint`` once made, if
    given), ``config`` as the config file, mounted with precious.txt written into it; yields
    (cli, vid, mounts, mountpoint) and cleans the mount up."""
    from mounting import Mounts

    moto_server.apply_env(monkeypatch)
    path = tmp_path / "dsfs.yaml"
    path.write_text(config)
    monkeypatch.setenv("DSFS_CONFIG", str(path))
    cli = Cli(moto_server.new_bucket(), cache_dir)
    vid = cli("create", "ds").strip()
    if endpoint is not None:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    mounts = Mounts(cli.store, cache_dir)
    mounts.allow(allow)
    mnt = tmp_path / "mnt"
    try:
        mounts.mount(vid, mnt)
        (mnt / "precious.txt").write_text("do not lose me")
        yield cli, vid, mounts, mnt
    finally:
        mounts.cleanup()


@pytest.mark.fuse
def test_store_failure_during_commit_keeps_changes_pending(moto_server, monkeypatch, tmp_path, cache_dir):
    with _s3_draft_mount(moto_server, monkeypatch, tmp_path, cache_dir,
                         config="s3_max_attempts: 2\ns3_connect_timeout: 1\ns3_read_timeout: 2\n",
                         allow=r"commit of .* failed|s3 store unreachable|lease renewal|lease") as (cli, vid, _, mnt):
        moto_server.stop()
        try:
            err = cli.fails("umount", str(mnt), code=10)
            assert "commit failed and the changes are kept pending" in err
            assert f"run 'dsfs commit --pending {vid}' to retry" in err
            assert not os.path.ismount(mnt)
            status = json.loads(cli("status", "--json"))
            assert status[0]["health"] == "pending" and status[0]["version"] == vid
        finally:
            moto_server.start()
        out = json.loads(cli("commit", "--pending", vid, "--json"))
        assert out["added"] == 1
        assert json.loads(cli("status", "--json")) == []
        got = tmp_path / "got"
        cli("get", vid, str(got))
        assert (got / "precious.txt").read_text() == "do not lose me"


@pytest.mark.fuse
def test_a_commit_that_makes_no_progress_fails_and_keeps_the_changes(moto_server, monkeypatch, tmp_path,
                                                                     cache_dir):
    from s3proxy import CuttingProxy

    holding = threading.Event()
    with CuttingProxy(moto_server.endpoint,
                      hold=lambda method, path: holding.is_set() and "/chunks/" in path) as proxy, \
            _s3_draft_mount(moto_server, monkeypatch, tmp_path, cache_dir, config="commit_stall_timeout: 1\n",
                            allow=r"commit of .* made no progress",
                            endpoint=proxy.endpoint) as (cli, vid, mounts, mnt):
        holding.set()  # the store stops answering uploads
        err = cli.fails("commit", str(mnt), code=7)
        assert "the commit made no progress for 1 s" in err and "the changes are kept pending" in err
        assert proxy.held >= 1
        status = json.loads(cli("status", "--json"))
        assert "the last commit failed, changes kept pending" in status[0]["problem"]
        (mnt / "later.txt").write_text("written after")  # the mount goes on meanwhile
        proxy.release()
        mounts.umount(mnt)
        got = tmp_path / "got"
        cli("get", vid, str(got))
    assert (got / "precious.txt").read_text() == "do not lose me"
    assert (got / "later.txt").read_text() == "written after"


def _renameat2(src: Path, dst: Path, flags: int) -> None:
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


def test_rename_flags_and_chown(local_cli, local_mounts, tmp_path):
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    (mnt / "x").write_text("x")
    (mnt / "y").write_text("y")
    with pytest.raises(OSError) as exc:
        _renameat2(mnt / "x", mnt / "y", 1)  # RENAME_NOREPLACE
    assert exc.value.errno == errno.EEXIST
    _renameat2(mnt / "x", mnt / "y", 2)  # RENAME_EXCHANGE
    assert (mnt / "x").read_text() == "y" and (mnt / "y").read_text() == "x"
    os.chown(mnt / "x", os.getuid(), os.getgid())
    with pytest.raises(OSError) as exc:
        os.chown(mnt / "x", os.getuid() + 12345, -1)
    assert exc.value.errno == errno.EPERM
    local_mounts.umount(mnt)
    got = tmp_path / "got"
    local_cli("get", vid, str(got))
    assert (got / "x").read_text() == "y" and (got / "y").read_text() == "x"
