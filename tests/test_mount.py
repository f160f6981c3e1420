"""Read-only mounts, for real: the daemon in its own process, real tools over the mount."""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from conftest import tree_digest, write_tree
from dsfs.mountd import kernel

ADAPTERS = ["direct", "lowlevel"]


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


P1 = {
    "readme.txt": "first\n" * 500,
    "images/a.jpg": _rand(300_000, 1),
    "images/b.jpg": _rand(9_000, 2),
    "nested/deep/x.bin": _rand(5_000_000, 3),   # several 4 MiB blocks
    "nested/empty.txt": b"",
    "links/to_a": "-> ../images/a.jpg",
    "links/dangling": "-> nowhere",
    "emptydir/": "",
}
P2 = {
    "readme.txt": "second wins\n",
    "images/c.png": _rand(40_000, 4),
    "table.csv": "".join(f"{i},{i * i}\n" for i in range(20000)),  # deflated
}


@pytest.fixture
def merged(cli, tmp_path):
    """A published version with two parents and its own change-set; returns (id, expected dir)."""
    p1 = write_tree(tmp_path / "p1", P1)
    p2 = write_tree(tmp_path / "p2", P2)
    v1 = cli("create", "ds", "--root", "--name", "p1").strip()
    cli("add", v1, str(p1))
    cli("publish", v1)
    v2 = cli("create", "ds", "--root", "--name", "p2").strip()
    cli("add", v2, str(p2))
    cli("publish", v2)
    v3 = cli("create", "ds", "--parent", v1, "--parent", v2, "--name", "m").strip()
    own = write_tree(tmp_path / "own", {"own.txt": "mine", "images/b.jpg": _rand(1000, 7)})
    cli("add", v3, str(own))
    cli("remove", v3, "nested/empty.txt")
    cli("publish", v3)
    expected = tmp_path / "expected"
    for src in (p1, p2, own):
        shutil.copytree(src, expected, symlinks=True, dirs_exist_ok=True)
    os.unlink(expected / "nested/empty.txt")
    return v3, expected


def _sha256sum(root: Path) -> dict[str, str]:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and not p.is_symlink())
    out = subprocess.run(["sha256sum", *files], cwd=root, capture_output=True, text=True, check=True).stdout
    return {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in out.splitlines()}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_merged_view_with_real_tools(merged, mounts, tmp_path, adapter):
    vid, expected = merged
    mnt = tmp_path / "mnt"
    record = mounts.mount(vid, mnt, adapter=adapter)
    assert record.adapter == adapter and record.version == vid
    assert tree_digest(mnt) == {k: (v[0], v[1]) if v[0] == "dir" else v for k, v in tree_digest(expected).items()} \
        or _same_tree_ignoring_write_bits(mnt, expected)
    assert _sha256sum(mnt) == _sha256sum(expected)
    found = subprocess.run(["find", "."], cwd=mnt, capture_output=True, text=True, check=True).stdout.split()
    assert sorted(found) == sorted(subprocess.run(["find", "."], cwd=expected, capture_output=True,
                                                  text=True, check=True).stdout.split())
    tar = tmp_path / "out.tar"
    subprocess.run(["tar", "-cf", str(tar), "-C", str(mnt), "."], check=True)
    with tarfile.open(tar) as t:
        t.extractall(tmp_path / "untarred")
    assert _sha256sum(tmp_path / "untarred") == _sha256sum(expected)
    # Symlinks, stat, sizes, mtimes as recorded.
    assert os.readlink(mnt / "links/to_a") == "../images/a.jpg"
    assert os.readlink(mnt / "links/dangling") == "nowhere"
    assert (mnt / "links/to_a").read_bytes() == P1["images/a.jpg"]
    st, exp = os.stat(mnt / "images/a.jpg"), os.stat(expected / "images/a.jpg")
    assert (st.st_size, st.st_mtime_ns, st.st_mode & 0o444) == (exp.st_size, exp.st_mtime_ns, exp.st_mode & 0o444)
    assert st.st_mode & 0o222 == 0
    assert os.stat(mnt / "images/a.jpg").st_ino == st.st_ino  # stable
    ls = subprocess.run(["ls", "-la", str(mnt)], capture_output=True, text=True, check=True).stdout
    assert " .\n" in ls and " ..\n" in ls
    assert sorted(os.listdir(mnt / "images")) == os.listdir(mnt / "images")  # name order
    # Extended attributes.
    sha = hashlib.sha256(P1["images/a.jpg"]).hexdigest()
    assert os.getxattr(mnt / "images/a.jpg", "user.dsfs.sha256").decode() == sha
    assert os.getxattr(mnt / "images/a.jpg", "user.dsfs.version").decode() == vid  # the mounted one
    assert os.getxattr(mnt / "own.txt", "user.dsfs.source_version").decode() == vid
    assert os.getxattr(mnt / "images/a.jpg", "user.dsfs.source_version").decode() != vid
    assert os.getxattr(mnt / "own.txt", "user.dsfs.dataset") == b"ds"
    dump = subprocess.run(["getfattr", "-d", str(mnt / "table.csv")], capture_output=True, text=True).stdout
    assert "user.dsfs.sha256=" in dump
    with pytest.raises(OSError) as exc:
        os.getxattr(mnt / "own.txt", "user.other")
    assert exc.value.errno == errno.ENODATA
    # Random access inside a multi-block file.
    with open(mnt / "nested/deep/x.bin", "rb") as f:
        data = P1["nested/deep/x.bin"]
        for off in [0, 4 << 20, (4 << 20) - 3, 4_999_990, 123_457]:
            f.seek(off)
            assert f.read(100) == data[off:off + 100]
    vfs = os.statvfs(mnt)
    assert vfs.f_namemax == 255
    mounts.umount(mnt)
    assert not os.path.ismount(mnt)


