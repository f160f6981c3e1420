"""Names are bytes: every name but '/' and NUL round-trips byte-exact through add, sync, remove,
ls, diff, get, published and draft mounts, and commit (docs/FORMAT.md, "Names")."""

from __future__ import annotations

import base64
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from conftest import Cli, _mounts_for, write_tree
from mounting import wait_dead
from dsfs.changeset.manifest import iter_changeset

LATIN1 = b"caf\xe9.jpg"
SJIS = b"\x83e\x83X\x83g.txt"
UTF8 = "ünï cödé ☃ 🐍.txt".encode()
NEWLINE = b"line\nbreak"
QUOTES = b"back\\slash \"dq\" 'sq' $x *"
BAD_DIR = b"dir\xff"
SURROGATE_BYTES = b"\xed\xb3\xa9 looks like an escape"  # invalid UTF-8 that spells U+DCE9

FILES = {  # path bytes -> content
    LATIN1: b"latin-1 name\n",
    SJIS: b"shift-jis name\n",
    UTF8: b"utf-8 name\n",
    NEWLINE: b"newline name\n",
    QUOTES: b"quoted name\n",
    BAD_DIR + b"/inner\xfe.bin": bytes(range(256)) * 100,
    SURROGATE_BYTES: b"surrogate bytes\n",
    b"\xe9" * 255: b"longest name\n",
}
LINKS = {b"link\xe9": LATIN1, b"plain-link": b"dir\xff/inner\xfe.bin"}


@pytest.fixture(params=["local", pytest.param("moto", marks=pytest.mark.s3)])
def store(request, tmp_path, monkeypatch) -> str:
    """A local store, and one on moto: names must survive both backends."""
    if request.param == "local":
        return str(tmp_path / "store")
    server = request.getfixturevalue("moto_server")
    server.apply_env(monkeypatch)
    return server.new_bucket()


@pytest.fixture
def bcli(store, cache_dir) -> Cli:
    return Cli(store, cache_dir)


@pytest.fixture
def bmounts(store, cache_dir):
    yield from _mounts_for(store, cache_dir)


