"""Dataset operations: what the CLI (and the mount daemon's commit) do to datasets and versions.

A ``Repository`` ties a store, its catalog and the local index cache together. Every change to a
draft goes through ``commit_changes``: hash, check against the current view, pack new bytes into
chunks, upload them, write the change-set file, and only then append it to the draft's manifest
with a compare-and-swap. An interruption before that last step leaves the draft as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import json
import logging
import os
import shutil
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Iterator

from . import tmpfiles
from .catalog import Catalog
from .changeset.manifest import (
    DIR,
    DRAFT,
    FILE,
    SYMLINK,
    ChangeSet,
    DatasetRecord,
    Entry,
    Removal,
    VersionManifest,
    check_dataset_name,
    check_version_name,
    new_changeset_id,
    new_id,
    now_iso,
)
from .changeset.packer import Source, hash_sources, pack
from .changeset.uploads import PendingUploads, chunk_of_record, record_key
from .config import Settings
from .errors import AlreadyExists, Conflict, InvalidInput, NotFound, ReadOnly
from .paths import ancestors, check_path, join, normalize_dest
from .progress import Progress, human_size, plural
from .resolver import Node, VersionIndex, ViewBuilder, check_against_view, latest_published, resolve_ref
from .resolver.index import path_order
from .store import ObjectStore, open_store

ProgressFactory = Callable[[str, int], Progress]
_DEFAULT_NAME_ATTEMPTS = 20
log = logging.getLogger(__name__)


@dataclasses.dataclass
class CommitSummary:
    """What one commit recorded. The counts are files and symlinks, as ``dsfs diff`` of the
    draft before and after counts them; folders are recorded but not counted."""

    version_id: str
    added: int = 0
    modified: int = 0
    removed: int = 0
    bytes_uploaded: int = 0
    bytes_dedup: int = 0
    changeset: str | None = None
    folders: int = 0  # folders added, changed or removed (not part of the file counts)

    @property
    def empty(self) -> bool:
        """Nothing was recorded (no change-set)."""
        return self.changeset is None

    def describe(self) -> str:
        if self.empty:
            return "no changes"
        if not (self.added or self.modified or self.removed):
            return f"no files changed, {plural(self.folders, 'folder')} changed"
        return (f"{plural(self.added, 'file')} added, {self.modified} modified, {self.removed} removed; "
                f"{human_size(self.bytes_uploaded)} uploaded, {human_size(self.bytes_dedup)} deduplicated")


class Repository:
    def __init__(self, settings: Settings, store: ObjectStore | None = None, *,
                 create_store: bool = False) -> None:
        self.settings = settings
        self.store = store or open_store(settings.store, settings, create=create_store)
        self.catalog = Catalog(self.store)
        self.tmp_dir = os.path.join(settings.cache_dir, "tmp")
        tmpfiles.sweep(self.tmp_dir)  # what killed commands left there (dsfs/tmpfiles.py)
        self.views = ViewBuilder(self.catalog, settings.index_dir)
        self.progress: ProgressFactory = lambda label, total: Progress(label, total)

    # -- reading ---------------------------------------------------------------------------

    def resolve(self, ref: str) -> VersionManifest:
        return resolve_ref(self.catalog, ref)

    def index(self, manifest: VersionManifest) -> VersionIndex:
        return self.views.index_for(manifest)

    def resolve_draft(self, ref: str) -> VersionManifest:
        manifest = self.resolve(ref)
        if manifest.is_published:
            raise ReadOnly(f"version is published and cannot change: {ref!r} ({manifest.name!r})")
        return manifest

    def datasets(self, *, project: str | None = None, tags: Iterable[str] = (),
                 partial_name: str | None = None) -> list[DatasetRecord]:
        """Dataset records, by name: those in ``project``, carrying all of ``tags``, whose name
        holds ``partial_name`` (any case)."""
        tags = list(tags)
        part = (partial_name or "").lower()
        return [r for r in self.catalog.datasets()
                if (project is None or r.project == project) and all(t in r.tags for t in tags)
                and part in r.name.lower()]

    def versions(self, dataset: str, *, published: bool = False, drafts: bool = False) -> list[VersionManifest]:
        """A dataset's versions, oldest first; only the published ones, or only the drafts."""
        if published and drafts:
            raise InvalidInput("only published and only drafts exclude each other")
        versions = sorted(self.catalog.versions(dataset), key=lambda v: v.created)
        if published or drafts:
            versions = [v for v in versions if v.is_published == published]
        return versions

    def current(self, dataset: str) -> VersionManifest:
        """The seed's current version: the draft (the newest, with a warning, when there are
        several), else the latest published version."""
        versions = self.versions(dataset)
        drafts = [v for v in versions if not v.is_published]
        if len(drafts) > 1:
            warnings.warn(f"dataset {dataset!r} has {len(drafts)} drafts; the newest, "
                          f"{dataset}@{drafts[-1].name}, is current", stacklevel=3)
        if drafts:
            return drafts[-1]
        if not versions:
            raise NotFound(f"dataset {dataset!r} has no versions")
        return latest_published(dataset, versions)

    def change_tags(self, dataset: str, *, add: Iterable[str] = (), remove: Iterable[str] = ()) -> DatasetRecord:
        """Add, then remove, dataset tags in one record update; a tag is kept once, in order."""
        add, remove = list(add), list(remove)

        def change(record: DatasetRecord) -> None:
            record.tags.extend(t for t in dict.fromkeys(add) if t not in record.tags)
            record.tags[:] = [t for t in record.tags if t not in remove]

        return self.catalog.update_dataset(dataset, change)

    def change_metadata(self, ref: str, update: dict, *, replace: bool = False) -> VersionManifest:
        """Set keys of a draft's metadata (all of it with ``replace``); values must be JSON."""
        _check_json(update)
        manifest = self.resolve_draft(ref)

        def change(m: VersionManifest) -> None:
            m.metadata = dict(update) if replace else {**m.metadata, **update}

        return self.catalog.update_draft(manifest.id, change)

    # -- creating ---------------------------------------------------------------------------

    def create_dataset(self, dataset: str, *, project: str = "", tags: list[str] | None = None,
                       description: str = "", raise_if_exists: bool = False) -> DatasetRecord:
        """The seed's Dataset.create: a new dataset holding an empty root draft named ``Current``.
        An existing dataset is returned as it is (AlreadyExists with ``raise_if_exists``)."""
        check_dataset_name(dataset)
        if dataset in self.catalog.dataset_names():
            if raise_if_exists:
                raise AlreadyExists(f"dataset already exists: {dataset!r}")
            return self.catalog.dataset(dataset)
        self.create(dataset, root=True, name="Current", project=project, tags=tags, description=description)
        return self.catalog.dataset(dataset)

    def create(self, dataset: str, *, parents: list[str] | None = None, root: bool = False,
               name: str | None = None, project: str = "", tags: list[str] | None = None,
               description: str = "", comment: str = "", metadata: dict | None = None) -> VersionManifest:
        check_dataset_name(dataset)
        if root and parents:
            raise InvalidInput("--root and --parent exclude each other")
        # Everything is checked before the first write: a refused create leaves nothing behind.
        parent_ids = [self._published_parent(p) for p in parents or []]
        if len(set(parent_ids)) != len(parent_ids):
            raise InvalidInput("the same parent is given twice")
        if name is not None:
            check_version_name(name)
        _check_json(metadata)
        self.catalog.ensure_dataset(dataset, project=project, tags=tags, description=description)
        if not parents and not root:
            published = [v for v in self.catalog.versions(dataset) if v.is_published]
            if published:
                parent_ids = [latest_published(dataset, published).id]
        if name is not None:
            return self.catalog.create_version(dataset, check_version_name(name), parent_ids,
                                               comment=comment, metadata=metadata)
        # The default name is the first free v<N>; a concurrent creator may claim it first.
        for _ in range(_DEFAULT_NAME_ATTEMPTS):
            taken = self.catalog.version_names(dataset)
            n = len(taken) + 1
            while f"v{n}" in taken:
                n += 1
            try:
                return self.catalog.create_version(dataset, f"v{n}", parent_ids, comment=comment,
                                                   metadata=metadata)
            except AlreadyExists:
                continue
        raise Conflict(f"could not pick a free version name in dataset {dataset!r}; give one with --name")

    def _published_parent(self, ref: str) -> str:
        parent = self.resolve(ref)
        if not parent.is_published:
            raise InvalidInput(f"parent must be published, {parent.id!r} ({parent.name!r}) is a draft")
        return parent.id

    def publish(self, ref: str, name: str | None = None) -> VersionManifest:
        from .draft.lease import check_not_leased

        manifest = self.resolve(ref)
        if manifest.is_published:
            raise InvalidInput(f"version is already published: {ref!r} ({manifest.name!r})")
        check_not_leased(self.store, manifest.id)
        return self.catalog.publish(manifest.id, name)

    def snapshot(self, dataset: str, *, name: str | None = None, child_name: str | None = None,
                 child_comment: str = "", child_metadata: dict | None = None) -> tuple[VersionManifest, VersionManifest]:
        """The seed's simple structure: the current draft becomes a published snapshot (same id),
        and a new draft child of it becomes current.

        Everything the child needs is checked before the draft is published (its name free, its
        metadata JSON), and the draft must not be mounted writable, as for ``publish``: a refused
        snapshot leaves the dataset as it was, not with a published draft and no child."""
        versions = self.catalog.versions(dataset)
        drafts = [v for v in versions if not v.is_published]
        if len(drafts) != 1:
            raise InvalidInput(f"snapshot needs exactly one draft in dataset {dataset!r}, found {len(drafts)}")
        draft = drafts[0]
        name = check_version_name(name or f"snapshot {now_iso()[:-6]}")
        child_name = check_version_name(child_name or "Current")
        _check_json(child_metadata)
        if child_name == name:
            raise InvalidInput(f"the snapshot and its child cannot both be named {name!r}")
        # The draft's own name is freed when it is published under another one.
        taken = {v.name for v in versions if v.id != draft.id}
        for wanted in (name, child_name):
            if wanted in taken:
                raise AlreadyExists(f"version name already exists in dataset {dataset!r}: {wanted!r}")
        published = self.publish(draft.id, name)
        child = self.catalog.create_version(dataset, child_name, [published.id], comment=child_comment,
                                            metadata=child_metadata)
        return published, child

    # -- changing a draft ---------------------------------------------------------------------

    def commit_changes(self, manifest: VersionManifest, sources: list[Source],
                       removals: list[Removal], known: dict[str, Entry] | None = None) -> CommitSummary:
        """Record one change-set on a draft. Unchanged sources are dropped first. Bytes already
        stored are not sent again: the draft's own, and ``known`` (sha256 -> where they are
        stored for another version, e.g. a file copied from it)."""
        summary = CommitSummary(manifest.id)
        index = self.index(manifest)
        view = _PathLookup(index)
        # Only a file that looks the same as its path in the view (type, mode, mtime, size) needs
        # its hash to tell whether it changed; every other file is hashed as it is packed.
        unsure = [s for s in sources if _looks_same(view.by_path(s.path), s)]
        if unsure:
            with self.progress("hashing", sum(s.size for s in unsure)) as bar:
                hash_sources(unsure, bar)
        changed = []
        removed_paths = {r.path for r in removals}
        for src in sources:
            node = view.by_path(src.path)
            removed_first = _under_any(src.path, removed_paths)
            if node is not None and not removed_first and _same(node, src):
                continue
            changed.append(src)
        if not changed and not removals:
            return summary
        summary.added, summary.modified, summary.removed = _count_files(view, changed, removals)
        summary.folders = sum(s.type == DIR for s in changed) + sum(r.is_dir for r in removals)
        check_against_view(view, [r.path for r in removals], [(s.path, s.type == DIR) for s in changed])
        changeset_id = new_changeset_id()
        # Bytes an interrupted commit to this draft already uploaded are reused, not sent again.
        pending = PendingUploads(self.store, manifest.id)
        with self.progress("uploading", sum(s.size for s in changed if s.type == FILE)) as bar:
            entries, stats = pack(self.store, manifest.id, changeset_id, changed,
                                  lambda shas: _stored_blobs(index, pending, shas, known or {}),
                                  self.settings, self.tmp_dir, bar)
        changeset = ChangeSet(manifest.id, changeset_id, now_iso(), entries, removals)
        ref = self.catalog.write_changeset(changeset, len(entries), stats.bytes_new, stats.bytes_dedup,
                                           stats.chunks)
        self.catalog.record_changeset(manifest.id, ref)
        pending.forget(stats.chunks + sorted(pending.reused))
        summary.bytes_uploaded, summary.bytes_dedup = stats.bytes_new, stats.bytes_dedup
        summary.changeset = changeset_id
        return summary

    def _unleased_draft(self, ref: str) -> VersionManifest:
        """A draft that no live mount is writing: changing it under a writable mount would mix
        two writers' change-sets (the mount commits through its own lease instead)."""
        from .draft.lease import check_not_leased

        manifest = self.resolve_draft(ref)
        check_not_leased(self.store, manifest.id)
        return manifest

    def add(self, ref: str, paths: list[str], *, dest: str | None = None, wildcard: str | list[str] | None = None,
            recursive: bool = True, strict: bool = False) -> CommitSummary:
        manifest = self._unleased_draft(ref)
        base = normalize_dest(dest)
        sources: dict[str, Source] = {}
        for local in paths:
            for src in collect_sources(local, base, wildcard=wildcard, recursive=recursive,
                                       strict=strict):
                sources[src.path] = src
        if not sources:
            raise NotFound(f"nothing to add: no files match in {', '.join(map(repr, paths))}")
        return self.commit_changes(manifest, sorted(sources.values(), key=lambda s: s.path), [])

    def remove(self, ref: str, patterns: list[str], *, recursive: bool = True) -> CommitSummary:
        manifest = self._unleased_draft(ref)
        index = self.index(manifest)
        removals: dict[str, Removal] = {}
        for pattern in patterns:
            matched = list(match_paths(index, pattern, recursive=recursive))
            if not matched:
                raise NotFound(f"no files match in {manifest.name!r}: {pattern!r}")
            for node in matched:
                removals[node.path] = Removal(node.path, node.is_dir)
        return self.commit_changes(manifest, [], _outermost(removals.values()))

    def sync(self, ref: str, folder: str, *, dest: str | None = None, strict: bool = False) -> CommitSummary:
        """Make the subtree DEST of a draft equal to a local folder (the source of truth)."""
        manifest = self._unleased_draft(ref)
        if not os.path.isdir(folder):
            raise InvalidInput(f"not a folder: {folder!r}")
        base = normalize_dest(dest)
        index = self.index(manifest)
        sources = sorted(collect_sources(folder, base, strict=strict), key=lambda s: s.path)
        local_paths = {s.path for s in sources}
        removals = []
        for node in index.walk(base):
            if node.path != base and node.path not in local_paths:
                removals.append(Removal(node.path, node.is_dir))
        # A path whose type changed (file <-> folder) is removed first, then re-added.
        for src in sources:
            node = index.by_path(src.path)
            if node is not None and (node.type == DIR) != (src.type == DIR):
                removals.append(Removal(node.path, node.is_dir))
        return self.commit_changes(manifest, sources, _outermost(removals))

    # -- listing ------------------------------------------------------------------------------

    def ls(self, ref: str, path: str = "", *, recursive: bool = False) -> list[Node]:
        manifest = self.resolve(ref)
        index = self.index(manifest)
        path = normalize_dest(path)
        node = index.by_path(path)
        if node is None:
            raise NotFound(f"no such path in {manifest.name!r}: {path!r}")
        if not node.is_dir:
            return [node]
        if recursive:
            return [n for n in index.walk(path) if n.path != path]
        return list(_all_children(index, node.ino))

    def files(self, ref: str, pattern: str | None = None, *, recursive: bool = True) -> list[str]:
        """Paths of the files and symlinks under a folder ``pattern`` (or that file), or that a
        glob matches as ``remove`` matches it; all of them when None. In path order."""
        if pattern is not None and any(c in pattern for c in "*?["):
            nodes = match_paths(self.index(self.resolve(ref)), pattern, recursive=recursive)
        else:
            nodes = self.ls(ref, pattern or "", recursive=recursive)
        return [n.path for n in nodes if not n.is_dir]

    def local_copy(self, ref: str) -> str:
        """A read-only copy of the merged view under ``<cache>/copies`` (files without write
        permission), made once per version (per change of a draft) and reused; its path."""
        from .transfer import extract_view

        manifest = self.resolve(ref)
        index = self.index(manifest)
        copies = os.path.abspath(os.path.join(self.settings.cache_dir, "copies"))
        name = os.path.basename(index.path)[:-len(".sqlite")]  # the id (a draft's: plus its record tag)
        dest = os.path.join(copies, name)
        if os.path.isdir(dest):
            return dest
        os.makedirs(copies, exist_ok=True)
        partial = tempfile.mkdtemp(dir=copies, prefix=".partial-")
        try:
            with self.progress("downloading", index.total_size) as bar:
                extract_view(self.store, index, partial, self.tmp_dir, bar)
            _drop_write_bits(partial)
            try:
                os.rename(partial, dest)
            except OSError:  # another process finished the same copy first
                if not os.path.isdir(dest):
                    raise
                shutil.rmtree(partial)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise
        for old in os.listdir(copies):  # a draft's copies of its earlier states
            if old.startswith(f"{manifest.id}.draft-") and old != name:
                shutil.rmtree(os.path.join(copies, old), ignore_errors=True)
        return dest

    def diff(self, ref_a: str, ref_b: str) -> dict[str, list[Node]]:
        a = self.index(self.resolve(ref_a))
        b = self.index(self.resolve(ref_b))
        result: dict[str, list[Node]] = {"added": [], "modified": [], "removed": []}
        for old, new in _merge_join(_leaves(a.walk()), _leaves(b.walk())):
            if old is None:
                result["added"].append(new)
            elif new is None:
                result["removed"].append(old)
            elif (old.type, old.sha256, old.target, old.mode, old.mtime_ns) != (
                    new.type, new.sha256, new.target, new.mode, new.mtime_ns):
                result["modified"].append(new)
        return result

    def get(self, ref: str, dest: str, *, overwrite: bool = False) -> int:
        """A writable local copy of the merged view at ``dest``; returns the number of files.

        ``dest`` must be empty; with ``overwrite`` what it holds is replaced (the seed's "overwrite
        its contents with the dataset contents"), so the copy holds the version and nothing else,
        ready to change and ``sync`` back."""
        from .transfer import extract_view

        manifest = self.resolve(ref)
        if os.path.exists(dest) and not os.path.isdir(dest):
            raise InvalidInput(f"destination exists and is not a folder: {dest!r}")
        if os.path.isdir(dest) and os.listdir(dest) and not overwrite:
            raise InvalidInput(f"destination folder is not empty: {dest!r} (use --overwrite)")
        index = self.index(manifest)  # first: a version that cannot be read leaves dest alone
        if os.path.isdir(dest) and os.listdir(dest):
            self._check_holds_no_state(dest)
            _empty_folder(dest)
        with self.progress("downloading", index.total_size) as bar:
            return extract_view(self.store, index, dest, self.tmp_dir, bar)

    def _check_holds_no_state(self, folder: str) -> None:
        """Refuse to empty a folder that holds this store or the cache, or a home folder or the
        filesystem's root (a slip of the argument must not cost a user their files)."""
        real = os.path.realpath(folder)
        if real in ("/", os.path.realpath(os.path.expanduser("~"))):
            raise InvalidInput(f"not emptying {folder!r} to overwrite it (it is {real!r}): give a folder of its own")
        inside = real + os.sep
        for what, path in (("store", self.settings.store), ("cache", self.settings.cache_dir)):
            if "://" not in path and (os.path.realpath(path) + os.sep).startswith(inside):
                raise InvalidInput(f"destination folder holds the {what}, not overwriting it: {folder!r}")

    def verify(self, ref: str, *, hash_files: bool = False) -> list[str]:
        """Problems found: missing or short chunks, and with ``hash_files`` wrong bytes."""
        from .transfer import verify_view

        manifest = self.resolve(ref)
        index = self.index(manifest)
        with self.progress("verifying", index.total_size if hash_files else 0) as bar:
            return verify_view(self.store, index, hash_files=hash_files, progress=bar)

    # -- deleting -----------------------------------------------------------------------------

    def delete_version(self, ref: str, *, force: bool = False) -> VersionManifest:
        manifest = self.resolve(ref)
        self._delete_versions([manifest], force=force)
        return manifest

    def delete_dataset(self, dataset: str, *, all_versions: bool = False, force: bool = False) -> int:
        versions = self.catalog.versions(dataset)
        if versions and not all_versions:
            raise InvalidInput(f"dataset {dataset!r} has {len(versions)} versions; "
                               "use --all-versions to delete them too")
        self._delete_versions(versions, force=force)
        self.catalog.delete_dataset_record(dataset)
        return len(versions)

    def _delete_versions(self, doomed: list[VersionManifest], *, force: bool) -> None:
        published = [v for v in doomed if v.is_published]
        if published and not force:
            raise ReadOnly(f"version is published: {published[0].id!r} ({published[0].name!r}); "
                           "use --force to delete published versions")
        doomed_ids = {v.id for v in doomed}
        for other in self.all_versions():
            if other.id in doomed_ids:
                continue
            for parent in other.parents:
                if parent in doomed_ids:
                    raise Conflict(f"version {parent!r} is a parent of {other.id!r} ({other.dataset}@"
                                   f"{other.name}); delete that first")
        # Children first, so a parent is never left without the child that blocked it.
        for manifest in sorted(doomed, key=lambda v: v.created, reverse=True):
            self.catalog.delete_version_records(manifest)
        self.gc(grace_seconds=None, only_versions=doomed_ids)

    def all_versions(self) -> list[VersionManifest]:
        ids = self.catalog.find_ids("")
        found = []
        for vid in ids:
            try:
                found.append(self.catalog.version(vid))
            except NotFound:
                continue
        return found

    def gc(self, *, grace_seconds: float | None = 3600, only_versions: set[str] | None = None,
           dry_run: bool = False) -> list[str]:
        """Delete chunks, change-set files and upload records no live manifest needs.

        Objects younger than ``grace_seconds`` are kept: they may belong to an add in flight
        whose manifest update has not happened yet. So is a chunk whose upload record is young:
        a commit resuming an interrupted add rewrites the record before it points at the chunk.
        """
        import time

        live_changesets = set()
        live_chunks = set()
        versions = self.all_versions()
        for manifest in versions:
            for ref in manifest.changesets:
                live_changesets.add(ref.key)
                for item in self.catalog.changeset_items(ref, self.tmp_dir):
                    if isinstance(item, Entry) and item.chunk:
                        live_chunks.add(item.chunk)
        now = time.time()

        def young(info) -> bool:
            return grace_seconds is not None and bool(info.mtime) and now - info.mtime < grace_seconds

        candidates = {}
        drafts = {}
        for info in self.store.list("versions/"):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] == "draft.json":
                drafts[parts[1]] = info
            if len(parts) != 4 or parts[2] not in ("chunks", "changesets", "uploads"):
                continue
            if only_versions is None or parts[1] in only_versions:
                candidates[info.key] = info
        doomed_chunks, doomed_records = [], []
        for key, info in candidates.items():
            if key.split("/")[2] == "uploads":
                chunk = chunk_of_record(key)
                if chunk in live_chunks or chunk not in candidates or not young(info):
                    doomed_records.append(key)
                continue
            if key in live_chunks or key in live_changesets or young(info):
                continue
            record = candidates.get(record_key(key))
            if record is not None and young(record):
                continue
            doomed_chunks.append(key)
        # A create that died between writing its draft record and listing it in the dataset
        # (FORMAT.md §9.3) leaves an empty draft nothing names: past the grace period, it goes.
        unlisted = [] if only_versions is not None else self._unlisted_empty_drafts(versions, drafts, young)
        if not dry_run:
            for key in unlisted:
                self.store.delete(key)
            kept = set()
            for key in doomed_chunks:
                if self._claimed_since(key, young):
                    kept.add(record_key(key))
                else:
                    self.store.delete(key)
            # Records go after their chunks: a resuming commit that rewrites a record checks
            # that its chunk still exists before pointing at it.
            for key in doomed_records:
                if key not in kept:
                    self.store.delete(key)
        return sorted(doomed_chunks + doomed_records + unlisted)

    def _unlisted_empty_drafts(self, versions, drafts, young: Callable) -> list[str]:
        listed = {vid for record in self.catalog.datasets() for vid in record.versions}
        return [drafts[m.id].key for m in versions
                if m.state == DRAFT and not m.changesets and m.id not in listed
                and m.id in drafts and not young(drafts[m.id])]

    def _claimed_since(self, chunk: str, young: Callable) -> bool:
        """Did a resuming commit rewrite this chunk's upload record since the listing?"""
        try:
            return young(self.store.head(record_key(chunk)))
        except NotFound:
            return False

    def squash(self, refs: list[str], dataset: str, *, name: str | None = None) -> VersionManifest:
        """A new parentless, published version holding the merged content of ``refs`` in order.
        The merge is the resolver's (a version with these parents, bounded by folders, not files);
        its entries point at the existing bytes: squashing uploads nothing."""
        manifests = [self.resolve(r) for r in refs]
        for m in manifests:
            if not m.is_published:
                raise InvalidInput(f"squash needs published versions, {m.id!r} ({m.name!r}) is a draft")
        check_dataset_name(dataset)
        name = name or f"squash of {', '.join(m.name for m in manifests)}"[:200]
        probe = VersionManifest(new_id(), dataset, check_version_name(name), [m.id for m in manifests],
                                created=now_iso())
        with self.views.merged(probe) as index:
            entries = [node.to_entry() for node in index.walk()]
        new_dataset = dataset not in self.catalog.dataset_names()
        new = self.create(dataset, root=True, name=name)
        try:
            changeset = ChangeSet(new.id, f"squash-{new_id()[:8]}", now_iso(), entries, [])
            ref = self.catalog.write_changeset(changeset, len(entries), 0,
                                               sum(e.size for e in entries if e.type == FILE), [])
            self.catalog.record_changeset(new.id, ref)
            return self.catalog.publish(new.id)
        except BaseException:
            # No half-made squash: the draft it was going to be goes (with what it recorded), and
            # the dataset too if the squash made it and nothing else has come into it since.
            with contextlib.suppress(Exception):
                self._delete_versions([self.catalog.version(new.id)], force=False)
                if new_dataset and not self.catalog.versions(dataset):
                    self.catalog.delete_dataset_record(dataset)
            raise


