"""A draft's index updated in place (dsfs/resolver/update.py) serves what a full build serves."""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path

import pytest
from conftest import write_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_merge import Lineage, _entry

from dsfs.changeset.manifest import ChangeSet, Removal, new_id, now_iso
from dsfs.config import load_settings
from dsfs.errors import Corrupt
from dsfs.resolver import ViewBuilder
from dsfs.repo import Repository
from dsfs.resolver.index import VersionIndex
from dsfs.resolver.update import unsorted_limit

# Names whose byte order puts siblings between a folder and its subtree ('a' < 'a-b' < 'a.b' < 'a/...').
NAMES = ["a", "a-b", "a.b", "b", "b0"]
PATHS = st.lists(st.sampled_from(NAMES), min_size=1, max_size=3).map("/".join)
OPS = st.one_of(
    st.tuples(st.just("file"), PATHS, st.integers(0, 3)),
    st.tuples(st.just("folder"), PATHS, st.just(0)),
    st.tuples(st.just("link"), PATHS, st.integers(0, 1)),
    st.tuples(st.just("remove"), PATHS, st.integers(0, 1)),
)


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top + "/")


def changeset_specs(model: dict[str, str], ops: list[tuple[str, str, int]]) -> list[str]:
    """Specs (see test_merge._entry) of one valid change-set made of ``ops``, applied to ``model``
    (path -> 'd' or 'f'): removals first, then the adds that make no path both a file and a
    folder (the others are dropped, as dsfs would reject them before upload)."""
    removals = sorted({path for kind, path, _ in ops if kind == "remove"})
    for gone in removals:
        for path in [p for p in model if _under(p, gone)]:
            del model[path]
    adds: dict[str, str] = {}
    for kind, path, n in ops:
        if kind == "remove":
            continue
        parts = path.split("/")
        folders = ["/".join(parts[:i]) for i in range(1, len(parts))]
        want = "d" if kind == "folder" else "f"
        if any(model.get(f) == "f" for f in folders) or model.get(path, want) != want:
            continue
        model.update(dict.fromkeys(folders, "d"), **{path: want})
        adds[path] = {"file": f"+{path}={n}", "folder": f"+{path}/", "link": f"+{path}->t{n}"}[kind]
    flags = {p: model.get(p) == "d" for p in removals}
    return [f"-{p}/" if flags[p] else f"-{p}" for p in removals] + [adds[p] for p in sorted(adds)]


def record(lineage: Lineage, version_id: str, specs: list[str]) -> None:
    removals = [Removal(s[1:].rstrip("/"), s.endswith("/")) for s in specs if s[0] == "-"]
    entries = [_entry(s) for s in specs if s[0] == "+"]
    cs = ChangeSet(version_id, new_id()[:12], now_iso(), entries, removals)
    lineage.catalog.record_changeset(version_id, lineage.catalog.write_changeset(cs, len(entries), 0, 0, []))


def served(index: VersionIndex) -> tuple:
    """Everything an index serves, inode numbers aside."""
    nodes = list(index.walk())
    rows = [(n.path, n.type, n.size, n.mode, n.mtime_ns, n.sha256, n.target, n.chunk, n.offset, n.csize,
             n.method, n.version, n.nlink, n.blocks, n.tree, n.tree_offset) for n in nodes]
    root = index.get(1)
    with sqlite3.connect(f"file:{index.path}?mode=ro", uri=True) as db:
        providers = sorted(r[0] for r in db.execute("SELECT version FROM providers"))
    db.close()
    return rows, (root.nlink, root.mtime_ns, root.version), index.files, index.total_size, index.chunks(), providers


def check_consistent(index: VersionIndex) -> None:
    """Lookups by inode, path and name, listings and subtree walks agree with the whole walk."""
    every = list(index.walk())
    paths = [n.path for n in every]
    assert paths == sorted(paths, key=lambda p: p.encode())
    for node in every:
        assert index.get(node.ino) == node == index.by_path(node.path)
        assert index.lookup(node.parent, node.name) == node
        if node.is_dir:
            assert list(index.walk(node.path)) == [n for n in every if _under(n.path, node.path)]
            assert index.children(node.ino) == [n for n in every if n.parent == node.ino]


