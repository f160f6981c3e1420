"""The ``dsfs://`` fsspec filesystem with the real clients: pandas, pyarrow, DuckDB, Hugging Face
``datasets`` and Dask on a distributed cluster of two worker processes, on a local store and on
SeaweedFS (a real S3 server). One dataset is made per store for the whole module, and the Dask
cluster starts once; write tests make a dataset of their own.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import time
import types

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import Cli, write_tree
import dsfs
from dsfs import errors, tmpfiles
from dsfs.errors import ReadOnly
from dsfs.filesystem import DsfsFileSystem, IsAFolder, PathNotFound
from dsfs.draft.lease import Lease

STORES = ["local", pytest.param("seaweed", marks=pytest.mark.s3)]
ROWS, GROUP = 160_000, 40_000  # big.parquet: 4 row groups of 4 float64 columns, ~5 MiB


def _big_table() -> pa.Table:
    rng = np.random.default_rng(11)
    return pa.table({f"c{i}": rng.random(ROWS) for i in range(4)})


def _frame(n: int) -> pd.DataFrame:
    return pd.DataFrame({"id": np.arange(n) + 1000 * n, "label": [f"cat{i % 7}" for i in range(n)]})


def _make_source(root) -> None:
    write_tree(root, {"labels.csv": _frame(50).to_csv(index=False), "images/a.jpg": b"\xff\xd8a" * 100,
                      "images/b.jpg": b"\xff\xd8b" * 100, "link.csv": "-> labels.csv",
                      "images-link": "-> images", "broken": "-> nowhere"})
    for n in range(4):
        (root / "tables").mkdir(exist_ok=True)
        _frame(10 + n).to_parquet(root / "tables" / f"part-{n}.parquet")
    pq.write_table(_big_table(), root / "big.parquet", row_group_size=GROUP, compression="none")


@pytest.fixture(scope="module", params=STORES)
def where(request, tmp_path_factory):
    """A store holding ``pets``: ``v1`` (published), ``release/2`` (published, its child, with
    labels.csv changed) and a draft child of that; the folder it was made from; the options
    that reach it."""
    with pytest.MonkeyPatch.context() as mp:
        env = {}
        if request.param == "local":
            store = str(tmp_path_factory.mktemp("store") / "store")
        else:
            server = request.getfixturevalue("seaweed_server")
            server.apply_env(mp)
            store, env = server.new_bucket(), server.env
        cache = tmp_path_factory.mktemp("cache")
        src = tmp_path_factory.mktemp("src")
        _make_source(src)
        cli = Cli(store, cache)
        v1 = cli("create", "pets", "--name", "v1").strip()
        cli("add", v1, str(src))
        cli("publish", v1)
        labels2 = tmp_path_factory.mktemp("labels2") / "labels.csv"
        labels2.write_text(_frame(60).to_csv(index=False))
        v2 = cli("create", "pets", "--name", "release/2").strip()
        cli("add", v2, str(labels2))
        cli("publish", v2)
        cli("create", "pets", "--name", "Current")
        write_tree(src.parent / "draft-extra", {"draft.txt": "only in the draft\n"})
        cli("add", "pets@draft", str(src.parent / "draft-extra" / "draft.txt"))
        yield types.SimpleNamespace(kind=request.param, store=store, cache=str(cache), src=src, cli=cli,
                                    v1=v1, v2=v2, env=env, options={"store": store, "cache_dir": str(cache)})


@pytest.fixture
def fs(where) -> DsfsFileSystem:
    return fsspec.filesystem("dsfs", **where.options)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- reading -----------------------------------------------------------------------------------


def test_refs_listings_info_find_and_glob(fs, where):
    assert fs.ls("dsfs://", detail=False) == ["pets"]
    # The dataset alone is its latest published version; a '/' in a name is written %2F.
    for ref, rows in [("pets", 60), ("pets@release%2F2", 60), ("pets@v1", 50), (where.v1, 50),
                      (where.v1[:8], 50), ("pets@draft", 60)]:
        assert len(pd.read_csv(fs.open(f"dsfs://{ref}/labels.csv"))) == rows, ref
    root = fs.info("dsfs://pets")
    assert (root["type"], root["version"], root["version_name"], root["state"]) == (
        "directory", where.v2, "release/2", "published")
    assert fs.ls("pets@v1", detail=False) == [f"pets@v1/{n}" for n in
                                              ["big.parquet", "broken", "images", "images-link", "labels.csv",
                                               "link.csv", "tables"]]
    data = (where.src / "big.parquet").read_bytes()
    info = fs.info("pets@v1/big.parquet")
    assert (info["type"], info["size"], info["sha256"], info["source_version"]) == (
        "file", len(data), _sha(data), where.v1)
    assert fs.info("pets@v1/images")["type"] == "directory"
    link = fs.info("pets@v1/link.csv")  # a symlink to a file reads as that file
    assert (link["type"], link["islink"], link["destination"], link["size"]) == (
        "file", True, "labels.csv", (where.src / "labels.csv").stat().st_size)
    assert [fs.info(f"pets@v1/{n}")["type"] for n in ("images-link", "broken")] == ["link", "link"]
    files = fs.find("dsfs://pets@v1")
    assert files == sorted(f"pets@v1/{p}" for p in [
        "big.parquet", "broken", "images/a.jpg", "images/b.jpg", "images-link", "labels.csv", "link.csv",
        *[f"tables/part-{n}.parquet" for n in range(4)]])
    assert "pets@v1/images" in fs.find("pets@v1", withdirs=True)
    assert fs.glob("dsfs://pets@v1/tables/*-[12].parquet") == [f"pets@v1/tables/part-{n}.parquet" for n in (1, 2)]
    assert fs.glob("pets@v1/**/*.jpg") == ["pets@v1/images/a.jpg", "pets@v1/images/b.jpg"]
    assert "pets@draft/draft.txt" in fs.find("pets@draft")
    assert not fs.exists("pets@v1/draft.txt") and fs.exists("pets@draft/draft.txt")


def test_missing_things_are_file_not_found(fs):
    for path, message in [("pets@v1/nope.csv", "no such path in 'pets@v1': 'nope.csv'"),
                          ("pets@v9/labels.csv", "version not found: 'pets@v9'"),
                          ("nobody/x", "no dataset or version matches ref: 'nobody'"),
                          ("pets@v1/broken", "symlink leads nowhere in 'pets@v1': 'broken' -> 'nowhere'")]:
        with pytest.raises(FileNotFoundError, match=message) as caught:
            fs.cat_file(path)
        assert isinstance(caught.value, errors.NotFound) and caught.value.exit_code == 3
    for folder in ("images", "images-link"):
        with pytest.raises(IsADirectoryError, match=f"is a folder: 'pets@v1/{folder}'") as caught:
            fs.open(f"pets@v1/{folder}")
        assert caught.value.errno == errno.EISDIR


def test_cat_file_and_seekable_ranged_reads(fs, where):
    data = (where.src / "big.parquet").read_bytes()
    assert fs.cat_file("dsfs://pets@v1/big.parquet") == data
    assert fs.cat_file("pets@v1/big.parquet", start=5_000_000, end=5_000_100) == data[5_000_000:5_000_100]
    assert fs.cat_file("pets@v1/big.parquet", start=-10) == data[-10:]
    assert fs.cat_file("pets@v1/labels.csv", 3, 3) == b""
    with fs.open("pets@v1/big.parquet") as f:
        assert f.seekable()
        for offset, length in [(4_500_000, 70_000), (17, 3), (len(data) - 5, 100), (1 << 20, 5 << 20)]:
            f.seek(offset)
            assert f.read(length) == data[offset:offset + length]
        f.seek(-8, os.SEEK_END)
        assert f.read() == data[-8:]


def test_pandas_reads_csv_and_parquet(where):
    opts = where.options
    assert pd.read_csv("dsfs://pets@v1/labels.csv", storage_options=opts).equals(_frame(50))
    assert pd.read_csv("dsfs://pets@v1/link.csv", storage_options=opts).equals(_frame(50))
    table = pd.read_parquet("dsfs://pets@v1/tables", storage_options=opts)
    assert sorted(table["id"]) == sorted(pd.concat(_frame(10 + n) for n in range(4))["id"])
    assert pd.read_parquet("dsfs://pets@v1/tables/part-3.parquet", storage_options=opts).equals(_frame(13))


def test_pandas_finds_dsfs_without_importing_it(where):
    """The fsspec.specs entry point: a fresh interpreter that never imports dsfs reads a URL."""
    code = "import pandas, sys; print(len(pandas.read_csv('dsfs://pets@v1/labels.csv'))); " \
           "print('dsfs' in sys.modules and 'dsfs.cli' not in sys.modules)"
    env = os.environ | where.env | {"DSFS_STORE": where.store, "DSFS_CACHE_DIR": where.cache}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["50", "True"]


def test_pyarrow_reads_columns_and_row_groups_through_fs_open(where, tmp_path):
    """Through ``fs.open``, pyarrow reads a column or a row group and the cache fetches about
    those bytes (leaves of the hash tree, checked), not the whole file."""
    fs = fsspec.filesystem("dsfs", store=where.store, cache_dir=str(tmp_path / "cold"))
    size = fs.size("pets@v1/big.parquet")
    expected = _big_table()
    with fs.open("dsfs://pets@v1/big.parquet") as f:
        parquet = pq.ParquetFile(f)
        assert parquet.metadata.num_row_groups == ROWS // GROUP
        assert parquet.read(columns=["c2"]).column("c2").equals(expected.column("c2"))
        column_bytes = fs.cache.stats()["fetched"]
        assert parquet.read_row_group(3).equals(expected.slice(3 * GROUP, GROUP))
        group_bytes = fs.cache.stats()["fetched"] - column_bytes
    assert size / 5 < column_bytes < size / 3  # one column of four
    assert 0 < group_bytes < size / 3  # one row group of four (less the column's part, if cached)
    assert fs.cache.stats()["leaf_reads"] > 0


def test_duckdb_queries_parquet_through_the_registered_filesystem(fs):
    import duckdb

    con = duckdb.connect()
    con.register_filesystem(fs)
    rows = con.sql("SELECT count(*), min(id), max(label) FROM read_parquet('dsfs://pets@v1/tables/*.parquet')")
    assert rows.fetchall() == [(46, 10000, "cat6")]
    big = con.sql("SELECT count(*), round(sum(c1) / count(*), 1) FROM 'dsfs://pets@v1/big.parquet'").fetchall()
    assert big == [(ROWS, 0.5)]
    con.close()


def test_hugging_face_datasets_loads_parquet(where, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from datasets import load_dataset

    options = dict(where.options)
    loaded = load_dataset("parquet", data_files="dsfs://pets@v1/tables/*.parquet", storage_options=options,
                          cache_dir=str(tmp_path / "hf-cache"), split="train")
    assert sorted(loaded["id"]) == sorted(pd.concat(_frame(10 + n) for n in range(4))["id"])
    assert "hf" in options  # datasets added its own options to the dict; dsfs:// takes it still
    assert len(pd.read_csv("dsfs://pets@v1/labels.csv", storage_options=options)) == 50


@pytest.fixture(scope="module")
def dask_client():
    """A distributed LocalCluster of two worker processes, started once for the module."""
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        with Client(cluster) as client:
            yield client


def test_dask_workers_read_a_versions_parquet_files(where, dask_client):
    """Each worker process opens the store itself (the filesystem travels as its options) and
    reads through its own block cache."""
    import dask.dataframe as dd

    def set_env(env):
        os.environ.update(env)

    def read_on_worker(options, path):
        import fsspec as worker_fsspec

        data = worker_fsspec.filesystem("dsfs", **options).cat_file(path)
        return os.getpid(), hashlib.sha256(data).hexdigest()

    dask_client.run(set_env, where.env)
    table = dd.read_parquet("dsfs://pets@v1/tables/*.parquet", storage_options=where.options)
    assert table.npartitions == 4
    frame = table.compute()
    assert sorted(frame["id"]) == sorted(pd.concat(_frame(10 + n) for n in range(4))["id"])
    workers = list(dask_client.scheduler_info()["workers"])
    assert len(workers) == 2
    results = dask_client.gather([dask_client.submit(read_on_worker, where.options, "pets@v1/big.parquet",
                                                     workers=[w], pure=False) for w in workers])
    pids = {pid for pid, _ in results}
    assert len(pids) == 2 and os.getpid() not in pids
    assert {sha for _, sha in results} == {_sha((where.src / "big.parquet").read_bytes())}


def test_a_published_ref_is_resolved_once_per_instance(fs, where, draft, tmp_path):
    """As a mount: ``dsfs://DATASET`` stays on the version it first named until
    ``invalidate_cache()``; a draft shows each change-set at once."""
    dataset = draft.split("@")[0]
    where.cli("publish", draft)
    assert fs.info(dataset)["version_name"] == "v1"
    (tmp_path / "new.txt").write_text("in v2\n")
    where.cli("create", dataset)
    where.cli("add", f"{dataset}@draft", str(tmp_path / "new.txt"))
    assert fs.exists(f"{dataset}@draft/new.txt")
    where.cli("publish", f"{dataset}@draft")
    assert not fs.exists(f"{dataset}/new.txt") and fs.info(dataset)["version_name"] == "v1"
    fs.invalidate_cache()
    assert fs.cat_file(f"{dataset}/new.txt") == b"in v2\n" and fs.info(dataset)["version_name"] == "v2"


# -- one cache, the same checks ----------------------------------------------------------------


def test_reads_share_the_mounts_block_cache(mounts, store_url, cache_dir, tmp_path, monkeypatch):
    """Bytes read through dsfs:// are not fetched again by a mount, nor the other way round."""
    config = tmp_path / "config.yaml"
    # A local store's bytes cached too; no neighbours fetched along (one.bin would bring two.bin).
    config.write_text("cache_local_store: true\nneighbour_bytes: 0\n")
    monkeypatch.setenv("DSFS_CONFIG", str(config))
    write_tree(tmp_path / "src", {"one.bin": os.urandom(300_000), "two.bin": os.urandom(200_000)})
    cli = Cli(store_url, cache_dir)
    version = cli("create", "ds").strip()
    cli("add", version, str(tmp_path / "src"))
    cli("publish", version)
    mnt = tmp_path / "mnt"
    mounts.mount(version, mnt)
    fs = fsspec.filesystem("dsfs", store=store_url, cache_dir=str(cache_dir))
    two = fs.cat_file(f"{version}/two.bin")
    assert fs.cache.stats()["fetched"] >= len(two)
    fs.cache.drain()  # its blocks are on disk
    fetched = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]["fetched"]
    assert (mnt / "two.bin").read_bytes() == two
    assert json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]["fetched"] == fetched
    one = (mnt / "one.bin").read_bytes()
    mounts.umount(mnt)  # the daemon's blocks are on disk once it has gone
    before = fs.cache.stats()["fetched"]
    assert fs.cat_file(f"{version}/one.bin") == one
    assert fs.cache.stats()["fetched"] == before


