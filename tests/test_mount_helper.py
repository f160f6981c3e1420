"""``mount.dsfs``: mount(8) and /etc/fstab lines mount a version, through the installed helper."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import write_tree
from mounting import wait_dead
from dsfs.mountd import registry
from dsfs.mountd.fstab import parse_options

HELPER_LINK = Path("/sbin/mount.dsfs")  # where mount(8) looks for helpers ("/sbin:/sbin/fs.d:/sbin/fs")


@pytest.fixture
def mount_helper():
    """/sbin/mount.dsfs pointing at this venv's console script, as the README says to install
    it; removed afterwards unless it was already there."""
    helper = Path(sys.executable).parent / "mount.dsfs"
    assert helper.exists(), "mount.dsfs is not installed (pip install -e .)"
    if os.geteuid() != 0:
        pytest.skip("installing /sbin/mount.dsfs needs root")
    if HELPER_LINK.is_symlink() and os.readlink(HELPER_LINK) == str(helper):
        yield HELPER_LINK
        return
    try:
        os.symlink(helper, HELPER_LINK)
    except OSError as exc:
        if exc.errno != errno.EEXIST:
            raise
        pytest.fail(f"{HELPER_LINK} exists and is not this venv's helper; remove it to run this test")
    try:
        yield HELPER_LINK
    finally:
        HELPER_LINK.unlink()


@pytest.fixture
def published(local_cli, tmp_path):
    src = write_tree(tmp_path / "src", {"a.txt": "alpha\n", "d/b.txt": "beta\n"})
    vid = local_cli("create", "pets").strip()
    local_cli("add", vid, str(src))
    local_cli("publish", vid)
    return vid


def _unmount_and_wait(local_mounts, mnt: Path) -> None:
    """umount(8) as root, then the daemon exits by itself and leaves no record."""
    record = registry.read_record(local_mounts.settings.state_dir, str(mnt))
    assert record is not None and record.state == "published" and not record.writable
    local_mounts.live.append((record.mountpoint, record.pid))  # cleaned up if the test fails
    subprocess.run(["umount", str(mnt)], check=True, capture_output=True)
    wait_dead(record.pid)
    assert registry.read_record(local_mounts.settings.state_dir, str(mnt)) is None
    assert registry.mount_fstype(str(mnt)) is None


def _options(local_cli, extra: str) -> str:
    return f"store={local_cli.store},cache_dir={local_cli.cache_dir},{extra}"


def test_mount_t_dsfs(local_cli, local_mounts, published, mount_helper, tmp_path):
    mnt = tmp_path / "pets"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "dsfs", "pets", str(mnt), "-o",
                           _options(local_cli, "ro,nosuid")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (mnt / "d" / "b.txt").read_text() == "beta\n"
    _unmount_and_wait(local_mounts, mnt)


def test_fstab_line_and_mount_a(local_cli, local_mounts, published, mount_helper, tmp_path):
    mnt = tmp_path / "pets"
    mnt.mkdir()
    fstab = tmp_path / "fstab"
    fstab.write_text(f"# a scratch fstab\npets@v1 {mnt} dsfs "
                     f"{_options(local_cli, '_netdev,nofail,ro,x-systemd.automount')} 0 0\n")
    done = subprocess.run(["mount", "-T", str(fstab), "-a"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (mnt / "a.txt").read_text() == "alpha\n"
    # The mount's source is the fstab line's spec, so a second `mount -a` sees it mounted.
    assert subprocess.run(["findmnt", "-n", "-o", "SOURCE", str(mnt)], capture_output=True,
                          text=True).stdout.strip() == "pets@v1"
    again = subprocess.run(["mount", "-T", str(fstab), "-a", "-v"], capture_output=True, text=True)
    assert again.returncode == 0 and "already mounted" in again.stdout + again.stderr, again
    _unmount_and_wait(local_mounts, mnt)


def test_mount_failures_are_one_line(local_cli, local_mounts, published, mount_helper, tmp_path):
    mnt = tmp_path / "pets"
    mnt.mkdir()
    for options, code, message in [
        (_options(local_cli, "ro"), 32, "mount.dsfs: error: no dataset or version matches ref: 'nosuch'"),
        (_options(local_cli, "bogus"), 1, "mount.dsfs: error: unknown mount option: 'bogus'"),
    ]:
        done = subprocess.run(["mount", "-t", "dsfs", "nosuch", str(mnt), "-o", options],
                              capture_output=True, text=True)
        assert (done.returncode, done.stderr.strip()) == (code, message)
    assert registry.mount_fstype(str(mnt)) is None
    local_mounts.allow("mount failed: no dataset or version matches ref")


@pytest.mark.parametrize("text, expected", [
    ("store=/srv/s,ro", dict(store="/srv/s", read_only=True, fuse=())),
    ("store=s3://b/p,cache_dir=/c,cache_size=2G,config=/etc/d.yaml,rw",
     dict(store="s3://b/p", cache_dir="/c", cache_size="2G", config="/etc/d.yaml", read_only=False)),
    ("defaults,_netdev,nofail,noauto,user,x-systemd.requires=network-online.target,comment=x",
     dict(store=None, fuse=())),
    ("allow_other,nosuid,nodev,noatime", dict(allow_other=True, fuse=("nosuid", "nodev", "noatime"))),
])
def test_options(text, expected):
    opts = parse_options(text)
    assert {k: getattr(opts, k, getattr(opts.mount, k, None)) for k in expected} == expected


@pytest.mark.parametrize("text, message", [
    ("store=", "mount option needs a value: 'store'"),
    ("bogus", "unknown mount option: 'bogus'"),
    ("cache_size=lots", "cache_size"),
])
def test_bad_options(text, message):
    from dsfs.errors import InvalidInput

    with pytest.raises(InvalidInput, match=message):
        parse_options(text)


def test_sloppy_ignores_unknown_options():
    assert parse_options("bogus,ro", sloppy=True).mount.read_only