def _check_json(metadata: dict | None) -> None:
    """Version metadata must be JSON (it is stored in the version's record)."""
    try:
        json.dumps(metadata)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"metadata must be JSON: {exc}") from None


def _empty_folder(folder: str) -> None:
    """Remove everything ``folder`` holds (symlinks themselves, not what they lead to)."""
    for entry in os.scandir(folder):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path)
        else:
            os.unlink(entry.path)


def _drop_write_bits(root: str) -> None:
    """Files below ``root`` become read-only; folders stay writable, so the cache can remove them."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, stat.S_IMODE(os.lstat(path).st_mode) & ~0o222)


def _count_files(index: VersionIndex | _PathLookup, sources: list[Source], removals: list[Removal]) -> tuple[int, int, int]:
    """(added, modified, removed) files and symlinks, as a diff of the view before and after
    counts them. A path removed and written again in one change-set (``sed -i`` and editors
    rename a new file over the old) is modified, or nothing if its content came back the same."""
    gone = set()
    for removal in removals:
        gone.update(n.path for n in index.walk(removal.path) if not n.is_dir)
    added = modified = 0
    written = set()
    for src in sources:
        if src.type == DIR:
            continue
        written.add(src.path)
        node = index.by_path(src.path)
        if node is None or node.is_dir:
            added += 1
        elif not _same(node, src):
            modified += 1
    return added, modified, len(gone - written)


def _stored_blobs(index: VersionIndex, pending: PendingUploads, shas: list[str],
                  known: dict[str, Entry]) -> dict[str, Entry]:
    """Stored copies of these contents: in the view, else among those ``known``, else in an
    interrupted commit's uploads."""
    found = index.find_blobs(shas)
    for sha in shas:
        if sha not in found and (entry := known.get(sha) or pending.find(sha)) is not None:
            found[sha] = entry
    return found


