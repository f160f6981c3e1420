"""Table-driven tests of the merge rules: parents in order, tombstones, conflicts, dedup."""

from __future__ import annotations

import hashlib

import pytest

from dsfs.catalog import Catalog
from dsfs.changeset.manifest import DIR, FILE, SYMLINK, ChangeSet, Entry, Removal, new_id, now_iso
from dsfs.errors import Corrupt
from dsfs.resolver import ViewBuilder
from dsfs.store.local import LocalStore


def _entry(spec: str) -> Entry:
    """'+a/b=content' file, '+d/' folder, '+l->target' symlink."""
    body = spec[1:]
    if body.endswith("/"):
        return Entry(body[:-1], DIR, mode=0o755)
    if "->" in body:
        path, target = body.split("->")
        return Entry(path, SYMLINK, target=target, mode=0o777)
    path, content = body.split("=")
    sha = hashlib.sha256(content.encode()).hexdigest()
    return Entry(path, FILE, len(content), sha, 0o644, chunk=f"versions/x/chunks/{content}.zip",
                 csize=len(content))


class Lineage:
    """Tiny builder: versions by name, each with parents and one change-set of specs."""

    def __init__(self, tmp_path):
        self.catalog = Catalog(LocalStore(tmp_path / "store", create=True))
        self.catalog.ensure_dataset("ds")
        self.builder = ViewBuilder(self.catalog, str(tmp_path / "index"))
        self.ids: dict[str, str] = {}

    def version(self, name: str, parents: list[str], *changes: str, publish: bool = True,
                changesets: list[list[str]] | None = None):
        m = self.catalog.create_version("ds", name, [self.ids[p] for p in parents])
        for specs in changesets or [list(changes)]:
            removals = [Removal(s[1:].rstrip("/"), s.endswith("/")) for s in specs if s[0] == "-"]
            entries = [_entry(s) for s in specs if s[0] == "+"]
            cs = ChangeSet(m.id, new_id()[:12], now_iso(), entries, removals)
            self.catalog.record_changeset(m.id, self.catalog.write_changeset(cs, len(entries), 0, 0, []))
        if publish:
            self.catalog.publish(m.id)
        self.ids[name] = m.id
        return m.id

    def view(self, name: str) -> dict[str, str]:
        """path -> content/type summary of the merged view."""
        index = self.builder.index_for(self.catalog.version(self.ids[name]))
        out = {}
        for node in index.walk():
            if node.type == DIR:
                out[node.path] = "/"
            elif node.type == SYMLINK:
                out[node.path] = "->" + node.target
            else:
                out[node.path] = node.chunk.rsplit("/", 1)[1][:-4]
        return out

    def provider(self, name: str, path: str) -> str:
        index = self.builder.index_for(self.catalog.version(self.ids[name]))
        return index.by_path(path).version


