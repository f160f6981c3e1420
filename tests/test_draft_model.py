"""Reference-model tests of writable draft mounts.

A random sequence of operations is applied both to a draft mount and to a plain temp folder;
after every step the two trees must match (names, types, bytes, modes, symlink targets) and a
failing operation must fail the same way on both. After commit and a read-only remount of the
draft the tree still matches byte for byte. A second, fsx-style test hammers a few files with
random writes, truncates and reads and compares every read with a local file.
test_draft_view_model.py runs the same model through ``DraftView`` without FUSE, with many more
examples.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tree_digest, write_tree

NAMES = ["a", "b", "c"]
PATHS = NAMES + [f"{d}/{n}" for d in NAMES for n in NAMES]


def _digest(root: Path) -> dict:
    return tree_digest(root)


op_strategy = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(PATHS), st.integers(0, 3000), st.binary(min_size=0, max_size=600)),
    st.tuples(st.just("create"), st.sampled_from(PATHS), st.binary(max_size=300)),
    st.tuples(st.just("truncate"), st.sampled_from(PATHS), st.integers(0, 4000)),
    st.tuples(st.just("rename"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("unlink"), st.sampled_from(PATHS)),
    st.tuples(st.just("mkdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("rmdir"), st.sampled_from(PATHS)),
    st.tuples(st.just("symlink"), st.sampled_from(PATHS), st.sampled_from(PATHS)),
    st.tuples(st.just("chmod"), st.sampled_from(PATHS), st.sampled_from([0o600, 0o644, 0o755, 0o700])),
)


def apply(root: Path, op: tuple) -> int:
    """Run one operation under ``root``; return 0 or the errno it failed with."""
    kind, path = op[0], root / op[1]
    try:
        if kind == "write":
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            try:
                os.pwrite(fd, op[3], op[2])
            finally:
                os.close(fd)
        elif kind == "create":
            with open(path, "wb") as f:
                f.write(op[2])
        elif kind == "truncate":
            os.truncate(path, op[2])
        elif kind == "rename":
            os.rename(path, root / op[2])
        elif kind == "unlink":
            os.unlink(path)
        elif kind == "mkdir":
            os.mkdir(path)
        elif kind == "rmdir":
            os.rmdir(path)
        elif kind == "symlink":
            os.symlink(op[2], path)
        elif kind == "chmod":
            if path.is_symlink():
                return 0  # chmod follows symlinks: skip, the target may be outside the model
            os.chmod(path, op[2])
        return 0
    except OSError as exc:
        return exc.errno


BASE = {"a": "base a\n", "b/a": "base b/a\n" * 100, "b/b": "x", "c/": ""}


@pytest.fixture
def base_version(local_cli, tmp_path):
    src = write_tree(tmp_path / "base", BASE)
    vid = local_cli("create", "model").strip()
    local_cli("add", vid, str(src))
    local_cli("publish", vid)
    return src


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_strategy, min_size=1, max_size=25))
def test_draft_mount_matches_a_plain_folder(local_cli, local_mounts, base_version, tmp_path_factory, ops):
    work = tmp_path_factory.mktemp("model")
    model = work / "model"
    shutil.copytree(base_version, model, symlinks=True)
    vid = local_cli("create", "model").strip()
    mnt = work / "mnt"
    local_mounts.mount(vid, mnt)
    for step, op in enumerate(ops):
        expected = apply(model, op)
        got = apply(mnt, op)
        assert got == expected, f"step {step} {op}: errno {got} on the mount, {expected} on the model"
        assert _digest(mnt) == _digest(model), f"trees differ after step {step} {op}"
    local_mounts.umount(mnt)
    ro = work / "ro"
    local_mounts.mount(vid, ro, read_only=True)
    assert _digest(ro) == _digest(model)
    local_mounts.umount(ro)
    local_cli("delete", vid)


def test_fsx_random_io(local_cli, local_mounts, tmp_path):
    """20k random writes, truncates, reads, closes and reopens on 4 files, checked every step."""
    rng = random.Random(1234)
    base = write_tree(tmp_path / "base", {"lower.bin": rng.randbytes(200_000)})
    v1 = local_cli("create", "fsx").strip()
    local_cli("add", v1, str(base))
    local_cli("publish", v1)
    vid = local_cli("create", "fsx").strip()
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    ref = tmp_path / "ref"
    shutil.copytree(base, ref)
    names = ["lower.bin", "f1.bin", "f2.bin", "f3.bin"]
    handles = {}

    def handle(name):
        if name not in handles:
            handles[name] = (os.open(mnt / name, os.O_RDWR | os.O_CREAT, 0o644),
                             os.open(ref / name, os.O_RDWR | os.O_CREAT, 0o644))
        return handles[name]

    for step in range(20_000):
        name = rng.choice(names)
        fd_m, fd_r = handle(name)
        size = os.fstat(fd_r).st_size
        action = rng.random()
        if action < 0.45:
            offset = rng.randrange(0, max(size, 1) + 70_000)
            data = rng.randbytes(rng.randrange(1, 9000))
            assert os.pwrite(fd_m, data, offset) == os.pwrite(fd_r, data, offset)
        elif action < 0.55:
            new_size = rng.randrange(0, size + 50_000)
            os.ftruncate(fd_m, new_size)
            os.ftruncate(fd_r, new_size)
        elif action < 0.95:
            offset = rng.randrange(0, size + 10)
            length = rng.randrange(0, 20_000)
            assert os.pread(fd_m, length, offset) == os.pread(fd_r, length, offset), f"step {step}"
        else:
            fm, fr = handles.pop(name)
            os.close(fm)
            os.close(fr)
        assert os.fstat(handle(name)[0]).st_size == os.fstat(handle(name)[1]).st_size, f"step {step}"
    for fm, fr in handles.values():
        os.close(fm)
        os.close(fr)
    assert _digest(mnt) == _digest(ref)
    local_mounts.umount(mnt)
    ro = tmp_path / "ro"
    local_mounts.mount(vid, ro, read_only=True)
    assert _digest(ro) == _digest(ref)