class _PathLookup:
    """The view's nodes at a change-set's paths, each looked up once (a commit asks for each
    path three times: to drop unchanged sources, to count, and to check file-folder
    conflicts). A path's folder is found once, then each name in it by one indexed lookup; a
    folder the view lacks answers for everything below it with no query at all."""

    def __init__(self, index: VersionIndex) -> None:
        self.index = index
        self._nodes: dict[str, Node | None] = {"": index.by_path("")}

    def by_path(self, path: str) -> Node | None:
        try:
            return self._nodes[path]
        except KeyError:
            pass
        folder, _, name = path.rpartition("/")
        parent = self.by_path(folder)
        node = self.index.lookup(parent.ino, name) if parent is not None and parent.is_dir else None
        self._nodes[path] = node
        return node

    def walk(self, prefix: str = "") -> Iterator[Node]:
        return self.index.walk(prefix)


def _under_any(path: str, roots: set[str]) -> bool:
    """Is ``path`` one of ``roots`` or below one of them? (O(depth), not O(len(roots)).)"""
    if path in roots:
        return True
    return any(folder in roots for folder in ancestors(path))


def _looks_same(node: Node | None, src: Source) -> bool:
    """Could the local file ``src`` be unchanged? Only its hash can tell: same type, mode,
    mtime and size as its node."""
    return (node is not None and src.type == FILE and node.type == FILE and not src.hashed
            and src.known is None and node.mode == src.mode and node.mtime_ns == src.mtime_ns
            and node.size == src.size)


