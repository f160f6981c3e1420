"""The reference model of tests/test_draft_model.py, driven through ``DraftView`` without FUSE.

The same random operations run on a plain temp folder and on a draft's view in this process;
``ViewClient`` plays the kernel's part (path walks that follow symlinks, the VFS's own checks,
the umask, close as flush then release, forget after an unlink). Without a mount to start per
example it runs hundreds of examples in seconds. After the operations the draft is committed
and the version it became must match the folder too.
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import os
import shutil
import stat
import subprocess
import sys
import types
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import tree_digest, write_tree
from dsfs.cache import open_cache
from dsfs.changeset.manifest import DIR, SYMLINK
from dsfs.config import load_settings
from dsfs.draft import session as drafts
from dsfs.draft.commit import commit_overlay
from dsfs.draft.view import DraftView
from dsfs.errors import DsfsError
from dsfs.mountd.view import VersionView
from dsfs.repo import Repository
from dsfs.resolver.index import ROOT_INO
from dsfs.xattrs import DatasetOf
from test_draft_model import BASE, apply, op_strategy

MAX_SYMLINKS = 40  # the kernel's bound on the symlinks one path walk follows
UMASK = os.umask(0)
os.umask(UMASK)


class ViewClient:
    """System calls on paths below the root of a ``DraftView``, as the kernel makes them."""

    def __init__(self, view: DraftView) -> None:
        self.view = view

    def _walk(self, path: str, *, follow: bool, start: int = ROOT_INO, budget: list[int] | None = None):
        """(folder inode, last name, its attributes or None) of ``path``; raises OSError."""
        budget = [MAX_SYMLINKS] if budget is None else budget
        *folders, last = path.split("/")
        folder = start
        for name in folders:
            attr = self._follow(folder, self.view.lookup(folder, name), budget)
            if attr.type != DIR:
                raise OSError(errno.ENOTDIR, name)
            folder = attr.ino
        try:
            attr = self.view.lookup(folder, last)
        except DsfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            return folder, last, None
        if follow and attr.type == SYMLINK:
            budget[0] -= 1
            if budget[0] < 0:
                raise OSError(errno.ELOOP, path)
            return self._walk(attr.target, follow=True, start=folder, budget=budget)
        return folder, last, attr

    def _follow(self, folder: int, attr, budget: list[int]):
        if attr.type != SYMLINK:
            return attr
        budget[0] -= 1
        if budget[0] < 0:
            raise OSError(errno.ELOOP, attr.name)
        _, last, target = self._walk(attr.target, follow=True, start=folder, budget=budget)
        if target is None:
            raise OSError(errno.ENOENT, last)
        return target

    def _existing(self, path: str, *, follow: bool):
        folder, name, attr = self._walk(path, follow=follow)
        if attr is None:
            raise OSError(errno.ENOENT, path)
        return folder, name, attr

    def _absent(self, path: str) -> tuple[int, str]:
        folder, name, attr = self._walk(path, follow=False)
        if attr is not None:
            raise OSError(errno.EEXIST, path)
        return folder, name

    def _write(self, path: str, offset: int, data: bytes, *, truncate: bool) -> None:
        """open(O_WRONLY | O_CREAT [| O_TRUNC]), pwrite, close."""
        folder, name, attr = self._walk(path, follow=True)
        if attr is None:
            handle, _ = self.view.create(folder, name, 0o644 & ~UMASK)
        elif attr.type == DIR:
            raise OSError(errno.EISDIR, path)
        else:
            handle = self.view.open(attr.ino, os.O_WRONLY | (os.O_TRUNC if truncate else 0))
        try:
            if data:  # the kernel sends no write of nothing
                self.view.write(handle, offset, data)
            self.view.flush(handle)
        finally:
            if not self.view.release_quickly(handle):
                self.view.release(handle)

    def _remove(self, path: str, folder_wanted: bool) -> None:
        folder, name, attr = self._existing(path, follow=False)
        if folder_wanted and attr.type != DIR:
            raise OSError(errno.ENOTDIR, path)
        if not folder_wanted and attr.type == DIR:
            raise OSError(errno.EISDIR, path)
        (self.view.rmdir if folder_wanted else self.view.unlink)(folder, name)
        self.view.forget([attr.ino])  # nothing holds it open: the kernel forgets it at once

    def _rename(self, src: str, dst: str) -> None:
        old_folder, old_name, _ = self._walk(src, follow=False)
        new_folder, new_name, target = self._walk(dst, follow=False)
        source = self._existing(src, follow=False)[2]
        # The VFS's checks before the filesystem's: a folder into itself, a target above the source.
        if source.type == DIR and self._above(source.ino, new_folder):
            raise OSError(errno.EINVAL, src)
        if target is not None and target.ino != source.ino and self._above(target.ino, old_folder):
            raise OSError(errno.ENOTEMPTY, dst)
        self.view.rename(old_folder, old_name, new_folder, new_name)

    def _above(self, ino: int, folder: int) -> bool:
        while True:
            if folder == ino:
                return True
            if folder == ROOT_INO:
                return False
            folder = self.view.getattr(folder).parent

    def _chmod(self, path: str, mode: int) -> None:
        try:
            if self._walk(path, follow=False)[2].type == SYMLINK:
                return  # as apply() does: chmod follows symlinks out of the model
        except (OSError, DsfsError, AttributeError):
            pass
        self.view.setattr(self._existing(path, follow=True)[2].ino, mode=mode)

    def apply(self, op: tuple) -> int:
        """Run one operation of the model; 0 or the errno it failed with."""
        kind, path = op[0], op[1]
        try:
            if kind == "write":
                self._write(path, op[2], op[3], truncate=False)
            elif kind == "create":
                self._write(path, 0, op[2], truncate=True)
            elif kind == "truncate":
                attr = self._existing(path, follow=True)[2]
                if attr.type == DIR:
                    raise OSError(errno.EISDIR, path)
                self.view.setattr(attr.ino, size=op[2])
            elif kind == "rename":
                self._rename(path, op[2])
            elif kind in ("unlink", "rmdir"):
                self._remove(path, kind == "rmdir")
            elif kind == "mkdir":
                self.view.mkdir(*self._absent(path), 0o777 & ~UMASK)
            elif kind == "symlink":
                self.view.symlink(*self._absent(path), op[2])
            elif kind == "chmod":
                self._chmod(path, op[2])
            return 0
        except (OSError, DsfsError) as exc:
            return exc.errno

    def digest(self, folder: int = ROOT_INO, prefix: str = "") -> dict[str, tuple]:
        """What ``tree_digest`` says of a folder, through the view."""
        result = {}
        listing = self.view.opendir(folder)
        for index in range(2, len(listing)):
            name, attr = self.view.dir_entry(listing, index)
            path, st = prefix + name, types.SimpleNamespace()
            self.view.stat_into(attr, st)
            if stat.S_ISLNK(st.st_mode):
                result[path] = ("symlink", self.view.readlink(attr.ino))
            elif stat.S_ISDIR(st.st_mode):
                result[path] = ("dir", stat.S_IMODE(st.st_mode))
                result.update(self.digest(attr.ino, path + "/"))
            else:
                handle = self.view.open(attr.ino, os.O_RDONLY)
                data = self.view.read(handle, 0, st.st_size + 1)
                assert self.view.release_quickly(handle)
                result[path] = ("file", hashlib.sha256(data).hexdigest(), stat.S_IMODE(st.st_mode))
        return result


def _version_digest(view: VersionView) -> dict[str, tuple]:
    result = {}
    for node in view.index.walk(""):
        if node.type == SYMLINK:
            result[node.path] = ("symlink", node.target)
        elif node.type == DIR:
            result[node.path] = ("dir", node.mode)
        else:
            result[node.path] = ("file", hashlib.sha256(view.read_all(node)).hexdigest(), node.mode)
    return result


@pytest.fixture
def repo_with_base(local_cli, local_store_url, cache_dir, tmp_path):
    """(a maker of drafts on BASE, published in dataset "model", the repository, a cache)."""
    src = write_tree(tmp_path / "base", BASE)
    vid = local_cli("create", "model").strip()
    local_cli("add", vid, str(src))
    local_cli("publish", vid)
    repo = Repository(load_settings(store=local_store_url, cache_dir=str(cache_dir)))
    cache = open_cache(repo.settings, repo.store)
    drafts_made = itertools.count(1)
    # Parent and name given: making a draft then lists no versions (there are hundreds by the end).
    yield lambda: repo.create("model", parents=[vid], name=f"d{next(drafts_made)}"), repo, cache, src
    cache.close()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(op_strategy, min_size=1, max_size=25))
def test_draft_view_matches_a_plain_folder(repo_with_base, tmp_path_factory, ops):
    new_draft, repo, cache, base = repo_with_base
    model = tmp_path_factory.mktemp("model") / "model"
    shutil.copytree(base, model, symlinks=True)
    draft = new_draft()
    base_view = VersionView(draft, repo.index(draft), repo.store, cache)
    overlay = drafts.open_overlay(repo, draft.id, base_view.read)
    try:
        client = ViewClient(DraftView(overlay, draft, DatasetOf(repo.store, draft)))
        for step, op in enumerate(ops):
            expected = apply(model, op)
            got = client.apply(op)
            assert got == expected, f"step {step} {op}: errno {got} on the view, {expected} on the model"
            assert client.digest() == tree_digest(model), f"trees differ after step {step} {op}"
        commit_overlay(repo, draft.id, overlay)
    finally:
        overlay.close()
        drafts.discard(repo.settings, draft.id)
    committed = repo.catalog.version(draft.id)
    assert _version_digest(VersionView(committed, repo.index(committed), repo.store, cache)) == \
        tree_digest(model)


def test_the_draft_package_imports_no_fuse():
    """Nor the mount daemon's package: dsfs.draft sits below dsfs.mountd."""
    modules = [f"dsfs.draft.{p.stem}" for p in Path(drafts.__file__).parent.glob("*.py")
               if p.stem != "__init__"]
    code = (f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if 'fuse' in m or m == 'trio' or m.startswith('dsfs.mountd')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
