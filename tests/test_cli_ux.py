"""The command line as a newcomer meets it: options anywhere, help, typos, drafts, counts."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import threading

from conftest import write_tree
from dsfs.cli import build_parser, main
from dsfs.config import load_settings
from dsfs.errors import AlreadyExists
from dsfs.repo import Repository


def run(*argv: str) -> tuple[int, str, str]:
    """``dsfs`` with exactly these arguments (no global options added)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 2
    return code, out.getvalue(), err.getvalue()


# -- options and help -------------------------------------------------------------------------


def test_global_options_work_before_or_after_the_command(tmp_path, local_store_url, cache_dir):
    store, cache = ["--store", local_store_url], ["--cache-dir", str(cache_dir)]
    code, vid, err = run("create", "pets", *store, *cache, "-q")
    assert code == 0, err
    write_tree(tmp_path / "src", {"a.txt": "a"})
    assert run(*store, "add", vid.strip(), str(tmp_path / "src"), *cache, "-q")[0] == 0
    assert run("-q", *cache, "publish", "pets@draft", *store)[0] == 0
    for argv in (["ls", "pets", *store, *cache, "-q"],
                 [*store, *cache, "ls", "pets"],
                 [*store, "ls", "pets", *cache, "--quiet"],
                 ["ls", "--store", "/nowhere/at/all", "pets", *cache, *store]):  # the last one wins
        code, out, err = run(*argv)
        assert (code, err) == (0, ""), argv
        assert out.split()[-1] == "a.txt"
    # A value given before the command is not overwritten by the command's defaults.
    args = build_parser().parse_args(["--store", "/s", "-v", "ls", "pets"])
    assert (args.store, args.verbose, args.quiet, args.cache_dir) == ("/s", True, False, None)
    args = build_parser().parse_args(["ls", "pets", "-v", "--cache-dir", "/c"])
    assert (args.store, args.verbose, args.cache_dir) == (None, True, "/c")


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_every_option_and_argument_has_a_help_line():
    missing = [f"{p.prog}: {a.option_strings or a.dest}" for p in _parsers(build_parser())
               for a in p._actions if not a.help or a.help == argparse.SUPPRESS]
    assert missing == []


def test_help_shows_the_ref_grammar_and_examples():
    code, out, _ = run("--help")
    assert code == 0
    for grammar in ("at least 6 hex digits", "DATASET@NAME", "DATASET@draft",
                    "the dataset's latest published version"):
        assert grammar in out
    assert "examples:" in out and "dsfs mount pets@draft" in out
    assert "before or after the command" in out
    assert "exit codes:" in out and "10  a draft mount's changes were not recorded" in out


# -- typos ------------------------------------------------------------------------------------


def test_typos_get_a_did_you_mean(local_cli):
    local_cli("create", "pets", "--name", "release-1")
    local_cli("create", "pets", "--name", "release-2")
    assert "did you mean 'pets'?" in local_cli.fails("ls", "pest", code=3)
    assert "dataset not found: 'pest' (did you mean 'pets'?)" in local_cli.fails("ls", "pest@release-1", code=3)
    assert "dataset not found: 'pest' (did you mean 'pets'?)" in local_cli.fails("versions", "pest", code=3)
    err = local_cli.fails("ls", "pets@relase-2", code=3)
    assert "version not found: 'pets@relase-2' (did you mean 'release-2'?)" in err
    assert "versions of 'pets': release-1, release-2" in err
    assert "did you mean" not in local_cli.fails("ls", "zebra", code=3)


def test_an_unknown_version_lists_the_newest_names(local_cli):
    for n in range(12):
        local_cli("create", "ds", "--name", f"n{n:02d}")
    err = local_cli.fails("ls", "ds@zz", code=3)
    assert "newest 10 of 12 versions of 'ds': n02, n03," in err and err.rstrip().endswith("n11")


def test_a_short_id_prefix_says_the_minimum(local_cli):
    vid = local_cli("create", "ds").strip()
    assert "at least 6 characters" in local_cli.fails("show", vid[:5], code=3)
    assert json.loads(local_cli("show", vid[:6], "--json"))["id"] == vid


# -- drafts and version names -----------------------------------------------------------------


def test_a_second_draft_is_announced_and_named(local_store_url, cache_dir):
    base = ["--store", local_store_url, "--cache-dir", str(cache_dir)]
    code, _, err = run(*base, "create", "pets")
    assert (code, err) == (0, "")
    code, second, err = run(*base, "create", "pets")
    assert code == 0
    assert "dataset 'pets' has other drafts: pets@v1; pets@draft is ambiguous now" in err
    assert "(this one is pets@v2)" in err
    assert run(*base, "create", "pets", "-q")[2] == ""  # -q silences the notice
    code, _, err = run(*base, "ls", "pets@draft")
    assert code != 0
    assert err.strip() == ("dsfs: error: dataset 'pets' has 3 drafts, name one as pets@NAME: "
                           "pets@v1, pets@v2, pets@v3")
    code, out, _ = run(*base, "show", "pets@v2", "--json")
    assert json.loads(out)["id"] == second.strip()


