"""Durability of a writable draft: a close is journaled without fsync (it survives kill -9 of
the daemon), sync points make it durable, a reboot verifies what was not synced; and nothing
waits behind another file's close or behind a commit."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dsfs.config import load_settings
from dsfs.draft import session as drafts
from dsfs.repo import Repository
from dsfs.resolver.index import ROOT_INO
from mounting import wait_dead


def _data(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * (64 + i % 200)


# A writer that prints each file's name once its close has returned, until killed.
_WRITER = """
import hashlib, os, sys
root = sys.argv[1]
for i in range(100000):
    data = hashlib.sha256(str(i).encode()).digest() * (64 + i % 200)
    try:
        with open(os.path.join(root, f"f{i:05d}"), "wb") as f:
            f.write(data)
    except OSError:
        break
    print(f"f{i:05d}", flush=True)
"""


def test_kill_minus_nine_mid_write_burst_loses_no_closed_file(local_cli, local_mounts, tmp_path):
    local_mounts.allow(r"stale mount|recovery")
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(mnt)], stdout=subprocess.PIPE, text=True)
    closed = []
    for line in writer.stdout:  # kill the daemon in the middle of the burst
        closed.append(line.strip())
        if len(closed) == 300:
            os.kill(record.pid, signal.SIGKILL)
            break
    closed += [line.strip() for line in writer.stdout]
    assert writer.wait(60) == 0
    wait_dead(record.pid)
    local_cli.fails("umount", str(mnt), code=10)
    local_mounts.mount(vid, mnt)
    for name in closed:
        assert (mnt / name).read_bytes() == _data(int(name[1:])), name
    local_mounts.umount(mnt)
    listing = {e["path"] for e in json.loads(local_cli("ls", vid, "--json"))}
    assert set(closed) <= listing


@pytest.fixture
def overlay_of(local_cli, local_store_url, cache_dir):
    """Opens the staging overlay of a new draft in this process, as the mount daemon does."""
    vid = local_cli("create", "ds").strip()
    settings = load_settings(store=local_store_url, cache_dir=str(cache_dir))
    repo = Repository(settings)
    opened = []

    def open_it(*, durable_close: bool = False):
        repo.settings.durable_close = durable_close
        overlay = drafts.open_overlay(repo, vid, lambda node, offset, size: b"")
        opened.append(overlay)
        return overlay

    yield open_it
    for overlay in opened:
        overlay.close()


def _write_file(overlay, name: str, data: bytes, chunk: int = 4096) -> int:
    ino = overlay.create(ROOT_INO, name, 0o644).ino
    for offset in range(0, len(data), chunk):
        overlay.write(ino, offset, data[offset:offset + chunk])
    overlay.flush_write(ino)
    overlay.release_write(ino)
    return ino


@pytest.fixture
def fsyncs(monkeypatch):
    """Counts fsync(2) calls of this process (the overlay's own; SQLite's are its own)."""
    calls = []
    real = os.fsync

    def counting(fd):
        calls.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    return calls


def test_a_close_fsyncs_nothing_and_a_sync_makes_the_closed_files_durable(overlay_of, fsyncs):
    overlay = overlay_of()
    for i in range(10):
        _write_file(overlay, f"f{i}", _data(i))
    assert fsyncs == []
    unsynced = overlay.db.execute("SELECT count(*) FROM inodes WHERE unsynced IS NOT NULL").fetchone()[0]
    assert unsynced == 10
    overlay.sync()
    assert len(fsyncs) == 11  # each file once, then the staging folder
    unsynced = overlay.db.execute("SELECT count(*) FROM inodes WHERE unsynced IS NOT NULL").fetchone()[0]
    assert unsynced == 0
    overlay.sync()
    assert len(fsyncs) == 12  # nothing new: the folder only


def test_durable_close_fsyncs_every_close(overlay_of, fsyncs):
    overlay = overlay_of(durable_close=True)
    for i in range(3):
        _write_file(overlay, f"f{i}", _data(i))
    assert len(fsyncs) == 6  # the file and the staging folder, per close
    assert overlay.db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL: the journal too


def test_after_a_reboot_files_not_synced_are_verified(overlay_of, caplog):
    overlay = overlay_of()
    synced = _write_file(overlay, "synced", _data(1))
    overlay.sync()
    intact = _write_file(overlay, "intact", _data(2))
    torn = _write_file(overlay, "torn", _data(3))
    overlay.close()
    stage = overlay.dir
    (stage / "data" / str(torn)).write_bytes(b"")  # its bytes never reached the disk
    with sqlite3.connect(stage / "journal.sqlite") as db:
        db.execute("UPDATE meta SET value = 'an-earlier-boot' WHERE key = 'boot_id'")
    with caplog.at_level(logging.WARNING):
        overlay = overlay_of()
    assert "'torn' was not synced when the machine went down" in caplog.text
    names = {name for name, _ in overlay.listdir(ROOT_INO)}
    assert names == {"synced", "intact"}
    for ino, i in ((synced, 1), (intact, 2)):
        assert overlay.read(ino, 0, 1 << 20) == _data(i)
    assert overlay.db.execute("SELECT count(*) FROM inodes WHERE unsynced IS NOT NULL").fetchone()[0] == 0


def test_a_close_hashes_as_written_or_reads_only_data(overlay_of):
    overlay = overlay_of()
    data = os.urandom(300_000)
    ino = _write_file(overlay, "seq", data)
    assert overlay.getattr(ino).sha256 == hashlib.sha256(data).hexdigest()
    ino = overlay.create(ROOT_INO, "backwards", 0o644).ino
    for offset in reversed(range(0, len(data), 65536)):  # the running hash cannot follow
        overlay.write(ino, offset, data[offset:offset + 65536])
    overlay.write(ino, (1 << 30) - 1, b"!")  # and a hole of almost 1 GiB
    overlay.release_write(ino)
    expected = hashlib.sha256(data)
    zeros = bytes(1 << 20)
    left = (1 << 30) - 1 - len(data)
    while left:
        expected.update(zeros[:min(left, len(zeros))])
        left -= min(left, len(zeros))
    expected.update(b"!")
    attr = overlay.getattr(ino)
    assert (attr.size, attr.sha256) == (1 << 30, expected.hexdigest())


def test_a_big_sparse_close_holds_up_no_other_file(local_cli, local_mounts, tmp_path):
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    (mnt / "d").mkdir()
    sparse = open(mnt / "sparse", "wb")
    sparse.truncate(3 << 30)  # 3 GiB of hole: its close hashes 3 GiB of zeros
    sparse.write(b"x")
    closing = threading.Thread(target=sparse.close)
    done = []
    closing.start()
    while closing.is_alive():  # the other process's work goes on meanwhile
        name = f"f{len(done)}"
        (mnt / "d" / name).write_bytes(b"x")
        os.stat(mnt / "d" / name)
        done.append(name)
    closing.join()
    assert len(done) >= 20
    assert os.stat(mnt / "sparse").st_size == 3 << 30
    os.unlink(mnt / "sparse")  # not worth packing in a test
    local_mounts.umount(mnt)
    listing = {e["path"] for e in json.loads(local_cli("ls", vid, "-r", "--json"))}
    assert {f"d/{name}" for name in done} <= listing


def test_writes_during_a_commit_go_on_and_are_kept(local_cli, local_mounts, tmp_path):
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    big = os.urandom(1 << 20) * 48  # 48 MiB to pack and store: the commit takes a while
    (mnt / "big.bin").write_bytes(big)
    outcome = []
    committing = threading.Thread(target=lambda: outcome.append(local_cli("commit", str(mnt))))
    during = []
    committing.start()
    while committing.is_alive():
        name = f"during{len(during):04d}"
        (mnt / name).write_bytes(_data(len(during)))
        during.append(name)
    committing.join()
    assert outcome and len(during) >= 5
    committed = {e["path"] for e in json.loads(local_cli("ls", vid, "--json"))}
    assert "big.bin" in committed and len(committed & set(during)) < len(during)
    local_mounts.umount(mnt)
    listing = {e["path"]: e for e in json.loads(local_cli("ls", vid, "--json"))}
    assert set(during) <= set(listing)
    assert listing["big.bin"]["size"] == len(big)


def test_a_stale_lease_refuses_to_commit(overlay_of, local_store_url, tmp_path):
    from dsfs.errors import StoreUnavailable
    from dsfs.draft.lease import TTL, Lease

    overlay = overlay_of()
    _write_file(overlay, "kept", b"kept")
    repo = Repository(load_settings(store=local_store_url, cache_dir=str(tmp_path / "c")))
    vid = overlay.base.version_id
    lease = Lease.acquire(repo.store, vid, str(tmp_path / "mnt"))
    session = drafts.DraftSession(repo, vid, str(tmp_path / "mnt"), overlay, lease)
    lease.renewed -= TTL + 1  # the heartbeat has failed for longer than the TTL
    with pytest.raises(StoreUnavailable, match="could not be renewed for 6. s"):
        session.commit_now()
    lease.renew()  # the store answers again
    assert session.commit_now().added == 1
    lease.release()


def test_a_commit_fsyncs_staged_files_only_when_it_fails(overlay_of, local_store_url, tmp_path, monkeypatch):
    """A commit that records its change-set needs no fsync of each staged file first (its bytes
    are fsync'd in the store); one that fails leaves the changes pending, made durable."""
    from dsfs.draft.lease import Lease
    from dsfs.errors import StoreUnavailable

    overlay = overlay_of()
    for i in range(5):
        _write_file(overlay, f"f{i}", _data(i))
    repo = Repository(load_settings(store=local_store_url, cache_dir=str(tmp_path / "c")))
    vid = overlay.base.version_id
    lease = Lease.acquire(repo.store, vid, str(tmp_path / "mnt"))
    session = drafts.DraftSession(repo, vid, str(tmp_path / "mnt"), overlay, lease)

    def unreachable(*args, **kwargs):
        raise StoreUnavailable("store unreachable (injected)")

    unsynced = "SELECT count(*) FROM inodes WHERE unsynced IS NOT NULL"
    with monkeypatch.context() as faults:
        faults.setattr(repo.store, "move_file", unreachable)
        with pytest.raises(StoreUnavailable, match="injected"):
            session.commit_now()
    assert overlay.db.execute(unsynced).fetchone()[0] == 0  # pending, and durable
    _write_file(overlay, "f5", _data(5))
    assert session.commit_now().added == 6
    assert overlay.db.execute(unsynced).fetchone()[0] == 1  # f5 was committed, never fsync'd there
    lease.release()


def test_files_whose_last_release_never_came_are_journaled_at_the_end(overlay_of):
    overlay = overlay_of()
    ino = overlay.create(ROOT_INO, "two-writers", 0o644).ino
    overlay.open_write(ino, truncate=False)  # a second writer
    overlay.write(ino, 0, b"both wrote")
    overlay.flush_write(ino)  # two writers: a flush journals nothing
    overlay.release_write(ino)  # the other writer's last release is dropped at the unmount
    assert not overlay.getattr(ino).data
    overlay.release_all()
    attr = overlay.getattr(ino)
    assert attr.data and not attr.writing and overlay.read(ino, 0, 100) == b"both wrote"


def test_a_commit_snapshot_takes_a_file_closed_again_while_it_links(overlay_of, monkeypatch):
    from dsfs.draft import overlay as overlay_module

    overlay = overlay_of()
    rewritten = _write_file(overlay, "rewritten", b"old bytes")
    removed = _write_file(overlay, "removed", b"gone soon")
    real_link = overlay_module._link
    raced = []

    def racing_link(src, dest):  # another file operation gets in between the lock's two holds
        if not raced:
            raced.append(True)
            overlay.open_write(rewritten, truncate=True)
            overlay.write(rewritten, 0, b"new bytes!")
            overlay.release_write(rewritten)
            overlay.unlink(ROOT_INO, "removed")
            overlay.forget([removed])
        return real_link(src, dest)

    monkeypatch.setattr(overlay_module, "_link", racing_link)
    with overlay.snapshot() as rows:
        files = {path: (attr, Path(local).read_bytes()) for path, attr, _, local in rows}
    assert raced and set(files) == {"rewritten"}
    attr, data = files["rewritten"]
    assert data == b"new bytes!" and attr.sha256 == hashlib.sha256(data).hexdigest()


def test_a_discarded_staging_area_is_moved_aside_then_deleted(tmp_path):
    """``dsfs umount`` does not wait for a committed staging area's files to be deleted: it is
    renamed aside at once and a detached ``rm`` deletes it; one whose ``rm`` never finished (its
    process gone) is deleted along with the next."""
    settings = load_settings(store=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))
    trash = settings.state_dir / "trash"
    leftover = trash / "v0-999999999-1"  # no such process: its rm died
    (leftover / "data").mkdir(parents=True)
    (leftover / "data" / "1").write_bytes(b"x")
    stage = drafts.stage_dir(settings, "v1")
    (stage / "data").mkdir(parents=True)
    for i in range(2000):
        (stage / "data" / str(i)).write_bytes(b"staged")
    drafts.discard(settings, "v1")
    assert not stage.exists()
    deadline = time.monotonic() + 60
    while any(trash.iterdir()):
        assert time.monotonic() < deadline, f"never deleted: {sorted(trash.iterdir())}"
        time.sleep(0.05)
    drafts.discard(settings, "v2")  # no staging area: nothing to do


def test_a_frozen_overlay_commits_its_staged_files_in_place(overlay_of):
    """While a mount may still close files, a commit packs hard links taken at its snapshot;
    once the mount is gone (``freeze``), the staged files themselves, with no links to make."""
    overlay = overlay_of()
    inos = {f"f{i}": _write_file(overlay, f"f{i}", _data(i)) for i in range(3)}
    with overlay.snapshot() as rows:
        locals_ = {path: local for path, attr, removed, local in rows if local}
        assert locals_ == {name: f"{overlay.dir}/commit/{ino}" for name, ino in inos.items()}
    overlay.freeze()
    with overlay.snapshot() as rows:
        locals_ = {path: local for path, attr, removed, local in rows if local}
        assert locals_ == {name: f"{overlay.dir}/data/{ino}" for name, ino in inos.items()}
        assert not (overlay.dir / "commit").exists()
