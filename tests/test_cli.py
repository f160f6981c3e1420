"""End-to-end CLI tests, on the local store and on real S3 servers (moto, SeaweedFS)."""

from __future__ import annotations

import json
import os
import shutil


from conftest import tree_digest, write_tree


def _rand(n: int, seed: int) -> bytes:
    import random

    return random.Random(seed).randbytes(n)


SRC1 = {
    "readme.txt": "hello world\n" * 200,                   # compressible: deflated
    "img/cat.jpg": _rand(70_000, 1),                        # already compressed type: stored
    "img/dog.jpg": _rand(3_000, 2),
    "data/train/a.bin": _rand(200_000, 3),
    "data/train/b.bin": _rand(5, 4),
    "data/empty.bin": b"",
    "data/link": "-> train/a.bin",
    "emptydir/": "",
    "same1.bin": _rand(10_000, 9),
}
SRC2 = {
    "readme.txt": "second parent wins\n",
    "data/train/c.bin": _rand(30_000, 5),
    "copy_of_a.bin": _rand(200_000, 3),                     # same bytes as data/train/a.bin
    "extra/x.txt": "x" * 1000,
}


def _overlay(dest, src):
    shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True)


def test_end_to_end(cli, tmp_path):
    src1 = write_tree(tmp_path / "src1", SRC1)
    src2 = write_tree(tmp_path / "src2", SRC2)
    v1 = cli("create", "ds", "--project", "vision", "--tag", "raw", "--comment", "first").strip()
    assert len(v1) == 32
    out = json.loads(cli("add", v1, str(src1), "--json"))
    assert out["added"] == len(SRC1) - 1  # files and symlinks; folders are not counted
    cli("publish", v1)

    v2 = cli("create", "ds", "--root", "--name", "second").strip()
    out = json.loads(cli("add", v2, str(src2), "--json"))
    assert out["bytes_dedup"] == 0
    cli("publish", "ds@second")

    v3 = cli("create", "ds", "--parent", v1, "--parent", "ds@second", "--name", "merged",
             "--meta", "split=train").strip()
    write_tree(tmp_path / "more", {"new/n.txt": "new file", "dup.bin": _rand(200_000, 3)})
    out = json.loads(cli("add", "ds@draft", str(tmp_path / "more"), "--dest", "extra", "--json"))
    assert out["bytes_dedup"] == 200_000  # extra/dup.bin is stored once already
    cli("remove", v3, "img/dog.jpg", "data/train")
    cli("publish", v3)

    expected = tmp_path / "expected"
    _overlay(expected, src1)
    _overlay(expected, src2)
    _overlay(expected / "extra", tmp_path / "more")
    os.unlink(expected / "img/dog.jpg")
    shutil.rmtree(expected / "data/train")

    got = tmp_path / "got"
    cli("get", "ds@merged", str(got))
    assert tree_digest(got) == tree_digest(expected)
    # The symlink data/link now dangles (its target folder was removed), exactly as in expected.
    assert os.readlink(got / "data/link") == "train/a.bin"

    listing = json.loads(cli("ls", "ds", "-r", "--json"))  # 'ds' = latest published = merged
    files = {e["path"]: e for e in listing}
    assert set(files) == set(tree_digest(expected))
    assert files["readme.txt"]["version"] == v2
    assert files["extra/new/n.txt"]["version"] == v3
    assert files["same1.bin"]["version"] == v1
    assert files["img/cat.jpg"]["size"] == 70_000

    top = json.loads(cli("ls", v3, "--json"))
    assert [e["path"] for e in top] == sorted(e["path"] for e in top)
    assert "data/empty.bin" in {e["path"] for e in json.loads(cli("ls", v3, "data", "--json"))}

    diff = json.loads(cli("diff", v1, v3, "--json"))
    assert {e["path"] for e in diff["removed"]} == {"img/dog.jpg", "data/train/a.bin", "data/train/b.bin"}
    assert {e["path"] for e in diff["modified"]} == {"readme.txt"}
    assert {e["path"] for e in diff["added"]} == {
        "data/train/c.bin", "copy_of_a.bin", "extra/x.txt", "extra/new/n.txt", "extra/dup.bin"} - {"data/train/c.bin"}

    versions = json.loads(cli("versions", "ds", "--json"))
    assert [v["name"] for v in versions] == ["v1", "second", "merged"]
    assert all(v["state"] == "published" for v in versions)
    shown = json.loads(cli("show", "ds@merged", "--json"))
    assert shown["parents"] == [v1, v2] and shown["metadata"] == {"split": "train"}
    log = cli("log", v3)
    assert log.splitlines()[0].startswith(v3[:12]) and "ds@v1" in log and "ds@second" in log
    assert json.loads(cli("datasets", "--project", "vision", "--json"))[0]["name"] == "ds"
    assert json.loads(cli("datasets", "--project", "nope", "--json")) == []
    assert cli("verify", v3, "--hash").strip() == ""


