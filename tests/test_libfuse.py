"""Published mounts bind libfuse 3, even on a machine where libfuse 2 is found first.

scripts/bootstrap installs libfuse 2 next to libfuse 3, so the whole suite runs the way most
desktops are set up (AppImage support pulls libfuse 2 in)."""

from __future__ import annotations

import ctypes.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tree
from dsfs.mountd import libfuse


def _libfuse2_path() -> str:
    for path in libfuse.candidates() + ["/usr/lib/x86_64-linux-gnu/libfuse.so.2",
                                        "/lib/x86_64-linux-gnu/libfuse.so.2", "libfuse.so.2"]:
        if "libfuse.so.2" in path and libfuse.major_version(path) == 2:
            return path
    name = ctypes.util.find_library("fuse")
    assert name and libfuse.major_version(name) == 2, "libfuse 2 is missing: run scripts/bootstrap"
    return name


def test_the_suite_runs_with_libfuse2_found_first():
    # What mfusepy picks by default (and what broke every published mount) is libfuse 2 here.
    name = ctypes.util.find_library("fuse")
    assert name is not None and libfuse.major_version(name) == 2, "run scripts/bootstrap"
    assert libfuse.major_version(libfuse.find()) == 3


def test_find_accepts_only_libfuse3():
    fuse2 = _libfuse2_path()
    with pytest.raises(libfuse.LibfuseMissing, match=r"^libfuse 3 not found: install the fuse3 package"):
        libfuse.find([fuse2, "/nonexistent/libfuse3.so.3"])
    assert libfuse.find([fuse2, libfuse.SONAME]) == libfuse.SONAME


def test_import_ignores_and_keeps_the_environment_of_other_programs():
    fuse2 = _libfuse2_path()
    code = ("import os, dsfs.mountd.direct as d;"
            "print(d.mfusepy.fuse_version_major, d._lib._name,"
            " os.environ['FUSE_LIBRARY_PATH'], os.environ['FUSE_LIBRARY_NAME'])")
    env = dict(os.environ, FUSE_LIBRARY_PATH=fuse2, FUSE_LIBRARY_NAME="fuse")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "3" and "libfuse3.so" in out[1]
    assert out[2:] == [fuse2, "fuse"]


def test_published_mount_binds_libfuse3_when_libfuse2_comes_first(local_cli, local_mounts, tmp_path,
                                                                   monkeypatch):
    src = write_tree(tmp_path / "src", {"a.txt": "hello\n", "d/b.bin": b"\x00" * 5000})
    v = local_cli("create", "ds", "--root").strip()
    local_cli("add", v, str(src))
    local_cli("publish", v)
    # The daemon inherits an environment that points every mfusepy user at libfuse 2.
    monkeypatch.setenv("FUSE_LIBRARY_PATH", _libfuse2_path())
    monkeypatch.setenv("FUSE_LIBRARY_NAME", "fuse")
    record = local_mounts.mount("ds", tmp_path / "mnt")
    assert record.adapter == "direct"
    assert (tmp_path / "mnt" / "a.txt").read_text() == "hello\n"
    assert sorted(os.listdir(tmp_path / "mnt")) == ["a.txt", "d"]
    maps = Path(f"/proc/{record.pid}/maps").read_text()
    assert "libfuse3.so.3" in maps
    assert "libfuse.so.2" not in maps
    local_mounts.umount(tmp_path / "mnt")