def _same_tree_ignoring_write_bits(mnt: Path, expected: Path) -> bool:
    a, b = tree_digest(mnt), tree_digest(expected)
    if a.keys() != b.keys():
        return False
    for key in a:
        x, y = a[key], b[key]
        if x[0] != y[0]:
            return False
        if x[0] == "file" and (x[1] != y[1] or x[2] != y[2] & ~0o222):
            return False
        if x[0] == "symlink" and x[1] != y[1]:
            return False
        if x[0] == "dir" and x[1] != y[1] & ~0o222:
            return False
    return True


WRITE_OPS = {
    "create": lambda m: open(m / "new.txt", "w"),
    "open for write": lambda m: open(m / "own.txt", "r+b"),
    "append": lambda m: open(m / "own.txt", "ab"),
    "truncate": lambda m: os.truncate(m / "own.txt", 0),
    "unlink": lambda m: os.unlink(m / "own.txt"),
    "mkdir": lambda m: os.mkdir(m / "d"),
    "rmdir": lambda m: os.rmdir(m / "emptydir"),
    "rename": lambda m: os.rename(m / "own.txt", m / "o2.txt"),
    "symlink": lambda m: os.symlink("x", m / "l"),
    "link": lambda m: os.link(m / "own.txt", m / "hard"),
    "chmod": lambda m: os.chmod(m / "own.txt", 0o777),
    "utime": lambda m: os.utime(m / "own.txt", (1, 1)),
    "setxattr": lambda m: os.setxattr(m / "own.txt", "user.x", b"1"),
    "removexattr": lambda m: os.removexattr(m / "own.txt", "user.dsfs.sha256"),
    "mknod": lambda m: os.mkfifo(m / "fifo"),
}


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_every_write_gives_erofs(merged, mounts, tmp_path, adapter):
    vid, _ = merged
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt, adapter=adapter)
    for name, op in WRITE_OPS.items():
        with pytest.raises(OSError) as exc:
            op(mnt)
        assert exc.value.errno == errno.EROFS, f"{name}: {exc.value}"
    assert (mnt / "own.txt").read_text() == "mine"


def _many_files(cli, tmp_path, n: int) -> tuple[str, dict[str, str]]:
    rng = random.Random(5)
    src = tmp_path / "many"
    digests = {}
    for i in range(n):
        rel = f"d{i // 500:03d}/f{i:05d}.bin"
        data = rng.randbytes(rng.randint(100, 4000))
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        digests[rel] = hashlib.sha256(data).hexdigest()
    vid = cli("create", "many").strip()
    cli("add", vid, str(src))
    cli("publish", vid)
    return vid, digests


