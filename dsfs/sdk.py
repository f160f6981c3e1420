"""The Python API: ``Dataset`` and ``DatasetVersion``, named as the seed documents name them.

    from dsfs import Dataset, DatasetVersion
    Dataset.create(dataset_name="pets")                 # a dataset holding an empty draft, Current
    DatasetVersion.get_current("pets").add_files("~/data/pets", wildcard="*.jpg")
    DatasetVersion.create_snapshot("pets")              # publish it; a new Current follows it

Every operation is one ``Repository`` method (dsfs/repo.py); the CLI goes through this module to
them, so both raise the same errors (``dsfs.errors``, each also a built-in) with the same
messages. The store and cache come from ``configure()``, else from where the CLI finds them
(``DSFS_STORE``, ``DSFS_CACHE_DIR``, the config file); ``using(repo)`` binds the calls of a block
(in its thread or task) to one repository. Objects hold a copy of their record, re-read after a
change made through them (``refresh()`` re-reads it at will).
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .changeset.manifest import DatasetRecord, VersionManifest
from .config import load_settings
from .errors import AlreadyExists, InvalidInput, NotFound, ReadOnly
from .progress import Progress, ProgressCallback
from .repo import CommitSummary, Repository

__all__ = ["Dataset", "DatasetVersion", "configure", "using"]


@dataclasses.dataclass(frozen=True)
class _Config:
    store: str | None = None
    cache_dir: str | None = None
    config: str | None = None
    show_progress: bool | None = None


_config = _Config()
_opened: tuple[tuple, Repository] | None = None  # the repository last opened, by its settings
_open_lock = threading.Lock()
_bound: contextvars.ContextVar[Repository | None] = contextvars.ContextVar("dsfs_repository", default=None)


def configure(store: str | None = None, cache_dir: str | None = None, *, config: str | None = None,
              show_progress: bool | None = None) -> None:
    """Where the API's store and cache are; None takes the CLI's places (``DSFS_STORE``,
    ``DSFS_CACHE_DIR``, the config file). ``show_progress``: draw a tqdm bar for long
    operations (None: on a terminal or in a notebook)."""
    global _config, _opened
    with _open_lock:
        _config = _Config(store, cache_dir, config, show_progress)
        _opened = None
    filesystem = sys.modules.get("dsfs.filesystem")
    if filesystem is not None:  # dsfs:// instances made before take the new places too
        filesystem.DsfsFileSystem.clear_instance_cache()


def configured() -> tuple[str | None, str | None, str | None]:
    """(store, cache_dir, config) as ``configure`` set them (None: the CLI's)."""
    config = _config
    return config.store, config.cache_dir, config.config


@contextlib.contextmanager
def using(repo: Repository) -> Iterator[Repository]:
    """Calls made in this block (in this thread or task) work on ``repo``."""
    token = _bound.set(repo)
    try:
        yield repo
    finally:
        _bound.reset(token)


def _repository(*, create: bool = False) -> Repository:
    """The bound repository, else the configured one (opened once per settings)."""
    global _opened
    bound = _bound.get()
    if bound is not None:
        return bound
    config = _config
    settings = load_settings(store=config.store, cache_dir=config.cache_dir, config=config.config)
    key = (*dataclasses.astuple(settings), config.show_progress)
    with _open_lock:
        if _opened is not None and _opened[0] == key:
            return _opened[1]
    repo = Repository(settings, create_store=create)
    repo.progress = lambda label, total: Progress(label, total, enabled=config.show_progress)
    with _open_lock:
        _opened = (key, repo)
    return repo


def _reporting(repo: Repository, callback: ProgressCallback | None) -> Repository:
    """``repo`` (the same store, catalog and indexes) whose progress also goes to ``callback``."""
    if callback is None:
        return repo
    told = copy.copy(repo)

    def progress(label: str, total: int) -> Progress:
        bar = repo.progress(label, total)
        bar.callback = callback
        return bar

    told.progress = progress
    return told


def _ref(version: DatasetVersion | str) -> str:
    return version.id if isinstance(version, DatasetVersion) else version


PathArg = str | os.PathLike


def _listed(value):
    """One path or pattern, or a list of them: a list."""
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _local(path: PathArg) -> str:
    return os.path.expanduser(os.fspath(path))


class Dataset:
    """A dataset: a name, a project, a description, tags, and its versions."""

    def __init__(self, record: DatasetRecord, repo: Repository) -> None:
        self._record, self._repo = record, repo

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, project={self.project!r}, tags={self.tags!r})"

    name = property(lambda self: self._record.name)
    project = property(lambda self: self._record.project)
    description = property(lambda self: self._record.description)
    created = property(lambda self: self._record.created)
    tags = property(lambda self: list(self._record.tags), doc="a copy: change them with add_tags")
    version_ids = property(lambda self: list(self._record.versions))
    record = property(lambda self: copy.deepcopy(self._record), doc="the dataset record (a copy)")

    @classmethod
    def create(cls, dataset_name: str, dataset_project: str | None = None, tags: list[str] | None = None,
               description: str | None = None, raise_if_exists: bool = False) -> Dataset:
        """A new dataset holding an empty draft named ``Current``; an existing one is returned
        (``raise_if_exists``: ``AlreadyExists``, a ValueError)."""
        repo = _repository(create=True)
        return cls(repo.create_dataset(dataset_name, project=dataset_project or "", tags=tags,
                                       description=description or "", raise_if_exists=raise_if_exists), repo)

    @classmethod
    def get(cls, dataset_name: str) -> Dataset:
        repo = _repository()
        return cls(repo.catalog.dataset(dataset_name), repo)

    @classmethod
    def list(cls, project: str | None = None, tag: str | Iterable[str] | None = None,
             partial_name: str | None = None) -> list[Dataset]:
        """Datasets by name: in ``project``, with ``tag`` (all of them, for a list), whose name
        holds ``partial_name`` (any case)."""
        repo = _repository()
        tags = [tag] if isinstance(tag, str) else list(tag or [])
        return [cls(r, repo) for r in repo.datasets(project=project, tags=tags, partial_name=partial_name)]

    @classmethod
    def delete(cls, dataset_name: str, delete_all_versions: bool = False, force: bool = False) -> int:
        """Delete a dataset: one with versions needs ``delete_all_versions``, one with published
        versions ``force`` too. Returns how many versions went."""
        return _repository().delete_dataset(dataset_name, all_versions=delete_all_versions, force=force)

    def add_tags(self, tags: Iterable[str]) -> None:
        self._record = self._repo.change_tags(self.name, add=tags)

    def remove_tags(self, tags: Iterable[str]) -> None:
        self._record = self._repo.change_tags(self.name, remove=tags)

    def get_versions(self, only_published: bool = False, only_draft: bool = False) -> list[DatasetVersion]:
        return DatasetVersion._all(self._repo, self.name, only_published, only_draft)

    def delete_version(self, version_name: str | None = None, version_id: str | None = None,
                       force: bool = False) -> None:
        """Delete a draft of this dataset (a published version with ``force``)."""
        version = DatasetVersion._find(self._repo, self.name, version_name, version_id)
        self._repo.delete_version(version.id, force=force)

    def refresh(self) -> Dataset:
        self._record = self._repo.catalog.dataset(self.name)
        return self