def full_build(lineage: Lineage, version_id: str, where: Path) -> VersionIndex:
    """The index a fresh machine builds from scratch (no index cached: nothing to update)."""
    builder = ViewBuilder(lineage.catalog, str(where))
    index = builder.index_for(lineage.catalog.version(version_id))
    assert builder.stats["updated"] == 0
    return index


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(parented=st.booleans(), root=st.lists(OPS, max_size=12),
       changesets=st.lists(st.lists(OPS, min_size=1, max_size=8), min_size=1, max_size=5))
def test_updated_index_serves_what_a_full_build_serves(parented, root, changesets):
    with tempfile.TemporaryDirectory() as tmp:
        lineage = Lineage(Path(tmp))
        model: dict[str, str] = {}
        parents = []
        if parented:
            lineage.version("r", [], *changeset_specs(model, root))
            lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))  # cached: the draft copies it
            parents = ["r"]
        draft = lineage.version("d", parents, publish=False, changesets=[])
        for n, ops in enumerate(changesets):
            if n:
                record(lineage, draft, changeset_specs(model, ops))
            index = lineage.builder.index_for(lineage.catalog.version(draft))
            assert served(index) == served(full_build(lineage, draft, Path(tmp) / f"full{n}"))
            check_consistent(index)
            assert {n.path for n in index.walk()} == set(model)
        # One full build: the parent's, or the parentless draft's first; every later index an update.
        assert lineage.builder.stats["built"] == 1
        assert lineage.builder.stats["updated"] == len(changesets) - (0 if parented else 1)


def big_root(lineage: Lineage, files: int) -> str:
    specs = [f"+d{i % 50:02d}/f{i:05d}={i % 7}" for i in range(files)]
    return lineage.version("r", [], *specs)


def test_small_changeset_updates_the_draft_index_in_place(tmp_path):
    lineage = Lineage(tmp_path)
    big_root(lineage, 3000)
    lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))
    draft = lineage.version("d", ["r"], publish=False, changesets=[])
    lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats == Counter(built=1, updated=1)  # a copy of the parent's index
    record(lineage, draft, ["-d03/f00053", "-d07/"] + [f"+new/f{i}={i}" for i in range(8)] + ["+d01/f00001=x"])
    index = lineage.builder.index_for(lineage.catalog.version(draft))
    # 2 removed + 60 in the removed folder, 8 added + their folder, 1 changed: nothing else written.
    assert lineage.builder.stats == Counter(built=1, updated=2, rows_updated=2 + 60 + 9 + 1)
    assert served(index) == served(full_build(lineage, draft, tmp_path / "full"))
    assert index.files == 3000 - 1 - 60 + 8
    # The draft's older index files are gone; unchanged nodes kept their inode numbers.
    assert [p.name for p in (tmp_path / "index").glob(f"{draft}.draft-*")] == [Path(index.path).name]
    parent = lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))
    assert index.by_path("d49/f02999").ino == parent.by_path("d49/f02999").ino


def test_a_reader_of_the_older_index_keeps_its_state(tmp_path):
    lineage = Lineage(tmp_path)
    draft = lineage.version("d", [], "+a=1", "+k/x=2", publish=False)
    old = lineage.builder.index_for(lineage.catalog.version(draft))
    pin = tmp_path / "pin.sqlite"
    os.link(old.path, pin)  # as a read-only mount pins it
    before = hashlib.sha256(pin.read_bytes()).hexdigest()
    pinned = VersionIndex(str(pin), immutable=False)
    record(lineage, draft, ["-k/", "+k=3", "+b=4"])
    new = lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats["updated"] == 1
    assert hashlib.sha256(pin.read_bytes()).hexdigest() == before
    assert [n.path for n in pinned.walk()] == ["a", "k", "k/x"]
    assert [(n.path, n.type) for n in new.walk()] == [("a", "file"), ("b", "file"), ("k", "file")]
    assert not os.path.exists(old.path)


def test_a_changeset_too_big_for_an_update_is_a_full_build(tmp_path):
    lineage = Lineage(tmp_path)
    draft = lineage.version("d", [], "+a=1", publish=False)
    lineage.builder.index_for(lineage.catalog.version(draft))
    many = unsorted_limit(2) + 1
    record(lineage, draft, [f"+m/f{i}=1" for i in range(many)])
    index = lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats == Counter(built=2)
    assert index.files == many + 1
    # A full build puts every node in path order again: the next small change is an update.
    record(lineage, draft, ["+z=1"])
    assert lineage.builder.index_for(lineage.catalog.version(draft)).files == many + 2
    assert lineage.builder.stats["updated"] == 1


