"""One set of mount options (``MountOptions``) for ``dsfs mount``, the daemon, ``mount.dsfs`` and
``dsfs.mounted()``: each option reaches the mount whichever way it was started."""

from __future__ import annotations

import argparse
import errno
import json
import time
from pathlib import Path

import pytest

import dsfs
from conftest import write_tree
from dsfs.config import load_settings
from dsfs.errors import Conflict, InvalidInput
from dsfs.mountd import registry
from dsfs.mountd.options import MountOptions, add_arguments


def test_options_cross_the_daemon_command_line_unchanged():
    parser = argparse.ArgumentParser()
    parser.add_argument("-v", "--verbose", action="store_true")
    add_arguments(parser)
    options = MountOptions(cache_size="1G", allow_other=True, fuse=["noatime,nodev", "fsname=x"],
                           adapter="direct", read_only=True, break_lease=True, warm=True, verbose=True)
    assert options.fuse == ("noatime", "nodev", "fsname=x")
    assert MountOptions.from_args(parser.parse_args(options.to_argv())) == options
    assert MountOptions.from_args(parser.parse_args([])) == MountOptions()


@pytest.mark.parametrize("given, message", [
    (dict(adapter="fast"), "unknown adapter: 'fast'"),
    (dict(cache_size="lots"), "cache size"),
])
def test_bad_options_fail_before_a_daemon_starts(given, message):
    with pytest.raises(InvalidInput, match=message):
        MountOptions(**given)


def _mount_line(root: Path) -> list[str]:
    """(source, options) of the mount at ``root`` in /proc/mounts."""
    for line in Path("/proc/mounts").read_text().splitlines():
        source, where, _, opts, *_ = line.split()
        if where == str(root):
            return [source, *opts.split(",")]
    raise AssertionError(f"{root} is not mounted")


@pytest.fixture
def versions(local_cli, tmp_path):
    """(a published version, a draft child of it) of dataset "ds"."""
    src = write_tree(tmp_path / "src", {"f.txt": "published"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(src))
    local_cli("publish", vid)
    return vid, local_cli("create", "ds").strip()


@pytest.fixture
def mounted(local_cli, cache_dir):
    def mount(ref: str, **options):
        return dsfs.mounted(ref, store=local_cli.store, cache_dir=str(cache_dir), **options)

    return mount


@pytest.mark.fuse
def test_mounted_read_only_serves_a_draft_read_only(mounted, versions):
    with mounted(versions[1], read_only=True) as root:
        assert (root / "f.txt").read_text() == "published"
        with pytest.raises(OSError) as exc:
            (root / "g.txt").write_text("no")
        assert exc.value.errno == errno.EROFS


@pytest.mark.fuse
def test_mounted_passes_fuse_options(mounted, versions):
    with mounted(versions[0], fuse=["noatime", "fsname=my-source"]) as root:
        line = _mount_line(root)
        assert line[0] == "my-source" and "noatime" in line


@pytest.mark.fuse
def test_mounted_allow_other(mounted, versions):
    with mounted(versions[0]) as root:
        assert "allow_other" not in _mount_line(root)
    with mounted(versions[0], allow_other=True) as root:
        assert "allow_other" in _mount_line(root)


@pytest.mark.fuse
def test_mounted_break_lease_takes_an_expired_lease_over(mounted, versions, local_cli, daemon_logs):
    daemon_logs.allow(r"mount failed: draft .* has a lease|taking over the expired lease")
    draft = versions[1]
    lease = Path(local_cli.store) / "leases" / f"{draft}.json"
    lease.parent.mkdir(parents=True, exist_ok=True)
    lease.write_text(json.dumps({"host": "elsewhere", "pid": 1, "since": "2026-01-01T00:00:00Z",
                                 "token": "t", "expires": time.time() - 5}))
    with pytest.raises(Conflict, match="expired; use --break-lease"):
        with mounted(draft):
            pass
    with mounted(draft, break_lease=True) as root:
        (root / "new.txt").write_text("written")
    assert not lease.exists()
    assert "new.txt" in {e["path"] for e in json.loads(local_cli("ls", draft, "--json"))}


@pytest.mark.fuse
def test_mounted_verbose_logs_at_debug(mounted, versions, local_cli, cache_dir):
    settings = load_settings(store=local_cli.store, cache_dir=str(cache_dir))
    for verbose in (False, True):
        fresh = local_cli("create", "ds").strip()  # its index is built by the mount: a DEBUG line
        with mounted(fresh, verbose=verbose, read_only=True) as root:
            log = registry.log_file(settings, str(root))
        assert ("DEBUG dsfs.resolver.build: building index" in Path(log).read_text()) == verbose
