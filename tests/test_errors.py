"""Errors tell the truth: each kind of failure has its own exit code and a one-line message, a
refused command leaves nothing behind, and an unmount whose changes were not recorded says so."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import Cli, write_tree
from dsfs import errors
from mounting import wait_dead

DSFS = Path(errors.__file__).parent


@pytest.fixture
def published(local_cli, tmp_path) -> str:
    write_tree(tmp_path / "src", {"a.txt": "alpha", "d/b.txt": "beta"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    return vid


def test_every_error_class_has_its_documented_code_and_errno():
    expected = {
        errors.InvalidInput: (2, errno.EINVAL),
        errors.Ambiguous: (2, errno.EINVAL),
        errors.NotFound: (3, errno.ENOENT),
        errors.Conflict: (4, errno.EBUSY),
        errors.AlreadyExists: (4, errno.EEXIST),
        errors.Busy: (4, errno.EBUSY),
        errors.Corrupt: (5, errno.EIO),
        errors.ReadOnly: (6, errno.EROFS),
        errors.StoreUnavailable: (7, errno.EIO),
        errors.NoSpace: (8, errno.ENOSPC),
        errors.MountError: (9, errno.EIO),
        errors.NotRecorded: (10, errno.EIO),
    }
    tree = {cls for cls in vars(errors).values()
            if isinstance(cls, type) and issubclass(cls, errors.DsfsError) and cls is not errors.DsfsError}
    assert tree == set(expected)
    documented = dict(re.findall(r"^  (\d+) +(.+)$", errors.EXIT_CODES, re.M))
    readme = (DSFS.parent / "README.md").read_text()
    for cls, (code, err) in expected.items():
        assert (cls.exit_code, cls.errno) == (code, err), cls.__name__
        assert str(code) in documented
        assert re.search(rf"^\| {code} \|", readme, re.M), f"README.md has no row for exit code {code}"


def test_every_error_class_is_also_the_fitting_builtin():
    expected = {
        errors.InvalidInput: ValueError, errors.Ambiguous: ValueError, errors.AlreadyExists: ValueError,
        errors.NotFound: LookupError, errors.ReadOnly: PermissionError,
        errors.Conflict: RuntimeError, errors.NotRecorded: RuntimeError,
        errors.Busy: OSError, errors.Corrupt: OSError, errors.StoreUnavailable: OSError,
        errors.NoSpace: OSError, errors.MountError: OSError,
    }
    for cls, builtin in expected.items():
        exc = cls("some message")
        assert isinstance(exc, builtin), cls.__name__
        assert str(exc) == "some message" and exc.errno == cls.errno  # OSError's own errno is not used
    with pytest.raises(ValueError, match="name already exists"):
        raise errors.AlreadyExists("version name already exists in dataset 'ds': 'v1'")


def test_a_store_full_error_is_not_taken_for_a_full_temp_folder(local_cli, tmp_path, monkeypatch):
    """NoSpace is an OSError with errno ENOSPC: packing must not rename a full store's error."""
    from dsfs.store.local import LocalStore

    write_tree(tmp_path / "src", {"a.bin": b"x" * 1000})
    vid = local_cli("create", "ds").strip()

    def full(self, key, *args, **kwargs):
        raise errors.NoSpace(f"no space left in store {self.url!r} writing {key!r}")

    monkeypatch.setattr(LocalStore, "move_file", full)
    err = local_cli.fails("add", vid, str(tmp_path / "src"), code=8)
    assert "no space left in store" in err


def test_no_bare_base_class_is_raised():
    offenders = [f"{path.relative_to(DSFS.parent)}:{n}"
                 for path in sorted(DSFS.rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1)
                 if re.search(r"raise (errors\.)?DsfsError\(", line)]
    assert offenders == []


def test_exit_codes_of_representative_failures(local_cli, published, tmp_path):
    assert "invalid choice: 'frobnicate'" in local_cli.fails("frobnicate", code=2)
    assert "invalid dataset name: '../x'" in local_cli.fails("create", "../x", code=2)
    assert "no dataset or version matches ref: 'nope'" in local_cli.fails("show", "nope", code=3)
    assert "no such path in 'v1': 'zzz'" in local_cli.fails("prefetch", published, "zzz", code=3)
    assert "already exists" in local_cli.fails("create", "ds", "--name", "v1", code=4)
    assert "version is published and cannot change" in local_cli.fails(
        "add", published, str(tmp_path / "src"), code=6)
    manifest = Path(local_cli.store) / "versions" / published / "published.json"
    record = json.loads(manifest.read_text())
    manifest.write_text(json.dumps(record | {"schema": 99}))
    assert "unsupported schema version 99" in local_cli.fails("show", published, code=5)


def test_verify_finding_damage_exits_as_corrupt(local_cli, published):
    [chunk] = (Path(local_cli.store) / "versions" / published / "chunks").iterdir()
    chunk.unlink()
    code, out, _ = local_cli.run("verify", published)
    assert code == 5 and "chunk missing" in out