def _read_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_eight_threads_over_ten_thousand_files(cli, mounts, tmp_path):
    vid, digests = _many_files(cli, tmp_path, 10_000)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    paths = list(digests)
    random.Random(1).shuffle(paths)
    for epoch in range(2):  # the second epoch is served from the page cache
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            got = dict(zip(paths, pool.map(lambda p: _read_digest(str(mnt / p)), paths)))
        assert got == digests, f"epoch {epoch}"


def _worker(args):
    root, paths = args
    return [(p, _read_digest(os.path.join(root, p))) for p in paths]


def test_dataloader_style_four_worker_processes(cli, mounts, tmp_path):
    vid, digests = _many_files(cli, tmp_path, 2000)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    paths = sorted(digests)
    random.Random(2).shuffle(paths)
    batches = [(str(mnt), paths[i:i + 64]) for i in range(0, len(paths), 64)]
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        for _ in range(2):
            results = dict(pair for batch in pool.imap_unordered(_worker, batches) for pair in batch)
            assert results == digests


def test_torch_dataloader_if_installed(cli, mounts, tmp_path):
    torch = pytest.importorskip("torch", reason="torch is optional; the process-pool test covers the loop")
    vid, digests = _many_files(cli, tmp_path, 500)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)

    class Files(torch.utils.data.Dataset):
        def __init__(self):
            self.paths = sorted(digests)

        def __len__(self):
            return len(self.paths)

        def __getitem__(self, i):
            return self.paths[i], _read_digest(str(mnt / self.paths[i]))

    loader = torch.utils.data.DataLoader(Files(), batch_size=32, num_workers=4, shuffle=True)
    seen = {}
    for names, sums in loader:
        seen.update(zip(names, sums))
    assert seen == digests


def test_two_mounts_of_different_versions_share_the_cache(cli, mounts, tmp_path):
    big = _rand(3_000_000, 11)
    write_tree(tmp_path / "a", {"big.bin": big, "a.txt": "a"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(tmp_path / "a"))
    cli("publish", v1)
    v2 = cli("create", "ds").strip()
    write_tree(tmp_path / "b", {"b.txt": "b"})
    cli("add", v2, str(tmp_path / "b"))
    cli("publish", v2)
    m1, m2 = tmp_path / "m1", tmp_path / "m2"
    mounts.mount(v1, m1)
    mounts.mount(v2, m2)
    assert (m1 / "big.bin").read_bytes() == big
    before = json.loads(cli("cache", "stats", "--json"))
    assert (m2 / "big.bin").read_bytes() == big  # same bytes, already cached by the first mount
    after = json.loads(cli("cache", "stats", "--json"))
    assert after["size"] == before["size"]
    assert (m2 / "b.txt").read_text() == "b" and not (m1 / "b.txt").exists()
    status = json.loads(cli("status", "--json"))
    assert {s["version"] for s in status} == {v1, v2} and all(s["health"] == "ok" for s in status)
    assert all(s["cache_used"] == after["size"] for s in status)


def test_eviction_under_a_tiny_cache(cli, mounts, tmp_path):
    files = {f"f{i}.bin": _rand(1_500_000, 20 + i) for i in range(12)}  # 18 MB through an 8 MB cache
    write_tree(tmp_path / "src", files)
    vid = cli("create", "ds").strip()
    cli("add", vid, str(tmp_path / "src"))
    cli("publish", vid)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt, cache_size="8M")
    for _ in range(2):
        for name, data in files.items():
            assert (mnt / name).read_bytes() == data
    stats = json.loads(cli("cache", "stats", "--json"))
    assert stats["size"] <= 12 << 20  # bounded (diskcache culls a little past the limit)
    (status,) = json.loads(cli("status", "--json"))
    assert status["cache_limit"] == 8 << 20  # the mount's own bound, not the default
    assert "used of 8.0 MiB" in cli("status")


