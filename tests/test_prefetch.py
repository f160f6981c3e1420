"""Prefetch: the policy driven with a fake clock and fake reads (no FUSE), then real mounts:
an order hint before a shuffled multi-process epoch, folder-order pushes, a tiny cache, --warm,
and S3 faults during prefetch."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import write_tree
from dsfs.cache.prefetch import Item, Prefetcher


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def items(n: int, size: int = 100) -> list[Item]:
    return [Item(key, size) for key in range(1, n + 1)]


def run(policy: Prefetcher, limit: int = 1000) -> list[int]:
    """Take every job the window allows and finish it; the keys, in order."""
    jobs = policy.take(limit)
    for job in jobs:
        policy.done(job)
    return [j.key for j in jobs]


@pytest.mark.parametrize("ahead_files, ahead_bytes, expected", [
    (4, 10_000, [1, 2, 3, 4]),      # bounded by files
    (100, 350, [1, 2, 3]),          # bounded by bytes
    (100, 50, [1]),                 # one file bigger than the budget still goes
])
def test_a_hint_prefetches_a_bounded_window(ahead_files, ahead_bytes, expected):
    policy = Prefetcher(ahead_files=ahead_files, ahead_bytes=ahead_bytes, clock=Clock())
    policy.hint(items(20))
    assert run(policy) == expected
    assert run(policy) == []  # the window is full until the reader moves


def test_reads_move_the_window_and_count_what_was_ahead():
    policy = Prefetcher(ahead_files=4, clock=Clock())
    policy.hint(items(20))
    run(policy)
    assert [policy.saw(k) for k in (1, 2)] == ["ahead", "ahead"]
    assert run(policy) == [5, 6]
    assert policy.saw(9) == "miss"  # the reader jumped: 7 and 8 are skipped, not fetched
    assert run(policy) == [10, 11, 12, 13]
    stats = policy.stats()
    assert (stats["ahead"], stats["misses"], stats["skipped"]) == (2, 1, 2)


def test_a_job_in_flight_is_late_not_a_miss_and_failures_are_not_retried():
    policy = Prefetcher(ahead_files=2, clock=Clock())
    policy.hint(items(5))
    first, second = policy.take(2)
    assert policy.saw(first.key) == "late"
    policy.done(first)
    policy.done(second, ok=False)
    assert [j.key for j in policy.take(5)] == [3]  # 2 failed: its read will meet the failure
    assert policy.saw(second.key) == "miss"


def test_every_mark_every_th_item_is_not_pushed():
    policy = Prefetcher(ahead_files=10, mark_every=4, clock=Clock())
    policy.hint(items(10))
    assert [j.push for j in policy.take(10)] == [True, True, True, False] * 2 + [True, True]


def test_leaving_the_order_stops_and_coming_back_resumes():
    policy = Prefetcher(ahead_files=2, leave_after=3, clock=Clock())
    policy.hint(items(10))
    run(policy)
    for key in (100, 101):
        assert policy.saw(key) == "off"
    assert not policy.wants_follow()
    policy.saw(102)
    assert policy.wants_follow()
    policy.saw(2)  # back in order: window is 3..4
    assert run(policy) == [3, 4]
    policy.saw(4)
    for key in (100, 101, 102):
        policy.saw(key)
    assert run(policy) == []  # left again: nothing more


def test_idle_stops_and_a_read_resumes():
    clock = Clock()
    policy = Prefetcher(ahead_files=2, idle=10, clock=clock)
    policy.hint(items(10))
    assert run(policy) == [1, 2]
    policy.saw(2)
    clock.now = 11
    assert run(policy) == []  # nobody read for 11 s
    policy.saw(3)
    assert run(policy) == [4, 5]


def test_follow_extends_in_folder_order():
    asked = []

    def extend(last: Item) -> list[Item]:
        asked.append(last.key)
        return [Item(k, 10) for k in range(last.key + 1, min(last.key + 4, 12))]

    policy = Prefetcher(ahead_files=5, clock=Clock())
    policy.follow([Item(1, 10), Item(2, 10)], extend)
    assert run(policy) == [2, 3, 4, 5, 6]  # item 1 is the read that started it
    policy.saw(6)
    assert run(policy) == [7, 8, 9, 10, 11]
    policy.saw(11)
    assert run(policy) == [] and asked == [2, 5, 8, 11]


def test_stop_wakes_waiting_workers():
    policy = Prefetcher(clock=Clock())
    policy.stop()
    policy.hint(items(3))
    assert policy.wait(4, timeout=5) == []


# -- real mounts ----------------------------------------------------------------------------------

def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def _publish(cli, tmp_path, files: dict[str, bytes]) -> str:
    write_tree(tmp_path / "src", files)
    vid = cli("create", "ds").strip()
    cli("add", vid, str(tmp_path / "src"))
    cli("publish", vid)
    return vid


def _stats(mnt) -> dict:
    return json.loads(os.getxattr(mnt, "user.dsfs.stats"))


def _wait_for(check, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return found


def _digests(args):
    root, paths = args
    out = []
    for p in paths:
        with open(os.path.join(root, p), "rb") as f:
            out.append((p, hashlib.sha256(f.read()).hexdigest()))
        time.sleep(0.002)  # a loader that does some work per sample (decoding, augmenting)
    return out


@pytest.fixture
def prefetch_local(tmp_path, monkeypatch):
    """Mounts of a local store prepare files ahead too (prefetch_local: true; off by default)."""
    config = tmp_path / "prefetch-local.yaml"
    config.write_text("prefetch_local: true\n")
    monkeypatch.setenv("DSFS_CONFIG", str(config))


def test_an_order_hint_serves_a_shuffled_four_process_epoch_ahead(cli, mounts, tmp_path, prefetch_local):
    """The loader lists the version, sends the epoch's shuffled order, and four processes read
    their share of it: every byte is right, and most files never reach the daemon as a read
    (their verified bytes were pushed into the page cache) or were prepared before their read."""
    files = {f"d{i % 5}/f{i:04d}.bin": _rand(2000 + 53 * i, i) for i in range(400)}
    vid = _publish(cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    listed = sorted(os.path.relpath(os.path.join(d, n), mnt) for d, _, ns in os.walk(mnt) for n in ns)
    assert listed == sorted(files)
    order = list(files)
    random.Random(3).shuffle(order)
    (tmp_path / "order.txt").write_text("".join(p + "\n" for p in order))
    cli("prefetch", str(mnt), "--order", str(tmp_path / "order.txt"))
    _wait_for(lambda: _stats(mnt)["prefetch"]["prepared"] >= 200, "the first window")
    shares = [(str(mnt), order[i:i + 25]) for i in range(0, len(order), 25)]  # batches, in order
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        got = dict(pair for share in pool.imap(_digests, shares) for pair in share)
    assert got == {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    stats = _stats(mnt)
    prefetch, reads = stats["prefetch"], stats["requests"].get("read", 0)
    assert prefetch["hints"] == 1 and prefetch["order"] == len(files) and prefetch["hint_unknown"] == 0
    assert prefetch["pushed"] >= len(files) * 3 // 4, prefetch
    assert reads <= len(files) // 4, (reads, prefetch)  # mostly served by the kernel
    assert prefetch["misses"] <= len(files) // 10, prefetch


def test_cold_reads_in_folder_order_push_the_next_files(local_cli, local_mounts, tmp_path, prefetch_local):
    """Without a hint, a cold read of a small file prepares the files after it in its chunk
    (folder order) and pushes them: a walk that reads every file lets most of them be answered
    by the kernel, and the bytes are right."""
    files = {f"d{i // 100}/f{i:04d}.bin": _rand(1000 + 31 * i, i) for i in range(300)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    for folder, _dirs, names in sorted(os.walk(mnt)):
        for name in sorted(names):
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                assert f.read() == files[os.path.relpath(path, mnt)]
            time.sleep(0.001)  # a reader that does some work per file
    prefetch = _stats(mnt)["prefetch"]
    assert prefetch["advised"] >= 1 and prefetch["pushed"] >= 100, prefetch
    assert prefetch["hinted"] is False


@pytest.mark.fuse
def test_prefetch_under_a_tiny_cache_never_evicts_what_comes_next(seaweed_server, monkeypatch,
                                                                   tmp_path, cache_dir):
    """An S3 mount with an 8 MiB disk cache and a hint over 24 MB of files: prefetch stays a
    small share of the cache ahead, so every file is fetched from the store once, never evicted
    before its read and fetched again."""
    from conftest import Cli
    from mounting import Mounts

    seaweed_server.apply_env(monkeypatch)
    config = tmp_path / "dsfs.yaml"
    config.write_text("neighbour_bytes: 0\n")  # demand misses fetch no neighbours: count prefetch alone
    monkeypatch.setenv("DSFS_CONFIG", str(config))
    cli = Cli(seaweed_server.new_bucket(), cache_dir)
    files = {f"f{i:03d}.bin": _rand(200_000 + 1000 * i, 500 + i) for i in range(120)}
    vid = _publish(cli, tmp_path, files)
    mounts = Mounts(cli.store, cache_dir)
    mnt = tmp_path / "mnt"
    try:
        mounts.mount(vid, mnt, cache_size="8M")
        order = sorted(files)
        random.Random(5).shuffle(order)
        os.listdir(mnt)
        from dsfs import prefetch

        assert prefetch(mnt, [str(mnt / p) for p in order]) == len(order)
        for rel in order:
            assert (mnt / rel).read_bytes() == files[rel]
        stats = _stats(mnt)
        total = sum(len(d) for d in files.values())
        # 'fetched' also counts failed store attempts: a little slack, far below a refetch epoch
        assert stats["cache"]["fetched"] <= total * 1.15, stats
        assert stats["prefetch"]["prepared"] >= len(files) // 2, stats["prefetch"]
        assert json.loads(cli("cache", "stats", "--json"))["size"] <= 12 << 20
    finally:
        mounts.cleanup()


def test_warm_reads_the_whole_version_and_status_shows_it(cli, mounts, store_url, tmp_path):
    """--warm on a local store reads the chunks into the page cache; on S3 it fills the disk
    cache, so the epoch that follows fetches nothing more."""
    files = {f"d{i % 3}/f{i:03d}.bin": _rand(20_000 + i, i) for i in range(90)}
    vid = _publish(cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt, warm=True)

    def finished():
        (doc,) = json.loads(cli("status", "--json"))
        return doc["warm"] if doc["warm"]["state"] == "done" else None

    warm = _wait_for(finished, "the warm to finish")
    assert warm["done"] == warm["total"] >= sum(len(d) for d in files.values())
    assert "warm done 100%" in cli("status")
    before = _stats(mnt)
    assert before["prefetch"]["warm"]["state"] == "done"
    assert all((mnt / p).read_bytes() == d for p, d in files.items())
    if store_url.startswith("s3://"):
        assert before["cache"]["fetched"] >= sum(len(d) for d in files.values())
        assert _stats(mnt)["cache"]["fetched"] == before["cache"]["fetched"]  # all from the cache


def test_a_local_store_only_advises_the_disk_by_default(local_cli, local_mounts, tmp_path):
    """Without prefetch_local, a local store's mount reads nothing ahead, pushes nothing and
    follows no folder order: it names the chunk ranges of the hinted files to the kernel
    (posix_fadvise WILLNEED), a bounded distance ahead of the reader, and every read is a demand
    read (the reader keeps the CPU). A hint that pushes nothing is dropped when preparing is on:
    see the next tests."""
    files = {f"d{i // 50}/f{i:03d}.bin": _rand(1000 + i, i) for i in range(100)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    order = list(reversed(list(files)))
    (tmp_path / "order.txt").write_text("".join(p + "\n" for p in order))
    local_cli("prefetch", str(mnt), "--order", str(tmp_path / "order.txt"))
    _wait_for(lambda: _stats(mnt)["prefetch"]["advised"] > 0, "advice on the hinted files")
    for path in order:
        assert (mnt / path).read_bytes() == files[path]
    stats = _stats(mnt)
    prefetch = stats["prefetch"]
    assert prefetch["prepares"] is False and prefetch["order"] == 0, prefetch
    assert 0 < prefetch["advised"] <= len(files) and prefetch["prepared"] == prefetch["pushed"] == 0, prefetch
    assert stats["requests"]["read"] == len(files)


def test_a_local_stores_advice_keeps_a_bounded_distance_ahead_of_the_reader(local_cli, local_mounts, tmp_path):
    """The advice along a local store's hint runs AHEAD_FILES files past the furthest hinted
    file read, no further: with nothing read yet it stops there, and a read further on in the
    order moves it on."""
    from dsfs.cache.prefetch import AHEAD_FILES

    files = {f"d{i // 100}/f{i:04d}.bin": _rand(100, i) for i in range(AHEAD_FILES + 200)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    order = sorted(files, reverse=True)
    (tmp_path / "order.txt").write_text("".join(p + "\n" for p in order))
    local_cli("prefetch", str(mnt), "--order", str(tmp_path / "order.txt"))
    _wait_for(lambda: _stats(mnt)["prefetch"]["advised"] >= AHEAD_FILES, "the first stretch of advice")
    time.sleep(0.3)  # (it would go on within milliseconds if it were not bounded)
    assert _stats(mnt)["prefetch"]["advised"] == AHEAD_FILES
    assert (mnt / order[250]).read_bytes() == files[order[250]]  # 250 + AHEAD_FILES: past the end
    _wait_for(lambda: _stats(mnt)["prefetch"]["advised"] == len(files), "the advice to move on to the end")


def test_a_loader_that_never_lists_its_folders_still_gets_pushes(local_cli, local_mounts, tmp_path,
                                                                  prefetch_local):
    """A loader that opens files by path never lists their folders, so the kernel holds no inode
    for a file until its read: the daemon lists each folder of the order through the mount
    (readdirplus gives the kernel every entry), after which pushes land and the reads of pushed
    files never reach the daemon. Every byte is right."""
    files = {f"d{i % 4}/f{i:03d}.bin": _rand(500 + i, i) for i in range(200)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    order = sorted(files)
    random.Random(5).shuffle(order)
    (tmp_path / "order.txt").write_text("".join(p + "\n" for p in order))
    local_cli("prefetch", str(mnt), "--order", str(tmp_path / "order.txt"))
    _wait_for(lambda: _stats(mnt)["prefetch"]["pushed"] >= 100, "pushes")
    before = _stats(mnt)
    for path in order:
        assert (mnt / path).read_bytes() == files[path]
    after = _stats(mnt)
    prefetch = after["prefetch"]
    assert prefetch["listed"] == 4 and prefetch["unknown"] == 0 and prefetch["dropped"] == 0, prefetch
    reads = after["requests"].get("read", 0) - before["requests"].get("read", 0)
    assert reads < len(files) // 2, (reads, prefetch)


def test_a_hint_is_dropped_when_its_files_cannot_be_given_inodes(local_cli, local_mounts, tmp_path,
                                                                  prefetch_local):
    """When the daemon cannot reach its files through the mount (here another filesystem is
    mounted over it), no push could land: after a run of such files a local store's order is
    dropped (preparing would only take CPU from the reader)."""
    from dsfs.mountd import control

    files = {f"f{i:03d}.bin": _rand(500 + i, i) for i in range(200)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    cover = tmp_path / "cover"
    cover.mkdir()
    root = os.open(mnt, os.O_RDONLY)  # the mount's root, still reachable once covered
    subprocess.run(["mount", "--bind", str(cover), str(mnt)], check=True)
    try:
        control.request(str(mnt), {"op": "prefetch", "paths": sorted(files)}, timeout=60)
        _wait_for(lambda: _stats(root)["prefetch"]["dropped"] == 1, "the order to be dropped")
    finally:
        subprocess.run(["umount", str(mnt)], check=True)
        os.close(root)
    prefetch = _stats(mnt)["prefetch"]
    assert prefetch["pushed"] == 0 and prefetch["unknown"] >= 64 and prefetch["order"] == 0, prefetch
    for path in sorted(files):
        assert (mnt / path).read_bytes() == files[path]


def test_a_stop_signal_while_pushing_ends_the_daemon_and_the_mount(local_cli, local_mounts, tmp_path,
                                                                    prefetch_local):
    """SIGTERM while readers run and prefetch pushes: a push into pages the kernel is reading
    waits for that read's answer, so prefetch stops while the loop still answers, and only then
    does the loop end. The daemon exits and the mount goes, whatever the readers were doing."""
    from mounting import wait_dead

    files = {f"d{i % 8}/f{i:04d}.bin": _rand(4096 + i, i) for i in range(1500)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(vid, mnt)
    order = sorted(files)
    random.Random(3).shuffle(order)
    reader = subprocess.Popen([sys.executable, "-c", (
        "import sys, os\n"
        "for p in sys.argv[2:]:\n"
        "    with open(os.path.join(sys.argv[1], p), 'rb') as f: f.read()\n"), str(mnt), *order],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import dsfs

        dsfs.prefetch(mnt, order)
        _wait_for(lambda: _stats(mnt)["prefetch"]["pushed"] >= 50, "pushes")
        os.kill(record.pid, signal.SIGTERM)
        wait_dead(record.pid, timeout=60)
        assert not os.path.ismount(mnt)
    finally:
        reader.kill()
        reader.wait()


def test_the_hint_cli_and_api_errors(local_cli, local_mounts, tmp_path):
    import dsfs

    vid = _publish(local_cli, tmp_path, {"a.bin": b"a" * 10})
    assert "not a dsfs mount" in local_cli.fails("prefetch", str(tmp_path), "--order", "-", code=3)
    with pytest.raises(dsfs.errors.NotFound, match="not a dsfs mount"):
        dsfs.prefetch(tmp_path, ["a.bin"])
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    assert "cannot read the order file" in local_cli.fails("prefetch", str(mnt), "--order",
                                                           str(tmp_path / "nope"), code=2)
    with pytest.raises(dsfs.errors.InvalidInput, match="not inside the mount"):
        dsfs.prefetch(mnt, [str(tmp_path / "a.bin")])
    local_cli("prefetch", str(mnt), "a.bin", "missing.bin")
    _wait_for(lambda: _stats(mnt)["prefetch"].get("hints") == 1, "the hint")
    assert _stats(mnt)["prefetch"]["hint_unknown"] == 1
    local_cli("prefetch", vid)  # a ref still warms the cache now


def test_hinted_sampler_sends_each_epoch_order(local_cli, local_mounts, tmp_path, prefetch_local):
    from dsfs.torch import HintedSampler

    files = {f"f{i}.bin": _rand(100 + i, i) for i in range(20)}
    vid = _publish(local_cli, tmp_path, files)
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)

    class Dataset:  # ImageFolder's shape: (path, target) pairs
        samples = [(str(mnt / name), 0) for name in sorted(files)]

        def __getitem__(self, i):
            return open(self.samples[i][0], "rb").read()

    sampler = HintedSampler(random.Random(1).sample(range(20), 20), Dataset())
    assert len(sampler) == 20
    for epoch in (1, 2):
        assert sorted(sampler) == list(range(20))
        _wait_for(lambda: _stats(mnt)["prefetch"].get("hints") == epoch, f"epoch {epoch}'s hint")
    assert _stats(mnt)["prefetch"]["order"] == 20


@pytest.mark.s3
def test_s3_faults_during_prefetch_never_give_wrong_bytes(moto_server, monkeypatch, tmp_path, cache_dir):
    """Every ranged GET of a chunk comes back with a lost tail that its Content-Length hides on
    the first two tries: prefetch jobs fail their checks and leave the files to the demand reads,
    which get byte-exact data; nothing unverified was pushed."""
    from conftest import Cli
    from mounting import Mounts
    from s3proxy import CuttingProxy

    moto_server.apply_env(monkeypatch)
    cli = Cli(moto_server.new_bucket(), cache_dir)
    files = {f"d{i % 3}/f{i:03d}.bin": _rand(3000 + 97 * i, 700 + i) for i in range(80)}
    vid = _publish(cli, tmp_path, files)
    chunk_gets = lambda method, path, n: method == "GET" and "/chunks/" in path and n % 3 != 0  # noqa: E731
    with CuttingProxy(moto_server.endpoint, cut=chunk_gets, honest_length=False) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
        mounts = Mounts(cli.store, cache_dir)
        mounts.allow(r"failed its checks|sha256 mismatch|chunk is truncated|size mismatch|refetching|"
                     r"broke off the response body")
        mnt = tmp_path / "mnt"
        try:
            mounts.mount(vid, mnt)
            os.listdir(mnt)
            order = sorted(files)
            random.Random(8).shuffle(order)
            from dsfs import prefetch

            prefetch(mnt, order)
            _wait_for(lambda: _stats(mnt)["prefetch"]["hints"] == 1, "the hint")
            for rel in order:
                try:
                    data = (mnt / rel).read_bytes()
                except OSError:
                    continue  # EIO when both tries were cut: an error, never wrong bytes
                assert data == files[rel], rel
            assert _stats(mnt)["prefetch"]["failed"] + _stats(mnt)["prefetch"]["prepared"] >= 1
        finally:
            mounts.cleanup()
    assert proxy.cuts > 0