def _same(node: Node, src: Source) -> bool:
    """Nothing to record: same type, mode, mtime and content (a file not hashed yet differs,
    or ``_looks_same`` would have had it hashed). A change of mode or mtime alone is recorded
    as a metadata-only entry that points at the bytes already stored."""
    if node.type != src.type or node.mode != src.mode or node.mtime_ns != src.mtime_ns:
        return False
    if src.type == FILE:
        return node.size == src.size and node.sha256 == src.sha256
    if src.type == SYMLINK:
        return node.target == src.target
    return True


def _outermost(removals: Iterable[Removal]) -> list[Removal]:
    """Drop removals already covered by a removed folder above them."""
    result: list[Removal] = []
    for removal in sorted(removals, key=lambda r: r.path):
        if result and result[-1].is_dir and removal.path.startswith(result[-1].path + "/"):
            continue
        if result and result[-1].path == removal.path:
            continue
        result.append(removal)
    return result


def _all_children(index: VersionIndex, ino: int) -> Iterator[Node]:
    after = None
    while True:
        batch = index.children(ino, after)
        yield from batch
        if len(batch) < 1000:
            return
        after = batch[-1].name


def _leaves(nodes: Iterable[Node]) -> Iterator[Node]:
    return (n for n in nodes if not n.is_dir)


