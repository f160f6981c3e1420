"""Contract tests every ObjectStore must pass: a local folder, moto and SeaweedFS.

The S3 variants run against real servers on 127.0.0.1 (fixtures in s3servers.py) and carry the
``s3`` marker; ``-m "not s3"`` runs the local store alone.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import threading
import time
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from dsfs.config import MiB, Settings
from dsfs.errors import AlreadyExists, Conflict, InvalidInput, NotFound, StoreUnavailable
from dsfs.store import LocalStore, open_store
from dsfs.store.memory import MemoryStore
from dsfs.store.s3 import S3Store, parse_url

STORES = [
    pytest.param("local", id="local"),
    pytest.param("memory", id="memory"),
    pytest.param("moto", id="moto", marks=pytest.mark.s3),
    pytest.param("seaweed", id="seaweed", marks=pytest.mark.s3),
]


@pytest.fixture(params=STORES)
def store(request, tmp_path, monkeypatch):
    if request.param == "local":
        s = LocalStore(tmp_path / "store", create=True)
    elif request.param == "memory":
        s = open_store(f"memory://{tmp_path.name}")
        assert isinstance(s, MemoryStore) and open_store(f"memory://{tmp_path.name}") is s
    else:
        server = request.getfixturevalue(f"{request.param}_server")
        server.apply_env(monkeypatch)
        s = open_store(server.new_bucket(), Settings())
        assert isinstance(s, S3Store)
    yield s
    s.close()


@pytest.fixture(params=[STORES[2], STORES[3]])
def s3_server(request, monkeypatch):
    server = request.getfixturevalue(f"{request.param}_server")
    server.apply_env(monkeypatch)
    return server


def test_put_get_round_trip(store):
    data = bytes(range(256)) * 3
    etag = store.put("records/a.json", data)
    got, got_etag = store.get("records/a.json")
    assert got == data
    assert got_etag == etag
    info = store.head("records/a.json")
    assert (info.key, info.size, info.etag) == ("records/a.json", len(data), etag)


def test_empty_object(store):
    etag = store.put("empty", b"")
    assert store.get("empty") == (b"", etag)
    assert store.head("empty").size == 0
    assert store.get_range("empty", 0, 10) == b""


def test_etag_changes_on_write_and_has_no_quotes(store):
    first = store.put("k", b"one")
    second = store.put("k", b"two")
    assert first != second
    assert '"' not in first and '"' not in second
    assert store.get("k")[1] == second == store.head("k").etag
    assert [i.etag for i in store.list("k")] == [second]


def test_get_range(store):
    data = bytes(range(256)) * 4  # 1024 bytes
    store.put("blob", data)
    assert store.get_range("blob", 100, 50) == data[100:150]
    assert store.get_range("blob", 0, 1024) == data
    assert store.get_range("blob", 1000, 100) == data[1000:]  # runs past the end: short read
    assert store.get_range("blob", 1024, 10) == b""  # starts at the end
    assert store.get_range("blob", 5000, 10) == b""  # starts past the end
    assert store.get_range("blob", 10, 0) == b""  # zero length


def test_put_file_and_download_file_large(store, tmp_path):
    size = 20 * MiB + 123  # above the multipart threshold, not a multiple of the part size
    src = tmp_path / "big.bin"
    block = os.urandom(1 << 20)
    with open(src, "wb") as f:
        for i in range(20):
            f.write(bytes([i]) + block[1:])
        f.write(block[:123])
    uploaded = []
    etag = store.put_file("chunks/big", str(src), progress=uploaded.append)
    assert sum(uploaded) == size
    assert store.head("chunks/big").size == size
    assert store.head("chunks/big").etag == etag
    if isinstance(store, S3Store):
        assert "-" in etag  # a multipart upload's etag is "<md5 of md5s>-<parts>"

    dst = tmp_path / "out.bin"
    downloaded = []
    store.download_file("chunks/big", str(dst), progress=downloaded.append)
    assert sum(downloaded) == size
    assert _sha256(dst) == _sha256(src)
    assert store.get_range("chunks/big", 19 * MiB - 5, 10) == src.read_bytes()[19 * MiB - 5:][:10]


def test_put_file_small(store, tmp_path):
    src = tmp_path / "small.bin"
    src.write_bytes(b"small file")
    etag = store.put_file("small", str(src))
    assert store.get("small") == (b"small file", etag)


def test_move_file_uploads_and_consumes_the_file(store, tmp_path):
    src = tmp_path / "chunk.tmp"
    src.write_bytes(b"z" * 70_000)
    seen = []
    etag = store.move_file("versions/v/chunks/c-0000.zip", str(src), seen.append)
    assert not src.exists() and sum(seen) == 70_000
    assert store.get("versions/v/chunks/c-0000.zip") == (b"z" * 70_000, etag)


def test_local_move_file_renames_on_one_filesystem_and_copies_across(tmp_path):
    """A local store takes a finished chunk by rename when it is on the store's filesystem (no
    second write of its bytes), and copies it from another filesystem (here /dev/shm)."""
    store = LocalStore(tmp_path / "store", create=True)
    src = tmp_path / "same.tmp"
    src.write_bytes(b"same fs")
    ino = src.stat().st_ino
    store.move_file("versions/v/chunks/a.zip", str(src))
    assert (tmp_path / "store/versions/v/chunks/a.zip").stat().st_ino == ino
    other = Path("/dev/shm") / f"dsfs-test-{os.getpid()}.tmp"
    if os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.fail("/dev/shm is on the test folder's filesystem: the copy case is not reached")
    other.write_bytes(b"other fs")
    store.move_file("versions/v/chunks/b.zip", str(other))
    assert not other.exists()
    assert store.get("versions/v/chunks/b.zip")[0] == b"other fs"
    assert [i.key for i in store.list("versions/")] == ["versions/v/chunks/a.zip", "versions/v/chunks/b.zip"]


def test_put_if_absent(store):
    etag = store.put_if_absent("manifests/v1", b"first")
    with pytest.raises(AlreadyExists, match="manifests/v1"):
        store.put_if_absent("manifests/v1", b"second")
    assert store.get("manifests/v1") == (b"first", etag)


def test_put_if_match(store):
    old = store.put("refs/main", b"1")
    new = store.put_if_match("refs/main", b"2", old)
    assert store.get("refs/main") == (b"2", new)
    with pytest.raises(Conflict, match="refs/main"):
        store.put_if_match("refs/main", b"3", old)  # stale etag
    assert store.get("refs/main")[0] == b"2"
    # The etag head() reports works as well as the one get() or put returned.
    store.put_if_match("refs/main", b"4", store.head("refs/main").etag)


def test_put_if_match_on_deleted_key_conflicts(store):
    etag = store.put("refs/gone", b"1")
    store.delete("refs/gone")
    with pytest.raises(Conflict, match="refs/gone"):
        store.put_if_match("refs/gone", b"2", etag)


def test_compare_and_swap_race_loses_no_update(store):
    """8 threads each add 1 to a JSON counter 10 times with a CAS retry loop: 80, not less."""
    key = "counters/c"
    store.put(key, json.dumps({"n": 0}).encode())
    errors: list[BaseException] = []
    conflicts = [0]
    start = threading.Barrier(8)

    def worker() -> None:
        try:
            start.wait()
            for _ in range(10):
                while True:
                    data, etag = store.get(key)
                    value = json.loads(data)["n"] + 1
                    try:
                        store.put_if_match(key, json.dumps({"n": value}).encode(), etag)
                        break
                    except Conflict:
                        conflicts[0] += 1
        except BaseException as exc:  # report in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    assert json.loads(store.get(key)[0])["n"] == 80


def test_put_if_absent_race_has_one_winner(store):
    winners: list[int] = []
    losers: list[BaseException] = []
    start = threading.Barrier(8)

    def create(i: int) -> None:
        start.wait()
        try:
            store.put_if_absent("once", str(i).encode())
            winners.append(i)
        except BaseException as exc:
            losers.append(exc)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(winners) == 1
    assert all(isinstance(exc, AlreadyExists) for exc in losers), losers
    assert store.get("once")[0] == str(winners[0]).encode()


def test_list_in_key_order_with_prefixes(store):
    keys = ["b", "a/2", "a/1", "a/b/x", "a/b/y", "ab", "a-c", "c/d/e"]
    for i, key in enumerate(keys):
        store.put(key, b"x" * i)
    listed = list(store.list())
    assert [i.key for i in listed] == sorted(keys)
    assert [i.size for i in listed] == [keys.index(i.key) for i in listed]
    assert all(i.etag == store.head(i.key).etag for i in listed)
    assert [i.key for i in store.list("a/")] == ["a/1", "a/2", "a/b/x", "a/b/y"]
    assert [i.key for i in store.list("a/b/")] == ["a/b/x", "a/b/y"]
    assert [i.key for i in store.list("a")] == ["a-c", "a/1", "a/2", "a/b/x", "a/b/y", "ab"]
    assert [i.key for i in store.list("a/b/x")] == ["a/b/x"]
    assert list(store.list("nothing/")) == []
    assert list(store.list("c/d/")) == [store.head("c/d/e")]


def test_local_list_hides_lock_and_temp_files(tmp_path):
    store = LocalStore(tmp_path / "store", create=True)
    store.put_if_absent("a/x", b"1")  # takes the store's .lock
    (tmp_path / "store" / "a" / ".tmp-leftover").write_bytes(b"partial")
    assert (tmp_path / "store" / ".lock").exists()
    assert [i.key for i in store.list()] == ["a/x"]
    assert [i.key for i in store.list("a/")] == ["a/x"]


def test_local_store_keeps_chunk_files_open_up_to_a_bound(tmp_path):
    """Ranged reads of chunks (created once, never changed: FORMAT.md) reuse an open file, the
    least recently read closed past the bound; a record, which may be replaced, is opened per
    read; a chunk gc deletes while open still reads its bytes; close() closes them all."""

    def open_fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    store = LocalStore(tmp_path / "store", create=True)
    keys = [f"versions/v/chunks/c-{i:04d}.zip" for i in range(70)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 100)
    before = open_fds()
    for _ in range(3):
        for i, key in enumerate(keys[:10]):
            assert store.get_range(key, 10, 5) == bytes([i]) * 5
    assert open_fds() == before + 10
    for i, key in enumerate(keys):
        assert store.get_range(key, 99, 5) == bytes([i])
    assert open_fds() == before + 64
    store.delete(keys[-1])
    assert store.get_range(keys[-1], 0, 3) == bytes([69]) * 3
    store.put("versions/v/draft.json", b"old")
    assert store.get_range("versions/v/draft.json", 0, 3) == b"old"
    store.put("versions/v/draft.json", b"new")
    assert store.get_range("versions/v/draft.json", 0, 3) == b"new"
    with pytest.raises(NotFound, match="object not found in store: 'versions/v/chunks/none.zip'"):
        store.get_range("versions/v/chunks/none.zip", 0, 1)
    store.close()
    assert open_fds() == before


def test_local_store_closes_an_evicted_chunk_only_after_its_reads(tmp_path):
    """Reads in many threads over more chunks than stay open: every read gets its bytes (a file
    is never closed under a read), and nothing stays open after close()."""
    store = LocalStore(tmp_path / "store", create=True)
    keys = [f"versions/v/chunks/c-{i:04d}.zip" for i in range(100)]
    for i, key in enumerate(keys):
        store.put(key, bytes([i]) * 4096)
    before = len(os.listdir("/proc/self/fd"))
    errors = []

    def reader(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(2000):
                i = rng.randrange(len(keys))
                assert store.get_range(keys[i], rng.randrange(4000), 64) == bytes([i]) * 64
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    store.close()
    assert len(os.listdir("/proc/self/fd")) == before


def test_delete(store):
    store.put("d/x", b"1")
    store.delete("d/x")
    with pytest.raises(NotFound):
        store.get("d/x")
    assert list(store.list("d/")) == []
    store.delete("d/x")  # absent: fine
    store.delete("never/there")


def test_not_found_names_the_key(store, tmp_path):
    key = "missing/obj"
    for call in (
        lambda: store.get(key),
        lambda: store.head(key),
        lambda: store.get_range(key, 0, 10),
        lambda: store.download_file(key, str(tmp_path / "out")),
    ):
        with pytest.raises(NotFound) as info:
            call()
        assert str(info.value) == "object not found in store: 'missing/obj'"
    assert not (tmp_path / "out").exists()


def test_invalid_keys_are_rejected(store):
    for key in ("", "/abs", "a//b", "a/../b", "./a"):
        with pytest.raises(InvalidInput):
            store.put(key, b"x")


# -- S3 only ---------------------------------------------------------------------------------


def test_parse_url():
    assert parse_url("s3://bucket/some/prefix") == ("bucket", "some/prefix/")
    assert parse_url("s3://bucket/some/prefix/") == ("bucket", "some/prefix/")
    assert parse_url("s3://bucket") == ("bucket", "")
    assert parse_url("s3://bucket/") == ("bucket", "")
    for bad in ("s3://", "s3:///prefix", "http://bucket/x", "s3://b/a/../c"):
        with pytest.raises(InvalidInput):
            parse_url(bad)


@pytest.mark.s3
def test_keys_live_under_the_url_prefix(s3_server):
    url = s3_server.new_bucket(prefix="team/data")
    bucket = url.split("/")[2]
    a = S3Store.from_url(url, Settings())
    b = S3Store.from_url(f"s3://{bucket}/other", Settings())
    a.put("x/y", b"1")
    b.put("x/z", b"2")
    raw = s3_server.client().list_objects_v2(Bucket=bucket)["Contents"]
    assert sorted(o["Key"] for o in raw) == ["other/x/z", "team/data/x/y"]
    assert [i.key for i in a.list()] == ["x/y"]
    assert [i.key for i in b.list()] == ["x/z"]
    root = S3Store.from_url(f"s3://{bucket}", Settings())
    assert [i.key for i in root.list()] == ["other/x/z", "team/data/x/y"]


@pytest.mark.s3
def test_missing_bucket_is_store_unavailable(s3_server):
    store = S3Store.from_url("s3://no-such-bucket-here/p", Settings(s3_max_attempts=1))
    for call in (lambda: store.get("k"), lambda: list(store.list()),
                 lambda: store.put_if_absent("k", b"1")):
        with pytest.raises(StoreUnavailable, match="no-such-bucket-here"):
            call()


@pytest.mark.s3
def test_retried_conditional_put_that_had_landed_counts_as_done(s3_server):
    """A 412 on botocore's retry of our own successful write must not read as a conflict."""
    store = S3Store.from_url(s3_server.new_bucket(), Settings())
    real_put = store._client.put_object

    def put_then_lose_the_answer(**kwargs):
        real_put(**kwargs)  # the first attempt lands...
        raise ClientError(  # ...its answer is lost and botocore's retry then fails the condition
            {"Error": {"Code": "PreconditionFailed", "Message": "precondition failed"},
             "ResponseMetadata": {"HTTPStatusCode": 412, "RetryAttempts": 1}},
            "PutObject",
        )

    store._client.put_object = put_then_lose_the_answer
    etag = store.put_if_absent("m", b"created")
    assert store.get("m") == (b"created", etag)
    etag = store.put_if_match("m", b"swapped", etag)
    assert store.get("m") == (b"swapped", etag)

    # Without a retry, a 412 is a real conflict even if the bytes match.
    store._client.put_object = real_put
    with pytest.raises(AlreadyExists):
        store.put_if_absent("m", b"swapped")
    with pytest.raises(Conflict):
        store.put_if_match("m", b"swapped", "0" * 32)