def test_corrupt_bytes_are_an_error_not_data(local_cli, tmp_path):
    """A flipped byte in a stored chunk fails the read (the hash tree's leaf, or the file's
    sha256), as on a mount; the other bytes of the file still read."""
    big = os.urandom(5 << 20)
    write_tree(tmp_path / "src", {"big.bin": big, "small.bin": os.urandom(1000)})
    version = local_cli("create", "ds").strip()
    local_cli("add", version, str(tmp_path / "src"))
    local_cli("publish", version)
    fs = fsspec.filesystem("dsfs", store=local_cli.store, cache_dir=str(tmp_path / "cache"))
    index = fs.repo.index(fs.repo.resolve(version))
    for name, at in [("big.bin", 3_000_000), ("small.bin", 10)]:
        node = index.by_path(name)
        with open(os.path.join(local_cli.store, node.chunk), "r+b") as f:
            f.seek(node.offset + at)
            byte = f.read(1)
            f.seek(node.offset + at)
            f.write(bytes([byte[0] ^ 0xFF]))
    for path, start, end in [("big.bin", 2_999_000, 3_000_500), ("big.bin", None, None), ("small.bin", None, None)]:
        with pytest.raises(errors.Corrupt, match="mismatch"):
            fs.cat_file(f"{version}/{path}", start, end)
    assert fs.cat_file(f"{version}/big.bin", 100, 200_000) == big[100:200_000]


