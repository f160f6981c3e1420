"""The index build's own reading of change-set lines: its fast row maker and its batching.

The build turns each "add" line into a work row in one call for the common shape (a plain file),
and through ``entry_fields`` for every other line; these check that both ways give the same row
or refuse a line with the same error, and that a change-set mixing the shapes builds what its
lines say, in their order.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_merge import Lineage, test_merge

from dsfs.changeset.manifest import DIR, FILE, HASH_BLOCK, SYMLINK, ChangeSet, Entry, entry_fields, new_id, now_iso
from dsfs.errors import Corrupt
from dsfs.resolver import parse
from dsfs.resolver.parse import row_maker
from dsfs.resolver.update import entry_row

GOOD = {"op": "add", "path": "d/f.jpg", "type": "file", "mode": 0o100644, "mtime_ns": 5, "size": 3,
        "sha256": "ab" * 32, "chunk": "versions/x/chunks/c-0000.zip", "offset": 7, "csize": 3, "method": 0}
# Values each field may take: the good one, others that entry_fields takes too, and bad ones.
VARIANTS = {
    "path": ["d/f.jpg", "f", ".hidden/f", "a/" + "x" * 255, "caf\udce9.jpg", "../x", "/x", "a\x00b", "a//b", "a/.",
             "y" * 256, "", 7, None],
    "type": ["file", "dir", "symlink", "fifo", None],
    "mode": [0o644, -1, True, 5.5, "644", "rw", None],
    "mtime_ns": [5, 0, -3, 2.0, "9", None],
    "size": [3, 0, HASH_BLOCK + 1, -1, 3.0, True, "3", None],
    "sha256": ["ab" * 32, "AB" * 32, "zz" * 32, "ab" * 31 + " a", "ab" * 33, 12, None],
    "chunk": ["versions/x/chunks/c-0000.zip", None, 5],
    "offset": [7, 0, -1, 7.0, None],
    "csize": [3, -2, "3", None],
    "method": [0, 8, 12, True, 8.0, None],
    "target": ["../t", None],
    "blocks": ["cd" * 32, "zz"],
    "tree": ["ef" * 32, "E" * 64],
    "tree_offset": [9, -1],
}
MISSING = object()


@st.composite
def lines(draw) -> dict:
    line = dict(GOOD)
    for key in draw(st.lists(st.sampled_from(sorted(VARIANTS)), max_size=4, unique=True)):
        value = draw(st.sampled_from([*VARIANTS[key], MISSING]))
        if value is MISSING:
            line.pop(key, None)
        else:
            line[key] = value
    return line


def _slow(line: dict, chunks: dict[str, int]) -> tuple:
    fields = entry_fields(line)
    return entry_row(fields, 3, None if fields[7] is None else chunks.setdefault(fields[7], len(chunks) + 1))


def _wide(row: tuple) -> tuple:
    """A row of either width as the 16 values it stands for."""
    return row if len(row) == 16 else row[:7] + (None,) + row[7:] + (None, None, None)


@settings(max_examples=600, deadline=None)
@given(line=lines())
def test_the_fast_row_is_the_row_of_entry_fields_or_the_same_error(line):
    chunks: dict[str, int] = {}
    try:
        want = _slow(line, chunks)
    except Corrupt as exc:
        with pytest.raises(Corrupt) as got:
            row_maker({}, 3)(line)
        assert str(got.value) == str(exc)
        return
    assert _wide(row_maker({}, 3)(line)) == want


def test_plain_files_take_the_fast_row_and_other_lines_the_full_one():
    make = row_maker({}, 3)
    assert len(make(GOOD)) == 12
    empty = {k: v for k, v in GOOD.items() if k not in ("chunk", "offset", "csize", "method")} | {"size": 0}
    assert make(empty)[7:11] == (None, 0, 0, 0)
    assert len(make(GOOD | {"path": ".hidden/" + "x" * 200 + "/" + "y" * 200})) == 12  # (checked name by name)
    for other in ({"type": "dir"}, {"type": "symlink", "target": "t"}, {"blocks": "cd" * 32}, {"size": True}):
        assert len(make(GOOD | other)) == 16


@pytest.mark.parametrize("sha", ["AB" * 32, "zz" * 32, "ab" * 31 + " a"])
def test_a_sha256_that_is_not_lowercase_hex_is_corrupt(sha):
    for parse in (Entry.from_json, entry_fields, row_maker({}, 1)):
        with pytest.raises(Corrupt, match="bad size or sha256"):
            parse(GOOD | {"sha256": sha})


def _file(path: str, content: str, **kw) -> Entry:
    return Entry(path, FILE, len(content), f"{len(content):064x}", 0o644,
                 chunk=f"versions/x/chunks/{content}.zip", csize=len(content), **kw)


def test_a_changeset_mixing_row_shapes_builds_each_path_from_its_last_line(tmp_path):
    """Plain rows and full ones go to SQLite in separate batches: a path's later line still wins."""
    lineage = Lineage(tmp_path)
    big = HASH_BLOCK + 1
    entries = [
        _file("p", "plain1"),
        Entry("p", FILE, big, "1" * 64, 0o600, chunk="versions/x/chunks/tree.zip", csize=big, tree="2" * 64,
              tree_offset=big + 40),
        _file("q", "q1"),
        Entry("l", SYMLINK, target="p", mode=0o777),
        _file("z", "z1"),
        _file("q", "q2"),
        _file("z", "z2"),
        Entry("e", FILE, 0, mode=0o640),
        Entry("d", DIR, mode=0o700),
        _file("d/x", "x"),
        _file("b", "b1"),
        Entry("b", FILE, big, "3" * 64, 0o644, chunk="versions/x/chunks/blocks.zip", csize=big,
              blocks="4" * 128),
    ]
    m = lineage.catalog.create_version("ds", "v", [])
    cs = ChangeSet(m.id, new_id()[:12], now_iso(), entries, [])
    lineage.catalog.record_changeset(m.id, lineage.catalog.write_changeset(cs, len(entries), 0, 0, []))
    index = lineage.builder.index_for(lineage.catalog.version(m.id))
    p, q, b = index.by_path("p"), index.by_path("q"), index.by_path("b")
    assert (p.tree, p.tree_offset, p.mode, p.chunk) == ("2" * 64, big + 40, 0o600, "versions/x/chunks/tree.zip")
    assert q.chunk == "versions/x/chunks/q2.zip" and b.blocks == "4" * 128 and b.tree is None
    assert index.by_path("z").chunk == "versions/x/chunks/z2.zip"  # (one batch, sorted by path: still the later)
    assert index.by_path("l").target == "p" and index.by_path("e").chunk is None
    assert index.by_path("d").mode == 0o700 and index.by_path("d/x").size == 1
    assert index.chunks() == sorted(f"versions/x/chunks/{k}.zip" for k in ("blocks", "tree", "q2", "x", "z2"))
    assert index.files == 7
    assert lineage.builder.stats["parsed_apart"] == 0  # (a small build reads its change-sets itself)