@pytest.mark.s3
@pytest.mark.parametrize("which", ["moto", pytest.param("seaweed", marks=pytest.mark.slow)])
def test_stopped_server_is_store_unavailable_then_recovers(which, request, monkeypatch):
    server = request.getfixturevalue(f"{which}_server")
    server.apply_env(monkeypatch)
    settings = Settings(s3_max_attempts=2, s3_connect_timeout=1.0, s3_read_timeout=2.0)
    store = S3Store.from_url(server.new_bucket(), settings)
    store.put("k", b"kept")
    store.get("k")  # leave a pooled connection behind
    server.stop()
    try:
        began = time.monotonic()
        with pytest.raises(StoreUnavailable) as info:
            store.get("k")
        assert time.monotonic() - began < 15
        message = str(info.value)
        assert message.startswith(f"s3 store unreachable at {server.endpoint}")
        assert "'k'" in message and "\n" not in message
        with pytest.raises(StoreUnavailable):
            store.put_if_absent("new", b"1")
        with pytest.raises(StoreUnavailable):
            list(store.list())
    finally:
        server.start()
    assert store.get("k")[0] == b"kept"  # same port, same data
    store.put("after", b"ok")
    assert [i.key for i in store.list()] == ["after", "k"]


def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


@pytest.fixture
def cut_store(moto_server, monkeypatch):
    """An S3 store that reaches moto through a proxy cutting response bodies (``proxy.cut``);
    3 attempts per request."""
    from s3proxy import CuttingProxy

    moto_server.apply_env(monkeypatch)
    url = moto_server.new_bucket()
    with CuttingProxy(moto_server.endpoint) as proxy:
        store = open_store(url, Settings(s3_endpoint=proxy.endpoint, s3_max_attempts=3))
        yield store, proxy
        store.close()