# -- writing drafts ----------------------------------------------------------------------------


def _changesets(cli: Cli, ref: str) -> int:
    return len(json.loads(cli("show", ref, "--json"))["changeset_list"])


@pytest.fixture
def draft(where, request):
    """A new dataset of this test's own, holding a draft with two files."""
    name = request.node.name.replace("[", "-").rstrip("]")
    src = write_tree(where.src.parent / name, {"keep.txt": "keep\n", "old/gone.txt": "gone\n",
                                               "run.sh": "#!/bin/sh\n"})
    os.chmod(src / "run.sh", 0o755)
    where.cli("create", name)
    where.cli("add", f"{name}@draft", str(src))
    return f"{name}@draft"


def test_each_write_outside_a_transaction_is_one_changeset(fs, where, draft):
    before, start = _changesets(where.cli, draft), time.time()
    fs.pipe_file(f"dsfs://{draft}/new/piped.bin", b"piped")
    with fs.open(f"{draft}/new/written.txt", "wb") as f:
        f.write(b"written\n")
    _frame(5).to_csv(f"dsfs://{draft}/frame.csv", index=False, storage_options=where.options)
    fs.pipe_file(f"{draft}/run.sh", b"#!/bin/sh\necho\n")
    fs.rm(f"{draft}/old", recursive=True)
    assert _changesets(where.cli, draft) == before + 5
    assert fs.cat(f"{draft}/new/piped.bin") == b"piped"
    assert pd.read_csv(f"dsfs://{draft}/frame.csv", storage_options=where.options).equals(_frame(5))
    assert fs.info(f"{draft}/run.sh")["mode"] == 0o755  # a rewritten file keeps its mode
    piped = fs.info(f"{draft}/new/piped.bin")
    assert piped["mode"] == 0o644 and start <= piped["mtime"] <= time.time()  # the time it was closed
    assert fs.find(draft) == [f"{draft}/{p}" for p in
                              ["frame.csv", "keep.txt", "new/piped.bin", "new/written.txt", "run.sh"]]
    assert os.listdir(os.path.join(where.cache, "tmp")) == []  # no staged bytes left


