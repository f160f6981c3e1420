"""The Python API against the CLI, table-driven, on the local store and on real S3 servers.

Reads: every reading method of ``Dataset``/``DatasetVersion`` and the CLI command that shows the
same thing, on one set of versions, must agree. Changes: each case changes one of two twin
datasets through the API and the other through the CLI; their views and records must then agree.
Errors: the same failure through both raises the same message, as a dsfs error that is also a
built-in. Then what only the API does: the seed's create/current rules, metadata, mask labels,
progress, mount.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest

import dsfs
from conftest import Cli, tree_digest, write_tree
from dsfs import Dataset, DatasetVersion, errors
from dsfs.config import load_settings
from dsfs.repo import Repository

SRC = {
    "readme.txt": "hello\n" * 50,
    "img/cat.jpg": os.urandom(20_000),
    "img/dog.jpg": os.urandom(3_000),
    "img/deep/owl.jpg": os.urandom(1_000),
    "data/train/a.csv": "a,1\n",
    "data/train/b.csv": "b,2\n",
    "data/val.csv": "v,3\n",
    "data/link": "-> train/a.csv",
    "empty/": "",
}
SRC2 = {"readme.txt": "second wins\n", "extra/x.txt": "x", "img": "a file where v1 has a folder"}
MORE = {"readme.txt": "changed\n", "extra/x.txt": "x", "new/n.bin": os.urandom(5_000)}


def _pointed_at(cli: Cli):
    dsfs.configure(store=cli.store, cache_dir=str(cli.cache_dir), show_progress=False)
    yield cli
    dsfs.configure()


@pytest.fixture
def api(cli) -> Cli:
    """The API pointed at the CLI's store (on every backend) and cache; the CLI to compare with."""
    yield from _pointed_at(cli)


@pytest.fixture
def local_api(local_cli) -> Cli:
    """The same on the local store only, for what the API adds above the store."""
    yield from _pointed_at(local_cli)


@pytest.fixture
def world(api, tmp_path) -> dict:
    return _world(tmp_path)


@pytest.fixture
def local_world(local_api, tmp_path) -> dict:
    return _world(tmp_path)


def _world(tmp_path) -> dict:
    """ds@v1 (SRC) and ds@second (a root, SRC2) published; ds@work a draft child of v1 with
    changes; 'other' with two drafts; the sources on disk. Made through the API (one open
    store, where each CLI call opens its own)."""
    src, src2 = write_tree(tmp_path / "src", SRC), write_tree(tmp_path / "src2", SRC2)
    write_tree(tmp_path / "more", MORE)
    Dataset.create("ds", dataset_project="vision", tags=["raw"], description="pets")
    Dataset.get("ds").delete_version(version_name="Current")
    v1 = DatasetVersion.create_version("ds", "v1")
    v1.add_files(src)
    v1.publish_version()
    second = DatasetVersion.create_version("ds", "second")
    second.add_files(src2)
    second.publish_version()
    DatasetVersion.create_version("ds", "work", parent_version_names=["v1"]).remove_files("img/dog.jpg")
    Dataset.create("other", dataset_project="audio", tags=["raw", "wav"])
    DatasetVersion.create_version("other", "v2")
    return {"src": src, "src2": src2, "more": tmp_path / "more", "v1": v1.id, "tmp": tmp_path}


def _paths(cli: Cli, *args: str, files_only: bool = True) -> list[str]:
    return [e["path"] for e in json.loads(cli("ls", *args, "--json")) if not files_only or e["type"] != "dir"]


def _outcome(repo: Repository, ref: str) -> tuple[dict, dict]:
    """A version's content without provenance (twins hold the same bytes from other versions),
    and its record without ids and times."""
    v = repo.resolve(ref)
    view = {n.path: (n.type, n.size, n.sha256, n.mode, n.mtime_ns, n.target)
            for n in repo.ls(ref, "", recursive=True)}
    name = "snapshot" if v.name.startswith("snapshot ") else v.name
    return view, {"name": name, "state": v.state, "comment": v.comment, "metadata": v.metadata,
                  "parents": len(v.parents)}


def _stores(*slow: str):
    """The store kinds, those named marked ``slow`` (left to ``-m slow``): a long table's S3
    variant takes the store calls the other tests take already, ~100 requests a case."""
    return pytest.mark.parametrize("store_url", ["local"] + [
        pytest.param(kind, marks=[pytest.mark.s3] + ([pytest.mark.slow] if kind in slow else []))
        for kind in ("moto", "seaweed")], indirect=True)


# -- reads: the API and the CLI show the same -------------------------------------------------

