"""The ``dsfs://`` fsspec filesystem: any version of a dataset for pandas, pyarrow, DuckDB,
Hugging Face ``datasets``, Dask and every other fsspec client, with no mount.

    dsfs://DATASET/path          the latest published version
    dsfs://DATASET@NAME/path     a version by name ('/' and '%' in NAME written %2F and %25)
    dsfs://DATASET@draft/path    the dataset's single draft
    dsfs://VERSIONID/path        a version by id, or a unique prefix of >= 6 characters
    dsfs://                      the datasets, as folders

fsspec finds this class through the ``fsspec.specs`` entry point, so nothing needs to import
dsfs first. ``fsspec.filesystem("dsfs", store=..., cache_dir=..., config=..., **config_keys)``
overrides the settings the CLI would use (dsfs/config.py).

Reads are a mount's reads without FUSE: the version's index answers names and listings, and
bytes come through the machine's one block cache with its checks (``VersionView``). A ref naming
a published version is resolved once per filesystem instance, as a mount resolves it once
(``invalidate_cache()`` resolves again, so ``DATASET`` moves on to a newer version); a draft is
resolved at every call. Symlinks to files read as those files; other symlinks are listed as
``link`` entries and not followed.

Writes go to drafts only. Outside a transaction each write call (closing a file opened "wb",
``pipe_file``, which writes one, ``rm``) records one change-set; inside ``with fs.transaction:``
they all become one change-set when the block ends, and nothing is recorded if it raises.
Written bytes wait in temp files under ``<cache_dir>/tmp`` until then. ``copy``/``cp_file`` copy
files of any version into a draft (their bytes are not stored again); ``mv`` is a copy and a
removal in one change-set.

Threading: an instance may be shared by threads, as fsspec shares cached instances (the view,
the index and the block cache are thread-safe); a transaction belongs to the instance, as in
every fsspec filesystem.
"""

from __future__ import annotations

import datetime
import errno
import itertools
import os
import posixpath
import threading
import weakref
from typing import BinaryIO
from urllib.parse import unquote

from fsspec import available_protocols
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem
from fsspec.transaction import Transaction

from . import tmpfiles
from .cache import ReadState, open_cache
from .changeset.manifest import DRAFT, FILE, SYMLINK, Entry, Removal
from .changeset.packer import Source
from .config import load_settings
from .errors import Corrupt, InvalidInput, NotFound, ReadOnly
from .draft.lease import check_not_leased
from .mountd.view import VersionView
from .paths import ancestors, check_path, parent_of
from .repo import Repository
from .resolver.index import ROOT_INO, Node

COPY_PIECE = 8 << 20  # bytes a copy reads at a time
_MAX_LINKS = 40  # symlinks followed in a row before a path counts as missing (as ELOOP)


class PathNotFound(NotFound, FileNotFoundError):
    """A dsfs:// path, version or dataset that is not there (fsspec clients expect a
    FileNotFoundError)."""


class IsAFolder(InvalidInput, IsADirectoryError):
    """A file operation on a folder."""

    errno = errno.EISDIR