class DatasetVersion:
    """One version of a dataset: a draft you change, or a published one that never changes."""

    def __init__(self, manifest: VersionManifest, repo: Repository) -> None:
        self._manifest, self._repo = manifest, repo

    def __repr__(self) -> str:
        return f"DatasetVersion({self.dataset_name!r}, {self.name!r}, id={self.id!r}, state={self.state!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, DatasetVersion) and other.id == self.id

    def __hash__(self) -> int:
        return hash(self.id)

    id = property(lambda self: self._manifest.id)
    name = property(lambda self: self._manifest.name)
    dataset_name = property(lambda self: self._manifest.dataset)
    state = property(lambda self: self._manifest.state,
                     doc="'draft' or 'published' ('publishing' while a publish is under way)")
    is_published = property(lambda self: self._manifest.is_published)
    parent_ids = property(lambda self: list(self._manifest.parents))
    comment = property(lambda self: self._manifest.comment)
    created = property(lambda self: self._manifest.created)
    published = property(lambda self: self._manifest.published, doc="when it was published, or None")
    manifest = property(lambda self: copy.deepcopy(self._manifest), doc="the version record (a copy)")

    # -- finding and creating versions ---------------------------------------------------------

    @classmethod
    def get(cls, ref: str) -> DatasetVersion:
        """A version by a CLI ref: an id (or a unique prefix), DATASET@NAME, DATASET@draft, or
        DATASET (its latest published version)."""
        repo = _repository()
        return cls(repo.resolve(ref), repo)

    @classmethod
    def create_new_dataset(cls, dataset_name: str, dataset_project: str | None = None,
                           tags: list[str] | None = None, description: str | None = None,
                           raise_if_exists: bool = False) -> Dataset:
        """The same as ``Dataset.create``."""
        return Dataset.create(dataset_name, dataset_project, tags, description, raise_if_exists)

    @classmethod
    def create_version(cls, dataset_name: str, version_name: str, parent_version_names: list[str] | None = None,
                       parent_version_ids: list[str] | None = None, raise_if_exists: bool = False,
                       comment: str | None = None, metadata: dict | None = None) -> DatasetVersion:
        """A draft child of published parents, merged in the order given (a later one wins);
        without parents, a root version. A name that exists returns that version
        (``raise_if_exists``: ``AlreadyExists``, a ValueError)."""
        if parent_version_names and parent_version_ids:
            raise InvalidInput("give parent_version_names or parent_version_ids, not both")
        parents = [f"{dataset_name}@{n}" for n in parent_version_names or []] or list(parent_version_ids or [])
        repo = _repository(create=True)
        if not raise_if_exists:  # the existing version, whatever the parents given now would say
            with contextlib.suppress(NotFound):
                return cls._find(repo, dataset_name, version_name, None)
        try:
            manifest = repo.create(dataset_name, parents=parents, root=not parents, name=version_name,
                                   comment=comment or "", metadata=metadata)
        except AlreadyExists:
            if raise_if_exists:
                raise
            return cls._find(repo, dataset_name, version_name, None)
        return cls(manifest, repo)

    @classmethod
    def create_snapshot(cls, dataset_name: str, publish_name: str | None = None, child_name: str | None = None,
                        child_metadata: dict | None = None, child_comment: str | None = None) -> DatasetVersion:
        """The simple structure's step: the dataset's one draft is published (same id), named
        ``snapshot <ISO time>`` or ``publish_name``, and a new draft child of it, ``Current`` or
        ``child_name``, becomes current. Returns the snapshot."""
        repo = _repository()
        snapshot, _ = repo.snapshot(dataset_name, name=publish_name, child_name=child_name,
                                    child_comment=child_comment or "", child_metadata=child_metadata)
        return cls(snapshot, repo)

    @classmethod
    def get_version(cls, dataset_name: str, version_name: str | None = None,
                    version_id: str | None = None) -> DatasetVersion:
        """A version by name or id; neither: the current one (``get_current``)."""
        repo = _repository()
        if version_name is None and version_id is None:
            return cls(repo.current(dataset_name), repo)
        return cls._find(repo, dataset_name, version_name, version_id)

    @classmethod
    def get_versions(cls, dataset_name: str, only_published: bool = False,
                     only_draft: bool = False) -> list[DatasetVersion]:
        """A dataset's versions, oldest first."""
        return cls._all(_repository(), dataset_name, only_published, only_draft)

    @classmethod
    def get_current(cls, dataset_name: str) -> DatasetVersion:
        """The draft (a warning names the one chosen when there are several: the newest), else
        the latest published version."""
        repo = _repository()
        return cls(repo.current(dataset_name), repo)

    @classmethod
    def squash(cls, dataset_name: str, version_ids: list[DatasetVersion | str],
               version_name: str | None = None) -> DatasetVersion:
        """A new parentless, published version of ``dataset_name`` (made if new) holding the
        merged content of the given published versions in order. No bytes are uploaded."""
        repo = _repository(create=True)
        return cls(repo.squash([_ref(v) for v in version_ids], dataset_name, name=version_name), repo)

    @classmethod
    def _find(cls, repo: Repository, dataset: str, name: str | None, version_id: str | None) -> DatasetVersion:
        if name is not None and version_id is not None:
            raise InvalidInput("give a version name or a version id, not both")
        if name is None and version_id is None:
            raise InvalidInput("give a version name or a version id")
        manifest = repo.resolve(f"{dataset}@{name}" if name is not None else version_id)
        if manifest.dataset != dataset:
            raise NotFound(f"version {version_id!r} is not in dataset {dataset!r} (it is in {manifest.dataset!r})")
        return cls(manifest, repo)

    @classmethod
    def _all(cls, repo: Repository, dataset: str, published: bool, drafts: bool) -> list[DatasetVersion]:
        return [cls(v, repo) for v in repo.versions(dataset, published=published, drafts=drafts)]

    # -- changing a draft ---------------------------------------------------------------------

    def add_files(self, path: PathArg | list[PathArg], wildcard: str | list[str] | None = None,
                  recursive: bool = True, dataset_path: str = "", *, strict: bool = False,
                  progress: ProgressCallback | None = None) -> CommitSummary:
        """Add local files or folders (a folder's contents land in ``dataset_path``) as one
        change-set; only files ``wildcard`` matches (one glob or a list): a name glob (``*.jpg``)
        their names, below the top level only if ``recursive``; a path glob (``train/*.jpg``)
        their paths relative to the folder. Bytes already stored are not uploaded again. A fifo,
        socket or device is skipped with a warning (``strict``: refused)."""
        summary = _reporting(self._repo, progress).add(
            self.id, [_local(p) for p in _listed(path)], dest=dataset_path, wildcard=wildcard,
            recursive=recursive, strict=strict)
        self.refresh()
        return summary

    def remove_files(self, dataset_path: str | list[str], recursive: bool = True) -> CommitSummary:
        """Remove paths (a folder with what it holds) or what globs match, relative to the
        dataset, as one change-set; a bare name glob matches at any depth when ``recursive``
        (otherwise folders are refused and globs match the top level only)."""
        summary = self._repo.remove(self.id, _listed(dataset_path), recursive=recursive)
        self.refresh()
        return summary

    def sync_folder(self, local_path: PathArg, dataset_path: str = "", *, strict: bool = False,
                    progress: ProgressCallback | None = None) -> CommitSummary:
        """Make ``dataset_path`` of this draft hold exactly what the local folder holds."""
        summary = _reporting(self._repo, progress).sync(self.id, _local(local_path), dest=dataset_path,
                                                         strict=strict)
        self.refresh()
        return summary

    def publish_version(self, *, name: str | None = None) -> DatasetVersion:
        """Make this draft read-only for ever (renamed to ``name``, if given)."""
        self._manifest = self._repo.publish(self.id, name)
        return self

    def get_metadata(self) -> dict:
        return copy.deepcopy(self._manifest.metadata)

    def set_metadata(self, metadata: dict) -> None:
        """Replace a draft's metadata (JSON values)."""
        self._manifest = self._repo.change_metadata(self.id, metadata, replace=True)

    def set_masks_labels(self, masks_labels: dict[tuple[int, int, int], list[str]]) -> None:
        """Map mask colours to labels, as the seed stores them: ``metadata["mask_labels"] =
        {"_all_": [{"value": [r, g, b], "labels": [...]}, ...]}``."""
        entries = []
        for value, labels in masks_labels.items():
            if (not isinstance(value, tuple) or len(value) != 3
                    or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
                raise InvalidInput(f"a mask value must be an (r, g, b) tuple of 0..255: {value!r}")
            if isinstance(labels, str) or not all(isinstance(label, str) for label in labels):
                raise InvalidInput(f"mask labels must be a list of strings: {labels!r}")
            entries.append({"value": list(value), "labels": list(labels)})
        self._manifest = self._repo.change_metadata(self.id, {"mask_labels": {"_all_": entries}})

    # -- reading ------------------------------------------------------------------------------

    def list_files(self, dataset_path: str | None = None, recursive: bool = True) -> list[str]:
        """Paths (relative to the dataset) of the files and symlinks in a folder, or that a glob
        matches; all of them when None. In path order."""
        return self._repo.files(self.id, dataset_path, recursive=recursive)

    def diff(self, other: DatasetVersion | str) -> dict[str, list[str]]:
        """Paths added, modified and removed going from this version to ``other`` (a version or
        a ref), as ``dsfs diff SELF OTHER`` lists them."""
        result = self._repo.diff(self.id, _ref(other))
        return {kind: [n.path for n in nodes] for kind, nodes in result.items()}

    def verify(self, hash: bool = False, *, progress: ProgressCallback | None = None) -> list[str]:
        """Problems found (empty when all is well): missing or short chunks; with ``hash``, every
        byte read and checked against its sha256."""
        return _reporting(self._repo, progress).verify(self.id, hash_files=hash)

    def get_local_copy(self, *, progress: ProgressCallback | None = None) -> str:
        """A read-only copy of the whole version in the cache, fetched once and reused; its path."""
        return _reporting(self._repo, progress).local_copy(self.id)

    def get_mutable_local_copy(self, target_folder: str | os.PathLike, overwrite: bool = False, *,
                               progress: ProgressCallback | None = None) -> str:
        """A writable copy of the whole version in ``target_folder``, which must be empty;
        ``overwrite`` replaces what it holds. Its path."""
        target = _local(target_folder)
        _reporting(self._repo, progress).get(self.id, target, overwrite=overwrite)
        return target

    @contextlib.contextmanager
    def mount(self, path: str | os.PathLike | None = None, writable: bool | None = None) -> Iterator[Path]:
        """Mount this version at ``path`` (a temp folder when None) for the block; yields the
        mount's path. A draft mounts writable unless ``writable`` is False (its changes are
        recorded when the block ends); a published version only read-only."""
        from . import mounted

        if writable and self.is_published:
            raise ReadOnly(f"version is published and cannot change: {self.id!r} ({self.name!r})")
        settings = self._repo.settings
        with mounted(self.id, path, store=settings.store, cache_dir=settings.cache_dir, config=_config.config,
                     read_only=writable is False and not self.is_published) as root:
            yield root
        self.refresh()

    def refresh(self) -> DatasetVersion:
        """Read this version's record again (another process may have changed it)."""
        self._manifest = self._repo.catalog.version(self.id)
        return self