@pytest.fixture
def apart(monkeypatch):
    """Every change-set read by a child process, however small."""
    monkeypatch.setattr(parse, "PARSE_APART", 0)


@pytest.mark.parametrize("name", ["single root", "folder tombstone removes the subtree", "deep linear lineage",
                                  "later parent's file replaces earlier parent's folder", "diamond"])
def test_changesets_read_in_a_second_process_build_the_same_view(tmp_path, apart, name):
    test_merge(tmp_path, name)


def test_a_second_process_numbers_chunks_as_the_build_does(tmp_path, apart):
    """Chunks interned by the child (new keys, and keys an earlier change-set interned) agree with the
    build's own ids: every file reads its own chunk."""
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1", "+b=2", "+d/c=3")
    lineage.version("c", ["r"], "+b=9", "+e=1", "+d/f=4")
    assert lineage.view("c") == {"a": "1", "b": "9", "d": "/", "d/c": "3", "d/f": "4", "e": "1"}
    assert lineage.builder.stats["parsed_apart"] == 2


def test_one_second_process_reads_a_whole_build_as_chunks_come_from_overlays_too(tmp_path, apart):
    """p1 is replayed (by the child), p2's cached index overlaid (its chunk keys interned here),
    then c's change-set read by the same child, which must number p2's chunk as this process did."""
    lineage = Lineage(tmp_path)
    lineage.version("p2", [], "+x=7", "+w=6")
    assert lineage.view("p2") == {"x": "7", "w": "6"}
    lineage.version("p1", [], "+a=1", "+b=2")
    lineage.version("c", ["p1", "p2"], "+y=7", "+z=8", "+b=6")
    before = lineage.builder.stats["parsed_apart"]
    assert lineage.view("c") == {"a": "1", "b": "6", "w": "6", "x": "7", "y": "7", "z": "8"}
    assert lineage.builder.stats["parsed_apart"] - before == 2
    assert not _children()


_BEFORE: set[int] = set()


def _all_children() -> set[int]:
    """The pids of this process's children, running or unreaped."""
    found = set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == os.getpid():
                found.add(int(pid))
    return found


@pytest.fixture(autouse=True)
def _children_before():
    """Children this process had before the test (a session's S3 server, say): not the build's."""
    global _BEFORE
    _BEFORE = _all_children()
    yield


def _children() -> list[int]:
    """The pids of children the test left running or unreaped."""
    return sorted(_all_children() - _BEFORE)


def _error(lineage: Lineage, name: str) -> str:
    with pytest.raises(Corrupt) as exc:
        lineage.view(name)
    return str(exc.value)