def test_mount_errors_are_clear(local_cli, tmp_path, local_mounts):
    local_mounts.allow("mount failed: (mountpoint|no dataset)")
    write_tree(tmp_path / "src", {"a": "1"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    err = local_cli.fails("mount", vid, str(tmp_path / "missing"), code=9)
    assert "mountpoint does not exist" in err
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert "mountpoint is not empty" in local_cli.fails("mount", vid, str(full), code=9)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no dataset or version matches ref: 'nope'" in local_cli.fails("mount", "nope", str(empty), code=3)
    assert "not a dsfs mount" in local_cli.fails("umount", str(empty), code=3)
    assert not os.path.ismount(full) and not os.path.ismount(empty)


def test_the_mount_command_forks_a_daemon_that_keeps_none_of_its_output(local_cli, local_mounts, tmp_path):
    """`dsfs mount` forks the daemon off itself: the command's captured output ends when the
    command does (the daemon holds no descriptor of it: stdin is /dev/null, stdout and stderr
    the mount's log), the mount serves, and a failure still comes back as the command's error."""
    local_mounts.allow("mount failed: no dataset")
    write_tree(tmp_path / "src", {"a.txt": "hello"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    base = [sys.executable, "-m", "dsfs", "--store", local_cli.store, "--cache-dir", str(local_cli.cache_dir)]
    done = subprocess.run([*base, "mount", vid, str(mnt)], capture_output=True, text=True, timeout=120)
    try:
        assert done.returncode == 0, done.stderr
        assert "mounted ds" in done.stderr and (mnt / "a.txt").read_text() == "hello"
        (record,) = json.loads(subprocess.run([*base, "status", "--json"], capture_output=True, text=True,
                                              check=True, timeout=60).stdout)
        fds = {os.readlink(f"/proc/{record['pid']}/fd/{fd}") for fd in os.listdir(f"/proc/{record['pid']}/fd")}
        assert os.devnull in fds and record["log"] in fds, fds
        assert not [fd for fd in fds if fd.startswith("pipe:")], fds
        with open(f"/proc/{record['pid']}/cmdline", "rb") as f:
            assert b"dsfs.mountd.daemon" not in f.read()  # the command itself, forked
    finally:
        subprocess.run([*base, "umount", str(mnt)], capture_output=True, timeout=120)
    assert not os.path.ismount(mnt)
    bad = subprocess.run([*base, "mount", "nope", str(mnt)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 3 and "no dataset or version matches ref: 'nope'" in bad.stderr, bad.stderr


def test_sequential_reads_reach_the_daemon_in_large_requests(local_cli, local_mounts, tmp_path):
    """The daemon raises the mount's kernel read-ahead (read_ahead, 1 MiB; it needs root, which
    the suite has): a file read in order costs one request per MiB, not one per 128 KiB."""
    data = _rand(5 << 20, 77)
    write_tree(tmp_path / "src", {"big.bin": data})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    bdi = Path(kernel.bdi_path(str(mnt)))

    def tuned():
        (doc,) = json.loads(local_cli("status", "--json"))
        return doc["read_ahead_kb"]

    deadline = time.monotonic() + 30
    while tuned() is None:
        assert time.monotonic() < deadline, "the daemon never set the read-ahead"
        time.sleep(0.05)
    assert os.geteuid() == 0 and tuned() == 1024 == int(bdi.read_text())
    with open(mnt / "big.bin", "rb", buffering=0) as f:
        got = b"".join(iter(lambda: f.read(1 << 20), b""))
    assert got == data
    assert json.loads(os.getxattr(mnt, "user.dsfs.stats"))["requests"]["read"] <= 6


def test_warm_walk_and_reads_stay_in_the_kernel(local_cli, local_mounts, tmp_path):
    """A second walk, stat and read of every file of a published version (the second epoch)
    costs the direct adapter's daemon no request: listings, names, attributes and bytes all come
    from the kernel's caches. The daemon's counters are on the root's user.dsfs.stats."""
    files = {f"d{i % 4}/f{i:03d}.bin": _rand(1000 + 37 * i, i) for i in range(200)}
    write_tree(tmp_path / "src", files)
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    mnt = tmp_path / "mnt"
    assert local_mounts.mount(vid, mnt).adapter == "direct"

    def epoch() -> dict[str, int]:
        seen = {}
        for folder, _dirs, names in os.walk(mnt):
            for name in names:
                path = os.path.join(folder, name)
                os.stat(path)
                with open(path, "rb") as f:
                    seen[os.path.relpath(path, mnt)] = f.read()
        assert seen == {k: v for k, v in files.items()}
        stats = json.loads(os.getxattr(mnt, "user.dsfs.stats"))
        return {op: n for op, n in stats["requests"].items() if op != "getxattr"}

    first = epoch()
    pushed = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["prefetch"]["pushed"]
    assert first["read"] + pushed >= len(files) and first["readdirplus"] >= 5  # pushed: never read
    assert epoch() == first
    assert "user.dsfs.stats" not in os.listxattr(mnt)


def test_a_published_view_answers_listed_inodes_from_memory(local_cli, local_store_url, cache_dir, tmp_path):
    """A published version's view remembers the nodes a listing gave out: the reads that follow
    a walk ask the index nothing (a cold epoch's commonest request is one SQLite query fewer)."""
    from dsfs.cache import open_cache
    from dsfs.config import load_settings
    from dsfs.mountd.view import VersionView
    from dsfs.repo import Repository

    files = {f"d{i % 3}/f{i:03d}": f"file {i}" for i in range(60)}
    src = write_tree(tmp_path / "src", files)
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(src))
    local_cli("publish", vid)
    repo = Repository(load_settings(store=local_store_url, cache_dir=str(cache_dir)))
    manifest = repo.resolve(vid)
    cache = open_cache(repo.settings, repo.store)
    view = VersionView(manifest, repo.index(manifest), repo.store, cache)
    asked = []
    get = view.index.get
    view.index.get = lambda ino: asked.append(ino) or get(ino)
    try:
        folders = view.children(view.by_path("").ino)
        nodes = [n for folder in folders for n in view.children_at(folder.ino, 0)]
        asked.clear()
        assert sorted(view.read(view.getattr(n.ino), 0, 100).decode() for n in nodes) == sorted(files.values())
        assert asked == []
    finally:
        cache.close()
        repo.store.close()


@pytest.mark.parametrize("adapter", ADAPTERS)
def test_long_listing_resumes_across_calls(local_cli, local_mounts, tmp_path, adapter):
    """A folder far larger than one readdir reply is listed whole, once each, in byte order,
    and a second listing (the kernel's cached one for direct) is the same."""
    names = [f"{prefix}{i:04d}-{'x' * (i % 40)}" for i in range(1200) for prefix in ("a", "B")]
    write_tree(tmp_path / "src", {f"big/{n}": "" for n in names} | {"big/sub/f": "f"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt, adapter=adapter)
    expected = sorted(names + ["sub"], key=lambda n: n.encode())
    for _ in range(2):
        with os.scandir(mnt / "big") as it:
            got = [(e.name, e.is_dir(follow_symlinks=False)) for e in it]
        assert [n for n, _ in got] == expected
        assert [n for n, is_dir in got if is_dir] == ["sub"]
    assert sorted(os.listdir(mnt / "big" / "sub")) == ["f"]


@pytest.mark.fuse
def test_an_s3_epoch_of_small_files_costs_few_gets(moto_server, monkeypatch, tmp_path, cache_dir):
    """Through a mount of an S3 store, a miss on a small file brings in its neighbours in the
    same chunk: an epoch over 300 small files in shuffled order needs a handful of ranged GETs,
    not 300, and every byte is still right."""
    from conftest import Cli
    from mounting import Mounts

    moto_server.apply_env(monkeypatch)
    cli = Cli(moto_server.new_bucket(), cache_dir)
    files = {f"d{i % 3}/f{i:03d}.bin": _rand(2000 + 97 * i, 300 + i) for i in range(300)}
    write_tree(tmp_path / "src", files)
    vid = cli("create", "ds").strip()
    cli("add", vid, str(tmp_path / "src"))
    cli("publish", vid)
    mounts = Mounts(cli.store, cache_dir)
    mnt = tmp_path / "mnt"
    try:
        mounts.mount(vid, mnt)
        order = sorted(files)
        random.Random(4).shuffle(order)
        for rel in order:
            assert (mnt / rel).read_bytes() == files[rel]
        cache = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]
        assert cache["misses"] <= 30 and cache["neighbours"] >= 300 - cache["misses"]  # a GET per miss
    finally:
        mounts.cleanup()