def _merge_join(a: Iterator[Node], b: Iterator[Node]) -> Iterator[tuple[Node | None, Node | None]]:
    """Pair up two streams in index path order (bytewise, ``path_order``) by path."""
    x, y = next(a, None), next(b, None)
    while x is not None or y is not None:
        if y is None or (x is not None and path_order(x.path) < path_order(y.path)):
            yield x, None
            x = next(a, None)
        elif x is None or path_order(y.path) < path_order(x.path):
            yield None, y
            y = next(b, None)
        else:
            yield x, y
            x, y = next(a, None), next(b, None)


def collect_sources(local: str, base: str, *, wildcard: str | list[str] | None = None,
                    recursive: bool = True, strict: bool = False) -> Iterator[Source]:
    """Sources for a local file or folder: a folder's contents land under ``base``; with a
    ``wildcard`` (a glob or a list of them), only files and symlinks one matches. A bare name
    glob (``*.jpg``) matches names, at any depth when ``recursive`` (else at the top level); one
    with a ``/`` (``train/*.jpg``) matches paths relative to the folder, at its own depth,
    as ``remove`` matches paths relative to the dataset.

    A fifo, socket or device has no bytes to store: it is skipped with a warning, or refused
    with ``strict``.
    """
    local = os.path.abspath(local)
    globs = [wildcard] if isinstance(wildcard, str) else wildcard
    if globs is not None:
        globs = [g.strip("/") if "/" in g else g for g in globs]
    # How deep a walk that is not recursive goes: as deep as its deepest path glob.
    depth = max((g.count("/") for g in globs or [] if "/" in g), default=0)

    def matches(rel: str) -> bool:
        if globs is None:
            return True
        name = rel.rpartition("/")[2]
        for glob in globs:
            if "/" in glob:
                if rel.count("/") == glob.count("/") and fnmatch.fnmatchcase(rel, glob):
                    return True
            elif (recursive or "/" not in rel) and fnmatch.fnmatch(name, glob):
                return True
        return False

    if not os.path.lexists(local):
        raise NotFound(f"no such file or folder: {local!r}")

    def source(rel: str, full: str) -> Iterator[Source]:
        st = _lstat(full)
        kind = _special_kind(st.st_mode)
        if kind is None:
            yield Source.from_local(check_path(join(base, rel)), full, st)
        elif strict:
            raise InvalidInput(f"cannot add a {kind}: {full!r}")
        else:
            log.warning("skipped a %s: %r", kind, full)

    if not os.path.isdir(local) or os.path.islink(local):
        name = os.path.basename(local)
        if matches(name):
            yield from source(name, local)
        return
    for dirpath, dirnames, filenames in os.walk(local):
        rel_dir = os.path.relpath(dirpath, local)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames.sort()
        if not recursive and (rel_dir.count("/") + 1 if rel_dir else 0) >= depth:
            # Symlinks to folders are listed in dirnames; keep them as symlinks.
            for d in dirnames:
                full = os.path.join(dirpath, d)
                if os.path.islink(full) and matches(join(rel_dir, d)):
                    yield from source(join(rel_dir, d), full)
            dirnames[:] = []
        for d in list(dirnames):
            full = os.path.join(dirpath, d)
            rel = join(rel_dir, d)
            if os.path.islink(full):
                dirnames.remove(d)
                if matches(rel):
                    yield from source(rel, full)
            elif globs is None:
                yield from source(rel, full)
        for f in sorted(filenames):
            rel = join(rel_dir, f)
            if not matches(rel):
                continue
            yield from source(rel, os.path.join(dirpath, f))


def _lstat(local: str) -> os.stat_result:
    try:
        return os.lstat(local)
    except FileNotFoundError:
        raise Conflict(f"file vanished while being added: {local!r}") from None


def _special_kind(mode: int) -> str | None:
    """'fifo', 'socket', 'character device' or 'block device'; None for what a dataset holds."""
    for test, kind in ((stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
                       (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")):
        if test(mode):
            return kind
    return None


def match_paths(index: VersionIndex, pattern: str, *, recursive: bool) -> Iterator[Node]:
    """Nodes a remove pattern names: an exact path, or a glob (a bare name glob matches at any
    depth when recursive)."""
    pattern = pattern.strip("/")
    if not any(c in pattern for c in "*?["):
        node = index.by_path(check_path(pattern, what="pattern"))
        if node is not None:
            if node.is_dir and not recursive:
                raise InvalidInput(f"is a folder (drop --non-recursive to remove it): {pattern!r}")
            yield node
        return
    depth = pattern.count("/")
    for node in index.walk():
        if node.is_dir:
            continue
        if "/" in pattern or not recursive:
            if node.path.count("/") == depth and fnmatch.fnmatchcase(node.path, pattern):
                yield node
        elif fnmatch.fnmatchcase(node.name, pattern):
            yield node
