"""Writing into drafts: metadata-only changes, files a dataset cannot hold, and an add that is
interrupted and then run again."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import write_tree


def _dsfs(cli, *args: str) -> subprocess.CompletedProcess:
    """The real command in a child process (its own stderr, logging and signal handling)."""
    env = {**os.environ, "DSFS_STORE": cli.store, "DSFS_CACHE_DIR": str(cli.cache_dir)}
    return subprocess.run([sys.executable, "-m", "dsfs", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _entry(cli, ref: str, path: str) -> dict:
    (node,) = [n for n in json.loads(cli("ls", ref, "-r", "--json")) if n["path"] == path]
    return node


# -- mode and mtime alone ----------------------------------------------------------------------

_TOUCHED = int(datetime.datetime(2001, 2, 3, 4, 5, 6, tzinfo=datetime.timezone.utc).timestamp()) * 10**9


def test_mode_and_mtime_changes_in_a_draft_mount_are_recorded(cli, mounts, tmp_path):
    write_tree(tmp_path / "src", {"a.txt": "alpha\n", "b.txt": "beta\n", "c.txt": "gamma\n"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(tmp_path / "src"))
    cli("publish", v1)
    draft = cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    mounts.mount(draft, mnt)
    os.chmod(mnt / "a.txt", 0o600)                                  # mode only
    subprocess.run(["touch", "-d", "2001-02-03 04:05:06 UTC", str(mnt / "b.txt")], check=True)
    mounts.umount(mnt)
    summary = json.loads(cli("show", draft, "--json"))["changeset_list"][-1]
    assert summary["bytes_new"] == 0 and summary["entries"] == 2
    assert _entry(cli, draft, "a.txt")["mode"] == "0600"
    b = _entry(cli, draft, "b.txt")
    assert b["mtime_ns"] == _TOUCHED and b["mode"] == "0644"
    assert _entry(cli, draft, "c.txt") == _entry(cli, v1, "c.txt")
    diff = json.loads(cli("diff", v1, draft, "--json"))
    assert sorted(n["path"] for n in diff["modified"]) == ["a.txt", "b.txt"]
    # The draft mounted again shows what was recorded, and its bytes are the same.
    mounts.mount(draft, mnt, read_only=True)
    assert os.stat(mnt / "a.txt").st_mode & 0o7777 == 0o600
    assert os.stat(mnt / "b.txt").st_mtime_ns == b["mtime_ns"]
    assert (mnt / "b.txt").read_text() == "beta\n"
    mounts.umount(mnt)


def test_add_and_sync_record_mode_and_mtime_only_changes(cli, tmp_path):
    src = write_tree(tmp_path / "src", {"a.txt": "alpha\n", "b.txt": "beta\n", "c.txt": "gamma\n"})
    draft = cli("create", "ds").strip()
    cli("add", draft, str(src))
    assert json.loads(cli("add", draft, str(src), "--json"))["modified"] == 0   # nothing changed
    os.chmod(src / "a.txt", 0o600)
    os.utime(src / "b.txt", ns=(_TOUCHED, _TOUCHED))
    report = json.loads(cli("add", draft, str(src), "--json"))
    assert (report["added"], report["modified"], report["bytes_uploaded"]) == (0, 2, 0)
    assert _entry(cli, draft, "a.txt")["mode"] == "0600"
    assert _entry(cli, draft, "b.txt")["mtime_ns"] == _TOUCHED
    os.utime(src / "c.txt", ns=(_TOUCHED, _TOUCHED))
    report = json.loads(cli("sync", draft, str(src), "--json"))
    assert (report["modified"], report["removed"], report["bytes_uploaded"]) == (1, 0, 0)
    assert _entry(cli, draft, "c.txt")["mtime_ns"] == _TOUCHED
    assert json.loads(cli("sync", draft, str(src), "--json"))["modified"] == 0


# -- fifos, sockets and devices ----------------------------------------------------------------


@pytest.fixture
def odd_folder(tmp_path):
    """A folder holding two files, a fifo and a listening unix socket."""
    src = write_tree(tmp_path / "odd", {"a.txt": "alpha\n", "sub/b.txt": "beta\n"})
    os.mkfifo(src / "pipe")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(src / "sub" / "sock"))
    yield src
    sock.close()


def test_fifo_and_socket_are_skipped_with_a_warning(local_cli, odd_folder):
    draft = local_cli("create", "ds").strip()
    done = _dsfs(local_cli, "add", draft, str(odd_folder))
    assert done.returncode == 0, done.stderr
    warnings = done.stderr.splitlines()
    assert warnings == [f"dsfs: WARNING: skipped a fifo: {str(odd_folder / 'pipe')!r}",
                        f"dsfs: WARNING: skipped a socket: {str(odd_folder / 'sub' / 'sock')!r}"]
    assert local_cli("ls", draft, "-r").count("\n") == 3   # a.txt, sub/, sub/b.txt
    done = _dsfs(local_cli, "sync", draft, str(odd_folder))
    assert done.returncode == 0 and done.stderr.count("skipped a") == 2
    assert done.stdout.strip() == "no changes"


def test_strict_refuses_a_fifo_and_records_nothing(local_cli, odd_folder):
    draft = local_cli("create", "ds").strip()
    for command in ("add", "sync"):
        done = _dsfs(local_cli, command, draft, str(odd_folder), "--strict")
        assert done.returncode != 0
        assert done.stderr == f"dsfs: error: cannot add a fifo: {str(odd_folder / 'pipe')!r}\n"
    assert json.loads(local_cli("show", draft, "--json"))["changesets"] == 0
    assert "cannot add a fifo" in _dsfs(local_cli, "add", draft, str(odd_folder / "pipe"),
                                        "--strict").stderr


# -- an interrupted add, and its retry ---------------------------------------------------------

_FILES = 8


def _text(i: int, lines: int) -> bytes:
    """Distinct, compressible, all of one length."""
    return b"".join(b"%06d,%08d,some text value\n" % (i, j) for j in range(lines))


@pytest.fixture
def big_folder(cli, tmp_path):
    """(folder, config file, file size): one file per chunk, slow enough to interrupt. On the
    local store deflating keeps the packer busy; on S3 stored chunks over 8 MiB go up multipart."""
    on_s3 = cli.store.startswith("s3://")
    lines = 350_000 if on_s3 else 150_000
    src = tmp_path / "big"
    src.mkdir()
    for i in range(_FILES):
        (src / f"part-{i}.csv").write_bytes(_text(i, lines))
    config = tmp_path / "config.yaml"
    config.write_text("chunk_size: 1M\n" + ("compression: store\n" if on_s3 else ""))
    return src, config, (src / "part-0.csv").stat().st_size


def _store_keys(cli, prefix: str) -> list[str]:
    from dsfs.config import load_settings
    from dsfs.store import open_store

    store = open_store(cli.store, load_settings(store=cli.store, cache_dir=str(cli.cache_dir)))
    return [info.key for info in store.list(prefix)]


def _partial_uploads(cli) -> list:
    """What an interrupted upload could leave: temp files (local) or multipart uploads (S3)."""
    if not cli.store.startswith("s3://"):
        return [p for p in Path(cli.store).rglob(".tmp-*")]
    from dsfs.config import load_settings
    from dsfs.store import open_store

    store = open_store(cli.store, load_settings(store=cli.store, cache_dir=str(cli.cache_dir)))
    listing = store._client.list_multipart_uploads(Bucket=store.bucket, Prefix=store.prefix)
    return listing.get("Uploads", [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupted_add_cleans_up_and_its_retry_resumes(cli, big_folder, sig):
    src, config, size = big_folder
    draft = cli("create", "ds").strip()
    env = {**os.environ, "DSFS_STORE": cli.store, "DSFS_CACHE_DIR": str(cli.cache_dir)}
    # A runner that started us in the background may have SIGINT ignored, which the child would
    # inherit (and Python then raises no KeyboardInterrupt): give the child the default back.
    proc = subprocess.Popen([sys.executable, "-m", "dsfs", "--config", str(config), "add", draft,
                             str(src)], env=env, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    chunks, uploads = f"versions/{draft}/chunks/", f"versions/{draft}/uploads/"
    # The first chunk's upload record says it is fully stored.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not _store_keys(cli, uploads) and proc.poll() is None:
        time.sleep(0.005)
    assert proc.poll() is None, "add finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig and err == "dsfs: interrupted; nothing was recorded\n"
    # Nothing recorded, nothing half-written: no temp chunk, no partial object.
    assert json.loads(cli("show", draft, "--json"))["changesets"] == 0
    assert [p for p in (cli.cache_dir / "tmp").rglob("*") if not p.is_dir()] == []
    assert _partial_uploads(cli) == []
    stored = _store_keys(cli, chunks)
    records = _store_keys(cli, uploads)
    assert 1 <= len(records) < _FILES
    assert {k.rsplit("/", 1)[1].removesuffix(".jsonl.gz") for k in records} <= \
        {k.rsplit("/", 1)[1].removesuffix(".zip") for k in stored}
    # gc sees the orphans (and keeps them in the grace period).
    assert sorted(json.loads(cli("gc", "--grace", "0", "--dry-run", "--json"))) == sorted(stored + records)
    assert json.loads(cli("gc", "--dry-run", "--json")) == []
    # The retry reuses every chunk that has its record, and uploads only the rest.
    code, out, err = cli.run("--config", str(config), "add", draft, str(src), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["added"] == _FILES
    assert report["bytes_dedup"] == len(records) * size
    assert report["bytes_uploaded"] == (_FILES - len(records)) * size
    assert _store_keys(cli, uploads) == []
    unrecorded = set(stored) - {k.replace("/uploads/", "/chunks/").replace(".jsonl.gz", ".zip")
                                for k in records}
    assert set(json.loads(cli("gc", "--grace", "0", "--dry-run", "--json"))) == unrecorded
    assert json.loads(cli("verify", draft, "--hash", "--json"))["ok"]
