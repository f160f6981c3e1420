"""Shared fixtures: stores on every backend, and a way to run the CLI in-process."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

pytest_plugins = ["s3servers"]

STORE_KINDS = [
    "local",
    pytest.param("moto", marks=pytest.mark.s3),
    pytest.param("seaweed", marks=pytest.mark.s3),
]


FUSE_FIXTURES = {"mounts", "local_mounts"}


def fuse_unusable() -> str | None:
    """Why FUSE mounts cannot work on this machine, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing (load the fuse module; in a container pass --device /dev/fuse)"
    try:
        os.close(os.open("/dev/fuse", os.O_RDWR))
    except OSError as exc:
        return f"/dev/fuse cannot be opened: {exc.strerror} (in a container pass --device /dev/fuse)"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (apt-get install fuse3, or run scripts/bootstrap)"
    return None


def _mounts(item) -> bool:
    return bool(FUSE_FIXTURES & set(getattr(item, "fixturenames", ()))) or bool(item.get_closest_marker("fuse"))


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(config, items):
    """Tests that mount (the mounts fixtures, or marked ``fuse``) skip, with the reason, where
    FUSE cannot work, instead of erroring one by one.

    A mount test runs on the local store and on SeaweedFS (a real S3 server) by default; its moto
    variant is marked ``slow``. The store client itself is tested on all three everywhere else
    (test_store, test_cli, the fault tests), and the mount layer above it does not change with
    the server: the duplicate costs minutes of every run and finds nothing the others do not."""
    reason = fuse_unusable()
    skip = pytest.mark.skip(reason=f"FUSE is unusable here: {reason}") if reason else None
    for item in items:
        if not _mounts(item):
            continue
        if skip is not None:
            item.add_marker(skip)
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("store_url") == "moto":
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def cache_dir(tmp_path):
    """The test's cache folder. When the test ends, every mount daemon log under it must be free
    of warnings, errors and tracebacks the test did not expect (``mounting.allow``)."""
    import mounting

    path = tmp_path / "cache"
    path.mkdir()
    yield path
    bad = mounting.unexpected_log_lines(path)
    assert not bad, "daemon logged unexpected lines:\n" + "\n".join(bad[:20])


@pytest.fixture
def daemon_logs(cache_dir):
    """``daemon_logs.allow(pattern)``: a daemon log line this test expects."""
    import functools

    import mounting

    return types.SimpleNamespace(allow=functools.partial(mounting.allow, cache_dir))


@pytest.fixture(params=STORE_KINDS)
def store_url(request, tmp_path, monkeypatch) -> str:
    """A fresh, empty store on each backend, with the environment set to reach it."""
    if request.param == "local":
        url = str(tmp_path / "store")
    else:
        server = request.getfixturevalue(f"{request.param}_server")
        server.apply_env(monkeypatch)
        url = server.new_bucket()
    return url


@pytest.fixture
def local_store_url(tmp_path) -> str:
    return str(tmp_path / "store")


class Cli:
    """Runs ``dsfs`` in-process with fixed global options; returns (code, stdout, stderr)."""

    def __init__(self, store: str, cache_dir: Path) -> None:
        self.store, self.cache_dir = store, cache_dir

    def run(self, *args: str) -> tuple[int, str, str]:
        from dsfs.cli import main

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(["--store", self.store, "--cache-dir", str(self.cache_dir), "-q", *args])
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 2
        return code, out.getvalue(), err.getvalue()

    def __call__(self, *args: str) -> str:
        code, out, err = self.run(*args)
        assert code == 0, f"dsfs {' '.join(args)} failed ({code}): {err}"
        return out

    def fails(self, *args: str, code: int = 1) -> str:
        got, out, err = self.run(*args)
        assert got == code, f"dsfs {' '.join(args)}: expected exit {code}, got {got}: {err}{out}"
        assert "Traceback" not in err
        return err


@pytest.fixture
def cli(store_url, cache_dir) -> Cli:
    return Cli(store_url, cache_dir)


@pytest.fixture
def local_cli(local_store_url, cache_dir) -> Cli:
    return Cli(local_store_url, cache_dir)


def tree_digest(root: Path) -> dict[str, tuple]:
    """path -> (kind, sha256 or link target, mode) for every entry below ``root``."""
    result = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            st = full.lstat()
            if full.is_symlink():
                result[rel] = ("symlink", os.readlink(full))
            elif full.is_dir():
                result[rel] = ("dir", st.st_mode & 0o7777)
            else:
                result[rel] = ("file", hashlib.sha256(full.read_bytes()).hexdigest(), st.st_mode & 0o7777)
    return result


def write_tree(root: Path, files: dict[str, bytes | str]) -> Path:
    """Create files (bytes), symlinks ('-> target' strings) and empty folders (trailing '/')."""
    for rel, content in files.items():
        path = root / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str) and content.startswith("-> "):
            path.symlink_to(content[3:])
        else:
            path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return root


def add_caught_packing(cli: Cli, work: Path, **popen) -> tuple[str, Path, subprocess.Popen]:
    """A ``dsfs add`` of a big compressible file to a new draft of dataset ``ds``, run in its own
    process and caught while it packs a chunk (deflating keeps the packer busy long enough):
    (the draft, the folder added, the process, still running)."""

    draft = cli("create", "ds").strip()
    big = work / "big"
    big.mkdir()
    with open(big / "text.csv", "wb") as f:
        for i in range(400):
            f.write(b"".join(b"%d,%d,some text value\n" % (i, j) for j in range(20000)))
    env = {**os.environ, "DSFS_STORE": cli.store, "DSFS_CACHE_DIR": str(cli.cache_dir)}
    proc = subprocess.Popen([sys.executable, "-m", "dsfs", "add", draft, str(big)], env=env, **popen)
    tmp = Path(cli.cache_dir) / "tmp"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp.exists() and any(tmp.glob("pack-*/chunk-*"))):
        time.sleep(0.01)
    assert proc.poll() is None, "add finished before it was caught packing"
    return draft, big, proc


def _mounts_for(store: str, cache_dir: Path):
    """Mount helper bound to a store; unmounts and kills in cleanup (the ``cache_dir`` fixture
    then checks the daemons' logs)."""
    from mounting import Mounts

    m = Mounts(store, cache_dir)
    try:
        yield m
    finally:
        m.cleanup()


@pytest.fixture
def mounts(store_url, cache_dir):
    yield from _mounts_for(store_url, cache_dir)


@pytest.fixture
def local_mounts(local_store_url, cache_dir):
    yield from _mounts_for(local_store_url, cache_dir)