class _Changes:
    """Writes to one draft that become one change-set: staged files (in temp files) and
    removals, the outermost only."""

    def __init__(self, view: VersionView) -> None:
        self.view = view
        self.sources: dict[str, Source] = {}
        self.removals: dict[str, Removal] = {}
        self.known: dict[str, Entry] = {}  # sha256 -> stored bytes of copied files (not sent again)
        self.temp: list[str] = []
        self.held: list[int] = []  # the temp files' locks (dsfs.tmpfiles), let go when they go

    def claim(self, view: VersionView) -> "_Changes":
        """These changes, if ``view`` is their draft: one change-set writes one draft."""
        mine, other = self.view.manifest, view.manifest
        if other.id != mine.id:
            raise InvalidInput(f"one change-set writes one draft: {mine.dataset}@{mine.name}, "
                               f"not {other.dataset}@{other.name} too")
        return self

    def write(self, rel: str, local: str, mode: int, held: int) -> None:
        """Stage the written (closed) temp file ``local`` at ``rel``: its size and mtime are the
        packer's to check against what it reads. ``held`` (its lock) is these changes' now."""
        self.temp.append(local)
        self.held.append(held)
        source = Source.from_local(rel, local)
        source.mode = mode
        self.sources[rel] = source

    def unstage(self, rel: str) -> bool:
        """Drop files staged at or below ``rel``; whether there were any."""
        staged = [p for p in self.sources if p == rel or p.startswith(rel + "/")]
        for path in staged:
            del self.sources[path]
        return bool(staged)

    def remove(self, node: Node) -> None:
        if any(folder in self.removals for folder in ancestors(node.path)):
            return
        if node.is_dir:
            for path in [p for p in self.removals if p.startswith(node.path + "/")]:
                del self.removals[path]
        self.removals[node.path] = Removal(node.path, node.is_dir)

    def discard(self) -> None:
        for local in self.temp:
            try:
                os.unlink(local)
            except FileNotFoundError:
                pass
        self.temp.clear()
        for held in self.held:
            tmpfiles.close(held)
        self.held.clear()


class DraftTransaction(Transaction):
    """``with fs.transaction:``: every write inside becomes one change-set of its draft when the
    block ends, and nothing is recorded if it raises. A transaction writes one draft."""

    def __init__(self, fs, **kwargs) -> None:
        super().__init__(fs, **kwargs)
        self.changes: _Changes | None = None

    def start(self) -> None:
        super().start()
        self.changes = None

    def stage(self, view: VersionView) -> _Changes:
        if self.changes is None:
            self.changes = _Changes(view)
        return self.changes.claim(view)

    def complete(self, commit: bool = True) -> None:
        fs = self.fs
        try:
            while self.files:  # a file still open at the end joins the rest (or goes with them)
                f = self.files.popleft()
                if commit:
                    f.close()
                else:
                    f.discard()
            if commit and self.changes is not None:
                fs.record(self.changes)
        finally:
            while self.files:
                self.files.popleft().discard()
            if self.changes is not None:
                self.changes.discard()
                self.changes = None
            fs._intrans, fs._transaction, self.fs = False, None, None