CASES = {
    "single root": (
        [("r", [], ["+a=1", "+d/b=2", "+l->a"])],
        {"a": "1", "d": "/", "d/b": "2", "l": "->a"},
    ),
    "child modifies and adds": (
        [("r", [], ["+a=1", "+b=2"]), ("c", ["r"], ["+a=9", "+c=3"])],
        {"a": "9", "b": "2", "c": "3"},
    ),
    "later parent wins on the same path": (
        [("p1", [], ["+x=1", "+only1=1"]), ("p2", [], ["+x=2", "+only2=2"]), ("c", ["p1", "p2"], [])],
        {"x": "2", "only1": "1", "only2": "2"},
    ),
    "parent order matters": (
        [("p1", [], ["+x=1"]), ("p2", [], ["+x=2"]), ("c", ["p2", "p1"], [])],
        {"x": "1"},
    ),
    "own change-set beats every parent": (
        [("p1", [], ["+x=1"]), ("p2", [], ["+x=2"]), ("c", ["p1", "p2"], ["+x=3"])],
        {"x": "3"},
    ),
    "file tombstone": (
        [("r", [], ["+a=1", "+b=2"]), ("c", ["r"], ["-a"])],
        {"b": "2"},
    ),
    "folder tombstone removes the subtree": (
        [("r", [], ["+d/x=1", "+d/e/y=2", "+dz=3", "+d.txt=4"]), ("c", ["r"], ["-d/"])],
        {"dz": "3", "d.txt": "4"},
    ),
    "add wins over a removal in the same change-set": (
        [("r", [], ["+d/x=1", "+d/y=2"]), ("c", ["r"], ["-d/", "+d/x=5"])],
        {"d": "/", "d/x": "5"},
    ),
    "removal in a later parent does not remove an earlier parent's file": (
        [("p1", [], ["+a=1"]), ("q", [], ["+a=2"]), ("p2", ["q"], ["-a", "+b=3"]), ("c", ["p1", "p2"], [])],
        {"a": "1", "b": "3"},
    ),
    "later parent's file replaces earlier parent's folder": (
        [("p1", [], ["+k/x=1", "+k/y=2"]), ("p2", [], ["+k=3"]), ("c", ["p1", "p2"], [])],
        {"k": "3"},
    ),
    "later parent's folder replaces earlier parent's file": (
        [("p1", [], ["+k=3"]), ("p2", [], ["+k/x=1"]), ("c", ["p1", "p2"], [])],
        {"k": "/", "k/x": "1"},
    ),
    "replace a file by a folder after removing it": (
        [("r", [], ["+k=1"]), ("c", ["r"], ["-k", "+k/z=2"])],
        {"k": "/", "k/z": "2"},
    ),
    "explicit empty folder": (
        [("r", [], ["+e/", "+f=1"])],
        {"e": "/", "f": "1"},
    ),
    "deep linear lineage": (
        [("v0", [], ["+a=0"])] + [(f"v{i}", [f"v{i-1}"], [f"+a={i}", f"+f{i}=x"]) for i in range(1, 8)],
        {"a": "7", **{f"f{i}": "x" for i in range(1, 8)}},
    ),
    "diamond": (
        [("r", [], ["+a=1", "+b=1"]), ("l", ["r"], ["+a=2"]), ("rr", ["r"], ["-b", "+c=3"]),
         ("m", ["l", "rr"], [])],
        {"a": "1", "b": "1", "c": "3"},
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_merge(tmp_path, name):
    steps, expected = CASES[name]
    lineage = Lineage(tmp_path)
    for vname, parents, changes in steps:
        lineage.version(vname, parents, *changes)
    assert lineage.view(steps[-1][0]) == expected


def test_several_changesets_in_one_draft_apply_in_order(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("d", [], publish=False, changesets=[["+a=1", "+b=1"], ["-a"], ["+a=2", "+c=3"]])
    assert lineage.view("d") == {"a": "2", "b": "1", "c": "3"}


@pytest.mark.parametrize("change,bad", [
    ("+k/x=2", "k"),  # a file below an existing file
    ("+f=9", "f"),    # a file where a folder exists
    ("+k/", "k"),     # a folder where a file exists
])
def test_file_folder_conflict_rejected(tmp_path, change, bad):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+k=1", "+f/y=1")
    lineage.version("c", ["r"], change)
    with pytest.raises(Corrupt, match=f"both a file and a folder: '{bad}'"):
        lineage.view("c")


def test_conflict_inside_one_changeset(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1", "+a/b=2")
    with pytest.raises(Corrupt, match="both a file and a folder: 'a'"):
        lineage.view("r")


def test_provenance_and_stable_inodes(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1", "+b=1")
    lineage.version("c", ["r"], "+b=2")
    assert lineage.provider("c", "a") == lineage.ids["r"]
    assert lineage.provider("c", "b") == lineage.ids["c"]
    first = {n.path: n.ino for n in lineage.builder.index_for(lineage.catalog.version(lineage.ids["c"])).walk()}
    # A second builder on a fresh index folder numbers the same version identically.
    other = ViewBuilder(lineage.catalog, str(tmp_path / "index2"))
    second = {n.path: n.ino for n in other.index_for(lineage.catalog.version(lineage.ids["c"])).walk()}
    assert first == second


def test_children_listed_in_name_order_and_lookup(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+d/b=1", "+d/a=1", "+d/C=1", "+d/a.b/x=1")
    index = lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))
    d = index.by_path("d")
    assert [n.name for n in index.children(d.ino)] == ["C", "a", "a.b", "b"]
    assert index.lookup(d.ino, "a").path == "d/a"
    assert index.lookup(d.ino, "zz") is None
    assert index.get(1).nlink == 3 and d.nlink == 3  # root: '.', '..', d ; d: '.', '..', a.b


def test_dedup_pointer_keeps_the_original_location(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1")
    index = lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"]))
    blob = index.find_blob(hashlib.sha256(b"1").hexdigest())
    assert blob.chunk == "versions/x/chunks/1.zip"
    assert index.find_blob("0" * 64) is None


def test_draft_index_rebuilt_when_manifest_changes(tmp_path):
    lineage = Lineage(tmp_path)
    vid = lineage.version("d", [], "+a=1", publish=False)
    assert lineage.view("d") == {"a": "1"}
    cs = ChangeSet(vid, "second", now_iso(), [_entry("+b=2")], [])
    lineage.catalog.record_changeset(vid, lineage.catalog.write_changeset(cs, 1, 0, 0, []))
    assert lineage.view("d") == {"a": "1", "b": "2"}


def test_published_index_is_built_once(tmp_path):
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a=1")
    manifest = lineage.catalog.version(lineage.ids["r"])
    first = lineage.builder.index_for(manifest).path
    mtime = (tmp_path / "index" / first.rsplit("/", 1)[1]).stat().st_mtime_ns
    assert lineage.builder.index_for(manifest).path == first
    assert (tmp_path / "index" / first.rsplit("/", 1)[1]).stat().st_mtime_ns == mtime


def test_paths_and_subtree_walks_without_stored_paths(tmp_path):
    """Paths are derived from names, and a folder's walk is its subtree in byte order (where
    'a-b' and 'a.b' sort between 'a' and 'a/...'), including across an overlaid parent."""
    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a/b/c=1", "+a/b-c=2", "+a/b/d/e=3", "+a-b=4", "+a/e/", "+a.b/x=5", "+z=6")
    lineage.version("c", ["r"], "+a/b/d/f=7", "-a/b-c", "+a/b.x=8")
    lineage.version("m", ["c", "r"], "+a/n=9")  # r overlaid on c: its a/b-c comes back
    for name in ("r", "c", "m"):
        index = lineage.builder.index_for(lineage.catalog.version(lineage.ids[name]))
        every = list(index.walk())
        paths = [n.path for n in every]
        assert paths == sorted(paths, key=lambda p: p.encode())
        assert [n.ino for n in every] == list(range(2, len(every) + 2))
        for node in every:
            assert index.get(node.ino) == node == index.by_path(node.path)
            assert index.lookup(node.parent, node.name) == node
            below = [n for n in every if n.path == node.path or n.path.startswith(node.path + "/")]
            assert list(index.walk(node.path)) == below
            if node.is_dir:
                assert index.children(node.ino) == [n for n in every if n.parent == node.ino]
        assert list(index.walk("a/nothing")) == [] and index.by_path("a/b/c/x") is None
    assert "a/b-c" in [n.path for n in index.walk("a")]


@pytest.mark.parametrize("old", ["3", "4", "5", "6"])
def test_pinned_index_of_an_older_format_upgrades_to_the_same_rows(tmp_path, old):
    import shutil
    import sqlite3

    from dsfs.resolver.build import upgrade_pinned

    lineage = Lineage(tmp_path)
    lineage.version("r", [], "+a/b/c=1", "+a/b-c=2", "+a/e/", "+l->a/b-c", "+z=3")
    path = lineage.builder.index_for(lineage.catalog.version(lineage.ids["r"])).path
    pin = str(tmp_path / "pin.sqlite")
    shutil.copyfile(path, pin)
    with sqlite3.connect(pin) as db:  # as format 5 held it: paths, hashes in hex (6: as 7, all in path order)
        db.execute("UPDATE meta SET value = ? WHERE key = 'format'", (old,))
    db.close()
    if old != "6":
        _as_format_5(pin, old)
    upgrade_pinned(pin)
    rows = []
    for db in (sqlite3.connect(path), sqlite3.connect(pin)):
        rows.append((db.execute("SELECT * FROM nodes ORDER BY ino").fetchall(),
                     db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()))
        db.close()
    assert rows[0] == rows[1]


def _as_format_5(pin: str, old: str) -> None:
    import sqlite3

    with sqlite3.connect(pin) as db:
        db.execute("ALTER TABLE nodes ADD COLUMN path BLOB")
        db.execute("WITH RECURSIVE t(ino, path) AS (SELECT ino, name FROM nodes WHERE parent = 1 AND ino != 1 "
                   "UNION ALL SELECT n.ino, CAST(t.path || '/' || n.name AS BLOB) FROM t JOIN nodes n "
                   "ON n.parent = t.ino) UPDATE nodes SET path = coalesce((SELECT path FROM t "
                   "WHERE t.ino = nodes.ino), X'')")
        db.execute("CREATE UNIQUE INDEX nodes_by_path ON nodes(path)")
        db.execute("UPDATE nodes SET sha256 = lower(hex(sha256)) WHERE sha256 IS NOT NULL")
        db.execute("UPDATE nodes SET last = NULL")
        if old in ("3", "4"):  # before hash trees
            db.execute("ALTER TABLE nodes DROP COLUMN tree")
            db.execute("ALTER TABLE nodes DROP COLUMN tree_offset")
        if old == "3":
            db.execute("UPDATE nodes SET name = CAST(name AS TEXT), path = CAST(path AS TEXT)")
    db.close()


def test_hashes_survive_replay_and_overlay(tmp_path):
    """sha256, blocks and the hash tree root are stored as bytes and read back as the hex the
    change-set had, whether a version is replayed or copied from its parent's index."""
    from dsfs.changeset.manifest import HASH_BLOCK

    lineage = Lineage(tmp_path)
    sha = hashlib.sha256(b"big").hexdigest()
    big = Entry("d/big", FILE, HASH_BLOCK + 1, sha, 0o644, chunk="versions/x/chunks/big.zip",
                csize=HASH_BLOCK + 1, blocks="0f" * 64, tree="ab" * 32, tree_offset=123)
    m = lineage.catalog.create_version("ds", "r", [])
    cs = ChangeSet(m.id, new_id()[:12], now_iso(), [big], [])
    lineage.catalog.record_changeset(m.id, lineage.catalog.write_changeset(cs, 1, 0, 0, []))
    lineage.catalog.publish(m.id)
    lineage.ids["r"] = m.id
    lineage.view("r")  # cached: the child copies it
    lineage.version("c", ["r"], "+e=1")
    for name in ("r", "c"):
        index = lineage.builder.index_for(lineage.catalog.version(lineage.ids[name]))
        node = index.by_path("d/big")
        assert (node.sha256, node.blocks, node.tree, node.tree_offset) == (sha, "0f" * 64, "ab" * 32, 123)
        assert index.find_blob(sha).tree == "ab" * 32