READS: list[tuple[str, Callable, Callable]] = [
    ("list_files()", lambda w: DatasetVersion.get("ds@v1").list_files(),
     lambda c, w: _paths(c, "ds@v1", "-r")),
    ("list_files(folder)", lambda w: DatasetVersion.get("ds@v1").list_files("data"),
     lambda c, w: _paths(c, "ds@v1", "data", "-r")),
    ("list_files(folder, recursive=False)", lambda w: DatasetVersion.get("ds@v1").list_files("data", recursive=False),
     lambda c, w: _paths(c, "ds@v1", "data")),
    ("list_files(file)", lambda w: DatasetVersion.get("ds@v1").list_files("img/cat.jpg"),
     lambda c, w: _paths(c, "ds@v1", "img/cat.jpg")),
    ("diff(other)", lambda w: DatasetVersion.get("ds@v1").diff("ds@work"),
     lambda c, w: {k: [e["path"] for e in v] for k, v in json.loads(c("diff", "ds@v1", "ds@work", "--json")).items()}),
    ("verify()", lambda w: DatasetVersion.get("ds@v1").verify(),
     lambda c, w: json.loads(c("verify", "ds@v1", "--json"))["problems"]),
    ("verify(hash=True)", lambda w: DatasetVersion.get("ds@work").verify(hash=True),
     lambda c, w: json.loads(c("verify", "ds@work", "--hash", "--json"))["problems"]),
    ("get_versions()", lambda w: [v.id for v in DatasetVersion.get_versions("ds")],
     lambda c, w: [v["id"] for v in json.loads(c("versions", "ds", "--json"))]),
    ("get_versions(only_published)", lambda w: [v.id for v in DatasetVersion.get_versions("ds", only_published=True)],
     lambda c, w: [v["id"] for v in json.loads(c("versions", "ds", "--published", "--json"))]),
    ("get_versions(only_draft)", lambda w: [v.id for v in DatasetVersion.get_versions("ds", only_draft=True)],
     lambda c, w: [v["id"] for v in json.loads(c("versions", "ds", "--drafts", "--json"))]),
    ("Dataset.get_versions()", lambda w: [v.name for v in Dataset.get("ds").get_versions()],
     lambda c, w: [v["name"] for v in json.loads(c("versions", "ds", "--json"))]),
    ("get_version(version_name)", lambda w: DatasetVersion.get_version("ds", version_name="second").id,
     lambda c, w: json.loads(c("show", "ds@second", "--json"))["id"]),
    ("get_version(version_id)", lambda w: DatasetVersion.get_version("ds", version_id=w["v1"]).name,
     lambda c, w: json.loads(c("show", w["v1"], "--json"))["name"]),
    ("get_version() is current", lambda w: DatasetVersion.get_version("ds").id,
     lambda c, w: json.loads(c("show", "ds@draft", "--json"))["id"]),
    ("get_current()", lambda w: DatasetVersion.get_current("ds").id,
     lambda c, w: json.loads(c("show", "ds@draft", "--json"))["id"]),
    ("version fields", lambda w: (lambda v: [v.id, v.name, v.dataset_name, v.state, v.parent_ids, v.comment])(
        DatasetVersion.get("ds@work")),
     lambda c, w: (lambda s: [s["id"], s["name"], s["dataset"], s["state"], s["parents"], s["comment"]])(
        json.loads(c("show", "ds@work", "--json")))),
    ("get_metadata()", lambda w: DatasetVersion.get("ds@work").get_metadata(),
     lambda c, w: json.loads(c("show", "ds@work", "--json"))["metadata"]),
    ("Dataset.list()", lambda w: [d.name for d in Dataset.list()],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--json"))]),
    ("Dataset.list(project)", lambda w: [d.name for d in Dataset.list(project="audio")],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--project", "audio", "--json"))]),
    ("Dataset.list(tag)", lambda w: [d.name for d in Dataset.list(tag="raw")],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--tag", "raw", "--json"))]),
    ("Dataset.list(tags)", lambda w: [d.name for d in Dataset.list(tag=["raw", "wav"])],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--tag", "raw", "--tag", "wav", "--json"))]),
    ("Dataset.list(partial_name)", lambda w: [d.name for d in Dataset.list(partial_name="THE")],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--partial-name", "THE", "--json"))]),
    ("Dataset.list(all filters)", lambda w: [d.name for d in Dataset.list(project="audio", tag="wav", partial_name="OTH")],
     lambda c, w: [d["name"] for d in json.loads(c("datasets", "--project", "audio", "--tag", "wav",
                                                   "--partial-name", "OTH", "--json"))]),
    ("dataset fields", lambda w: (lambda d: [d.name, d.project, d.tags, d.description, len(d.version_ids)])(
        Dataset.get("ds")),
     lambda c, w: (lambda d: [d["name"], d["project"], d["tags"], d["description"], d["versions"]])(
        json.loads(c("datasets", "--project", "vision", "--json"))[0])),
    ("get_mutable_local_copy()", lambda w: tree_digest(
        DatasetVersion.get("ds@work").get_mutable_local_copy(w["tmp"] / "api-copy")),
     lambda c, w: (c("get", "ds@work", str(w["tmp"] / "cli-copy")), tree_digest(w["tmp"] / "cli-copy"))[1]),
    ("get_mutable_local_copy(overwrite)", lambda w: tree_digest(
        DatasetVersion.get("ds@second").get_mutable_local_copy(_littered(w["tmp"] / "api-over"), overwrite=True)),
     lambda c, w: (c("get", "ds@second", str(_littered(w["tmp"] / "cli-over")), "--overwrite"),
                   tree_digest(w["tmp"] / "cli-over"))[1]),
    ("get_local_copy()", lambda w: _writable(tree_digest(DatasetVersion.get("ds@v1").get_local_copy())),
     lambda c, w: _writable(
         (c("get", "ds@v1", str(w["tmp"] / "cli-copy1")), tree_digest(w["tmp"] / "cli-copy1"))[1])),
]


def _littered(folder: Path) -> Path:
    """A folder holding what a version does not: a file where ds@second has a folder, a folder
    where it has a file, a symlink, and files in both."""
    return write_tree(folder, {"img/old.jpg": "stale", "extra": "a file where a folder goes",
                               "readme.txt/x": "a folder where a file goes", "gone.txt": "stale",
                               "link": "-> gone.txt"})


def _writable(digest: dict) -> dict:
    """A digest with file modes' write bits dropped (the cached copy is read-only)."""
    return {p: (*v[:2], v[2] & ~0o222) if v[0] == "file" else v for p, v in digest.items()}


@_stores("moto")
def test_reads_agree_with_the_cli(api, world):
    assert len({name for name, *_ in READS}) == len(READS)
    for name, through_api, through_cli in READS:
        assert through_api(world) == through_cli(api, world), name


# -- changes: twin datasets, one changed through the API, one through the CLI ------------------


@dataclasses.dataclass
class Change:
    name: str
    api: Callable[[str, dict], object]  # (dataset, world)
    cli: Callable[[Cli, str, dict], object]
    refs: tuple[str, ...] = ("@draft",)  # compared afterwards, each as DATASET + ref


def _draft(dataset: str) -> DatasetVersion:
    return DatasetVersion.get(f"{dataset}@draft")


CHANGES = [
    Change("add_files(folder)", lambda d, w: _draft(d).add_files(w["more"]),
           lambda c, d, w: c("add", f"{d}@draft", str(w["more"]))),
    Change("add_files(wildcard, recursive=False, dataset_path)",
           lambda d, w: _draft(d).add_files(w["src"], wildcard="*.txt", recursive=False, dataset_path="in/here"),
           lambda c, d, w: c("add", f"{d}@draft", str(w["src"]), "--wildcard", "*.txt", "--non-recursive",
                             "--dest", "in/here")),
    Change("add_files(wildcards)", lambda d, w: _draft(d).add_files(w["src"], wildcard=["*.csv", "*.txt"]),
           lambda c, d, w: c("add", f"{d}@draft", str(w["src"]), "--wildcard", "*.csv", "--wildcard", "*.txt")),
    Change("add_files(path wildcard)", lambda d, w: _draft(d).add_files(w["src"], wildcard="data/*/*.csv"),
           lambda c, d, w: c("add", f"{d}@draft", str(w["src"]), "--wildcard", "data/*/*.csv")),
    Change("remove_files(path)", lambda d, w: _draft(d).remove_files("data/train"),
           lambda c, d, w: c("remove", f"{d}@draft", "data/train")),
    Change("remove_files(glob)", lambda d, w: _draft(d).remove_files("*.jpg"),
           lambda c, d, w: c("remove", f"{d}@draft", "*.jpg")),
    Change("remove_files(glob, recursive=False)", lambda d, w: _draft(d).remove_files("*.txt", recursive=False),
           lambda c, d, w: c("remove", f"{d}@draft", "*.txt", "--non-recursive")),
    Change("sync_folder(dataset_path)", lambda d, w: _draft(d).sync_folder(w["src2"], dataset_path="img"),
           lambda c, d, w: c("sync", f"{d}@draft", str(w["src2"]), "--dest", "img")),
    Change("publish_version()", lambda d, w: _draft(d).publish_version(),
           lambda c, d, w: c("publish", f"{d}@draft"), refs=("",)),
    Change("create_snapshot(names, child)",
           lambda d, w: DatasetVersion.create_snapshot(d, publish_name="r1", child_name="next",
                                                       child_metadata={"k": "v"}, child_comment="c"),
           lambda c, d, w: c("snapshot", d, "--name", "r1", "--child-name", "next", "--child-meta", "k=v",
                             "--child-comment", "c"), refs=("@r1", "@next")),
    Change("create_snapshot()", lambda d, w: DatasetVersion.create_snapshot(d),
           lambda c, d, w: c("snapshot", d), refs=("", "@Current")),
    Change("create_version(two parents)",
           lambda d, w: DatasetVersion.create_version(d, "mix", parent_version_ids=["ds@v1", "ds@second"],
                                                      comment="both", metadata={"m": "1"}),
           lambda c, d, w: c("create", d, "--parent", "ds@v1", "--parent", "ds@second", "--name", "mix",
                             "--comment", "both", "--meta", "m=1"), refs=("@mix",)),
    Change("create_version(root)", lambda d, w: DatasetVersion.create_version(d, "fresh"),
           lambda c, d, w: c("create", d, "--root", "--name", "fresh"), refs=("@fresh",)),
    Change("squash(version_ids)",
           lambda d, w: DatasetVersion.squash(d, ["ds@v1", "ds@second"], version_name="flat"),
           lambda c, d, w: c("squash", "ds@v1", "ds@second", "--dataset", d, "--name", "flat"),
           refs=("@flat",)),
    Change("delete_version()", lambda d, w: Dataset.get(d).delete_version(version_name="work"),
           lambda c, d, w: c("delete", f"{d}@work"), refs=()),
]


def _twin(name: str) -> None:
    """A dataset holding a draft like ds@work: a child of ds@v1 without img/dog.jpg."""
    DatasetVersion.create_version(name, "work", parent_version_ids=["ds@v1"]).remove_files("img/dog.jpg")


@_stores("moto")
def test_changes_agree_with_the_cli(api, world):
    assert len({c.name for c in CHANGES}) == len(CHANGES)
    repo = Repository(load_settings(store=api.store, cache_dir=str(api.cache_dir)))
    for n, case in enumerate(CHANGES):
        by_api, by_cli = f"api{n}", f"cli{n}"
        _twin(by_api)
        _twin(by_cli)
        case.api(by_api, world)
        case.cli(api, by_cli, world)
        for ref in case.refs:
            assert _outcome(repo, by_api + ref) == _outcome(repo, by_cli + ref), f"{case.name}: {ref}"
        assert len(repo.versions(by_api)) == len(repo.versions(by_cli)), case.name


def test_dataset_changes_agree_with_the_cli(api, world):
    Dataset.create("made", dataset_project="p", tags=["a"], description="d")
    api("create", "twin", "--project", "p", "--tag", "a", "--description", "d", "--root", "--name", "Current")
    Dataset.get("made").add_tags(["b", "c"])
    api("tag", "twin", "--add", "b", "--add", "c")
    Dataset.get("made").remove_tags(["a"])
    api("tag", "twin", "--remove", "a")
    listed = {d["name"]: d for d in json.loads(api("datasets", "--json"))}
    for key in ("project", "tags", "description", "versions"):
        assert listed["made"][key] == listed["twin"][key], key
    repo = Repository(load_settings(store=api.store, cache_dir=str(api.cache_dir)))
    assert _outcome(repo, "made@Current") == _outcome(repo, "twin@Current")
    assert Dataset.delete("made", delete_all_versions=True) == 1
    api("delete", "--dataset", "twin", "--all-versions")
    assert {d["name"] for d in json.loads(api("datasets", "--json"))} == {"ds", "other"}


# -- errors: the same message, a dsfs error that is also a built-in ----------------------------

ERRORS = [
    ("unknown dataset", lambda w: Dataset.get("nope"), ("tag", "nope"), errors.NotFound, LookupError),
    ("unknown version", lambda w: DatasetVersion.get_version("ds", version_name="v9"), ("show", "ds@v9"),
     errors.NotFound, LookupError),
    ("bad dataset name", lambda w: DatasetVersion.get_versions("../x"), ("versions", "../x"),
     errors.InvalidInput, ValueError),
    ("add to published", lambda w: DatasetVersion.get(w["v1"]).add_files(w["more"]),
     lambda w: ("add", w["v1"], str(w["more"])), errors.ReadOnly, PermissionError),
    ("a file over a folder", lambda w: _draft("ds").add_files(w["src2"]), lambda w: ("add", "ds@draft", str(w["src2"])),
     errors.InvalidInput, ValueError),
    ("publish twice", lambda w: DatasetVersion.get(w["v1"]).publish_version(), lambda w: ("publish", w["v1"]),
     errors.InvalidInput, ValueError),
    ("delete published", lambda w: Dataset.get("ds").delete_version(version_id=w["v1"]),
     lambda w: ("delete", w["v1"]), errors.ReadOnly, PermissionError),
    ("delete a parent", lambda w: Dataset.get("ds").delete_version(version_id=w["v1"], force=True),
     lambda w: ("delete", w["v1"], "--force"), errors.Conflict, RuntimeError),
    ("delete a dataset with versions", lambda w: Dataset.delete("ds"), ("delete", "--dataset", "ds"),
     errors.InvalidInput, ValueError),
    ("delete published versions", lambda w: Dataset.delete("ds", delete_all_versions=True),
     ("delete", "--dataset", "ds", "--all-versions"), errors.ReadOnly, PermissionError),
    ("snapshot without one draft", lambda w: DatasetVersion.create_snapshot("other"), ("snapshot", "other"),
     errors.InvalidInput, ValueError),
    ("snapshot onto a taken child name", lambda w: DatasetVersion.create_snapshot("ds", child_name="v1"),
     ("snapshot", "ds", "--child-name", "v1"), errors.AlreadyExists, ValueError),
    ("snapshot onto a taken name", lambda w: DatasetVersion.create_snapshot("ds", publish_name="second"),
     ("snapshot", "ds", "--name", "second"), errors.AlreadyExists, ValueError),
    ("snapshot and child of one name", lambda w: DatasetVersion.create_snapshot("ds", publish_name="x", child_name="x"),
     ("snapshot", "ds", "--name", "x", "--child-name", "x"), errors.InvalidInput, ValueError),
    ("squash a draft", lambda w: DatasetVersion.squash("flat", ["ds@work"]),
     ("squash", "ds@work", "--dataset", "flat"), errors.InvalidInput, ValueError),
    ("remove nothing", lambda w: _draft("ds").remove_files("*.zzz"), ("remove", "ds@draft", "*.zzz"),
     errors.NotFound, LookupError),
    ("list a missing path", lambda w: DatasetVersion.get("ds@v1").list_files("nope"), ("ls", "ds@v1", "nope"),
     errors.NotFound, LookupError),
    ("copy into a full folder", lambda w: DatasetVersion.get("ds@v1").get_mutable_local_copy(w["src"]),
     lambda w: ("get", "ds@v1", str(w["src"])), errors.InvalidInput, ValueError),
]


@_stores("moto")
def test_errors_agree_with_the_cli(api, world):
    for name, through_api, cli_args, cls, builtin in ERRORS:
        with pytest.raises(cls) as caught:
            through_api(world)
        assert isinstance(caught.value, builtin), name
        args = cli_args(world) if callable(cli_args) else cli_args
        err = api.fails(*args, code=cls.exit_code)
        assert err.strip() == f"dsfs: error: {caught.value}", name


# -- what only the API does -------------------------------------------------------------------


ADD_WILDCARDS = [  # (wildcard, recursive, what lands in the dataset)
    ("*.jpg", True, ["img/cat.jpg", "img/deep/owl.jpg", "img/dog.jpg"]),
    ("*.txt", False, ["readme.txt"]),
    ("img/*.jpg", True, ["img/cat.jpg", "img/dog.jpg"]),  # a path glob: its own depth only
    ("img/*.jpg", False, ["img/cat.jpg", "img/dog.jpg"]),
    ("/img/deep/*/", False, ["img/deep/owl.jpg"]),
    ("*/*.csv", True, ["data/val.csv"]),
    ("data/l*", False, ["data/link"]),  # a symlink, kept as one
    (["data/train/*.csv", "*.txt"], False, ["data/train/a.csv", "data/train/b.csv", "readme.txt"]),
    (["data/train/*.csv", "*.txt"], True, ["data/train/a.csv", "data/train/b.csv", "readme.txt"]),
    (["*.jpg", "data/*.csv"], False, ["data/val.csv"]),
]


def test_add_files_wildcards_match_names_or_paths_relative_to_the_folder(local_api, local_world):
    """A bare name glob matches names (at any depth when recursive, as the seed's rglob); one
    with a '/' matches paths relative to the folder, as remove_files matches them in the
    dataset. The API and the CLI add the same."""
    for n, (wildcard, recursive, expected) in enumerate(ADD_WILDCARDS):
        by_api = DatasetVersion.create_version("ds", f"wild-api-{n}")
        by_api.add_files(local_world["src"], wildcard=wildcard, recursive=recursive)
        by_cli = DatasetVersion.create_version("ds", f"wild-cli-{n}")
        globs = [wildcard] if isinstance(wildcard, str) else wildcard
        local_api("add", by_cli.id, str(local_world["src"]), *[a for g in globs for a in ("--wildcard", g)],
                  *([] if recursive else ["--non-recursive"]))
        assert by_api.list_files() == expected == _paths(local_api, by_cli.id, "-r"), (wildcard, recursive)


def test_create_follows_the_seed(local_api):
    made = Dataset.create(dataset_name="myDataset", dataset_project="proj", tags=["One Tag"], description="txt")
    assert (made.name, made.project, made.tags, made.description) == ("myDataset", "proj", ["One Tag"], "txt")
    (current,) = DatasetVersion.get_versions("myDataset")
    assert (current.name, current.state, current.parent_ids) == ("Current", "draft", [])
    assert Dataset.create(dataset_name="myDataset").version_ids == [current.id]  # returned as it is
    with pytest.raises(ValueError, match="dataset already exists: 'myDataset'"):
        Dataset.create(dataset_name="myDataset", raise_if_exists=True)
    with pytest.raises(ValueError, match="dataset already exists"):
        DatasetVersion.create_new_dataset(dataset_name="myDataset", raise_if_exists=True)
    assert DatasetVersion.create_new_dataset(dataset_name="myDataset Two").name == "myDataset Two"


def test_create_version_returns_an_existing_name_and_raises_on_request(local_api, local_world):
    again = DatasetVersion.create_version("ds", "work", parent_version_names=["second"])
    assert again == DatasetVersion.get("ds@work") and again.parent_ids == [local_world["v1"]]
    # the name decides first: parents that would be refused (missing, a draft) do not matter
    assert DatasetVersion.create_version("ds", "work", parent_version_names=["no-such"]) == again
    assert DatasetVersion.create_version("ds", "work", parent_version_names=["work"]) == again
    with pytest.raises(ValueError, match="version name already exists in dataset 'ds': 'work'"):
        DatasetVersion.create_version("ds", "work", raise_if_exists=True)
    child = DatasetVersion.create_version("ds", "by-id", parent_version_ids=[local_world["v1"]])
    assert child.parent_ids == [local_world["v1"]] and child.state == "draft"
    with pytest.raises(ValueError, match="not both"):
        DatasetVersion.create_version("ds", "x", parent_version_names=["v1"], parent_version_ids=[local_world["v1"]])


def test_current_warns_when_several_drafts(local_api, local_world):
    DatasetVersion.create_version("ds", "later", parent_version_names=["v1"])
    with pytest.warns(UserWarning, match=r"dataset 'ds' has 2 drafts; the newest, ds@later, is current"):
        assert DatasetVersion.get_current("ds").name == "later"
    with pytest.warns(UserWarning, match=r"dataset 'ds' has 2 drafts") as warned:  # the seed's form
        assert DatasetVersion.get_version(dataset_name="ds").name == "later"
    assert warned[0].filename == __file__  # pointing at the caller's line
    Dataset.get("ds").delete_version(version_name="later")
    Dataset.get("ds").delete_version(version_name="work")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DatasetVersion.get_current("ds").name == "second"  # no draft: the latest published


def test_a_refused_snapshot_leaves_the_draft_as_it_was(local_api, local_world):
    """Whatever refuses a snapshot, it does so before the draft is published: the dataset keeps
    its draft (a child that could not be made would leave none). A draft mounted writable is
    refused as ``publish`` refuses it, by the API and the CLI alike."""
    from dsfs.draft.lease import Lease

    work = DatasetVersion.get("ds@work")
    refusals = [
        (lambda: DatasetVersion.create_snapshot("ds", child_name="second"), errors.AlreadyExists,
         "version name already exists in dataset 'ds': 'second'"),
        (lambda: DatasetVersion.create_snapshot("ds", publish_name="r", child_name="r"), errors.InvalidInput,
         "the snapshot and its child cannot both be named 'r'"),
        (lambda: DatasetVersion.create_snapshot("ds", child_metadata={"when": object()}), errors.InvalidInput,
         "metadata must be JSON"),
        (lambda: DatasetVersion.create_snapshot("ds", child_name="draft"), errors.InvalidInput,
         "version name 'draft' is reserved"),
    ]
    for snapshot, cls, message in refusals:
        with pytest.raises(cls, match=re.escape(message)):
            snapshot()
    lease = Lease.acquire(Repository(load_settings(store=local_api.store, cache_dir=str(local_api.cache_dir))).store,
                          work.id, "/mnt/elsewhere")
    try:
        with pytest.raises(errors.Conflict, match="is mounted writable by") as caught:
            DatasetVersion.create_snapshot("ds")
        assert local_api.fails("snapshot", "ds", code=errors.Conflict.exit_code).strip() == f"dsfs: error: {caught.value}"
    finally:
        lease.release()
    assert work.refresh().state == "draft" and work.name == "work"
    assert [v.name for v in DatasetVersion.get_versions("ds")] == ["v1", "second", "work"]
    snapshot = DatasetVersion.create_snapshot("ds", child_name="work")  # its own name is free once published
    assert snapshot.id == work.id and DatasetVersion.get_current("ds").name == "work"


def test_create_version_metadata_must_be_json(local_api):
    with pytest.raises(errors.InvalidInput, match="metadata must be JSON"):
        DatasetVersion.create_version("ds", "bad", metadata={"when": object()})
    assert [d.name for d in Dataset.list()] == []  # refused before the dataset was made


def test_squash_holds_what_a_child_of_the_same_parents_holds(local_api, local_world):
    """Squash is the resolver's merge: a later version wins a path, a file replaces a folder
    (ds@second's 'img' file over ds@v1's img/ folder) and a folder a file, whole."""
    write_tree(local_world["tmp"] / "third", {"img/cat.jpg": "back as a folder", "readme.txt/x": "a folder now"})
    third = DatasetVersion.create_version("ds", "third")
    third.add_files(local_world["tmp"] / "third")
    third.publish_version()
    order = ["ds@v1", "ds@second", "ds@third"]
    child = DatasetVersion.create_version("ds", "child", parent_version_ids=order)
    repo = Repository(load_settings(store=local_api.store, cache_dir=str(local_api.cache_dir)))
    chunks_before = sorted(i.key for i in repo.store.list("versions/") if "/chunks/" in i.key)
    flat = DatasetVersion.squash("flat", order)
    # No bytes uploaded: no chunk anywhere is new, the squash's entries point at its sources'.
    assert sorted(i.key for i in repo.store.list("versions/") if "/chunks/" in i.key) == chunks_before
    assert {n.chunk.split("/")[1] for n in repo.ls(flat.id, recursive=True) if n.chunk} <= {
        v.id for v in DatasetVersion.get_versions("ds")}
    assert _outcome(repo, flat.id)[0] == _outcome(repo, child.id)[0]
    assert flat.list_files() == ["data/link", "data/train/a.csv", "data/train/b.csv", "data/val.csv",
                                 "extra/x.txt", "img/cat.jpg", "readme.txt/x"]
    assert (flat.parent_ids, flat.state) == ([], "published")


def test_a_squash_that_fails_leaves_no_version_behind(local_api, local_world, monkeypatch):
    """A squash that cannot record its change-set (here the store is full) leaves no empty draft,
    nor the dataset it made for it: the same squash then succeeds."""
    from dsfs.catalog import Catalog

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Catalog, "write_changeset", full)
    with pytest.raises(OSError, match="No space left"):
        DatasetVersion.squash("flat", ["ds@v1", "ds@second"])
    assert "flat" not in [d.name for d in Dataset.list()]  # the squash made it, and took it back
    monkeypatch.undo()
    flat = DatasetVersion.squash("flat", ["ds@v1", "ds@second"])
    assert [v.id for v in DatasetVersion.get_versions("flat")] == [flat.id]


def test_version_of_another_dataset_is_not_found(local_api, local_world):
    with pytest.raises(LookupError, match=f"version '{local_world['v1']}' is not in dataset 'other'"):
        DatasetVersion.get_version("other", version_id=local_world["v1"])


@_stores("moto")
def test_metadata_and_mask_labels(api, world):
    """set_metadata and set_masks_labels have no command of their own: the CLI shows their result."""
    work = DatasetVersion.get("ds@work")
    work.set_metadata({"abc": "1234", "nested": {"n": [1, 2]}})
    work.set_masks_labels({(0, 0, 0): ["background"], (1, 1, 1): ["person", "sitting"], (2, 2, 2): ["cat"]})
    expected = {"abc": "1234", "nested": {"n": [1, 2]}, "mask_labels": {"_all_": [
        {"value": [0, 0, 0], "labels": ["background"]}, {"value": [1, 1, 1], "labels": ["person", "sitting"]},
        {"value": [2, 2, 2], "labels": ["cat"]}]}}
    assert work.get_metadata() == expected
    assert json.loads(api("show", "ds@work", "--json"))["metadata"] == expected
    with pytest.raises(ValueError, match="a mask value must be an"):
        work.set_masks_labels({(0, 0): ["x"]})
    with pytest.raises(ValueError, match="metadata must be JSON"):
        work.set_metadata({"when": object()})
    with pytest.raises(PermissionError, match="version is published and cannot change"):
        DatasetVersion.get("ds@v1").set_metadata({})


def test_progress_reaches_the_callback(local_api, local_world):
    heard = []
    DatasetVersion.get("ds@work").add_files(local_world["more"], progress=lambda *a: heard.append(a))
    last = {label: (done, total) for label, done, total in heard}
    size = sum(len(v if isinstance(v, bytes) else v.encode()) for v in MORE.values())
    assert last == {"uploading": (size, size)}  # new files are hashed as they are packed
    copied = []
    DatasetVersion.get("ds@v1").get_local_copy(progress=lambda *a: copied.append(a))
    assert copied[-1][0] == "downloading" and copied[-1][1] == copied[-1][2] > 0
    again = []
    DatasetVersion.get("ds@v1").get_local_copy(progress=lambda *a: again.append(a))
    assert again == []  # reused, nothing fetched


def test_a_notebook_gets_a_bar_where_a_pipe_gets_none(monkeypatch):
    """In a Jupyter kernel stderr is no terminal, yet a bar (tqdm's notebook one) is drawn."""
    import sys
    import types

    from dsfs.progress import Progress, in_notebook

    assert not in_notebook() and not Progress("hashing", 10).enabled  # pytest: stderr is captured
    shell = type("ZMQInteractiveShell", (), {})()
    monkeypatch.setitem(sys.modules, "IPython", types.SimpleNamespace(get_ipython=lambda: shell))
    assert in_notebook()
    with Progress("hashing", 10) as bar:
        assert bar.enabled and bar._bar is not None
        bar(10)
    assert not Progress("hashing", 10, enabled=False).enabled  # show_progress=False


def test_local_copy_is_read_only_and_reused(local_api, local_world):
    v1 = DatasetVersion.get("ds@v1")
    path = v1.get_local_copy()
    assert path == v1.get_local_copy()
    assert not os.access(os.path.join(path, "readme.txt"), os.W_OK) or os.geteuid() == 0
    assert os.stat(os.path.join(path, "readme.txt")).st_mode & 0o222 == 0
    work = DatasetVersion.get("ds@work")
    before = work.get_local_copy()
    work.add_files(local_world["more"])
    after = work.get_local_copy()  # a draft's copy follows its changes; the old one goes
    assert after != before and not os.path.exists(before)
    assert (open(os.path.join(after, "readme.txt")).read()) == "changed\n"


def test_a_mutable_copy_over_a_full_folder_holds_the_version_only(local_api, local_world):
    """overwrite replaces what the folder held: the copy is the version, ready to sync back."""
    work = DatasetVersion.get("ds@work")
    clean = tree_digest(work.get_mutable_local_copy(local_world["tmp"] / "clean"))
    target = _littered(local_world["tmp"] / "full")
    with pytest.raises(ValueError, match="destination folder is not empty"):
        work.get_mutable_local_copy(target)
    assert tree_digest(target) == tree_digest(_littered(local_world["tmp"] / "again"))  # left alone
    assert tree_digest(work.get_mutable_local_copy(target, overwrite=True)) == clean
    assert work.sync_folder(target).empty  # nothing of the old contents goes back
    for holder in (Path(local_api.store).parent, local_api.cache_dir):
        with pytest.raises(ValueError, match="destination folder holds the (store|cache), not overwriting it: "):
            work.get_mutable_local_copy(holder, overwrite=True)
    assert DatasetVersion.get("ds@v1").verify() == []


def test_a_mutable_copy_never_empties_a_home_folder_or_the_root(local_api, local_world, monkeypatch):
    home = _littered(local_world["tmp"] / "home")
    monkeypatch.setenv("HOME", str(home))
    work = DatasetVersion.get("ds@work")
    for folder in (home, Path("/")):
        with pytest.raises(ValueError, match=f"not emptying '{folder}' to overwrite it"):
            work.get_mutable_local_copy(folder, overwrite=True)
    assert tree_digest(home) == tree_digest(_littered(local_world["tmp"] / "home-again"))


def test_configure_and_the_environment(local_api, local_world, tmp_path, monkeypatch):
    dsfs.configure()
    monkeypatch.setenv("DSFS_STORE", local_api.store)
    monkeypatch.setenv("DSFS_CACHE_DIR", str(tmp_path / "elsewhere"))
    assert [d.name for d in Dataset.list()] == ["ds", "other"]
    dsfs.configure(store=str(tmp_path / "missing"))
    with pytest.raises(OSError, match="store not found"):
        Dataset.list()
    Dataset.create("new")  # creating makes the store, as `dsfs create` does
    assert [d.name for d in Dataset.list()] == ["new"]


@pytest.mark.fuse
def test_mount_yields_the_path_and_a_draft_records_its_changes(local_api, tmp_path):
    Dataset.create("m")
    current = DatasetVersion.get_current("m")
    with current.mount() as root:
        (root / "new.txt").write_text("written through the mount")
    assert current.list_files() == ["new.txt"]
    snapshot = DatasetVersion.create_snapshot("m", publish_name="r1")
    (tmp_path / "mnt").mkdir()
    with snapshot.mount(tmp_path / "mnt") as root:
        assert root == tmp_path / "mnt"
        assert (root / "new.txt").read_text() == "written through the mount"
        with pytest.raises(OSError):
            (root / "other.txt").write_text("x")
    with pytest.raises(PermissionError, match="version is published"):
        with snapshot.mount(writable=True):
            pass
    with DatasetVersion.get_current("m").mount(writable=False) as root:
        with pytest.raises(OSError):
            (root / "other.txt").write_text("x")


# -- docs/PYTHON.md: every example runs --------------------------------------------------------


def _example_sections() -> list:
    """(title, code) for each ``##`` section of docs/PYTHON.md holding python blocks; a section
    that mounts is marked ``fuse``."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "PYTHON.md").read_text()
    sections = []
    for part in re.split(r"^## ", text, flags=re.M)[1:]:
        title = part.splitlines()[0].strip()
        code = "\n".join(re.findall(r"^```python\n(.*?)^```$", part, flags=re.M | re.S))
        if code:
            marks = [pytest.mark.fuse] if ".mount(" in code else []
            sections.append(pytest.param(title, code, id=title, marks=marks))
    return sections


@pytest.mark.parametrize("title, code", _example_sections())
def test_every_python_example_runs(title, code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DSFS_STORE", "DSFS_CACHE_DIR", "DSFS_CONFIG"):
        monkeypatch.delenv(name, raising=False)
    dsfs.configure(store=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), show_progress=False)
    try:
        exec(compile(code, f"docs/PYTHON.md: {title}", "exec"), {"__name__": "__example__"})
    finally:
        dsfs.configure()