class DsfsFileSystem(AbstractFileSystem):
    """Versions of datasets in a dsfs store, as fsspec paths ``REF/path``."""

    protocol = "dsfs"
    root_marker = ""
    transaction_type = DraftTransaction

    def __init__(self, store: str | None = None, cache_dir: str | None = None,
                 config: str | None = None, **options) -> None:
        super().__init__()
        # Options keyed by a protocol's name are that protocol's, as chained URLs carry them
        # (Hugging Face ``datasets`` adds its own "hf" block to the storage options it is given).
        options = {key: value for key, value in options.items() if key not in available_protocols()}
        from .sdk import configured

        given = configured()  # dsfs.configure's places, where the arguments leave them open
        store, cache_dir, config = (ours if ours is not None else theirs
                                    for ours, theirs in zip((store, cache_dir, config), given))
        self.settings = load_settings(store=store, cache_dir=cache_dir, config=config, options=options)
        self.repo = Repository(self.settings)
        self.cache = open_cache(self.settings, self.repo.store)
        weakref.finalize(self, self.cache.close)
        self._views: dict[str, VersionView] = {}
        self._lock = threading.Lock()

    @classmethod
    def _strip_protocol(cls, path):
        path = super()._strip_protocol(path)
        return [p.lstrip("/") for p in path] if isinstance(path, list) else path.lstrip("/")

    # -- resolving ----------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[str, str]:
        ref, _, rel = self._strip_protocol(path).partition("/")
        return ref, rel.strip("/")

    def _view(self, ref: str) -> VersionView:
        with self._lock:
            view = self._views.get(ref)
        if view is not None:
            return view
        try:
            manifest = self.repo.resolve(unquote(ref))
        except NotFound as exc:
            raise PathNotFound(str(exc)) from None
        view = VersionView(manifest, self.repo.index(manifest), self.repo.store, self.cache)
        if manifest.is_published:
            with self._lock:
                self._views[ref] = view
        return view

    def invalidate_cache(self, path: str | None = None) -> None:
        """Forget resolved refs (all, or that of ``path``): the next call resolves them again."""
        with self._lock:
            if path is None:
                self._views.clear()
            else:
                self._views.pop(self._split(path)[0], None)
        super().invalidate_cache(path)

    def _lookup(self, path: str) -> tuple[str, VersionView, Node]:
        ref, rel = self._split(path)
        view = self._view(ref)
        node = view.index.by_path(rel) if rel else view.index.get(ROOT_INO)
        if node is None:
            raise PathNotFound(f"no such path in {ref!r}: {rel!r}")
        return ref, view, node

    @staticmethod
    def _follow(view: VersionView, node: Node) -> Node | None:
        """The file or folder a symlink leads to inside its version; None if it leads nowhere."""
        for _ in range(_MAX_LINKS):
            if node.type != SYMLINK:
                return node
            target = posixpath.normpath(posixpath.join(parent_of(node.path), node.target))
            if node.target.startswith("/") or target == ".." or target.startswith("../"):
                return None
            node = view.index.get(ROOT_INO) if target == "." else view.index.by_path(target)
            if node is None:
                return None
        return None

    def _file(self, path: str) -> tuple[VersionView, Node]:
        return self._file_at(path, *self._lookup(path))

    def _file_at(self, path: str, ref: str, view: VersionView, node: Node) -> tuple[VersionView, Node]:
        """The file ``node`` is, or leads to as a symlink (``path`` and ``ref`` name it in errors)."""
        target = self._follow(view, node)
        if target is None:
            raise PathNotFound(f"symlink leads nowhere in {ref!r}: {node.path!r} -> {node.target!r}")
        if target.is_dir:
            raise IsAFolder(f"is a folder: {self._strip_protocol(path)!r}")
        return view, target

    # -- reading ------------------------------------------------------------------------------

    def _info(self, ref: str, view: VersionView, node: Node) -> dict:
        name = f"{ref}/{node.path}" if node.path else ref
        if node.type == SYMLINK:
            target = self._follow(view, node)
            link = {"name": name, "islink": True, "destination": node.target}
            if target is None or target.is_dir:
                return {"size": 0, "type": "link", "mode": node.mode, "mtime": node.mtime_ns / 1e9} | link
            return self._info(ref, view, target) | link
        info = {"name": name, "size": node.size, "type": "directory" if node.is_dir else "file",
                "mode": node.mode, "mtime": node.mtime_ns / 1e9}
        if node.type == FILE:
            info.update(sha256=node.sha256, source_version=node.version)
        if not node.path:
            manifest = view.manifest
            info.update(version=manifest.id, dataset=manifest.dataset, version_name=manifest.name,
                        state=manifest.state)
        return info

    def info(self, path: str, **kwargs) -> dict:
        if not self._split(path)[0]:
            return {"name": "", "size": 0, "type": "directory"}
        return self._info(*self._lookup(path))

    def ls(self, path: str, detail: bool = True, **kwargs):
        ref, _ = self._split(path)
        if not ref:
            entries = [{"name": name, "size": 0, "type": "directory"}
                       for name in self.repo.catalog.dataset_names()]
        else:
            ref, view, node = self._lookup(path)
            entries = ([self._info(ref, view, child) for child in _children(view, node)] if node.is_dir
                       else [self._info(ref, view, node)])
        return entries if detail else [e["name"] for e in entries]

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs):
        """One walk of the version's index (fsspec's own walk lists folder by folder)."""
        if maxdepth is not None or not self._split(path)[0]:
            return super().find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)
        ref, view, top = self._lookup(path)
        found = {}
        for node in view.index.walk(top.path) if top.path else itertools.chain([top], view.index.walk()):
            info = self._info(ref, view, node)
            if withdirs or info["type"] != "directory":
                found[info["name"]] = info
        names = sorted(found)
        return {n: found[n] for n in names} if detail else names

    def modified(self, path: str) -> datetime.datetime:
        """A file's mtime as recorded in its version (UTC)."""
        _, node = self._file(path)
        return datetime.datetime.fromtimestamp(node.mtime_ns / 1e9, datetime.timezone.utc)

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs) -> bytes:
        view, node = self._file(path)
        if start is None and end is None:
            return view.read_all(node)
        start, end = _absolute(start or 0, node.size), _absolute(node.size if end is None else end, node.size)
        return view.read(node, start, end - start) if end > start else b""

    def _open(self, path: str, mode: str = "rb", block_size=None, autocommit: bool = True,
              cache_options=None, mode_bits: int = 0o644, copy_of: Entry | None = None,
              **kwargs) -> "DsfsFile":
        if mode == "rb":
            view, node = self._file(path)
            return DsfsFile(self, path, mode, view=view, node=node, block_size=block_size,
                            cache_type=kwargs.get("cache_type", "none"), cache_options=cache_options)
        if mode != "wb":
            raise InvalidInput(f"dsfs:// opens files with mode rb or wb, not {mode!r}")
        ref, view, rel = self._writable(path)
        node = view.index.by_path(rel)
        if node is not None and node.is_dir:
            raise IsAFolder(f"is a folder: {f'{ref}/{rel}'!r}")
        # A rewritten file keeps its mode; a new one gets ``mode_bits`` (0o644; a copy, its source's).
        mode_bits = node.mode if node is not None and node.type == FILE else mode_bits
        return DsfsFile(self, path, mode, view=view, rel=rel, mode_bits=mode_bits, copy_of=copy_of,
                        changes=None if autocommit else self.transaction.stage(view),
                        block_size=block_size, autocommit=autocommit)

    # -- writing ------------------------------------------------------------------------------

    def _writable(self, path: str) -> tuple[str, VersionView, str]:
        ref, rel = self._split(path)
        if not ref:
            raise InvalidInput(f"a path to write starts with a version: {path!r}")
        view = self._view(ref)
        if view.manifest.state != DRAFT:
            raise ReadOnly(f"version is published and cannot change: {ref!r} ({view.manifest.name!r})")
        return ref, view, check_path(rel)

    def _temp_file(self) -> tuple[BinaryIO, int, str]:
        """A new temp file for staged bytes: open for writing, the descriptor holding its lock
        (dsfs.tmpfiles: a killed writer's file is swept later), its path."""
        held, path = tmpfiles.make(self.repo.tmp_dir, "fsspec-")
        try:
            return open(path, "wb"), held, path
        except BaseException:
            tmpfiles.close(held)
            os.unlink(path)
            raise

    def record(self, changes: _Changes) -> None:
        """Record staged changes as one change-set (nothing when there are none); the temp
        files go either way."""
        try:
            if changes.sources or changes.removals:
                draft = changes.view.manifest
                check_not_leased(self.repo.store, draft.id)
                self.repo.commit_changes(draft, sorted(changes.sources.values(), key=lambda s: s.path),
                                         sorted(changes.removals.values(), key=lambda r: r.path), changes.known)
        finally:
            changes.discard()

    def cp_file(self, path1: str, path2: str, **kwargs) -> None:
        """Copy a file of any version into a draft, read through the block cache (checked) and
        written as ``open(path2, "wb")`` would: in this transaction, or its own change-set. Its
        bytes are not stored again (the packer finds them by sha256). A new file takes the
        source's mode. A folder copies nothing itself: its files do (``copy(recursive=True)``),
        as a draft's folders come with their files."""
        ref, view, node = self._lookup(path1)
        if node.is_dir:
            return
        view, node = self._file_at(path1, ref, view, node)
        state = ReadState()
        with self.open(path2, "wb", mode_bits=node.mode, copy_of=node.to_entry()) as out:
            pos = 0
            while pos < node.size:
                piece = view.read(node, pos, min(COPY_PIECE, node.size - pos), state)
                if not piece:
                    raise Corrupt(f"{ref}/{node.path} ended at {pos} of its {node.size} bytes")
                out.write(piece)
                pos += len(piece)

    def mv(self, path1, path2, recursive: bool = False, maxdepth: int | None = None, **kwargs) -> None:
        """Copy, then remove the source: one change-set (inside a transaction, part of it), so a
        move that fails half-way records nothing. Source and destination are in one draft."""
        if self._intrans:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)
            return
        with self.transaction:
            super().mv(path1, path2, recursive=recursive, maxdepth=maxdepth, **kwargs)

    def rm(self, path, recursive: bool = False, **kwargs) -> None:
        """Remove files (a folder with ``recursive``, as one tombstone); every path or glob in
        the call must match, in the draft or among this transaction's writes. One change-set."""
        changes = None
        for given in path if isinstance(path, list) else [path]:
            names = self.glob(given) if any(c in given for c in "*?[") else [given]
            if not names:
                raise PathNotFound(f"no files match: {self._strip_protocol(given)!r}")
            for name in names:
                ref, view, rel = self._writable(name)
                if changes is None:
                    changes = self.transaction.stage(view) if self._intrans else _Changes(view)
                node = view.index.by_path(rel)
                if not changes.claim(view).unstage(rel) and node is None:
                    raise PathNotFound(f"no such path in {ref!r}: {rel!r}")
                if node is not None and node.is_dir and not recursive:
                    raise IsAFolder(f"is a folder (remove it with recursive=True): {f'{ref}/{rel}'!r}")
                if node is not None:
                    changes.remove(node)
        if changes is not None and not self._intrans:
            self.record(changes)

    def rm_file(self, path: str) -> None:
        self.rm(path)