def test_version_names_stay_unique(cli):
    cli("create", "ds", "--name", "one")
    assert "version name already exists in dataset 'ds': 'one'" in cli.fails("create", "ds", "--name", "one", code=4)
    two = cli("create", "ds", "--name", "two").strip()
    assert "already exists" in cli.fails("publish", two, "--name", "one", code=4)
    assert json.loads(cli("show", two, "--json"))["state"] == "draft"  # the refusal changed nothing
    cli("publish", two, "--name", "2.0")  # a rename frees the old name...
    three = cli("create", "ds", "--name", "two").strip()
    assert json.loads(cli("show", "ds@two", "--json"))["id"] == three
    assert "already exists" in cli.fails("create", "ds", "--name", "2.0", code=4)  # ...and holds the new one
    cli("delete", "ds@one")  # deleting frees a name
    assert cli("create", "ds", "--name", "one").strip() != ""
    names = [v["name"] for v in json.loads(cli("versions", "ds", "--json"))]
    assert sorted(names) == ["2.0", "one", "two"]


def test_snapshot_keeps_names_unique(cli):
    cli("create", "ds", "--name", "Current")
    cli("create", "ds", "--root", "--name", "taken")
    cli("delete", "ds@taken")
    cli("snapshot", "ds", "--name", "s1")
    assert [v["name"] for v in json.loads(cli("versions", "ds", "--drafts", "--json"))] == ["Current"]
    assert "already exists" in cli.fails("snapshot", "ds", "--name", "s1", code=4)
    assert "already exists" in cli.fails("create", "ds", "--name", "Current", code=4)


def test_default_names_are_distinct(cli):
    ids = [cli("create", "ds").strip() for _ in range(3)]
    cli("delete", ids[1])
    cli("create", "ds")
    names = [v["name"] for v in json.loads(cli("versions", "ds", "--json"))]
    assert sorted(names) == ["v1", "v3", "v4"]


def test_racing_creators_of_one_name_only_one_wins(store_url, cache_dir):
    """Names are enforced by the store (a compare-and-swap on the dataset record), not by a
    check before the write: of eight threads creating the same name at once, exactly one wins."""
    repo = Repository(load_settings(store=store_url, cache_dir=str(cache_dir)), create_store=True)
    repo.create("ds", name="base")
    start = threading.Barrier(8)
    won, lost = [], []

    def create() -> None:
        start.wait()
        try:
            won.append(repo.create("ds", name="same").id)
        except AlreadyExists:
            lost.append(1)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 7
    assert sorted(v.name for v in repo.catalog.versions("ds")) == ["base", "same"]
    # The losers left no draft record behind.
    drafts = {info.key.split("/")[1] for info in repo.store.list("versions/")}
    assert drafts == {v.id for v in repo.catalog.versions("ds")}
    # Unnamed creators racing each other all succeed, each with its own name.
    start = threading.Barrier(4)
    made = []

    def create_default() -> None:
        start.wait()
        made.append(repo.create("ds").name)

    threads = [threading.Thread(target=create_default) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 4


def test_a_record_without_names_gets_them_rebuilt(local_cli):
    """A dataset record written by an older dsfs has no ``names``: the next claim rebuilds it
    from the manifests, so old names stay taken."""
    import pathlib

    local_cli("create", "ds", "--name", "old")
    path = pathlib.Path(local_cli.store) / "datasets/ds.json"
    record = json.loads(path.read_text())
    del record["names"]
    path.write_text(json.dumps(record))
    assert "already exists" in local_cli.fails("create", "ds", "--name", "old", code=4)
    local_cli("create", "ds", "--name", "new")
    assert json.loads(path.read_text())["names"].keys() == {"old", "new"}


def test_version_names_may_hold_an_at_sign(local_cli):
    vid = local_cli("create", "ds", "--name", "a@b").strip()
    assert json.loads(local_cli("show", "ds@a@b", "--json"))["id"] == vid


# -- progress ---------------------------------------------------------------------------------


def _on_a_terminal(*argv: str, size: tuple[int, int] = (0, 0)) -> tuple[int, str, str]:
    """Run ``dsfs`` in a child whose stderr is a terminal (a pty of ``size`` rows, columns;
    0, 0 is a terminal that reports no size); (code, stdout, what the terminal got)."""
    import fcntl
    import os
    import pty
    import struct
    import subprocess
    import sys
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "dsfs", *argv], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=slave)
    os.close(slave)
    seen = b""
    while True:
        try:
            data = os.read(master, 1 << 16)
        except OSError:  # EIO: every holder of the terminal's other side is gone
            break
        if not data:
            break
        seen += data
    os.close(master)
    out = proc.stdout.read().decode()
    return proc.wait(), out, seen.decode(errors="replace")