def test_a_transaction_becomes_one_changeset(fs, where, draft):
    before = _changesets(where.cli, draft)
    with fs.transaction:
        fs.pipe_file(f"{draft}/a.txt", b"a")
        with fs.open(f"{draft}/b/b.parquet", "wb") as f:
            _frame(3).to_parquet(f)
        fs.pipe_file(f"{draft}/scratch.txt", b"dropped again")
        fs.rm([f"{draft}/keep.txt", f"{draft}/scratch.txt"])
        fs.rm(f"{draft}/old/*.txt")
        unfinished = fs.open(f"{draft}/unfinished.txt", "wb")  # closed when the transaction ends
        unfinished.write(b"joins too")
        assert not fs.exists(f"{draft}/a.txt")  # nothing shows before the end
        assert _changesets(where.cli, draft) == before
        # the staged bytes are held: even with no grace, a sweep (dsfs/tmpfiles.py) takes none
        assert tmpfiles.sweep(os.path.join(where.cache, "tmp"), grace=0) == []
    assert _changesets(where.cli, draft) == before + 1
    assert fs.find(draft) == [f"{draft}/{p}" for p in ["a.txt", "b/b.parquet", "run.sh", "unfinished.txt"]]
    assert fs.info(f"{draft}/old")["type"] == "directory"  # emptied by rm, not removed
    assert pd.read_parquet(f"dsfs://{draft}/b/b.parquet", storage_options=where.options).equals(_frame(3))


