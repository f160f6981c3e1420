"""``dsfs ui``: a real server (the CLI in a subprocess on 127.0.0.1, a free port) over a store
built with the CLI, read over real HTTP and rendered by headless Chromium (Debian's ``chromium``,
installed by scripts/bootstrap): the lineage DAG's nodes and edges in the rendered DOM, the
change-set table, the file tree, previews, the diff, screenshots that are not blank, and URLs
that try to reach files outside the store's view."""

from __future__ import annotations

import hashlib
import html.parser
import http.client
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
import zlib
from pathlib import Path

import pytest

from conftest import Cli, write_tree

CHROMIUM = "chromium"


# -- a store with a merge, a snapshot and a squash ------------------------------------------------------


def png(width: int, height: int) -> bytes:
    """A small RGB gradient PNG (made here: no imaging library needed)."""
    rows = b"".join(b"\x00" + bytes(c for x in range(width) for c in (x * 7 % 256, y * 7 % 256, 160))
                    for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


BASE = {"readme.txt": "hello from base\nsecond line\n", "log.txt": "".join(f"line {i}\n" for i in range(20000)),
        "labels.csv": "id,label,score\n1,cat,0.9\n2,dog,0.8\n",
        "img/cat.png": png(24, 24), "data/a.bin": b"\x00\x01" * 3000, "data/b.bin": b"b" * 10}
CATS = {"readme.txt": "cats changed the readme\n", "cats/tom.txt": "tom\n", "cats/felix.txt": "felix\n"}
DOGS = {"dogs/rex.txt": "rex\n", "data/c.bin": b"\x00\x01" * 3000}  # c.bin: a.bin's bytes again
WORK = {"extra/note.txt": "a note\n", "data/a.bin": b"rewritten in the snapshot",
        # Symlinks out of the dataset: the UI shows their targets and never follows them.
        "extra/escape": "-> ../../../../secret.txt", "extra/root": "-> /"}
BIRDS1 = {"a.txt": "a", "b.txt": "b"}
BIRDS2 = {"b.txt": "b, sung again", "c.txt": "c"}
ODD_NAME = 'song <b>"1"</b> & more'
ODD_TEXT = "bird songs <script>alert(1)</script><img src=x onerror=alert(2)>"
MASKS = {"_all_": [{"value": [0, 0, 0], "labels": ["background"]}, {"value": [220, 40, 40], "labels": ["cat"]}]}


class Store:
    """The test store: the versions' ids by name, and what ``dsfs add --json`` reported."""

    def __init__(self, url: str, cache_dir: Path) -> None:
        self.url, self.cache_dir = url, cache_dir
        self.cli = Cli(url, cache_dir)
        self.ids: dict[str, str] = {}
        self.added: dict[str, dict] = {}  # version name -> add/remove --json summary
        self.steps: list[dict] = []  # the birds draft's three summaries, in order

    def version(self, name: str, *args: str) -> str:
        self.ids[name] = self.cli("create", "pets", "--name", name, *args).strip()
        return self.ids[name]

    def add(self, name: str, folder: Path) -> None:
        self.added[name] = json.loads(self.cli("add", f"pets@{name}", str(folder), "--json"))


def build_store(url: str, cache_dir: Path, src: Path) -> Store:
    s = Store(url, cache_dir)
    s.version("base", "--project", "vision", "--tag", "cats", "--tag", "demo",
              "--description", "pets for the ui tests", "--comment", "first cut")
    s.add("base", write_tree(src / "base", BASE))
    s.cli("publish", "pets@base")
    s.version("cats", "--parent", "pets@base")
    s.add("cats", write_tree(src / "cats", CATS))
    s.cli("publish", "pets@cats")
    s.version("dogs", "--parent", "pets@base")
    s.add("dogs", write_tree(src / "dogs", DOGS))
    s.cli("publish", "pets@dogs")
    s.version("merged", "--parent", "pets@cats", "--parent", "pets@dogs",
              "--meta", f"mask_labels={json.dumps(MASKS)}", "--meta", "split=train")
    s.added["merged"] = json.loads(s.cli("remove", "pets@merged", "data/b.bin", "--json"))
    s.cli("publish", "pets@merged")
    s.version("work", "--parent", "pets@merged")
    s.add("work", write_tree(src / "work", WORK))
    out = json.loads(s.cli("snapshot", "pets", "--name", "snap1", "--json"))
    s.ids["Current"] = out["current"]["id"]
    s.ids["snap1"] = s.ids.pop("work")
    s.added["snap1"] = s.added.pop("work")
    s.ids["flat"] = s.cli("squash", "pets@cats", "pets@dogs", "--dataset", "pets", "--name", "flat").strip()
    # A draft with three change-sets: each is counted against the view the ones before it left.
    birds = s.cli("create", "birds", "--root", "--name", ODD_NAME, "--project", "audio", "--tag", "songs",
                  "--description", ODD_TEXT, "--comment", ODD_TEXT).strip()
    s.ids["birds"] = birds
    s.steps = [json.loads(s.cli("add", birds, str(write_tree(src / "b1", BIRDS1)), "--json")),
               json.loads(s.cli("add", birds, str(write_tree(src / "b2", BIRDS2)), "--json")),
               json.loads(s.cli("remove", birds, "a.txt", "--json"))]
    return s


# -- a real server ------------------------------------------------------------------------------------------


class Server:
    """``dsfs ui`` in a subprocess; ``url`` once it said where it listens."""

    def __init__(self, store: str, cache_dir: Path, log: Path, *args: str, env: dict | None = None) -> None:
        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "dsfs", "--store", store, "--cache-dir", str(cache_dir), "ui", "--port", "0",
                 *args], stdout=subprocess.PIPE, stderr=err, text=True, env={**os.environ, **(env or {})})
        line = self.proc.stdout.readline()
        assert "serving" in line, f"dsfs ui did not start: {line!r} {log.read_text()}"
        self.url = line.split(" at ")[1].split()[0]
        parsed = urllib.parse.urlsplit(self.url)
        self.host, self.port = parsed.hostname, parsed.port

    def request(self, target: str, headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
        """GET ``target`` exactly as written (no client-side normalization of ``..``)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        try:
            conn.request("GET", target, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def json(self, target: str, timeout: float = 60) -> dict:
        status, _, body = self.request(target, timeout=timeout)
        assert status == 200, f"{target}: {status} {body[:300]!r}"
        return json.loads(body)

    def text(self, target: str) -> str:
        status, _, body = self.request(target)
        assert status == 200, f"{target}: {status} {body[:300]!r}"
        return body.decode()

    def stop(self, sig: int = signal.SIGINT) -> str:
        """Ctrl-C, as a person stops it (or ``sig``): exit 0; returns its stderr."""
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=30)
        self.proc.stdout.close()
        err = self.log.read_text()
        assert code == 0, f"dsfs ui exited {code}: {err}"
        return err


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    root = tmp_path_factory.mktemp("ui")
    (root / "cache").mkdir()
    (root / "secret.txt").write_text("TOP-SECRET outside the store\n")
    return build_store(str(root / "store"), root / "cache", root / "src")


@pytest.fixture(scope="module")
def ui(store) -> Server:
    server = Server(store.url, store.cache_dir, store.cache_dir.parent / "ui.log")
    yield server
    err = server.stop()
    assert not any(word in err for word in ("Traceback", "ERROR", "WARNING")), err


# -- a headless browser ---------------------------------------------------------------------------------------


def chromium(tmp_path: Path, url: str, *args: str) -> str:
    done = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'chromium'}", "--virtual-time-budget=5000", *args, url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def rendered(tmp_path: Path, url: str) -> "Element":
    """The DOM after the page's scripts ran."""
    return parse(chromium(tmp_path, url, "--dump-dom"))


class Element:
    def __init__(self, tag: str, attrs: dict) -> None:
        self.tag, self.attrs, self.children, self.parts = tag, attrs, [], []

    @property
    def text(self) -> str:
        return "".join(p if isinstance(p, str) else p.text for p in self.parts)

    @property
    def classes(self) -> set[str]:
        return set(self.attrs.get("class", "").split())

    def iter(self):
        yield self
        for child in self.children:
            yield from child.iter()

    def find(self, tag: str | None = None, cls: str | None = None, **attrs: str) -> list["Element"]:
        """Descendants (and self) with this tag, this class and these attribute values."""
        return [e for e in self.iter() if (tag is None or e.tag == tag) and (cls is None or cls in e.classes)
                and all(e.attrs.get(k) == v for k, v in attrs.items())]

    def by_id(self, id_: str) -> "Element":
        (found,) = self.find(id=id_)
        return found


_VOID = {"meta", "link", "br", "img", "input", "hr", "source", "col", "area", "base", "wbr"}


class _Parser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Element("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        self.stack[-1].parts.append(e)
        if tag not in _VOID:
            self.stack.append(e)

    def handle_startendtag(self, tag, attrs):
        e = Element(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(e)
        self.stack[-1].parts.append(e)

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        self.stack[-1].parts.append(data)


def parse(markup: str) -> Element:
    parser = _Parser()
    parser.feed(markup)
    return parser.root


def png_pixels(data: bytes) -> list[bytes]:
    """The pixels of an 8-bit RGB/RGBA, non-interlaced PNG (what Chromium writes)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", None
    while pos < len(data):
        (length,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            header = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    width, height, depth, color, _, _, interlace = header
    assert depth == 8 and color in (2, 6) and not interlace, header
    bpp = 3 if color == 2 else 4
    raw, stride, prev, pixels = zlib.decompress(idat), width * bpp, bytearray(width * bpp), []
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        pixels.extend(bytes(line[x:x + 3]) for x in range(0, stride, bpp))
        prev = line
    return pixels


def assert_not_blank(path: Path) -> None:
    pixels = png_pixels(path.read_bytes())
    counts: dict[bytes, int] = {}
    for p in pixels:
        counts[p] = counts.get(p, 0) + 1
    assert len(counts) > 50, f"{path.name}: only {len(counts)} colours"
    assert max(counts.values()) < 0.95 * len(pixels), f"{path.name}: one colour covers almost everything"


# -- the tests ------------------------------------------------------------------------------------------------


def test_datasets_page_lists_and_filters(ui, store):
    doc = ui.json("/api/datasets")
    pets = {d["name"]: d for d in doc["datasets"]}["pets"]
    assert (pets["project"], pets["tags"], pets["versions"], pets["published"], pets["drafts"]) == (
        "vision", ["cats", "demo"], 7, 6, 1)
    assert doc["projects"] == ["audio", "vision"] and doc["tags"] == ["cats", "demo", "songs"]
    for query, names in (("", ["birds", "pets"]), ("?project=audio", ["birds"]), ("?tag=demo", ["pets"]),
                         ("?q=SONGS%20%3Cscript", ["birds"]), ("?q=pets&project=audio", [])):
        page = parse(ui.text(f"/{query}"))
        assert [row.attrs["data-dataset"] for row in page.find(tag="tr") if "data-dataset" in row.attrs] == names
        assert [d["name"] for d in ui.json(f"/api/datasets{query}")["datasets"]] == names


def test_dag_in_the_rendered_dom(ui, store, tmp_path):
    dom = rendered(tmp_path, ui.url + "datasets/pets")
    graph = dom.by_id("graph")
    (svg,) = graph.find(tag="svg")
    nodes = {e.attrs["id"].removeprefix("version-"): e for e in svg.find(tag="g", cls="version")}
    pets = {name: vid for name, vid in store.ids.items() if name != "birds"}
    assert set(nodes) == set(pets.values())
    versions = {v["id"]: v for v in ui.json("/api/datasets/pets")["versions"]}
    for name, vid in pets.items():
        node, v = nodes[vid], versions[vid]
        state = v["state"] + (f" · {v['kind']}" if v["kind"] else "")
        # Three lines: the name, the state (and kind), the date.
        assert [t.text for t in node.find(tag="text")] == [name, state, v["created"][:16].replace("T", " ")]
        # The whole node (its shape and its text) is the link to the version's page.
        (link,) = node.find(tag="a")
        assert link.attrs["xlink:href"] == f"/versions/{vid}"
        assert link.find(tag="text") and (link.find(tag="path") or link.find(tag="polygon"))
        assert parse(ui.text(link.attrs["xlink:href"])).find(tag="h1")[0].parts[0].strip() == name
    # The page draws the graph the API serves.
    assert ui.text("/api/datasets/pets/graph.svg") in ui.text("/datasets/pets")
    assert "draft" in nodes[store.ids["Current"]].classes
    assert "published" in nodes[store.ids["base"]].classes
    assert "snapshot" in nodes[store.ids["snap1"]].classes and "squash" in nodes[store.ids["flat"]].classes
    assert not nodes[store.ids["merged"]].classes & {"snapshot", "squash"}
    edges = {e.attrs["id"]: e for e in svg.find(tag="g", cls="parent")}
    i = store.ids
    expected = {(i["base"], i["cats"]), (i["base"], i["dogs"]), (i["cats"], i["merged"]),
                (i["dogs"], i["merged"]), (i["merged"], i["snap1"]), (i["snap1"], i["Current"])}
    assert set(edges) == {f"edge-{p}-{c}" for p, c in expected}
    # A merge's edges are numbered in parent order; single-parent edges carry no number.
    assert edges[f"edge-{i['cats']}-{i['merged']}"].find(tag="text")[0].text == "1"
    assert edges[f"edge-{i['dogs']}-{i['merged']}"].find(tag="text")[0].text == "2"
    assert not edges[f"edge-{i['base']}-{i['cats']}"].find(tag="text")
    assert ui.request("/api/datasets/pets/graph.svg")[1]["content-type"] == "image/svg+xml"


def test_version_page_change_sets_metadata_and_masks(ui, store, tmp_path):
    dom = rendered(tmp_path, ui.url + f"versions/{store.ids['merged']}")
    rows = dom.by_id("changesets").find(tag="tr", cls="loaded")
    assert len(rows) == 1
    cells = {td.attrs["data-field"]: int(td.text) for td in rows[0].find(tag="td") if "data-field" in td.attrs}
    removed = store.added["merged"]
    assert cells == {"added": removed["added"], "modified": removed["modified"], "removed": removed["removed"]} == {
        "added": 0, "modified": 0, "removed": 1}
    swatches = dom.by_id("mask-labels").find(tag="li")
    assert [(s.attrs["data-value"], s.find(tag="rect")[0].attrs["fill"]) for s in swatches] == [
        ("0,0,0", "#000000"), ("220,40,40", "#dc2828")]
    assert "cat" in swatches[1].text
    assert "split" in dom.by_id("metadata").text and "train" in dom.by_id("metadata").text
    parents = dom.by_id("parents").find(tag="a")
    assert [(a.text, a.attrs["href"]) for a in parents] == [
        ("cats", f"/versions/{store.ids['cats']}"), ("dogs", f"/versions/{store.ids['dogs']}")]


def test_change_set_counts_match_what_add_reported(ui, store):
    for name in ("base", "cats", "dogs", "snap1"):
        version = ui.json(f"/api/versions/{store.ids[name]}")
        (changeset,) = version["changesets"]
        got = ui.json(f"/api/versions/{store.ids[name]}/changesets/{changeset['id']}")
        reported = store.added[name]
        assert {k: got[k] for k in ("added", "modified", "removed", "bytes_new", "bytes_dedup")} == {
            "added": reported["added"], "modified": reported["modified"], "removed": reported["removed"],
            "bytes_new": reported["bytes_uploaded"], "bytes_dedup": reported["bytes_dedup"]}, name
    assert ui.json(f"/api/versions/{store.ids['cats']}/changesets/"
                   f"{ui.json('/api/versions/' + store.ids['cats'])['changesets'][0]['id']}")["modified"] == 1
    assert ui.json(f"/api/versions/{store.ids['dogs']}/changesets/"
                   f"{ui.json('/api/versions/' + store.ids['dogs'])['changesets'][0]['id']}")["bytes_dedup"] == 6000
    birds = store.ids["birds"]
    for changeset, reported in zip(ui.json(f"/api/versions/{birds}")["changesets"], store.steps, strict=True):
        got = ui.json(f"/api/versions/{birds}/changesets/{changeset['id']}")
        assert (got["added"], got["modified"], got["removed"]) == (
            reported["added"], reported["modified"], reported["removed"])
    assert [(r["added"], r["modified"], r["removed"]) for r in store.steps] == [(2, 0, 0), (1, 1, 0), (0, 0, 1)]
    page = parse(ui.text(f"/versions/{birds}"))
    assert len([r for r in page.by_id("changesets").find(tag="tr") if "data-changeset" in r.attrs]) == 3
    assert {r.attrs["data-path"] for r in page.by_id("tree").find(tag="tr") if "data-path" in r.attrs} == {
        "b.txt", "c.txt"}
    flat = ui.json(f"/api/versions/{store.ids['flat']}")
    assert flat["kind"] == "squash" and flat["parents"] == []
    squash = ui.json(f"/api/versions/{store.ids['flat']}/changesets/{flat['changesets'][0]['id']}")
    assert (squash["added"], squash["modified"], squash["removed"]) == (flat["files"], 0, 0)


def test_last_change_counts_change_sets_recorded_on_a_draft(tmp_path):
    """A draft changes after it is created: its change-sets' commit times are its last change,
    and the dataset's (the datasets page's "last change")."""
    from dsfs.config import load_settings
    from dsfs.repo import Repository
    from dsfs.ui.model import UiModel

    (tmp_path / "cache").mkdir()
    cli = Cli(str(tmp_path / "store"), tmp_path / "cache")
    draft = cli("create", "late", "--name", "d").strip()
    created = json.loads(cli("show", draft, "--json"))["created"]
    time.sleep(1.1)  # change-set ids carry their time to the second
    before_add = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())
    cli("add", draft, str(write_tree(tmp_path / "src", {"x.txt": "x"})))
    model = UiModel(Repository(load_settings(store=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"))))
    try:
        (row,) = model.datasets()["datasets"]
        (version,) = model.dataset("late")["versions"]
    finally:
        model.close()
    assert row["last_change"] == version["changed"] and version["created"] == created
    assert row["last_change"][:19] >= before_add > created[:19]


def test_change_set_counts_stream_in_batches(store, monkeypatch):
    """The counting reads a change-set in batches (10,000 lines): with batches of one line, every
    change-set still counts as ``dsfs add`` reported it."""
    from dsfs.config import load_settings
    from dsfs.repo import Repository
    from dsfs.ui import model as ui_model

    monkeypatch.setattr(ui_model, "_COUNT_BATCH", 1)
    model = ui_model.UiModel(Repository(load_settings(store=store.url, cache_dir=str(store.cache_dir))))
    reported = [store.added[name] for name in ("base", "cats", "dogs", "merged", "snap1")] + store.steps
    versions = [store.ids[name] for name in ("base", "cats", "dogs", "merged", "snap1")] + [store.ids["birds"]] * 3
    birds = [c["id"] for c in model.version(store.ids["birds"])["changesets"]]
    ids = [model.version(v)["changesets"][0]["id"] for v in versions[:5]] + birds
    for vid, cs, summary in zip(versions, ids, reported, strict=True):
        got = model.changeset(vid, cs)
        assert (got["added"], got["modified"], got["removed"]) == (
            summary["added"], summary["modified"], summary["removed"]), (vid, cs)


def test_change_set_lines_page_through_the_file(ui, store):
    dogs = store.ids["dogs"]
    (changeset,) = ui.json(f"/api/versions/{dogs}")["changesets"]
    items, offset = [], 0
    while offset is not None:
        page = ui.json(f"/api/versions/{dogs}/changesets/{changeset['id']}/lines?limit=2&offset={offset}")
        assert len(page["lines"]) <= 2
        items += page["lines"]
        offset = page["next"]
    files = {i["path"]: i for i in items if i["type"] == "file"}
    assert set(files) == set(DOGS) and {i["op"] for i in items} == {"add"}
    assert files["data/c.bin"]["sha256"] == hashlib.sha256(DOGS["data/c.bin"]).hexdigest()
    assert files["data/c.bin"]["chunk"].startswith(f"versions/{store.ids['base']}/chunks/")  # deduplicated
    merged = store.ids["merged"]
    (changeset,) = ui.json(f"/api/versions/{merged}")["changesets"]
    page = parse(ui.text(f"/versions/{merged}/changesets/{changeset['id']}"))
    rows = [r for r in page.by_id("changeset-items").find(tag="tr") if "data-op" in r.attrs]
    assert [(r.attrs["data-op"], r.attrs["data-path"]) for r in rows] == [("remove", "data/b.bin")]
    assert "1 removed" in page.by_id("changeset-summary").text


def test_file_tree_pages_through_the_index(ui, store):
    merged = store.ids["merged"]
    names, after = [], ""
    while True:
        page = ui.json(f"/api/versions/{merged}/tree?limit=2&after={urllib.parse.quote(after)}")
        assert len(page["entries"]) <= 2
        names += [e["name"] for e in page["entries"]]
        if page["next"] is None:
            break
        after = page["next"]
    assert names == ["cats", "data", "dogs", "img", "labels.csv", "log.txt", "readme.txt"]
    data = {e["name"]: e for e in ui.json(f"/api/versions/{merged}/tree?path=data")["entries"]}
    assert set(data) == {"a.bin", "c.bin"}  # b.bin was removed in merged
    assert data["c.bin"]["sha256"] == hashlib.sha256(DOGS["data/c.bin"]).hexdigest()
    assert (data["a.bin"]["provider_name"], data["c.bin"]["provider_name"]) == ("base", "dogs")
    page = parse(ui.text(f"/versions/{merged}?path=cats"))
    rows = {r.attrs["data-path"]: r for r in page.by_id("tree").find(tag="tr") if "data-path" in r.attrs}
    assert set(rows) == {"cats/felix.txt", "cats/tom.txt"}
    assert rows["cats/tom.txt"].find(tag="a")[0].attrs["href"] == f"/versions/{merged}/files/cats/tom.txt"
    assert "cats" in rows["cats/tom.txt"].find(tag="a")[1].text  # provided by
    assert parse(ui.text(f"/versions/{merged}?path=cats&after=felix.txt")).by_id("tree").find(
        tag="tr", **{"data-path": "cats/tom.txt"})


def test_a_big_folder_pages_from_the_index(tmp_path, monkeypatch):
    """A folder of 2,500 files is served 200 rows a page, the pages following each other's next
    links; once the version's index exists, no page, listing, file or preview reads a change-set
    or walks the version."""
    from dsfs.catalog import Catalog
    from dsfs.config import load_settings
    from dsfs.repo import Repository
    from dsfs.resolver import VersionIndex
    from dsfs.ui.model import UiModel

    (tmp_path / "cache").mkdir()
    url = str(tmp_path / "store")
    cli = Cli(url, tmp_path / "cache")
    big = {f"big/f{i:05d}.txt": f"{i}\n" for i in range(2500)}
    vid = cli("create", "big", "--name", "v1").strip()
    cli("add", vid, str(write_tree(tmp_path / "src", {**big, "top.txt": "top\n"})))
    cli("publish", vid)
    server = Server(url, tmp_path / "cache", tmp_path / "ui.log")
    try:
        names, target, pages = [], f"/versions/{vid}?path=big", 0
        while target:
            status, _, body = server.request(target)
            assert status == 200 and len(body) < 150_000, (target, status, len(body))
            page = parse(body.decode())
            rows = [r.attrs["data-path"] for r in page.by_id("tree").find(tag="tr") if "data-path" in r.attrs]
            assert len(rows) == (200 if pages < 12 else 100)
            names += rows
            pages += 1
            more = page.find(id="tree-next")
            target = more[0].attrs["href"].removesuffix("#files") if more else None
        assert names == sorted(big) and pages == 13
    finally:
        server.stop()

    def nowhere(*args, **kwargs):
        raise AssertionError("read the whole version")

    monkeypatch.setattr(Catalog, "changeset_items", nowhere)
    monkeypatch.setattr(VersionIndex, "walk", nowhere)
    model = UiModel(Repository(load_settings(store=url, cache_dir=str(tmp_path / "cache"))))
    try:
        assert model.version(vid)["files"] == 2501
        page = model.listing(vid, "big", "f01999.txt")
        assert [e["name"] for e in page["entries"]][:2] == ["f02000.txt", "f02001.txt"]
        assert model.file(vid, "big/f02499.txt")["size"] == 5
        assert model.preview(vid, "big/f02499.txt")["text"] == "2499"
    finally:
        model.close()


def test_previews_read_only_their_capped_head(tmp_path):
    """A preview fetches about its 64 KiB head, not the file, whether the file is stored
    (the cache's first block) or compressed (which the cache would fetch whole: its first
    compressed bytes are inflated); an image over the cap fetches nothing. Counted as chunk
    bytes read from the store, with 1 MiB blocks."""
    from dsfs.changeset.manifest import DEFLATED, STORED
    from dsfs.config import load_settings
    from dsfs.errors import InvalidInput
    from dsfs.repo import Repository
    from dsfs.store import open_store
    from dsfs.store.faulty import FaultyStore
    from dsfs.ui import model as ui_model

    class CountingStore(FaultyStore):  # no faults: it counts the chunk bytes read
        chunk_bytes = 0

        def get(self, key):
            data, etag = super().get(key)
            self.chunk_bytes += len(data) if "/chunks/" in key else 0
            return data, etag

        def get_range(self, key, start, length):
            data = super().get_range(key, start, length)
            self.chunk_bytes += len(data) if "/chunks/" in key else 0
            return data

    (tmp_path / "cache").mkdir()
    url = str(tmp_path / "store")
    cli = Cli(url, tmp_path / "cache")
    # Random hex compresses to about half: the stored text is many blocks, whatever the method.
    text = "".join(os.urandom(32).hex() + "\n" for _ in range(256 * 1024))  # 16.25 MiB
    vid = cli("create", "capped", "--name", "v1").strip()
    cli("add", vid, str(write_tree(tmp_path / "src", {"big.txt": text, "noise.bin": os.urandom(16 << 20),
                                                       "huge.png": os.urandom(9 << 20)})))
    cli("publish", vid)
    settings = load_settings(store=url, cache_dir=str(tmp_path / "cache"),
                             options={"block_size": "1M", "neighbour_bytes": "1M"})
    store = CountingStore(open_store(url, settings))
    model = ui_model.UiModel(Repository(settings, store=store))
    try:
        index = model.repo.index(model.resolve(vid))
        big, noise = index.by_path("big.txt").to_entry(), index.by_path("noise.bin").to_entry()
        assert (big.method, noise.method) == (DEFLATED, STORED) and big.csize > 4 << 20
        preview = model.preview(vid, "big.txt")
        assert preview["truncated"] and preview["text"].splitlines() == text.splitlines()[:ui_model.TEXT_LINES]
        assert preview["checked"] is False  # the page says so (app.js, #preview-unchecked)
        assert 0 < store.chunk_bytes <= 256 << 10, store.chunk_bytes  # of 8 MiB compressed
        read = store.chunk_bytes
        assert model.preview(vid, "noise.bin") == {"kind": "none", "reason": "binary file"}
        assert 0 < store.chunk_bytes - read <= 1 << 20, store.chunk_bytes - read  # one block of 16
        read = store.chunk_bytes
        assert model.preview(vid, "huge.png") == {"kind": "none", "reason": "image larger than 8 MiB"}
        with pytest.raises(InvalidInput, match="image larger than 8 MiB: 'huge.png'"):
            model.image(vid, "huge.png")
        assert store.chunk_bytes == read
    finally:
        model.close()


def test_previews_through_the_block_cache(ui, store, tmp_path):
    snap = store.ids["snap1"]
    dom = rendered(tmp_path, ui.url + f"versions/{snap}/files/labels.csv")
    table = dom.by_id("preview-table")
    assert [[c.text for c in row.children] for row in table.find(tag="tr")] == [
        ["id", "label", "score"], ["1", "cat", "0.9"], ["2", "dog", "0.8"]]
    assert dom.by_id("sha256").text == hashlib.sha256(BASE["labels.csv"].encode()).hexdigest()
    # The later parent (dogs) wins the merge: its readme is base's.
    text = ui.json(f"/api/versions/{snap}/preview?path=readme.txt")
    assert text == {"kind": "text", "text": BASE["readme.txt"].rstrip("\n"), "truncated": False, "checked": True}
    image = ui.json(f"/api/versions/{snap}/preview?path=img/cat.png")
    assert image["kind"] == "image"
    status, headers, body = ui.request(f"/api/versions/{snap}/image?path=img/cat.png")
    assert (status, headers["content-type"], body) == (200, "image/png", BASE["img/cat.png"])
    assert headers["content-security-policy"].startswith("sandbox")
    assert ui.json(f"/api/versions/{snap}/preview?path=data/c.bin")["kind"] == "none"  # binary
    log = ui.json(f"/api/versions/{snap}/preview?path=log.txt")  # ~150 KB: only its head is read
    assert log["truncated"] and log["text"].splitlines() == [f"line {i}" for i in range(60)]


def test_diff_page_matches_dsfs_diff_and_filters(ui, store, tmp_path):
    a, b = store.ids["base"], store.ids["snap1"]
    expected = json.loads(store.cli("diff", a, b, "--json"))
    dom = rendered(tmp_path, ui.url + f"diff?a={a}&b={b}")
    rows = dom.by_id("diff").find(tag="tr")
    got = sorted((r.attrs["data-kind"], r.attrs["data-path"]) for r in rows if "data-kind" in r.attrs)
    assert got == sorted((k, n["path"]) for k, nodes in expected.items() for n in nodes)
    assert {k for k, _ in got} == {"added", "modified", "removed"}
    summary = " ".join(dom.by_id("diff-summary").text.split())
    for kind, nodes in expected.items():
        assert f"{len(nodes)} {kind}" in summary
    filtered = rendered(tmp_path, ui.url + f"diff?a={a}&b={b}&kind=removed")
    assert [(r.attrs["data-kind"], r.attrs["data-path"]) for r in filtered.by_id("diff").find(tag="tr")
            if "data-kind" in r.attrs] == [("removed", n["path"]) for n in expected["removed"]]
    assert [o.attrs.get("value") for o in filtered.find(tag="option") if "selected" in o.attrs] == ["removed"]
    modified = ui.json(f"/api/diff?a={a}&b={b}&kind=modified")["rows"]
    assert [(r["path"], r["old_size"], r["size"]) for r in modified] == [
        ("data/a.bin", len(BASE["data/a.bin"]), len(WORK["data/a.bin"]))]
    added = ui.json(f"/api/diff?a={a}&b={b}&kind=added")
    assert {r["path"] for r in added["rows"]} == {n["path"] for n in expected["added"]}
    assert added["counts"] == {k: len(v) for k, v in expected.items()}
    cats = ui.json(f"/api/diff?a={a}&b={b}&q=cats/")
    assert {r["path"] for r in cats["rows"]} == {"cats/felix.txt", "cats/tom.txt"}
    by_ref = ui.json("/api/diff?a=pets@base&b=pets@snap1&limit=1")
    assert (len(by_ref["rows"]), by_ref["next"]) == (1, 1)
    assert ui.request(f"/api/diff?a={a}&b={b}&kind=renamed")[0] == 400


def test_screenshots_are_not_blank(ui, store, tmp_path):
    for name, url in (("dataset", "datasets/pets"), ("image", f"versions/{store.ids['base']}/files/img/cat.png")):
        shot = tmp_path / f"{name}.png"
        chromium(tmp_path, ui.url + url, f"--screenshot={shot}", "--window-size=800,600")
        assert_not_blank(shot)
    # The preview is drawn, not just its page: every colour of the 24x24 gradient is on screen.
    gradient = {bytes((x * 7 % 256, y * 7 % 256, 160)) for x in range(24) for y in range(24)}
    assert gradient <= set(png_pixels((tmp_path / "image.png").read_bytes()))


TRAVERSALS = [
    "/versions/{v}/files/../../../secret.txt",
    "/versions/{v}/files/%2e%2e/%2e%2e/%2e%2e/secret.txt",
    "/versions/{v}/files/..%2f..%2f..%2fsecret.txt",
    "/versions/{v}/files//etc/passwd",
    "/versions/{v}/files/%2Fetc%2Fpasswd",
    "/versions/{v}?path=../../secret.txt",
    "/versions/{v}?path=/etc",
    "/api/versions/{v}/tree?path=..",
    "/api/versions/{v}/tree?path=%2e%2e%2F%2e%2e",
    "/api/versions/{v}/file?path=/etc/passwd",
    "/api/versions/{v}/preview?path=../../../secret.txt",
    "/api/versions/{v}/preview?path=%2Fetc%2Fpasswd",
    "/api/versions/{v}/image?path=../img/cat.png",
    "/api/versions/..%2f..%2fsecret.txt",
    "/api/versions/{v}/changesets/..%2f..%2fchunks",
    "/static/../model.py",
    "/static/%2e%2e/model.py",
    "/static/..%2fmodel.py",
    "/static/%2e%2e%2f%2e%2e%2fsecret.txt",
    "/static//etc/passwd",
    "/datasets/..%2f..%2fsecret",
    "/datasets/..",
    "/api/datasets/%2e%2e",
    "/versions/..@x",
    "/api/versions/%2e%2e%2f%2e%2e@v1/tree",
    # Encoded twice: the server decodes once, so these are names with '%' in them, never '..'.
    "/versions/{v}/files/%252e%252e/%252e%252e/%252e%252e/secret.txt",
    "/versions/{v}/files/..%252f..%252f..%252fsecret.txt",
    "/versions/{v}?path=%252e%252e%252f%252e%252e%252fsecret.txt",
    "/api/versions/{v}/tree?path=%252e%252e",
    "/api/versions/{v}/preview?path=%252e%252e%252f%252e%252e%252fsecret.txt",
    "/api/versions/{v}/image?path=%252e%252e%252fimg%252fcat.png",
    "/api/versions/%252e%252e%252f%252e%252e%252fsecret.txt",
    "/static/%252e%252e/model.py",
    "/static/%252e%252e%252fmodel.py",
    "/datasets/%252e%252e%252f%252e%252e",
    "/api/datasets/%252e%252e/graph.svg",
    # Refs that name paths.
    "/api/diff?a=..%2f..%2fsecret.txt&b={v}",
    "/api/diff?a={v}&b=%2e%2e%2fstore%2fversions",
    "/diff?a=%252e%252e%252fsecret.txt&b={v}",
    "/api/versions/pets@..%2f..%2fsecret.txt/tree",
]
# Through the symlinks in snap1 (extra/escape -> ../../../../secret.txt, extra/root -> /).
THROUGH_SYMLINKS = [
    "/versions/{v}/files/extra/root/etc/passwd",
    "/versions/{v}/files/extra/escape/x",
    "/versions/{v}?path=extra/root/etc",
    "/api/versions/{v}/tree?path=extra/root/etc",
    "/api/versions/{v}/file?path=extra/root/etc/passwd",
    "/api/versions/{v}/preview?path=extra/root/etc/passwd",
    "/api/versions/{v}/image?path=extra/escape",
    "/api/versions/{v}/image?path=extra/root/etc/passwd",
]


def test_urls_never_reach_outside_the_store_view(ui, store):
    for template in TRAVERSALS:
        target = template.format(v=store.ids["merged"])
        status, _, body = ui.request(target)
        assert status in (403, 404), f"{target}: {status}"
        assert b"TOP-SECRET" not in body and b"root:" not in body and b"UiModel" not in body, target
    for template in THROUGH_SYMLINKS:
        target = template.format(v=store.ids["snap1"])
        status, _, body = ui.request(target)
        assert status in (400, 404), f"{target}: {status}"  # 400: a symlink is not a folder
        assert b"TOP-SECRET" not in body and b"root:" not in body, target
    snap = store.ids["snap1"]
    for link, target in (("extra/escape", "../../../../secret.txt"), ("extra/root", "/")):
        assert ui.json(f"/api/versions/{snap}/file?path={link}")["target"] == target
        assert ui.json(f"/api/versions/{snap}/preview?path={link}") == {
            "kind": "none", "reason": "a symlink has no bytes to show"}
        assert b"TOP-SECRET" not in ui.request(f"/versions/{snap}/files/{link}")[2]
    assert ui.request("/static/app.js")[0] == 200


def test_loopback_server_refuses_other_host_names(ui):
    assert ui.request("/api/datasets", {"Host": "attacker.example"})[0] == 400
    assert ui.request("/api/datasets", {"Host": f"localhost:{ui.port}"})[0] == 200


def test_user_text_is_shown_as_text(ui, store, tmp_path):
    dom = rendered(tmp_path, ui.url + "datasets/birds")
    assert [s.attrs.get("src") for s in dom.find(tag="script")] == ["/static/app.js"]
    assert not dom.find(tag="img") and not dom.by_id("graph").find(tag="b")
    (node,) = dom.by_id("graph").find(tag="g", cls="version")
    assert node.find(tag="text")[0].text == ODD_NAME
    assert ODD_TEXT in dom.text
    (row,) = [r for r in dom.by_id("versions").find(tag="tr") if "data-version" in r.attrs]
    assert row.find(tag="a")[0].text == ODD_NAME and ODD_TEXT in row.text


def test_non_loopback_bind_warns_loudly_and_open_starts_a_browser(store, tmp_path):
    # Like a terminal browser, this one runs until it is done: the server answers meanwhile.
    opened, done = tmp_path / "opened", tmp_path / "done"
    browser = tmp_path / "browser"
    browser.write_text(f'#!/bin/sh\necho "$1" > {opened}\n'
                       f"for i in $(seq 1200); do [ -e {done} ] && exit 0; sleep 0.1; done\n")
    browser.chmod(0o755)
    server = Server(store.url, store.cache_dir, tmp_path / "ui.log", "--host", "0.0.0.0", "--open",
                    env={"BROWSER": f"{browser} %s"})
    try:
        for _ in range(300):
            if opened.exists():
                break
            time.sleep(0.1)
        assert opened.read_text().strip() == server.url
        assert server.json("/api/datasets", timeout=30)["datasets"]
    finally:
        done.touch()
        err = server.stop()
    assert "WARNING" in err and "NO AUTHENTICATION" in err and "0.0.0.0" in err


def test_ipv6_loopback_serves_its_own_host_name_quietly(store, tmp_path):
    """``--host ::1`` is loopback: no warning, and a browser's ``Host: [::1]:port`` is served
    (Starlette before 1.7 cut that header at its first colon and refused every request)."""
    server = Server(store.url, store.cache_dir, tmp_path / "ui.log", "--host", "::1")
    try:
        assert server.url == f"http://[::1]:{server.port}/"
        status, _, body = server.request("/api/datasets", {"Host": f"[::1]:{server.port}"})
        assert status == 200 and "pets" in {d["name"] for d in json.loads(body)["datasets"]}
        assert server.request("/api/datasets", {"Host": f"localhost:{server.port}"})[0] == 200
        assert server.request("/api/datasets", {"Host": "[::2]"})[0] == 400
    finally:
        err = server.stop(signal.SIGTERM)
    assert "WARNING" not in err and "Traceback" not in err


def test_without_graphviz_the_dataset_page_still_lists_versions(store, tmp_path):
    server = Server(store.url, store.cache_dir, tmp_path / "ui.log", env={"PATH": str(tmp_path)})
    try:
        page = parse(server.text("/datasets/pets"))
        assert "install graphviz" in page.by_id("graph").text and not page.by_id("graph").find(tag="svg")
        assert len([r for r in page.by_id("versions").find(tag="tr") if "data-version" in r.attrs]) == 7
        status, _, body = server.request("/api/datasets/pets/graph.svg")
        assert status == 503 and b"install graphviz" in body
    finally:
        server.stop()


WITHOUT_UI_EXTRA = """
import sys
for name in ("starlette", "uvicorn", "jinja2"):
    sys.modules[name] = None  # as if the ui extra were not installed: importing it fails
from dsfs.cli import main
code = main(sys.argv[1:])
assert not {"starlette", "uvicorn", "jinja2"} & {m for m, v in sys.modules.items() if v is not None}
sys.exit(code)
"""


def test_the_ui_is_an_optional_extra(store):
    """Without Starlette, uvicorn and Jinja2 the other commands work and import none of them;
    ``dsfs ui`` says what to install."""
    def dsfs(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", WITHOUT_UI_EXTRA, "--store", store.url,
                               "--cache-dir", str(store.cache_dir), *args], capture_output=True, text=True,
                              timeout=60, check=False)

    listed = dsfs("datasets")
    assert listed.returncode == 0 and "pets" in listed.stdout, listed.stderr
    refused = dsfs("ui", "--port", "0")
    assert refused.returncode == 2 and refused.stdout == ""
    assert "dsfs ui needs the ui extra: pip install 'dsfs[ui]' (missing: " in refused.stderr
    assert "Traceback" not in refused.stderr


def test_a_busy_port_is_an_error(store):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        err = store.cli.fails("ui", "--port", str(port), code=4)
    assert f"address already in use: 127.0.0.1:{port}" in err


@pytest.mark.s3
def test_ui_over_s3(seaweed_server, tmp_path, monkeypatch):
    """The same pages over a real S3 server: graph, change-set counts, previews fetched through
    the block cache from the store."""
    seaweed_server.apply_env(monkeypatch)
    (tmp_path / "cache").mkdir()
    s = build_store(seaweed_server.new_bucket(), tmp_path / "cache", tmp_path / "src")
    server = Server(s.url, s.cache_dir, tmp_path / "ui.log")
    try:
        svg = server.text("/api/datasets/pets/graph.svg")
        assert all(f'id="version&#45;{vid}"' in svg for name, vid in s.ids.items() if name != "birds")
        merged = server.json(f"/api/versions/{s.ids['merged']}")
        got = server.json(f"/api/versions/{s.ids['merged']}/changesets/{merged['changesets'][0]['id']}")
        assert got["removed"] == 1
        assert server.request(f"/api/versions/{s.ids['snap1']}/image?path=img/cat.png")[2] == BASE["img/cat.png"]
        assert server.json(f"/api/versions/{s.ids['snap1']}/preview?path=labels.csv")["rows"][1] == ["1", "cat", "0.9"]
    finally:
        err = server.stop()
    assert "Traceback" not in err and "ERROR" not in err
    assert json.loads(s.cli("cache", "stats", "--json"))["count"] > 0  # the bytes went through the cache