def test_progress_bars_show_total_rate_and_eta_only_on_a_terminal(tmp_path, local_store_url, cache_dir):
    base = ["--store", local_store_url, "--cache-dir", str(cache_dir)]
    write_tree(tmp_path / "src", {"big.bin": bytes(3 << 20), "small.txt": "s"})
    vid = run(*base, "create", "ds")[1].strip()
    code, out, term = _on_a_terminal(*base, "add", vid, str(tmp_path / "src"))
    assert code == 0 and out == "2 files added, 0 modified, 0 removed; 3.0 MiB uploaded, 0 B deduplicated\n"
    # New files are hashed as they are packed: one bar. Files that look unchanged (same size
    # and mtime) are hashed to tell, with a bar of their own.
    assert "hashing" not in term
    code, out, again = _on_a_terminal(*base, "add", vid, str(tmp_path / "src"))
    assert code == 0 and out == "no changes\n"
    for label, shown in (("uploading", term), ("hashing", again)):
        line = [part for part in shown.replace("\r", "\n").splitlines() if part.startswith(label)][-1]
        assert "100%" in line and "3.15M/3.15M" in line and "/s]" in line, line
    code, _, term = _on_a_terminal(*base, "get", vid, str(tmp_path / "got1"), size=(30, 60))
    assert code == 0
    lines = [part for part in term.replace("\r", "\n").splitlines() if part.startswith("downloading")]
    assert "100%" in lines[-1] and all(len(line) <= 60 for line in lines)
    assert term.rstrip().endswith(f"2 files in {tmp_path / 'got1'}")
    code, out, term = _on_a_terminal(*base, "get", vid, str(tmp_path / "got"), "-q", size=(30, 60))
    assert (code, term) == (0, "")  # -q: no bar, no notice
    code, _, err = run(*base, "get", vid, str(tmp_path / "got2"))
    assert (code, err) == (0, "2 files in " + str(tmp_path / "got2") + "\n")  # not a terminal: no bar


# -- counts -----------------------------------------------------------------------------------


def _diff_counts(cli, a: str, b: str) -> tuple[int, int, int]:
    diff = json.loads(cli("diff", a, b, "--json"))
    return len(diff["added"]), len(diff["modified"]), len(diff["removed"])


def test_add_sync_and_diff_count_files_not_folders(cli, tmp_path):
    src = write_tree(tmp_path / "src", {"a/b/c.txt": "c", "a/d.txt": "d", "top.txt": "t",
                                        "link": "-> top.txt", "empty/": ""})
    v1 = cli("create", "ds").strip()
    out = json.loads(cli("add", v1, str(src), "--json"))
    assert (out["added"], out["modified"], out["removed"]) == (4, 0, 0)
    assert cli("add", v1, str(src)).strip() == "no changes"
    cli("publish", v1)
    v2 = cli("create", "ds").strip()
    (src / "a/d.txt").write_text("changed")
    (src / "a/b/c.txt").unlink()
    (src / "a/b/new1").write_text("1")
    (src / "new/deeper").mkdir(parents=True)
    (src / "new/deeper/new2").write_text("2")
    (src / "top.txt").unlink()
    (src / "top.txt").mkdir()  # a file becomes a folder with a file in it
    (src / "top.txt/inside").write_text("i")
    out = json.loads(cli("sync", v2, str(src), "--json"))
    assert (out["added"], out["modified"], out["removed"]) == (3, 1, 2)
    assert _diff_counts(cli, v1, v2) == (3, 1, 2)
    code, _, err = cli.run("diff", v1, v2)
    assert code == 0 and err == "3 files added, 1 modified, 2 removed\n"
    out = cli("remove", v2, "a")
    assert out.startswith("0 files added, 0 modified, 2 removed;")  # a folder of two files
    assert cli("sync", v2, str(src)).startswith("2 files added, 0 modified, 0 removed;")