def test_a_conflicting_changeset_is_refused_by_the_update_as_by_a_build(tmp_path):
    lineage = Lineage(tmp_path)
    draft = lineage.version("d", [], "+k=1", publish=False)
    lineage.builder.index_for(lineage.catalog.version(draft))
    record(lineage, draft, ["+k/x=2"])
    with pytest.raises(Corrupt, match="both a file and a folder: 'k'"):
        lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats == Counter(built=1)
    with pytest.raises(Corrupt, match="both a file and a folder: 'k'"):
        full_build(lineage, draft, tmp_path / "full")
    assert not list((tmp_path / "index").glob(".build-*"))


def test_cli_commands_on_a_draft_update_its_index(cli, cache_dir, tmp_path):
    """`dsfs add` and `dsfs remove` on a draft (any store): the next command's index is an update
    of the one before, and serves what a fresh machine's full build serves."""
    write_tree(tmp_path / "src", {f"d{i}/f{j}.txt": f"{i}.{j}" for i in range(4) for j in range(10)})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(tmp_path / "src"))
    cli("publish", v1)
    v2 = cli("create", "ds", "--parent", v1).strip()
    write_tree(tmp_path / "more", {"d1/new.txt": "n", "e/f/g.txt": "g", "a.txt": "a"})
    cli("add", v2, str(tmp_path / "more"))
    cli("remove", v2, "d2")
    listing = {e["path"] for e in json.loads(cli("ls", v2, "-r", "--json"))}
    assert "e/f/g.txt" in listing and "d1/new.txt" in listing and not any(p.startswith("d2/") for p in listing)
    [path] = (cache_dir / "index").glob(f"{v2}.draft-*.sqlite")
    with sqlite3.connect(path) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
    db.close()
    assert meta["changesets"] == "2" and "unsorted_from" in meta  # extended, not rebuilt
    updated = VersionIndex(str(path), immutable=False)
    fresh = Repository(load_settings(store=cli.store, cache_dir=str(tmp_path / "fresh")))
    assert served(updated) == served(fresh.index(fresh.resolve(v2)))


@pytest.mark.parametrize("fails_after", [0, 1])
def test_copy_falls_back_where_the_kernel_cannot_copy(tmp_path, monkeypatch, fails_after):
    """copy_file_range refused (other filesystems, old kernels), at once or part-way: the copy is
    finished by hand, and the update serves the same view."""
    import errno

    real, calls = os.copy_file_range, []

    def copy_file_range(src, dst, count, offset_src, offset_dst):
        calls.append(count)
        if len(calls) > fails_after:
            raise OSError(errno.EXDEV, "cross-device")
        return real(src, dst, min(count, 4096), offset_src, offset_dst)

    lineage = Lineage(tmp_path)
    draft = lineage.version("d", [], *[f"+k{i % 5}/f{i}={i}" for i in range(300)], publish=False)
    lineage.builder.index_for(lineage.catalog.version(draft))
    record(lineage, draft, ["-k1/", "+n/x=1"])
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    index = lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats["updated"] == 1 and len(calls) == fails_after + 1
    assert served(index) == served(full_build(lineage, draft, tmp_path / "full"))


def test_new_nodes_never_take_numbers_of_the_sorted_part(tmp_path):
    """The last sorted node and every appended one removed, then an add: the new node is still
    numbered after the sorted part, so walks keep it in path order."""
    lineage = Lineage(tmp_path)
    draft = lineage.version("d", [], "+a=1", "+z=2", publish=False)
    for specs in (["+m=3"], ["-m", "-z"], ["+0=4", "+b=5"]):
        lineage.builder.index_for(lineage.catalog.version(draft))
        record(lineage, draft, specs)
    index = lineage.builder.index_for(lineage.catalog.version(draft))
    assert lineage.builder.stats == Counter(built=1, updated=3, rows_updated=1 + 2 + 2)
    assert [n.path for n in index.walk()] == ["0", "a", "b"]
    assert served(index) == served(full_build(lineage, draft, tmp_path / "full"))
    check_consistent(index)
