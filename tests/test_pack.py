"""Packing reads each source byte once, cuts dedup hits out of a chunk without harming it, refuses
a file that changes while it is read, and looks each path of a commit up in the view once."""

from __future__ import annotations

import errno
import hashlib
import os
import random
import zipfile

import pytest
from conftest import write_tree

from dsfs.changeset.manifest import FILE
from dsfs.config import load_settings
from dsfs.errors import Conflict, NoSpace
from dsfs.repo import Repository, collect_sources
from dsfs.resolver.index import VersionIndex

MiB = 1 << 20


@pytest.fixture
def repo(local_store_url, cache_dir):
    return Repository(load_settings(store=local_store_url, cache_dir=str(cache_dir)), create_store=True)


def _draft(repo: Repository) -> str:
    return repo.create("ds", root=True).id


def _rchar() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def _chunks(repo: Repository, draft: str) -> list[str]:
    return [info.key for info in repo.store.list(f"versions/{draft}/chunks/")]


def _noise(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


def test_add_reads_each_source_byte_once(repo, tmp_path):
    files = {f"small/{i:03d}.bin": _noise(4096 + i, i) for i in range(200)}
    files.update({f"big/{i}.bin": _noise(6 * MiB + i, 1000 + i) for i in range(3)})
    files["big/text.csv"] = b"id,value\n" * (MiB // 2)  # deflated, past the whole-read size
    write_tree(tmp_path / "src", files)
    draft = _draft(repo)
    before = _rchar()
    summary = repo.add(draft, [str(tmp_path / "src")])
    read = _rchar() - before
    source = sum(map(len, files.values()))
    # The local store takes each finished chunk by rename (its temp folder is on the store's
    # filesystem here): the chunk is not read again.
    assert summary.added == len(files) and summary.bytes_uploaded == source
    assert source <= read < source + 2 * MiB  # the rest: the index, the store's records
    assert repo.verify(draft, hash_files=True) == []


def test_a_duplicate_found_after_writing_is_cut_out_of_the_chunk(repo, tmp_path):
    big = _noise(5 * MiB, 1)
    draft = _draft(repo)
    write_tree(tmp_path / "v1", {"first.bin": big})
    repo.add(draft, [str(tmp_path / "v1")])
    write_tree(tmp_path / "v2", {"a.bin": _noise(6 * MiB, 2), "b.bin": big, "c.bin": b"c" * 100,
                                 "d.bin": _noise(6 * MiB, 2), "e.txt": "small text " * 100})
    summary = repo.add(draft, [str(tmp_path / "v2")], dest="v2")
    assert summary.bytes_uploaded == 6 * MiB + 100 + 1100 and summary.bytes_dedup == 11 * MiB
    index = repo.index(repo.resolve(draft))
    first = index.by_path("first.bin").chunk
    [second] = set(_chunks(repo, draft)) - {first}
    with zipfile.ZipFile(repo.store.local_path(second)) as z:
        assert z.testzip() is None
        names = [i.filename for i in z.infolist()]
    assert names[0] == "v2/a.bin" and names[1].startswith(".dsfs-tree/") and names[2:] == ["v2/c.bin", "v2/e.txt"]
    assert index.by_path("v2/b.bin").chunk == first and index.by_path("v2/d.bin").chunk == second
    assert repo.verify(draft, hash_files=True) == []
    out = tmp_path / "out"
    repo.get(draft, str(out))
    assert (out / "v2/b.bin").read_bytes() == big and (out / "v2/d.bin").read_bytes() == _noise(6 * MiB, 2)


def test_a_chunk_of_nothing_but_duplicates_is_not_uploaded(repo, tmp_path, cache_dir):
    big = _noise(5 * MiB, 3)
    draft = _draft(repo)
    write_tree(tmp_path / "v1", {"x.bin": big})
    repo.add(draft, [str(tmp_path / "v1")])
    write_tree(tmp_path / "v2", {"y.bin": big, "z.bin": big})
    summary = repo.add(draft, [str(tmp_path / "v2")], dest="copies")
    assert summary.bytes_uploaded == 0 and summary.bytes_dedup == 10 * MiB
    assert len(_chunks(repo, draft)) == 1
    assert [p for p in (cache_dir / "tmp").rglob("*") if not p.is_dir()] == []


@pytest.mark.parametrize("size", [1000, 5 * MiB])
@pytest.mark.parametrize("change", ["append", "touch"])
def test_a_file_changed_after_it_was_listed_is_refused(repo, tmp_path, size, change):
    write_tree(tmp_path / "src", {"ok.bin": b"fine", "f.bin": _noise(size, 4)})
    draft = _draft(repo)
    sources = sorted(collect_sources(str(tmp_path / "src"), ""), key=lambda s: s.path)
    path = tmp_path / "src/f.bin"
    if change == "append":
        with open(path, "ab") as f:
            f.write(b"more")
    else:
        st = path.stat()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    with pytest.raises(Conflict, match="file changed while being added: .*f.bin"):
        repo.commit_changes(repo.resolve(draft), sources, [])
    assert repo.resolve(draft).changesets == [] and _chunks(repo, draft) == []


def test_a_file_listed_empty_that_grew_is_refused(repo, tmp_path):
    """An empty file needs no read to pack, but one that is no longer empty is not recorded as
    empty."""
    write_tree(tmp_path / "src", {"ok.bin": b"fine", "empty.bin": b""})
    draft = _draft(repo)
    sources = sorted(collect_sources(str(tmp_path / "src"), ""), key=lambda s: s.path)
    (tmp_path / "src/empty.bin").write_bytes(b"no longer")
    with pytest.raises(Conflict, match="file changed while being added: .*empty.bin"):
        repo.commit_changes(repo.resolve(draft), sources, [])
    assert repo.resolve(draft).changesets == []


def test_a_commit_looks_each_path_up_once(repo, tmp_path, monkeypatch):
    files = {f"old/d{i % 5}/{i:03d}.txt": f"old {i}" for i in range(100)}
    draft = _draft(repo)
    write_tree(tmp_path / "v1", files)
    repo.add(draft, [str(tmp_path / "v1")])
    files.update({f"old/d{i % 5}/{i:03d}.txt": f"new {i}" for i in range(50)})
    files.update({f"new/d{i % 5}/{i:03d}.txt": f"more {i}" for i in range(100)})  # 100 added
    write_tree(tmp_path / "v2", files)
    calls = {"by_path": 0, "lookup": 0}
    for name in calls:
        real = getattr(VersionIndex, name)

        def counting(self, *args, _real=real, _name=name):
            calls[_name] += 1
            return _real(self, *args)
        monkeypatch.setattr(VersionIndex, name, counting)
    summary = repo.add(draft, [str(tmp_path / "v2")])
    # Written again in another folder, the old files all have new mtimes: all modified.
    assert (summary.added, summary.modified, summary.removed) == (100, 100, 0)
    # One by_path (the root), then a lookup per path under a folder the view has: the 2 top
    # folders, old's 5 folders and 100 files; new's folders and files need none.
    assert calls == {"by_path": 1, "lookup": 107}


def test_unchanged_files_are_hashed_to_tell_and_not_packed(repo, tmp_path):
    write_tree(tmp_path / "src", {"a.bin": _noise(2 * MiB, 5), "b.txt": "b"})
    draft = _draft(repo)
    repo.add(draft, [str(tmp_path / "src")])
    assert repo.add(draft, [str(tmp_path / "src")]).empty
    path = tmp_path / "src/a.bin"
    st = path.stat()
    path.write_bytes(_noise(2 * MiB, 6))  # same size and mtime, other bytes
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    summary = repo.add(draft, [str(tmp_path / "src")])
    assert (summary.added, summary.modified, summary.bytes_uploaded) == (0, 1, 2 * MiB)
    node = repo.index(repo.resolve(draft)).by_path("a.bin")
    assert node.type == FILE and node.sha256 == hashlib.sha256(_noise(2 * MiB, 6)).hexdigest()


@pytest.mark.parametrize("size", [1000, 5 * MiB])
def test_a_full_temp_folder_fails_the_add_cleanly(repo, tmp_path, cache_dir, monkeypatch, size):
    from dsfs.changeset import packer

    write_tree(tmp_path / "src", {"f.bin": _noise(size, 7)})
    draft = _draft(repo)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(packer, "_pwrite_all", full)
    with pytest.raises(NoSpace, match="no space left in .* while packing a chunk"):
        repo.add(draft, [str(tmp_path / "src")])
    assert repo.resolve(draft).changesets == [] and _chunks(repo, draft) == []
    assert [p for p in (cache_dir / "tmp").rglob("*") if not p.is_dir()] == []


def test_noise_is_told_by_its_first_2_kib(repo, tmp_path):
    text = b"id,value,name\n" * 2000
    write_tree(tmp_path / "src", {"text.dat": text, "noise.dat": _noise(50_000, 8),
                                  "noisy-head.dat": _noise(2048, 9) + text,
                                  "short-noise.dat": _noise(1000, 10)})
    draft = _draft(repo)
    repo.add(draft, [str(tmp_path / "src")])
    index = repo.index(repo.resolve(draft))
    methods = {name: index.by_path(name).method for name in
               ("text.dat", "noise.dat", "noisy-head.dat", "short-noise.dat")}
    # A file whose first 2 KiB do not shrink is stored, whatever follows them.
    assert methods == {"text.dat": 8, "noise.dat": 0, "noisy-head.dat": 0, "short-noise.dat": 0}
