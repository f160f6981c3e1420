"""Bad input gets a clear one-line error, a non-zero exit, and nothing lost or half-written."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import add_caught_packing, write_tree


@pytest.fixture
def published(local_cli, tmp_path):
    write_tree(tmp_path / "src", {"a.txt": "alpha" * 100, "d/b.bin": os.urandom(5000)})
    vid = local_cli("create", "ds").strip()
    local_cli("add", vid, str(tmp_path / "src"))
    local_cli("publish", vid)
    return vid


def _store(cli) -> Path:
    return Path(cli.store)


def test_unknown_and_ambiguous_refs(local_cli, published):
    assert "no dataset or version matches ref: 'nope'" in local_cli.fails("show", "nope", code=3)
    assert "version not found: 'ds@missing'" in local_cli.fails("show", "ds@missing", code=3)
    assert "has no draft" in local_cli.fails("show", "ds@draft", code=3)
    local_cli("create", "ds")
    local_cli("create", "ds")
    err = local_cli.fails("show", "ds@draft", code=2)
    assert "has 2 drafts, name one" in err
    assert "invalid dataset name: '../x'" in local_cli.fails("create", "../x", code=2)


def test_short_prefix_is_not_an_id(local_cli, published):
    assert local_cli("show", published[:6], "--json")
    assert "no dataset or version matches" in local_cli.fails("show", published[:5], code=3)


def test_adding_to_published_is_refused(local_cli, published, tmp_path):
    err = local_cli.fails("add", published, str(tmp_path / "src"), code=6)
    assert "version is published and cannot change" in err


def test_draft_parent_is_refused(local_cli, published):
    draft = local_cli("create", "ds").strip()
    assert f"parent must be published, '{draft}'" in local_cli.fails("create", "ds", "--parent", draft, code=2)


def test_bad_destination_paths(local_cli, published, tmp_path):
    draft = local_cli("create", "ds").strip()
    for dest in ["../up", "a/../../b"]:
        assert "'..' components" in local_cli.fails("add", draft, str(tmp_path / "src"), "--dest", dest, code=2)
    assert "no such file or folder" in local_cli.fails("add", draft, str(tmp_path / "missing"), code=3)


def test_file_folder_conflict_in_add(local_cli, published, tmp_path):
    draft = local_cli("create", "ds").strip()
    write_tree(tmp_path / "clash", {"b.bin": "x"})
    err = local_cli.fails("add", draft, str(tmp_path / "clash"), "--dest", "a.txt", code=2)
    assert "both a file and a folder: 'a.txt'" in err
    assert json.loads(local_cli("show", draft, "--json"))["changesets"] == 0


def test_usage_errors_exit_2(local_cli):
    assert local_cli.fails("create", code=2)
    assert local_cli.fails("frobnicate", code=2)
    assert "metadata must be KEY=VALUE: 'oops'" in local_cli.fails("create", "ds", "--meta", "oops", code=2)


def _rewrite_changeset(store: Path, vid: str, mutate) -> None:
    [path] = (store / "versions" / vid / "changesets").iterdir()
    lines = gzip.decompress(path.read_bytes()).decode().splitlines()
    records = [json.loads(line) for line in lines]
    mutate(records)
    path.write_bytes(gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n").encode()))


@pytest.mark.parametrize("bad_path,message", [
    ("../escape", "'..' components"),
    ("/etc/passwd", "must be relative"),
    ("a\x00b", "nul byte"),
    ("a//b", "empty component"),
])
def test_hostile_manifest_paths_are_rejected(local_cli, published, bad_path, message, tmp_path):
    def mutate(records):
        records[1]["path"] = bad_path

    _rewrite_changeset(_store(local_cli), published, mutate)
    err = local_cli.fails("get", published, str(tmp_path / "out"), code=5)
    assert "corrupt manifest" in err and message in err
    assert not (tmp_path / "escape").exists()


def test_unknown_schema_version(local_cli, published, tmp_path):
    path = _store(local_cli) / "versions" / published / "published.json"
    record = json.loads(path.read_text())
    record["schema"] = 99
    path.write_text(json.dumps(record))
    assert "unsupported schema version 99" in local_cli.fails("show", published, code=5)


def test_missing_and_truncated_chunks(local_cli, published, tmp_path):
    [chunk] = (_store(local_cli) / "versions" / published / "chunks").iterdir()
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    out = local_cli.run("verify", published)
    assert out[0] == 5 and "chunk truncated" in out[1]
    assert "truncated" in local_cli.fails("get", published, str(tmp_path / "out1"), code=5)
    chunk.unlink()
    code, out, _ = local_cli.run("verify", published)
    assert code == 5 and "chunk missing" in out
    assert "chunk missing from store" in local_cli.fails("get", published, str(tmp_path / "out2"), code=5)


def test_corrupted_bytes_are_caught_by_hash(local_cli, published, tmp_path):
    [chunk] = (_store(local_cli) / "versions" / published / "chunks").iterdir()
    data = bytearray(chunk.read_bytes())
    pos = data.find(b"alpha")
    if pos < 0:  # a.txt was deflated: flip a byte of d/b.bin instead (stored, random)
        pos = len(data) // 3
    data[pos] ^= 0xFF
    chunk.write_bytes(bytes(data))
    code, out, _ = local_cli.run("verify", published, "--hash")
    assert code == 5
    assert "mismatch" in out or "inflate" in out
    assert local_cli.run("get", published, str(tmp_path / "out"))[0] == 5


def test_get_refuses_non_empty_destination(local_cli, published, tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("mine")
    assert "destination folder is not empty" in local_cli.fails("get", published, str(tmp_path / "full"), code=2)
    assert (tmp_path / "full" / "x").read_text() == "mine"


def test_unreachable_s3_store(tmp_path, monkeypatch, cache_dir):
    from conftest import Cli

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    config = tmp_path / "c.yaml"
    config.write_text("s3_max_attempts: 2\ns3_connect_timeout: 1\n")
    cli = Cli("s3://bucket/prefix", cache_dir)
    code, _, err = cli.run("--config", str(config), "datasets")
    assert code == 7 and err.count("\n") == 1 and "127.0.0.1:9" in err


def test_interrupted_add_leaves_the_draft_unchanged(local_cli, tmp_path, cache_dir):
    """SIGINT while a chunk is being packed: exit 130, no change-set recorded, store readable."""
    # A runner that started us in the background may have SIGINT ignored, which the child would
    # inherit (and Python then raises no KeyboardInterrupt): give the child the default back.
    draft, _, proc = add_caught_packing(local_cli, tmp_path, stderr=subprocess.PIPE, text=True,
                                        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    tmp = cache_dir / "tmp"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted; nothing was recorded" in err
    assert json.loads(local_cli("show", draft, "--json"))["changesets"] == 0
    assert [p for p in tmp.rglob("*") if not p.is_dir()] == []  # the partial chunk is gone
    assert local_cli("ls", draft, "-r") == ""