def test_a_second_process_refuses_what_this_one_refuses(tmp_path, monkeypatch):
    """Each bad change-set fails with the same error read here and read by a child."""
    lineage = Lineage(tmp_path)
    lineage.version("x", [], "+k=1", "+k/z=2", publish=False)
    lineage.version("r", [], *[f"+d/f{i}={i}" for i in range(6000)], publish=False)
    path = tmp_path / "store" / lineage.catalog.version(lineage.ids["r"]).changesets[0].key
    lines = gzip.decompress(path.read_bytes()).splitlines()
    bad_lines = [json.dumps(GOOD | {"path": "../x"}), "{nope", json.dumps(GOOD | {"path": "/x"}),
                 json.dumps(GOOD | {"sha256": "x" * 64}), json.dumps({"op": "remove", "path": "a"})]
    seen = []
    for bad in [None, *bad_lines]:
        if bad is not None:
            path.write_bytes(gzip.compress(b"\n".join([*lines[:1000], bad.encode(), *lines[1000:]]) + b"\n"))
        else:  # the stream cut short
            path.write_bytes(gzip.compress(b"\n".join(lines) + b"\n", compresslevel=0)[:-5000])
        for name in ("x", "r"):
            monkeypatch.setattr(parse, "PARSE_APART", 10**9)
            here = _error(lineage, name)
            monkeypatch.setattr(parse, "PARSE_APART", 0)
            assert _error(lineage, name) == here
            seen.append(here)
    assert "both a file and a folder: 'k'" in seen[0] and "truncated after line" in seen[1]
    assert "line 1001 (removal after an add)" in seen[-1]
    assert not [p for p in os.listdir(tmp_path / "index") if p.startswith(".build-")]
    assert not _children()


@pytest.mark.parametrize("reader, warning", [("/bin/false", "change-set reader exited with 1 after 0 items"),
                                             ("/nonexistent/python", "cannot start a change-set reader")])
def test_where_no_second_process_reads_this_one_does(tmp_path, apart, monkeypatch, caplog, reader, warning):
    monkeypatch.setattr(parse.sys, "executable", reader)
    test_merge(tmp_path, "deep linear lineage")
    assert warning in caplog.text and "here" in caplog.text
    assert not _children()


def test_a_second_process_that_dies_midway_is_taken_over(tmp_path, apart, monkeypatch, caplog):
    """A child killed after some batches: this process reads on from the first item it did not get."""
    monkeypatch.setattr(parse, "_BATCH", 100)
    real = parse.subprocess.Popen

    def popen(*args, **kwargs):
        child = real(*args, **kwargs)
        real_load = parse.pickle.load
        loads = iter(range(10**9))

        def load(stream):
            if next(loads) == 5:
                child.kill()
                child.wait()
                raise EOFError
            return real_load(stream)
        monkeypatch.setattr(parse.pickle, "load", load)
        return child
    monkeypatch.setattr(parse.subprocess, "Popen", popen)
    lineage = Lineage(tmp_path)
    lineage.version("r", [], *[f"+d{i % 7}/f{i}={i % 5}" for i in range(2000)])
    view = lineage.view("r")
    assert len(view) == 2007 and view["d3/f1998"] == "3"
    assert "after 500 items" in caplog.text
    assert not _children()


@pytest.mark.parametrize("at", [10**9, 0])
def test_blank_lines_are_skipped(tmp_path, monkeypatch, at):
    monkeypatch.setattr(parse, "PARSE_APART", at)
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1", "+b=2", "+c/d=3", publish=False)
    path = tmp_path / "store" / lineage.catalog.version(lineage.ids["r"]).changesets[0].key
    lines = gzip.decompress(path.read_bytes()).splitlines()
    path.write_bytes(gzip.compress(b"\n".join([lines[0], b"", lines[1], b"  \r", *lines[2:], b""]) + b"\n"))
    assert lineage.view("r") == {"a": "1", "b": "2", "c": "/", "c/d": "3"}
    path.write_bytes(gzip.compress(b"\n".join([lines[0], b"", lines[1], b"{", *lines[2:]]) + b"\n"))
    for built in (tmp_path / "index").iterdir():
        built.unlink()
    with pytest.raises(Corrupt, match="corrupt change-set line 3"):
        lineage.view("r")


def test_by_paths_finds_what_by_path_finds(tmp_path):
    """An order hint resolves its paths with one query per folder: the same nodes as one
    ``by_path`` each, None for missing ones (also under a file, or a folder that is not there)."""
    lineage = Lineage(tmp_path)
    lineage.version("r", [], *[f"+d{i % 3}/e{i % 2}/f{i}={i % 5}" for i in range(1200)],
                    *[f"+flat/g{i}={i % 5}" for i in range(700)], "+top=1", "+l->top")
    index = lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))
    paths = ["", "top", "l", "d1", "d2/e0", "d0/e0/f0", "d0/e0/f0", "d1/e1/f1", "nope", "d0/nope/f3",
             "top/x", "d0/e0/f0/x", "d9/e0/f0", *[f"d{i % 3}/e{i % 2}/f{i}" for i in range(0, 1200, 7)],
             *[f"flat/g{i}" for i in range(701)]]  # more names in one folder than one IN (...) takes
    assert index.by_paths(paths) == [index.by_path(p) for p in paths]
    assert index.by_paths(["nope"]) == [None]