def test_rename_costs_a_manifest_line(cli, tmp_path):
    src = write_tree(tmp_path / "src", {"big.bin": _rand(1_000_000, 7)})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(src))
    cli("publish", v1)
    cli("create", "ds")
    os.rename(src / "big.bin", src / "renamed.bin")
    out = json.loads(cli("sync", "ds@draft", str(src), "--json"))
    assert (out["added"], out["removed"], out["bytes_uploaded"], out["bytes_dedup"]) == (1, 1, 0, 1_000_000)
    got = tmp_path / "got"
    cli("get", "ds@draft", str(got))
    assert tree_digest(got) == tree_digest(src)


def test_sync_adds_modifies_removes(cli, tmp_path):
    src = write_tree(tmp_path / "src", {"a": "1", "b": "2", "d/x": "3", "d/y": "4", "keep/k": "5"})
    v1 = cli("create", "ds").strip()
    cli("sync", v1, str(src))
    assert json.loads(cli("sync", v1, str(src), "--json"))["added"] == 0  # nothing changed
    (src / "a").write_text("changed")
    os.unlink(src / "b")
    shutil.rmtree(src / "d")
    (src / "d").write_text("now a file")
    (src / "n").write_text("new")
    out = json.loads(cli("sync", v1, str(src), "--json"))
    assert (out["added"], out["modified"]) == (2, 1)
    got = tmp_path / "got"
    cli("get", v1, str(got))
    assert tree_digest(got) == tree_digest(src)


def test_sync_into_a_subtree_leaves_the_rest(cli, tmp_path):
    v1 = cli("create", "ds").strip()
    write_tree(tmp_path / "top", {"root.txt": "r"})
    cli("add", v1, str(tmp_path / "top"))
    write_tree(tmp_path / "sub", {"s1": "1", "s2": "2"})
    cli("sync", v1, str(tmp_path / "sub"), "--dest", "part")
    os.unlink(tmp_path / "sub/s1")
    cli("sync", v1, str(tmp_path / "sub"), "--dest", "part")
    paths = {e["path"] for e in json.loads(cli("ls", v1, "-r", "--json"))}
    assert paths == {"root.txt", "part", "part/s2"}


