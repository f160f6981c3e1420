"""Mount faults and operations: missing chunks, corrupt cache, S3 outages, kill -9, systemd."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dsfs
from conftest import write_tree
from mounting import wait_dead


def _rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


def _publish(cli, tmp_path, name: str, files: dict, *parents: str) -> str:
    src = write_tree(tmp_path / f"src-{name}", files)
    args = ["create", "ds", "--name", name] + [a for p in parents for a in ("--parent", p)]
    if not parents:
        args.append("--root")
    vid = cli(*args).strip()
    cli("add", vid, str(src))
    cli("publish", vid)
    return vid


def _chunks(store: str, vid: str) -> list[Path]:
    return sorted((Path(store) / "versions" / vid / "chunks").iterdir())


def test_damaged_leaf_of_a_big_file_fails_only_reads_of_that_leaf(local_cli, local_mounts, tmp_path):
    """Random reads of a big stored file are checked leaf by leaf (64 KiB, its hash tree): a byte
    flipped in the store makes reads of that leaf EIO (after one refetch), and the rest of the
    file, the rest of its 4 MiB block included, reads."""
    local_mounts.allow(r"refetching leaves 64-64|sha256 mismatch for leaf 64")
    block = 4 << 20
    data = _rand(2 * block + 5000, 8)
    vid = _publish(local_cli, tmp_path, "v", {"big.bin": data})
    (entry,) = [e for e in json.loads(local_cli("ls", vid, "--json")) if e["path"] == "big.bin"]
    (chunk,) = _chunks(local_cli.store, vid)
    with open(chunk, "r+b") as f:  # the member is stored: its bytes sit as-is in the chunk
        raw = f.read()
        at = raw.index(data[block + 1000:block + 1064]) + 10
        f.seek(at)
        f.write(bytes([raw[at] ^ 0xFF]))
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    fd = os.open(mnt / "big.bin", os.O_RDONLY)
    try:
        assert os.pread(fd, 4096, 2 * block) == data[2 * block:2 * block + 4096]
        with pytest.raises(OSError) as exc:
            os.pread(fd, 4096, block + 8192)
        assert exc.value.errno == errno.EIO
        assert os.pread(fd, 100, 10) == data[10:110]
        assert os.pread(fd, 4096, block + (1 << 20)) == data[block + (1 << 20):block + (1 << 20) + 4096]
    finally:
        os.close(fd)
    assert entry["size"] == len(data)


def test_missing_chunk_fails_that_file_only(local_cli, local_mounts, tmp_path):
    local_mounts.allow(r"chunk missing from store")
    parent = _publish(local_cli, tmp_path, "p", {"old.bin": _rand(50_000, 1)})
    child = _publish(local_cli, tmp_path, "c", {"new.bin": _rand(50_000, 2)}, parent)
    mnt = tmp_path / "mnt"
    local_mounts.mount(child, mnt)
    for chunk in _chunks(local_cli.store, child):
        chunk.unlink()
    with pytest.raises(OSError) as exc:
        (mnt / "new.bin").read_bytes()
    assert exc.value.errno == errno.EIO
    assert (mnt / "old.bin").read_bytes() == _rand(50_000, 1)
    assert json.loads(local_cli("status", "--json"))[0]["health"] == "ok"


def _cache_local_store(monkeypatch, tmp_path) -> None:
    """Make the daemons and in-process commands of a test cache the local-folder store too."""
    config = tmp_path / "cache-local.yaml"
    config.write_text("cache_local_store: true\n")
    monkeypatch.setenv("DSFS_CONFIG", str(config))


def test_corrupt_cached_block_is_detected_and_refetched(local_cli, local_mounts, tmp_path, cache_dir, monkeypatch):
    _cache_local_store(monkeypatch, tmp_path)
    local_mounts.allow(r"dropping corrupt cached block|corrupt")
    data = _rand(300_000, 3)
    vid = _publish(local_cli, tmp_path, "v", {"f.bin": data})
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    assert (mnt / "f.bin").read_bytes() == data
    local_mounts.umount(mnt)
    values = [p for p in (cache_dir / "blocks").rglob("*.val")]
    assert values, "the block should be cached as a file"
    for path in values:
        raw = bytearray(path.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        path.write_bytes(bytes(raw))
    local_mounts.mount(vid, mnt)
    assert (mnt / "f.bin").read_bytes() == data


def test_prefetch_warms_the_cache(local_cli, local_mounts, tmp_path, monkeypatch):
    _cache_local_store(monkeypatch, tmp_path)
    data = _rand(200_000, 4)
    vid = _publish(local_cli, tmp_path, "v", {"a/f.bin": data, "b/g.bin": b"gg"})
    local_cli("prefetch", vid, "a")
    for chunk in _chunks(local_cli.store, vid):
        chunk.unlink()  # from now on only the cache can serve a/f.bin
    local_mounts.allow(r"fetch of 'b/g.bin' failed its checks: chunk missing")  # folder-order prefetch
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    assert (mnt / "a/f.bin").read_bytes() == data
    assert "no such path" in local_cli.fails("prefetch", vid, "nope", code=3)


def test_local_store_is_read_in_place_not_cached(local_cli, local_mounts, tmp_path):
    data = _rand(9_000_000, 5)  # several blocks, read through a mount and by prefetch
    vid = _publish(local_cli, tmp_path, "v", {"big.bin": data, "small.txt": "s"})
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    assert (mnt / "big.bin").read_bytes() == data and (mnt / "small.txt").read_text() == "s"
    code, _, err = local_cli.run("prefetch", vid)
    assert code == 0
    assert json.loads(local_cli("cache", "stats", "--json")).get("count", 0) == 0
    # Nor does the mount open the disk cache to report its counters.
    stats = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]
    assert (stats["size"], stats["count"]) == (0, 0) and stats["fetched"] >= len(data)
    pid = json.loads(local_cli("status", "--json"))[0]["pid"]
    blocks = os.path.realpath(local_cli.cache_dir) + "/blocks"
    held = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    assert not [path for path in held if path.startswith(blocks)], held
    local_mounts.umount(mnt)
    for chunk in _chunks(local_cli.store, vid):
        chunk.unlink()
    local_mounts.allow(r"chunk missing from store")
    local_mounts.mount(vid, mnt)
    with pytest.raises(OSError) as exc:
        (mnt / "big.bin").read_bytes()
    assert exc.value.errno == errno.EIO


def test_daemon_killed_then_umount_cleans_up(local_cli, local_mounts, tmp_path):
    local_mounts.allow(r"mount failed: mountpoint has a stale mount")
    vid = _publish(local_cli, tmp_path, "v", {"f": "x"})
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(record.pid)
    with pytest.raises(OSError) as exc:
        os.listdir(mnt)
    # The first access after the daemon died says ECONNABORTED, later ones ENOTCONN.
    assert exc.value.errno in (errno.ENOTCONN, errno.ECONNABORTED)
    assert json.loads(local_cli("status", "--json"))[0]["health"] == "dead"
    assert "stale mount" in local_cli.fails("mount", vid, str(mnt), code=9)
    local_cli("umount", str(mnt))
    assert not os.path.ismount(mnt) and os.listdir(mnt) == []
    assert json.loads(local_cli("status", "--json")) == []
    local_mounts.mount(vid, mnt)  # the mountpoint is usable again
    assert (mnt / "f").read_text() == "x"


def test_draft_mounted_read_only_on_request(local_cli, local_mounts, tmp_path):
    src = write_tree(tmp_path / "src", {"f": "draft data"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(src))
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt, read_only=True)
    assert record.state == "draft" and record.adapter == "lowlevel" and not record.writable
    assert (mnt / "f").read_text() == "draft data"
    with pytest.raises(OSError) as exc:
        (mnt / "g").write_text("no")
    assert exc.value.errno == errno.EROFS
    # Another change-set replaces the draft's index file; the mount keeps its pinned one and
    # goes on serving the state it mounted.
    index_dir = Path(local_mounts.settings.cache_dir) / "index"
    before = set(index_dir.glob(f"{vid}.draft-*.sqlite"))
    local_cli("add", vid, str(write_tree(tmp_path / "more", {"g": "later"})))
    local_cli("ls", vid)
    assert before and not (before & set(index_dir.glob(f"{vid}.draft-*.sqlite")))
    pins = Path(local_mounts.settings.state_dir) / "pins"
    assert len(list(pins.glob("*.sqlite"))) == 1
    assert sorted(os.listdir(mnt)) == ["f"] and (mnt / "f").read_text() == "draft data"
    local_mounts.umount(mnt)
    assert not list(pins.glob("*.sqlite"))


@pytest.mark.fuse
def test_python_api_mounts_a_temp_folder(local_cli, tmp_path, cache_dir):
    _publish(local_cli, tmp_path, "v", {"x/y.txt": "hello"})
    with dsfs.mounted("ds@v", store=local_cli.store, cache_dir=str(cache_dir)) as root:
        assert (root / "x/y.txt").read_text() == "hello"
        assert os.path.ismount(root)
        path = root
    assert not path.exists()


@pytest.mark.fuse
def test_systemd_notify_protocol(local_cli, tmp_path, cache_dir):
    vid = _publish(local_cli, tmp_path, "v", {"f": "x"})
    sock_path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(sock_path)
    sock.settimeout(60)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    env = {**os.environ, "NOTIFY_SOCKET": sock_path}
    proc = subprocess.Popen([sys.executable, "-m", "dsfs", "--store", local_cli.store, "--cache-dir",
                             str(cache_dir), "mount", "--foreground", vid, str(mnt)], env=env,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert sock.recv(256) == b"READY=1"
        assert (mnt / "f").read_text() == "x"
        local_cli("umount", str(mnt))
        assert sock.recv(256) == b"STOPPING=1"
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
            proc.kill()
        sock.close()


@pytest.mark.fuse
def test_systemd_stop_by_sigterm_unmounts(local_cli, tmp_path, cache_dir):
    vid = _publish(local_cli, tmp_path, "v", {"f": "x"})
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    for adapter in ("direct", "lowlevel"):
        proc = subprocess.Popen([sys.executable, "-m", "dsfs", "--store", local_cli.store, "--cache-dir",
                                 str(cache_dir), "mount", "--foreground", "--adapter", adapter, vid, str(mnt)],
                                stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 60
            while not os.path.ismount(mnt) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert (mnt / "f").read_text() == "x"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=30) == 0, proc.stderr.read()
            assert not os.path.ismount(mnt)
        finally:
            if proc.poll() is None:
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)])
                proc.kill()


@pytest.mark.fuse
def test_s3_outage_mid_read_then_recovery(moto_server, monkeypatch, tmp_path, cache_dir):
    from conftest import Cli
    from mounting import Mounts

    moto_server.apply_env(monkeypatch)
    config = tmp_path / "dsfs.yaml"
    # neighbour_bytes 0: b.bin must not arrive along with a.bin before the outage.
    config.write_text("s3_max_attempts: 2\ns3_connect_timeout: 1\ns3_read_timeout: 2\nneighbour_bytes: 0\n")
    monkeypatch.setenv("DSFS_CONFIG", str(config))
    cli = Cli(moto_server.new_bucket(), cache_dir)
    first, second = _rand(100_000, 5), _rand(100_000, 6)
    vid = _publish(cli, tmp_path, "v", {"a.bin": first, "b.bin": second})
    mounts = Mounts(cli.store, cache_dir)
    mounts.allow(r"s3 store unreachable|read .*b\.bin")
    mnt = tmp_path / "mnt"
    try:
        mounts.mount(vid, mnt)
        assert (mnt / "a.bin").read_bytes() == first
        moto_server.stop()
        try:
            with pytest.raises(OSError) as exc:
                (mnt / "b.bin").read_bytes()
            assert exc.value.errno == errno.EIO
        finally:
            moto_server.start()
        assert (mnt / "b.bin").read_bytes() == second
        mounts.umount(mnt)
    finally:
        mounts.cleanup()


@pytest.mark.s3
def test_fresh_mounts_read_byte_exact_while_bodies_are_cut(moto_server, monkeypatch, tmp_path, cache_dir):
    """One in three S3 response bodies breaks off halfway: every fresh mount comes up and every
    first read of every file is byte-exact (the store sends a new request for a broken body)."""
    from conftest import Cli
    from mounting import Mounts, unexpected_log_lines
    from s3proxy import CuttingProxy

    moto_server.apply_env(monkeypatch)
    config = tmp_path / "dsfs.yaml"
    config.write_text("neighbour_bytes: 0\n")  # one ranged GET per small file
    monkeypatch.setenv("DSFS_CONFIG", str(config))
    cli = Cli(moto_server.new_bucket(), cache_dir)
    files = {f"d{i % 4}/f{i:03d}.bin": _rand(3000 + 97 * i, i) for i in range(60)}
    files["big.bin"] = _rand(9 << 20, 99)
    vid = _publish(cli, tmp_path, "v", files)
    with CuttingProxy(moto_server.endpoint, cut=lambda method, path, n: n % 3 == 1) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        for attempt in range(2):
            cache = tmp_path / f"cache-{attempt}"  # fresh: index, manifests and bytes all fetched
            mounts = Mounts(cli.store, cache)
            mnt = tmp_path / f"mnt-{attempt}"
            try:
                mounts.mount(vid, mnt)
                for rel, data in files.items():
                    assert (mnt / rel).read_bytes() == data, rel
                mounts.umount(mnt)
            finally:
                mounts.cleanup()
            assert not unexpected_log_lines(cache)
    assert proxy.cuts >= 40