@pytest.mark.s3
def test_bodies_cut_short_are_read_again(cut_store, tmp_path):
    """Every other GET body of each key breaks off halfway (full Content-Length, then the
    connection closes): get, get_range and download_file send a new request and return every
    byte exactly."""
    store, proxy = cut_store
    small = os.urandom(10_000)
    big = os.urandom(10 * MiB + 123)  # over the multipart threshold: parallel ranged GETs
    store.put("small", small)
    path = tmp_path / "big"
    path.write_bytes(big)
    store.put_file("big", str(path))
    proxy.cut = lambda method, key, n: n % 2 == 1
    assert store.get("small") == (small, hashlib.md5(small).hexdigest())
    for start, length in [(0, 1), (17, 5000), (9_000, 5000), (0, 10_000)]:
        assert store.get_range("small", start, length) == small[start:start + length]
    assert store.get_range("big", 4 * MiB - 3, 2 * MiB) == big[4 * MiB - 3:6 * MiB - 3]
    store.download_file("big", str(tmp_path / "copy"))
    assert (tmp_path / "copy").read_bytes() == big
    assert proxy.cuts >= 7


@pytest.mark.s3
def test_a_short_ranged_body_is_read_again(moto_server, monkeypatch):
    """A server that loses bytes and sends a matching Content-Length: the ranged answer is
    checked against its Content-Range."""
    from s3proxy import CuttingProxy

    moto_server.apply_env(monkeypatch)
    url = moto_server.new_bucket()
    data = os.urandom(10_000)
    with CuttingProxy(moto_server.endpoint, honest_length=False) as proxy:
        store = open_store(url, Settings(s3_endpoint=proxy.endpoint, s3_max_attempts=3))
        store.put("k", data)
        proxy.cut = lambda method, key, n: n <= 2
        assert store.get_range("k", 100, 8_000) == data[100:8_100]
        assert proxy.cuts == 2
        proxy.cut = lambda method, key, n: True
        with pytest.raises(StoreUnavailable, match=r"broke off the response body 3 times "
                                                   r"\(get_range 'k'\): 4000 of 8000 bytes"):
            store.get_range("k", 0, 8_000)
        store.close()


@pytest.mark.s3
def test_a_body_always_cut_fails_clearly_after_the_bound(cut_store, tmp_path):
    store, proxy = cut_store
    store.put("doomed", os.urandom(10_000))
    store.put("fine", b"fine")
    proxy.cut = lambda method, key, n: key.endswith("/doomed")
    with pytest.raises(StoreUnavailable, match=r"broke off the response body 3 times \(get 'doomed'\)"):
        store.get("doomed")
    assert proxy.gets[f"/{store.bucket}/{store.prefix}doomed"] == 3
    with pytest.raises(StoreUnavailable, match=r"broke off the response body 3 times \(get_range 'doomed'\)"):
        store.get_range("doomed", 0, 100)
    with pytest.raises(StoreUnavailable, match=r"download_file 'doomed'"):
        store.download_file("doomed", str(tmp_path / "out"))
    assert store.get("fine")[0] == b"fine"