def test_add_wildcard_and_non_recursive(cli, tmp_path):
    write_tree(tmp_path / "src", {"a.csv": "1", "b.txt": "2", "sub/c.csv": "3"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(tmp_path / "src"), "--wildcard", "*.csv", "--non-recursive")
    assert {e["path"] for e in json.loads(cli("ls", v1, "-r", "--json"))} == {"a.csv"}
    cli("add", v1, str(tmp_path / "src"), "--wildcard", "*.csv")
    assert {e["path"] for e in json.loads(cli("ls", v1, "-r", "--json"))} == {"a.csv", "sub", "sub/c.csv"}
    cli("remove", v1, "*.csv")
    assert {e["path"] for e in json.loads(cli("ls", v1, "-r", "--json"))} == {"sub"}


def test_snapshot_keeps_id_and_starts_current(cli, tmp_path):
    v1 = cli("create", "ds", "--name", "Current").strip()
    write_tree(tmp_path / "src", {"a": "1"})
    cli("add", v1, str(tmp_path / "src"))
    out = json.loads(cli("snapshot", "ds", "--child-comment", "next", "--child-meta", "k=v", "--json"))
    assert out["snapshot"]["id"] == v1 and out["snapshot"]["state"] == "published"
    assert out["snapshot"]["name"].startswith("snapshot 20")
    assert out["current"]["name"] == "Current" and out["current"]["parents"] == [v1]
    assert out["current"]["metadata"] == {"k": "v"} and out["current"]["comment"] == "next"
    out2 = json.loads(cli("snapshot", "ds", "--name", "release-2", "--child-name", "work", "--json"))
    assert out2["snapshot"]["name"] == "release-2" and out2["current"]["name"] == "work"
    drafts = json.loads(cli("versions", "ds", "--drafts", "--json"))
    assert [d["name"] for d in drafts] == ["work"]


def test_squash_uploads_nothing_and_keeps_content(cli, tmp_path):
    write_tree(tmp_path / "a", {"x": "1", "shared": "from a"})
    write_tree(tmp_path / "b", {"y": "2", "shared": "from b"})
    va = cli("create", "ds").strip()
    cli("add", va, str(tmp_path / "a"))
    cli("publish", va)
    vb = cli("create", "ds", "--root").strip()
    cli("add", vb, str(tmp_path / "b"))
    cli("publish", vb)
    vs = cli("squash", va, vb, "--dataset", "flat").strip()
    shown = json.loads(cli("show", vs, "--json"))
    assert shown["parents"] == [] and shown["state"] == "published"
    assert shown["changeset_list"][0]["bytes_new"] == 0
    got = tmp_path / "got"
    cli("get", vs, str(got))
    assert (got / "shared").read_text() == "from b" and (got / "x").exists() and (got / "y").exists()


def test_delete_rules(cli, tmp_path):
    write_tree(tmp_path / "src", {"a": "1"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(tmp_path / "src"))
    cli("publish", v1)
    v2 = cli("create", "ds").strip()
    assert "published" in cli.fails("delete", v1, code=6)
    assert "is a parent of" in cli.fails("delete", v1, "--force", code=4)
    assert "--all-versions" in cli.fails("delete", "--dataset", "ds", code=2)
    assert "--force" in cli.fails("delete", "--dataset", "ds", "--all-versions", code=6)
    cli("delete", v2)
    cli("delete", "--dataset", "ds", "--all-versions", "--force")
    assert json.loads(cli("datasets", "--json")) == []
    assert "no dataset or version matches ref" in cli.fails("show", v1, code=3)


def test_tags(cli):
    cli("create", "ds", "--tag", "a")
    assert json.loads(cli("tag", "ds", "--add", "b", "--add", "c", "--remove", "a", "--json")) == ["b", "c"]
    assert json.loads(cli("datasets", "--tag", "c", "--json"))[0]["name"] == "ds"


def test_delete_keeps_chunks_another_version_references(cli, tmp_path):
    write_tree(tmp_path / "a", {"x.bin": _rand(50_000, 30)})
    va = cli("create", "ds").strip()
    cli("add", va, str(tmp_path / "a"))
    cli("publish", va)
    flat = cli("squash", va, "--dataset", "flat").strip()
    cli("delete", va, "--force")
    assert cli("verify", flat, "--hash").strip() == ""
    got = tmp_path / "got"
    cli("get", flat, str(got))
    assert (got / "x.bin").read_bytes() == _rand(50_000, 30)
    cli("delete", flat, "--force")
    # The original chunk is an orphan now: gc removes it (its grace period aside).
    assert len(json.loads(cli("gc", "--dry-run", "--json"))) == 0
    orphans = json.loads(cli("gc", "--grace", "0", "--json"))
    assert len(orphans) == 1 and orphans[0].startswith(f"versions/{va}/chunks/")
    assert json.loads(cli("gc", "--grace", "0", "--dry-run", "--json")) == []


def test_an_index_of_an_older_format_is_rebuilt(local_cli, tmp_path, cache_dir):
    """The index is a cache: a file left by an older dsfs (another ``format``) is rebuilt, not
    served, so new indexes (here the chunk/offset one neighbour fetching needs) are always there."""
    import sqlite3

    from dsfs.config import load_settings
    from dsfs.repo import Repository
    from dsfs.resolver.index import INDEX_FORMAT

    write_tree(tmp_path / "src", {"a/b.txt": "b", "c.txt": "c"})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    repo = Repository(load_settings(store=local_cli.store, cache_dir=str(cache_dir)))
    manifest = repo.resolve(vid)
    path = repo.index(manifest).path
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE meta SET value = '1' WHERE key = 'format'")
        conn.execute("DROP INDEX nodes_by_chunk")
    conn.close()
    index = repo.index(manifest)
    assert index.format == INDEX_FORMAT and index.by_path("a/b.txt") is not None
    with sqlite3.connect(index.path) as conn:
        assert conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'nodes_by_chunk'").fetchone()
    conn.close()


def test_gc_removes_the_draft_record_of_a_create_that_died_before_listing_it(cli, cache_dir):
    """FORMAT.md §9.3: a create that dies between writing ``draft.json`` and listing the version
    in its dataset leaves an empty draft nothing names; gc removes it after the grace period,
    and never touches a listed draft, empty or not."""
    from dsfs.changeset.manifest import VersionManifest, draft_key, new_id, now_iso
    from dsfs.config import load_settings
    from dsfs.store import open_store

    listed = cli("create", "ds").strip()
    store = open_store(cli.store, load_settings(store=cli.store, cache_dir=str(cache_dir)))
    orphan = VersionManifest(new_id(), "ds", "half-made", [], "draft", now_iso())
    store.put_if_absent(draft_key(orphan.id), orphan.dumps())
    assert json.loads(cli("gc", "--dry-run", "--json")) == []  # young: a create may be in flight
    assert json.loads(cli("gc", "--grace", "0", "--json")) == [draft_key(orphan.id)]
    assert "no dataset or version matches ref" in cli.fails("show", orphan.id, code=3)
    assert json.loads(cli("show", listed, "--json"))["state"] == "draft"
    assert json.loads(cli("gc", "--grace", "0", "--dry-run", "--json")) == []