def test_refused_create_leaves_nothing_behind(local_cli, published):
    draft = local_cli("create", "ds").strip()
    before = sorted(p.relative_to(local_cli.store) for p in Path(local_cli.store).rglob("*"))
    err = local_cli.fails("create", "mix", "--parent", draft, code=2)
    assert f"parent must be published, '{draft}'" in err
    assert "is reserved" in local_cli.fails("create", "mix2", "--name", "draft", code=2)
    assert "the same parent is given twice" in local_cli.fails(
        "create", "mix3", "--parent", published, "--parent", published, code=2)
    assert sorted(p.relative_to(local_cli.store) for p in Path(local_cli.store).rglob("*")) == before
    assert [d["name"] for d in json.loads(local_cli("datasets", "--json"))] == ["ds"]


@pytest.mark.parametrize("argv", [
    ["datasets"], ["versions", "ds"], ["show", "ds"], ["ls", "ds"], ["log", "ds"],
    ["verify", "ds"], ["gc", "--dry-run"], ["tag", "ds", "--add", "x"], ["publish", "ds@draft"],
    ["prefetch", "ds"],
])
def test_a_store_that_does_not_exist_is_not_created_by_reading(argv, tmp_path, cache_dir):
    typo = tmp_path / "stroe"
    cli = Cli(str(typo), cache_dir)
    err = cli.fails(*argv, code=7)
    assert err == f"dsfs: error: store not found: '{typo}'\n"
    assert not typo.exists()


def test_create_starts_a_new_store(tmp_path, cache_dir):
    store = tmp_path / "new" / "store"
    cli = Cli(str(store), cache_dir)
    vid = cli("create", "ds").strip()
    assert store.is_dir()
    assert json.loads(cli("show", vid, "--json"))["dataset"] == "ds"


def test_busy_mountpoint_exits_4(local_cli, local_mounts, published, tmp_path):
    mnt = tmp_path / "mnt"
    local_mounts.mount(published, mnt)
    with open(mnt / "a.txt") as held:
        err = local_cli.fails("umount", str(mnt), code=4)
        assert err == f"dsfs: error: mountpoint is busy: '{mnt}' (close files using it, or --lazy)\n"
        assert held.read() == "alpha"
    local_cli("umount", str(mnt))


def test_umount_after_the_daemon_was_killed_says_the_changes_are_pending(local_cli, local_mounts, tmp_path):
    """kill -9 of a draft's daemon before umount: umount cleans up, exits 10 and names the
    command that records the changes; that command records them."""
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    (mnt / "kept.txt").write_text("kept")
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(record.pid)
    err = local_cli.fails("umount", str(mnt), code=10)
    assert err == (f"dsfs: error: cleaned up a stale mount (its daemon had died), but the daemon "
                   f"died before recording the changes; they are kept pending: run 'dsfs commit "
                   f"--pending {vid}'\n")
    assert not os.path.ismount(mnt)
    assert json.loads(local_cli("status", "--json"))[0]["health"] == "pending"
    assert json.loads(local_cli("commit", "--pending", vid, "--json"))["added"] == 1
    assert json.loads(local_cli("status", "--json")) == []
    assert [e["path"] for e in json.loads(local_cli("ls", vid, "--json"))] == ["kept.txt"]


def test_daemon_killed_during_the_commit(local_cli, local_mounts, tmp_path, cache_dir):
    """The commit cannot record its change-set while the test holds the local store's lock
    (every conditional write takes it): the daemon is killed inside its commit, and umount
    exits 10 instead of claiming success."""
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    write_tree(mnt, {"a.txt": "a" * 1000, "sub/b.bin": os.urandom(200_000)})
    env = {**os.environ, "DSFS_STORE": local_cli.store, "DSFS_CACHE_DIR": str(cache_dir)}
    lock = os.open(Path(local_cli.store) / ".lock", os.O_RDWR)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        umount = subprocess.Popen([sys.executable, "-m", "dsfs", "umount", str(mnt)], env=env,
                                  stderr=subprocess.PIPE, text=True)
        log = Path(record.log)
        deadline = time.monotonic() + 60
        while "finishing (commit)" not in log.read_text():
            assert time.monotonic() < deadline and umount.poll() is None, "the commit never started"
            time.sleep(0.02)
        os.kill(record.pid, signal.SIGKILL)
        _, err = umount.communicate(timeout=60)
    finally:
        os.close(lock)
    assert umount.returncode == 10, err
    assert f"kept pending: run 'dsfs commit --pending {vid}'" in err
    assert local_cli("ls", vid) == ""
    local_cli("commit", "--pending", vid)
    assert sorted(e["path"] for e in json.loads(local_cli("ls", vid, "-r", "--json"))) == [
        "a.txt", "sub", "sub/b.bin"]
