"""Temp files a killed process leaves under <cache_dir>/tmp are swept; those in use never are
(dsfs/tmpfiles.py): real processes, real kill -9, real flock."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from conftest import add_caught_packing
from dsfs import tmpfiles

HOUR = 3600


def _age(path, seconds: float = 2 * HOUR) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def _holder(folder) -> tuple[subprocess.Popen, str]:
    """Another process that makes a temp file in ``folder`` and keeps it in use until killed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom dsfs import tmpfiles\n"
         "fd, path = tmpfiles.make(sys.argv[1], 'fsspec-')\nprint(path, flush=True)\ntime.sleep(600)",
         str(folder)], stdout=subprocess.PIPE, text=True)
    return proc, proc.stdout.readline().strip()


def test_a_file_in_use_stays_and_a_killed_processes_goes(tmp_path):
    folder = tmp_path / "tmp"
    proc, held = _holder(folder)
    try:
        _age(held)
        stray = folder / "chunk-left.zip"  # no holder: a dsfs from before the locks, or killed
        stray.write_bytes(b"x")
        _age(stray)
        fresh = folder / "get-new"  # made a moment ago, perhaps not locked yet
        fresh.write_bytes(b"x")
        assert tmpfiles.sweep(str(folder)) == [str(stray)]
        assert os.path.exists(held) and fresh.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
    assert tmpfiles.sweep(str(folder)) == [held]  # its lock went with the process
    assert sorted(os.listdir(folder)) == ["get-new"]


def test_a_packers_folder_goes_once_empty_and_old(tmp_path):
    pack = tmp_path / "tmp" / "pack-1-abcd"
    pack.mkdir(parents=True)
    (pack / "chunk-x.zip").write_bytes(b"x")
    _age(pack / "chunk-x.zip")  # (the folder itself changed just now)
    assert tmpfiles.sweep(str(tmp_path / "tmp")) == [str(pack / "chunk-x.zip")]
    assert pack.is_dir()  # changed lately (a file came in): its packer may be writing the next
    _age(pack)
    assert tmpfiles.sweep(str(tmp_path / "tmp")) == [str(pack)]
    (pack.parent / "pack-2-beef").mkdir()
    (pack.parent / "pack-2-beef" / "chunk-y.zip").write_bytes(b"y")
    _age(pack.parent / "pack-2-beef" / "chunk-y.zip")
    _age(pack.parent / "pack-2-beef")  # long unchanged: it goes with its file, in one sweep
    assert tmpfiles.sweep(str(tmp_path / "tmp")) == [str(pack.parent / "pack-2-beef" / "chunk-y.zip"),
                                                     str(pack.parent / "pack-2-beef")]


def test_a_killed_add_leaves_a_chunk_the_next_command_sweeps(local_cli, tmp_path, cache_dir):
    """kill -9 while a chunk is being packed: the partial chunk stays (nothing can remove it
    then), and once it is old any dsfs command removes it; the draft and store are unharmed."""
    draft, big, proc = add_caught_packing(local_cli, tmp_path, stderr=subprocess.DEVNULL)
    tmp = cache_dir / "tmp"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    left = [p for p in tmp.rglob("*") if p.is_file()]
    assert left and all(p.name.startswith("chunk-") for p in left)
    local_cli("datasets")
    assert [p for p in tmp.rglob("*") if p.is_file()] == left  # young: it may be in use
    for path in left:
        _age(path)
    for folder in tmp.glob("pack-*"):
        _age(folder)
    local_cli("datasets")
    assert list(tmp.iterdir()) == []
    assert local_cli("ls", draft, "-r") == ""
    local_cli("add", draft, str(big))  # and the next add works as ever
    assert local_cli("ls", draft, "-r").split()[-1] == "text.csv"


def test_a_filesystem_without_locks_keeps_its_files(tmp_path, monkeypatch):
    """Where flock fails (ENOLCK on some network filesystems), temp files still work and the
    sweep, unable to tell which are in use, removes none."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    fd, path = tmpfiles.make(str(tmp_path / "tmp"), "fsspec-")
    os.write(fd, b"staged")
    tmpfiles.close(fd)
    held = tmpfiles.hold(path)
    _age(path)
    assert tmpfiles.sweep(str(tmp_path / "tmp")) == []
    tmpfiles.close(held)
    assert open(path, "rb").read() == b"staged"