def test_draft_mount_counts_sed_in_place_as_modified(cli, mounts, tmp_path):
    """``sed -i`` writes a temp file and renames it over the original: one modified file. The
    umount summary, ``dsfs commit`` and ``dsfs diff`` count the same files."""
    src = write_tree(tmp_path / "src", {"d/e/a.txt": "x marks\n", "d/b.txt": "b", "c.txt": "c"})
    v1 = cli("create", "ds").strip()
    cli("add", v1, str(src))
    cli("publish", v1)
    vid = cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    mounts.mount(vid, mnt)
    assert mounts.umount(mnt) == "unmounted; no changes"
    mounts.mount(vid, mnt)
    subprocess_run(["sed", "-i", "s/x/y/", str(mnt / "d/e/a.txt")])
    assert (mnt / "d/e/a.txt").read_text() == "y marks\n"
    out = json.loads(cli("commit", str(mnt), "--json"))
    assert (out["added"], out["modified"], out["removed"]) == (0, 1, 0)
    # The same bytes again: only the mtime changed, recorded without an upload (still modified).
    subprocess_run(["sed", "-i", "s/b/b/", str(mnt / "d/b.txt")])
    (mnt / "new/deeper").mkdir(parents=True)
    (mnt / "new/deeper/n.txt").write_text("n")
    (mnt / "c.txt").unlink()
    note = mounts.umount(mnt)
    assert note.startswith("unmounted; committed 1 file added, 1 modified, 1 removed; 1 B uploaded"), note
    assert _diff_counts(cli, v1, vid) == (1, 2, 1)
    modified = json.loads(cli("diff", v1, vid, "--json"))["modified"]
    assert sorted(m["path"] for m in modified) == ["d/b.txt", "d/e/a.txt"]


def subprocess_run(argv: list[str]) -> None:
    import subprocess

    subprocess.run(argv, check=True, capture_output=True, timeout=60)


# -- extended attributes ----------------------------------------------------------------------


def _xattrs(path) -> dict[str, str]:
    import os

    return {name: os.getxattr(path, name).decode() for name in os.listxattr(path)}


def test_xattrs_name_the_mounted_version_and_each_files_source(cli, mounts, tmp_path):
    """A version of dataset 'mix' with parents from datasets 'a' and 'b': every path says it is
    'mix' at the mounted version; a file also names the version (and dataset) of its bytes."""
    import hashlib

    parents = {}
    for name in ("a", "b"):
        src = write_tree(tmp_path / name, {f"{name}/{name}.txt": name})
        parents[name] = cli("create", name).strip()
        cli("add", parents[name], str(src))
        cli("publish", parents[name])
    mix = cli("create", "mix", "--parent", "a", "--parent", "b").strip()
    cli("add", mix, str(write_tree(tmp_path / "own", {"own.txt": "own"})))
    cli("publish", mix)
    draft = cli("create", "mix").strip()
    for vid, adapter in ((mix, "auto"), (mix, "lowlevel"), (draft, "auto")):
        mnt = tmp_path / f"mnt-{adapter}-{vid[:6]}"
        mounts.mount(vid, mnt, adapter=adapter)
        here = {"user.dsfs.version": vid, "user.dsfs.dataset": "mix"}
        assert _xattrs(mnt) == here
        assert _xattrs(mnt / "a") == here
        assert _xattrs(mnt / "a/a.txt") == here | {
            "user.dsfs.sha256": hashlib.sha256(b"a").hexdigest(),
            "user.dsfs.source_version": parents["a"], "user.dsfs.source_dataset": "a"}
        assert _xattrs(mnt / "own.txt")["user.dsfs.source_version"] == mix
        assert _xattrs(mnt / "own.txt")["user.dsfs.source_dataset"] == "mix"
        if vid == draft:  # a file written in the draft: its bytes come from the draft itself
            (mnt / "new.txt").write_text("new")
            assert _xattrs(mnt / "new.txt") == {
                "user.dsfs.version": draft, "user.dsfs.dataset": "mix",
                "user.dsfs.sha256": hashlib.sha256(b"new").hexdigest(),
                "user.dsfs.source_version": draft, "user.dsfs.source_dataset": "mix"}
        mounts.umount(mnt)


def test_a_commit_of_folders_only_says_so(local_cli, local_mounts, tmp_path):
    """Counts are files; a change-set that only adds or removes folders says that instead of
    "0 files added, 0 modified, 0 removed"."""
    vid = local_cli("create", "ds").strip()
    mnt = tmp_path / "mnt"
    local_mounts.mount(vid, mnt)
    (mnt / "empty").mkdir()
    assert local_mounts.umount(mnt) == "unmounted; committed no files changed, 1 folder changed"
    out = json.loads(local_cli("remove", vid, "empty", "--json"))
    assert (out["added"], out["modified"], out["removed"], out["folders"]) == (0, 0, 0, 1)