def test_copy_and_move_into_a_draft(fs, where, draft):
    """cp_file copies from any version (here the published one) and within the draft, stores no
    byte twice and keeps the source's mode; mv is one change-set; a folder copies its files."""
    before = _changesets(where.cli, draft)
    chunks = _chunk_keys(fs)
    fs.cp_file(f"{where.v1}/labels.csv", f"{draft}/copied/labels.csv")
    fs.cp_file(f"{draft}/run.sh", f"{draft}/bin/run.sh")
    assert _changesets(where.cli, draft) == before + 2
    assert _chunk_keys(fs) == chunks  # bytes already stored are pointed at, not sent again
    assert fs.cat(f"{draft}/copied/labels.csv") == fs.cat(f"{where.v1}/labels.csv")
    assert fs.info(f"{draft}/bin/run.sh")["mode"] == 0o755
    fs.mv(f"{draft}/keep.txt", f"{draft}/moved/keep.txt")
    assert _changesets(where.cli, draft) == before + 3
    assert not fs.exists(f"{draft}/keep.txt") and fs.cat(f"{draft}/moved/keep.txt") == b"keep\n"
    fs.copy(f"{where.v1}/tables", f"{draft}/t", recursive=True)
    assert fs.find(f"{draft}/t") == [f"{draft}/t/part-{n}.parquet" for n in range(4)]
    with pytest.raises(ReadOnly, match="published"):  # the source of a move must go too
        fs.mv(f"{where.v1}/labels.csv", f"{draft}/stolen.csv")
    assert not fs.exists(f"{draft}/stolen.csv")  # the failed move recorded nothing
    with pytest.raises(FileNotFoundError):
        fs.cp_file(f"{draft}/no-such.txt", f"{draft}/x.txt")