def build(root: Path, files=FILES, links=LINKS) -> Path:
    base = os.fsencode(root)
    for rel, content in files.items():
        path = os.path.join(base, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    for rel, target in links.items():
        os.symlink(target, os.path.join(base, rel))
    return root


def snapshot(root: Path) -> dict[bytes, tuple]:
    """relative path bytes -> (kind, content or link target bytes) for everything below root."""
    base = os.fsencode(root)
    result = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            if os.path.islink(full):
                result[rel] = ("symlink", os.readlink(full))
            elif os.path.isdir(full):
                result[rel] = ("dir", None)
            else:
                with open(full, "rb") as f:
                    result[rel] = ("file", hashlib.sha256(f.read()).hexdigest())
    return result


def arg(raw: bytes) -> str:
    """A byte name as Python passes it in sys.argv (PEP 383)."""
    return os.fsdecode(raw)


def json_name(doc: dict, key: str) -> bytes:
    """How docs/FORMAT.md says to read a name from --json output."""
    if f"{key}_b64" in doc:
        return base64.b64decode(doc[f"{key}_b64"])
    return doc[key].encode()


def published(bcli: Cli, src: Path) -> str:
    vid = bcli("create", "ds").strip()
    bcli("add", vid, str(src))
    bcli("publish", vid)
    return vid


def test_add_ls_get_diff_sync_remove(bcli, tmp_path):
    src = build(tmp_path / "src")
    v1 = published(bcli, src)

    listing = json.loads(bcli("ls", "-r", "--json", v1))
    by_path = {json_name(d, "path"): d for d in listing}
    assert set(by_path) == set(snapshot(src))
    assert json_name(by_path[b"link\xe9"], "target") == LATIN1
    assert by_path[LATIN1]["path"] == "caf\ufffd.jpg" and "path_b64" in by_path[LATIN1]
    assert by_path[UTF8]["path"] == UTF8.decode() and "path_b64" not in by_path[UTF8]
    assert json_name(json.loads(bcli("ls", "--json", v1, arg(BAD_DIR)))[0], "path") == BAD_DIR + b"/inner\xfe.bin"

    bcli("get", v1, str(tmp_path / "got"))
    assert snapshot(tmp_path / "got") == snapshot(src)

    # sync: drop the latin-1 name, add a new Shift-JIS one, change the UTF-8 one
    os.unlink(os.path.join(os.fsencode(src), LATIN1))
    build(src, {b"\x93\xfa\x96\x7b.txt": b"nihon\n", UTF8: b"changed\n"}, {})
    v2 = bcli("create", "ds", "--parent", v1).strip()
    bcli("sync", v2, str(src))
    bcli("get", v2, str(tmp_path / "synced"))
    assert snapshot(tmp_path / "synced") == snapshot(src)
    diff = json.loads(bcli("diff", "--json", v1, v2))
    assert [json_name(d, "path") for d in diff["added"]] == [b"\x93\xfa\x96\x7b.txt"]
    assert [json_name(d, "path") for d in diff["removed"]] == [LATIN1]
    assert [json_name(d, "path") for d in diff["modified"]] == [UTF8]

    # remove: a glob matches a byte name ('?' is one byte that is not UTF-8); an exact path too
    bcli("remove", v2, "?e?X?g.txt")
    bcli("remove", v2, arg(BAD_DIR + b"/inner\xfe.bin"), arg(NEWLINE))
    names = {json_name(d, "path") for d in json.loads(bcli("ls", "-r", "--json", v2))}
    assert SJIS not in names and NEWLINE not in names and BAD_DIR + b"/inner\xfe.bin" not in names
    assert BAD_DIR in names and QUOTES in names and b"\x93\xfa\x96\x7b.txt" in names
    assert "no files match" in bcli.fails("remove", v2, arg(b"caf\xe8.jpg"), code=3)


def test_diff_follows_the_index_byte_order(bcli, tmp_path):
    """U+E000 (bytes EE 80 80) sorts before the byte name EE FF, but after it as a Python str."""
    src = build(tmp_path / "src", {b"\xee\x80\x80": b"private use\n", b"\xee\xff": b"bytes\n"}, {})
    v1 = published(bcli, src)
    v2 = bcli("create", "ds", "--parent", v1).strip()
    bcli("remove", v2, arg(b"\xee\x80\x80"))
    diff = json.loads(bcli("diff", "--json", v1, v2))
    assert ([json_name(d, "path") for d in diff["removed"]], diff["added"], diff["modified"]) == \
        ([b"\xee\x80\x80"], [], [])


def test_ls_prints_names_as_their_bytes(bcli, tmp_path):
    """Text output is the names' own bytes, even when stdout is strict UTF-8."""
    v1 = published(bcli, build(tmp_path / "src"))
    env = {**os.environ, "PYTHONIOENCODING": "utf-8:strict"}
    out = subprocess.run([sys.executable, "-m", "dsfs", "--store", bcli.store, "--cache-dir",
                          str(bcli.cache_dir), "ls", "-r", v1], env=env, capture_output=True, check=True)
    assert b" " + LATIN1 + b"\n" in out.stdout and b" " + SJIS + b"\n" in out.stdout
    assert b"link\xe9 -> " + LATIN1 in out.stdout and b"Traceback" not in out.stderr


def test_verify_json_is_utf8_and_names_a_bad_file_by_its_bytes(local_cli, local_store_url, tmp_path):
    """A corrupt file with a name that is not UTF-8: `verify --hash --json` prints strict UTF-8
    JSON, the problem's text with U+FFFD for the bad byte, and the name's bytes under "files"."""
    v1 = published(local_cli, build(tmp_path / "src"))
    [chunk] = [p for p in Path(local_store_url).rglob("*.zip") if FILES[LATIN1] in p.read_bytes()]
    data = bytearray(chunk.read_bytes())
    data[data.index(FILES[LATIN1])] ^= 0xFF
    chunk.write_bytes(bytes(data))
    run = subprocess.run([sys.executable, "-m", "dsfs", "--store", local_store_url, "--cache-dir",
                          str(local_cli.cache_dir), "verify", "--hash", "--json", v1],
                         env={**os.environ, "PYTHONIOENCODING": "utf-8:strict"}, capture_output=True)
    assert run.returncode == 5 and b"Traceback" not in run.stderr
    doc = json.loads(run.stdout.decode("utf-8"))  # strict: no raw byte of the name in it
    assert doc["ok"] is False and doc["problems"] == ["sha256 mismatch: caf\ufffd.jpg"]
    assert [(f["problem"], json_name(f, "path")) for f in doc["files"]] == \
        [("sha256 mismatch: caf\ufffd.jpg", LATIN1)]
    text = subprocess.run([sys.executable, "-m", "dsfs", "--store", local_store_url, "--cache-dir",
                           str(local_cli.cache_dir), "verify", "--hash", v1], capture_output=True)
    assert text.returncode == 5 and text.stdout == b"sha256 mismatch: " + LATIN1 + b"\n"


def test_store_keeps_names_as_documented(local_cli, local_store_url, tmp_path):
    """Change-sets are valid UTF-8 with \\udcXX escapes; zip members carry the raw bytes."""
    local_cli("create", "ds")
    local_cli("add", "ds@draft", str(build(tmp_path / "src")))
    store = Path(local_store_url)
    [changeset] = store.glob("versions/*/changesets/*.jsonl.gz")
    text = gzip.decompress(changeset.read_bytes()).decode("utf-8")  # strict: valid UTF-8
    assert '"path": "caf\\udce9.jpg"' in text and '"target": "caf\\udce9.jpg"' in text
    [chunk] = store.glob("versions/*/chunks/*.zip")
    with zipfile.ZipFile(chunk) as z:
        raw = {(i.filename.encode("utf-8") if i.flag_bits & 0x800 else i.filename.encode("cp437"))
               for i in z.infolist()}
        assert raw == set(FILES)
        assert z.getinfo(UTF8.decode()).flag_bits & 0x800
    # Files written before names were escaped hold the raw bytes; they read the same.
    old = gzip.compress(text.replace("\\udce9", "\udce9").encode("utf-8", "surrogateescape"))
    assert [e.path for e in iter_changeset(io.BytesIO(old), "old")] == \
        [e.path for e in iter_changeset(io.BytesIO(changeset.read_bytes()), "new")]


@pytest.mark.parametrize("adapter", ["direct", "lowlevel"])
def test_published_mount_serves_byte_names(bcli, bmounts, tmp_path, adapter):
    src = build(tmp_path / "src")
    v1 = published(bcli, src)
    mnt = tmp_path / "mnt"
    assert bmounts.mount(v1, mnt, adapter=adapter).adapter == adapter
    bmnt = os.fsencode(mnt)
    assert sorted(os.listdir(bmnt)) == sorted({p.split(b"/")[0] for p in FILES} | set(LINKS))
    assert snapshot(mnt) == snapshot(src)
    for rel, content in FILES.items():
        with open(os.path.join(bmnt, rel), "rb") as f:
            assert f.read() == content
    assert os.readlink(os.path.join(bmnt, b"link\xe9")) == LATIN1
    for missing in (b"caf\xe8.jpg", b"caf\xe9.jpg\xff", BAD_DIR + b"/nope\xfe", "café.jpg".encode()):
        with pytest.raises(FileNotFoundError):
            os.stat(os.path.join(bmnt, missing))
    with pytest.raises(OSError) as exc:
        os.stat(os.path.join(bmnt, b"\xe9" * 256))
    assert exc.value.errno == errno.ENAMETOOLONG
    found = subprocess.run(["find", ".", "-print0"], cwd=mnt, capture_output=True, check=True).stdout
    assert {p[2:] for p in found.split(b"\0") if p not in (b"", b".")} == set(snapshot(src))
    bmounts.umount(mnt)


def test_draft_mount_creates_renames_and_commits_byte_names(bcli, bmounts, tmp_path):
    src = build(tmp_path / "src")
    v1 = published(bcli, src)
    draft = bcli("create", "ds", "--parent", v1).strip()
    mnt = tmp_path / "mnt"
    assert bmounts.mount(draft, mnt).writable
    expected = tmp_path / "expected"
    subprocess.run(["cp", "-a", str(src), str(expected)], check=True)
    for root in (os.fsencode(mnt), os.fsencode(expected)):  # the same operations on both
        with open(os.path.join(root, b"new\xe0\xe1.dat"), "wb") as f:
            f.write(b"created in the draft\n")
        os.rename(os.path.join(root, SJIS), os.path.join(root, b"renamed \x82\xa0.txt"))
        os.rename(os.path.join(root, LATIN1), os.path.join(root, BAD_DIR, b"moved\xe9\n.jpg"))
        os.mkdir(os.path.join(root, b"folder\xfa"))
        os.symlink(b"../caf\xe9", os.path.join(root, b"folder\xfa", b"ln\xfb"))
        os.unlink(os.path.join(root, NEWLINE))
        with open(os.path.join(root, QUOTES), "ab") as f:
            f.write(b"appended\n")
    assert snapshot(mnt) == snapshot(expected)
    assert b"new\xe0\xe1.dat" in os.listdir(os.fsencode(mnt))
    with pytest.raises(FileNotFoundError):
        os.stat(os.path.join(os.fsencode(mnt), LATIN1))
    for too_long in (lambda p: os.stat(p), lambda p: open(p, "wb"), lambda p: os.mkdir(p)):
        with pytest.raises(OSError) as exc:
            too_long(os.path.join(os.fsencode(mnt), b"\xe9" * 256))
        assert exc.value.errno == errno.ENAMETOOLONG
    bmounts.umount(mnt)

    bcli("get", draft, str(tmp_path / "committed"))
    assert snapshot(tmp_path / "committed") == snapshot(expected)
    bcli("publish", draft)
    published_mnt = tmp_path / "published"
    bmounts.mount(draft, published_mnt)
    assert snapshot(published_mnt) == snapshot(expected)
    bmounts.umount(published_mnt)


def test_draft_staged_by_an_older_dsfs_still_commits(local_cli, local_mounts, tmp_path):
    """Staging left by a dsfs that kept names as text (index format 3) is upgraded, not misread."""
    local_mounts.allow(r"stale mount|recovery")
    v1 = published(local_cli, write_tree(tmp_path / "src", {"é/ü.txt": "u\n", "a.txt": "a\n", "k.txt": "k\n"}))
    draft = local_cli("create", "ds", "--parent", v1).strip()
    mnt = tmp_path / "mnt"
    record = local_mounts.mount(draft, mnt)
    (mnt / "new ñ.txt").write_bytes(b"new\n")
    os.rename(mnt / "a.txt", mnt / "é" / "b ø.txt")
    os.symlink("é/ü.txt", mnt / "link ß")
    os.unlink(mnt / "é/ü.txt")
    os.kill(record.pid, signal.SIGKILL)
    wait_dead(record.pid)
    local_cli.fails("umount", str(mnt), code=10)  # the dead daemon's mount; its staging stays
    stage = local_mounts.settings.state_dir / "drafts" / draft
    with sqlite3.connect(stage / "journal.sqlite") as db:  # names as an older dsfs wrote them
        db.execute("UPDATE dirents SET name = CAST(name AS TEXT)")
        db.execute("UPDATE inodes SET name = CAST(name AS TEXT), target = CAST(target AS TEXT)")
    old = tmp_path / "old-base.sqlite"
    shutil.copyfile(stage / "base.sqlite", old)
    with sqlite3.connect(old) as db:  # format 3: paths stored, hashes as hex, names as text
        db.execute("ALTER TABLE nodes ADD COLUMN path BLOB")
        db.execute("WITH RECURSIVE t(ino, path) AS (SELECT ino, name FROM nodes WHERE parent = 1 AND ino != 1 "
                   "UNION ALL SELECT n.ino, t.path || '/' || n.name FROM t JOIN nodes n ON n.parent = t.ino) "
                   "UPDATE nodes SET path = (SELECT path FROM t WHERE t.ino = nodes.ino) WHERE ino != 1")
        db.execute("UPDATE nodes SET path = '' WHERE ino = 1")
        db.execute("CREATE UNIQUE INDEX nodes_by_path ON nodes(path)")
        db.execute("UPDATE nodes SET name = CAST(name AS TEXT), target = CAST(target AS TEXT), "
                   "sha256 = lower(hex(sha256)), blocks = lower(hex(blocks)), last = NULL")
        db.execute("UPDATE nodes SET sha256 = NULL WHERE sha256 = ''")
        db.execute("UPDATE nodes SET blocks = NULL WHERE blocks = ''")
        db.execute("UPDATE meta SET value = '3' WHERE key = 'format'")
        db.execute("ALTER TABLE nodes DROP COLUMN tree")  # format 3 had no hash tree columns
        db.execute("ALTER TABLE nodes DROP COLUMN tree_offset")
    os.replace(old, stage / "base.sqlite")

    local_mounts.mount(draft, mnt)
    assert sorted(os.listdir(mnt)) == ["k.txt", "link ß", "new ñ.txt", "é"]
    assert os.listdir(mnt / "é") == ["b ø.txt"] and (mnt / "é/b ø.txt").read_bytes() == b"a\n"
    local_mounts.umount(mnt)
    listing = {d["path"]: d for d in json.loads(local_cli("ls", "-r", "--json", draft))}
    assert sorted(listing) == ["k.txt", "link ß", "new ñ.txt", "é", "é/b ø.txt"]
    assert listing["link ß"]["target"] == "é/ü.txt"