class DsfsFile(AbstractBufferedFile):
    """A file of a dsfs:// version: reading, ranged through the block cache (seekable), or
    writing a draft's file, staged in a temp file until it is closed."""

    def __init__(self, fs: DsfsFileSystem, path: str, mode: str, *, view: VersionView,
                 node: Node | None = None, rel: str = "", mode_bits: int = 0o644,
                 changes: _Changes | None = None, copy_of: Entry | None = None, **kwargs) -> None:
        self._view, self._node, self._rel, self._mode_bits = view, node, rel, mode_bits
        self._changes = changes
        self._copy_of = copy_of  # the stored file being copied: its bytes are not sent again
        self._state = ReadState()
        self._out = self._held = None
        self._temp = ""
        block_size = kwargs.pop("block_size", None) or "default"
        super().__init__(fs, path, mode, block_size=block_size, size=node.size if node else None, **kwargs)

    def _fetch_range(self, start: int, end: int) -> bytes:
        return self._view.read(self._node, start, end - start, self._state)

    def _initiate_upload(self) -> None:
        self._out, self._held, self._temp = self.fs._temp_file()

    def _upload_chunk(self, final: bool = False) -> bool:
        try:
            self._out.write(self.buffer.getbuffer())
            if final:
                self._out.close()
        except BaseException:
            self._drop()
            raise
        if final:
            changes = self._changes or _Changes(self._view)
            held, self._held = self._held, None
            changes.write(self._rel, self._temp, self._mode_bits, held)
            if self._copy_of is not None and self._copy_of.sha256:
                changes.known[self._copy_of.sha256] = self._copy_of
            if self.autocommit:
                self.fs.record(changes)
        return True

    def discard(self) -> None:
        """Drop what was written (a file whose ``with`` block raised, or whose transaction did)."""
        if not self.closed and self.writable():
            self._drop()
            self.closed = True

    def _drop(self) -> None:
        if self._out is not None:
            self._out.close()
            os.unlink(self._temp)
            self._out = None
        held, self._held = self._held, None
        tmpfiles.close(held)

    def __exit__(self, exc_type, *exc) -> None:
        if exc_type is not None:
            self.discard()
        self.close()


def _children(view: VersionView, node: Node):
    after = None
    while batch := view.children(node.ino, after):
        yield from batch
        after = batch[-1].name


def _absolute(offset: int, size: int) -> int:
    """An fsspec offset (negative: from the end) as one in ``[0, size]``."""
    return max(0, min(size, size + offset if offset < 0 else offset))