def _chunk_keys(fs) -> list[str]:
    return sorted(i.key for i in fs.repo.store.list("versions/") if "/chunks/" in i.key)


def test_a_transaction_that_raises_records_nothing(fs, where, draft):
    before = _changesets(where.cli, draft)
    with pytest.raises(RuntimeError, match="changed my mind"):
        with fs.transaction:
            fs.pipe_file(f"{draft}/a.txt", b"a")
            fs.rm(f"{draft}/keep.txt")
            with fs.open(f"{draft}/b.txt", "wb") as f:
                f.write(b"b")
            raise RuntimeError("changed my mind")
    with pytest.raises(ValueError, match="half written"):
        with fs.open(f"{draft}/c.txt", "wb") as f:  # outside a transaction: that file only
            f.write(b"half")
            raise ValueError("half written")
    assert _changesets(where.cli, draft) == before
    assert fs.find(draft) == [f"{draft}/{p}" for p in ["keep.txt", "old/gone.txt", "run.sh"]]
    assert os.listdir(os.path.join(where.cache, "tmp")) == []
    fs.pipe_file(f"{draft}/after.txt", b"the filesystem writes on as before")
    assert _changesets(where.cli, draft) == before + 1


def test_a_write_the_store_refuses_raises_and_records_nothing(fs, where, draft, monkeypatch):
    def unreachable(*args, **kwargs):
        raise errors.StoreUnavailable("s3 store unreachable (injected)")

    before = _changesets(where.cli, draft)
    with monkeypatch.context() as faults:
        faults.setattr(fs.repo.store, "move_file", unreachable)
        with pytest.raises(errors.StoreUnavailable, match="injected"):
            fs.pipe_file(f"{draft}/a.txt", b"new bytes")
        with pytest.raises(errors.StoreUnavailable, match="injected"):
            with fs.transaction:
                fs.pipe_file(f"{draft}/b.txt", b"more new bytes")
                fs.rm(f"{draft}/keep.txt")
    assert _changesets(where.cli, draft) == before
    assert os.listdir(os.path.join(where.cache, "tmp")) == []
    fs.pipe_file(f"{draft}/a.txt", b"new bytes")  # the transaction ended: this is recorded at once
    assert fs.cat_file(f"{draft}/a.txt") == b"new bytes"


def test_refused_writes(fs, where, draft):
    before = _changesets(where.cli, draft)
    for write in (lambda: fs.pipe_file("dsfs://pets@v1/x.txt", b"x"), lambda: fs.open("pets/x.txt", "wb"),
                  lambda: fs.rm("pets@v1/labels.csv")):
        with pytest.raises(PermissionError, match="version is published and cannot change: 'pets@v1'|'pets'"):
            write()
    with pytest.raises(errors.ReadOnly) as caught:
        fs.pipe_file("pets@release%2F2/x.txt", b"x")
    assert (caught.value.exit_code, caught.value.errno) == (6, errors.ReadOnly.errno)
    with pytest.raises(IsADirectoryError, match=f"is a folder: '{draft}/old'"):
        fs.pipe_file(f"{draft}/old", b"x")
    with pytest.raises(IsAFolder, match=f"is a folder \\(remove it with recursive=True\\): '{draft}/old'"):
        fs.rm(f"{draft}/old")
    with pytest.raises(PathNotFound, match=f"no such path in '{draft}': 'nope'"):
        fs.rm(f"{draft}/nope")
    with pytest.raises(FileNotFoundError, match=f"no files match: '{draft}/\\*.nope'"):
        fs.rm(f"{draft}/*.nope")
    with pytest.raises(errors.InvalidInput, match="mode rb or wb, not 'ab'"):
        fs.open(f"{draft}/keep.txt", "ab")
    with pytest.raises(errors.InvalidInput, match=f"one change-set writes one draft: {draft.split('@')[0]}@v1, "
                                                  "not pets@Current too"):
        with fs.transaction:
            fs.pipe_file(f"{draft}/a.txt", b"a")
            fs.pipe_file("pets@draft/a.txt", b"a")
    lease = Lease.acquire(fs.repo.store, fs.info(draft)["version"], "/mnt/elsewhere")
    try:
        with pytest.raises(errors.Conflict, match="is mounted writable by"):
            fs.pipe_file(f"{draft}/a.txt", b"a")
    finally:
        lease.release()
    assert _changesets(where.cli, draft) == before


def test_settings_follow_the_cli_unless_given(where, tmp_path, monkeypatch):
    monkeypatch.setenv("DSFS_STORE", where.store)
    monkeypatch.setenv("DSFS_CACHE_DIR", str(tmp_path / "env-cache"))
    for name, value in where.env.items():
        monkeypatch.setenv(name, value)
    fs = fsspec.filesystem("dsfs", skip_instance_cache=True)  # not the one an earlier test made
    assert (fs.settings.store, fs.settings.cache_dir) == (where.store, str(tmp_path / "env-cache"))
    config = tmp_path / "config.yaml"
    config.write_text("block_size: 1M\n")
    given = fsspec.filesystem("dsfs", cache_dir=str(tmp_path / "given"), config=str(config), neighbour_bytes="0")
    assert (given.settings.cache_dir, given.settings.block_size, given.settings.neighbour_bytes) == (
        str(tmp_path / "given"), 1 << 20, 0)
    assert given.cache.block_size == 1 << 20
    assert given.cat_file("pets@v1/labels.csv") == (where.src / "labels.csv").read_bytes()
    with pytest.raises(errors.InvalidInput, match="unknown config key 'colour' in options"):
        fsspec.filesystem("dsfs", colour="blue")
    # dsfs.configure's places come next, before the environment's, and reach instances made before
    before = fsspec.filesystem("dsfs")
    dsfs.configure(store=where.store, cache_dir=str(tmp_path / "configured"))
    try:
        fs = fsspec.filesystem("dsfs")
        assert fs is not before and fs.settings.cache_dir == str(tmp_path / "configured")
        assert fs.cat_file("pets@v1/labels.csv") == (where.src / "labels.csv").read_bytes()
        assert fsspec.filesystem("dsfs", cache_dir=str(tmp_path / "given")).settings.cache_dir == str(tmp_path / "given")
    finally:
        dsfs.configure()
    assert fsspec.filesystem("dsfs").settings.cache_dir == str(tmp_path / "env-cache")
