"""The catalog: datasets and versions as records in an object store.

All record changes go through compare-and-swap loops (``_update``), so two writers updating the
same dataset or draft never lose each other's change. Version names are unique per dataset: the
dataset record maps each name to its version, and a name is claimed in the same compare-and-swap
that lists a new version (or renames one), so of two writers racing for a name only one wins. Publishing is a three-step protocol that
survives a crash at any point: the draft is marked ``publishing`` (no more change-sets accepted),
the published manifest is created once, the draft record is deleted.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, TypeVar

from . import tmpfiles
from .changeset.manifest import (
    DRAFT,
    PUBLISHED,
    PUBLISHING,
    ChangeSet,
    ChangeSetRef,
    DatasetRecord,
    VersionManifest,
    check_dataset_name,
    dataset_key,
    draft_key,
    iter_changeset,
    new_id,
    now_iso,
    published_key,
)
from .errors import AlreadyExists, Conflict, Corrupt, InvalidInput, NotFound, ReadOnly
from .store.base import ObjectStore

T = TypeVar("T")

_CAS_ATTEMPTS = 50


class Catalog:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    # -- datasets ---------------------------------------------------------------------------

    def dataset(self, name: str) -> DatasetRecord:
        return self._get_dataset(name)[0]

    def _get_dataset(self, name: str) -> tuple[DatasetRecord, str]:
        key = dataset_key(check_dataset_name(name))
        try:
            data, etag = self.store.get(key)
        except NotFound:
            raise NotFound(f"dataset not found: {name!r}{did_you_mean(name, self.dataset_names())}") from None
        return DatasetRecord.loads(data, key), etag

    def dataset_names(self) -> list[str]:
        return sorted(info.key[len("datasets/"):-len(".json")] for info in self.store.list("datasets/")
                      if info.key.count("/") == 1 and info.key.endswith(".json"))

    def datasets(self) -> list[DatasetRecord]:
        keys = [dataset_key(name) for name in self.dataset_names()]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            records = list(pool.map(lambda k: DatasetRecord.loads(self.store.get(k)[0], k), keys))
        return sorted(records, key=lambda r: r.name)

    def ensure_dataset(self, name: str, *, project: str = "", tags: list[str] | None = None,
                       description: str = "") -> DatasetRecord:
        record = DatasetRecord(check_dataset_name(name), project, list(tags or []), description,
                               now_iso(), [])
        try:
            self.store.put_if_absent(dataset_key(name), record.dumps())
            return record
        except AlreadyExists:
            return self.dataset(name)

    def update_dataset(self, name: str, change: Callable[[DatasetRecord], None]) -> DatasetRecord:
        def attempt() -> DatasetRecord:
            record, etag = self._get_dataset(name)
            change(record)
            self.store.put_if_match(dataset_key(name), record.dumps(), etag)
            return record

        return _retry_cas(attempt)

    def delete_dataset_record(self, name: str) -> None:
        self.store.delete(dataset_key(name))

    # -- versions ---------------------------------------------------------------------------

    def version(self, version_id: str) -> VersionManifest:
        return self._get_version(version_id)[0]

    def _get_version(self, version_id: str) -> tuple[VersionManifest, str | None]:
        """(manifest, etag of the draft record or None when published)."""
        try:
            key = published_key(version_id)
            return VersionManifest.loads(self.store.get(key)[0], key), None
        except NotFound:
            pass
        key = draft_key(version_id)
        try:
            data, etag = self.store.get(key)
        except NotFound:
            raise NotFound(f"version not found: {version_id!r}") from None
        return VersionManifest.loads(data, key), etag

    def draft_etag(self, version_id: str) -> str | None:
        """The draft record's etag (changes with every change-set); None once published."""
        return self._get_version(version_id)[1]

    def versions(self, dataset: str) -> list[VersionManifest]:
        return self._manifests(self.dataset(dataset).versions)

    def _manifests(self, ids: list[str]) -> list[VersionManifest]:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(self.version, vid) for vid in ids]
        found = []
        for fut in futures:
            try:
                found.append(fut.result())
            except NotFound:
                continue  # listed but deleted mid-way by another process
        return found

    def find_ids(self, prefix: str) -> list[str]:
        ids = set()
        for info in self.store.list(f"versions/{prefix}"):
            parts = info.key.split("/")
            if len(parts) == 3 and parts[2] in ("draft.json", "published.json"):
                ids.add(parts[1])
        return sorted(ids)

    def create_version(self, dataset: str, name: str, parents: list[str], *, comment: str = "",
                       metadata: dict | None = None) -> VersionManifest:
        for parent_id in parents:
            parent = self.version(parent_id)
            if not parent.is_published:
                raise InvalidInput(f"parent must be published, {parent_id!r} ({parent.name!r}) is a draft")
        if len(set(parents)) != len(parents):
            raise InvalidInput("the same parent is given twice")
        manifest = VersionManifest(new_id(), dataset, name, list(parents), DRAFT, now_iso(),
                                   comment=comment, metadata=dict(metadata or {}))
        # The record first, then its name and its place in the dataset's list in one
        # compare-and-swap: a crash in between leaves an unlisted draft that nothing shows,
        # never a listed id with no record; a name already taken leaves nothing behind.
        self.store.put_if_absent(draft_key(manifest.id), manifest.dumps())

        def claim_and_list(record: DatasetRecord) -> None:
            self._claim_name(record, name, manifest.id)
            record.versions.append(manifest.id)

        try:
            self.update_dataset(dataset, claim_and_list)
        except AlreadyExists:
            self.store.delete(draft_key(manifest.id))
            raise
        return manifest

    def version_names(self, dataset: str) -> set[str]:
        return set(self._names(self.dataset(dataset)))

    def _names(self, record: DatasetRecord) -> dict[str, str]:
        if record.names is None:  # written by an older dsfs
            record.names = {v.name: v.id for v in self._manifests(record.versions)}
        return record.names

    def _claim_name(self, record: DatasetRecord, name: str, version_id: str) -> None:
        """Reserve ``name`` for ``version_id``; only ever called inside ``update_dataset``."""
        names = self._names(record)
        holder = names.get(name)
        if holder is not None and holder != version_id and holder in record.versions:
            raise AlreadyExists(f"version name already exists in dataset {record.name!r}: {name!r}")
        names[name] = version_id

    def _release_names(self, dataset: str, version_id: str, keep: str | None = None) -> None:
        """Free the names ``version_id`` holds (all but ``keep``), if it holds any."""
        def stale(record: DatasetRecord) -> list[str]:
            return [n for n, v in (record.names or {}).items() if v == version_id and n != keep]

        def release(record: DatasetRecord) -> None:
            for n in stale(record):
                del record.names[n]

        if stale(self.dataset(dataset)):
            self.update_dataset(dataset, release)

    def update_draft(self, version_id: str, change: Callable[[VersionManifest], None],
                     *, allow_publishing: bool = False) -> VersionManifest:
        def attempt() -> VersionManifest:
            manifest, etag = self._get_version(version_id)
            if manifest.state == PUBLISHED or (manifest.state == PUBLISHING and not allow_publishing):
                raise ReadOnly(f"version is published and cannot change: {version_id!r} ({manifest.name!r})")
            change(manifest)
            self.store.put_if_match(draft_key(version_id), manifest.dumps(), etag)
            return manifest

        return _retry_cas(attempt)

    def write_changeset(self, changeset: ChangeSet, entries_new: int, bytes_new: int,
                        bytes_dedup: int, chunks: list[str]) -> ChangeSetRef:
        from .changeset.manifest import changeset_key

        key = changeset_key(changeset.version_id, changeset.id)
        self.store.put_if_absent(key, changeset.dumps())
        return ChangeSetRef(changeset.id, key, len(changeset.entries), len(changeset.removals),
                            bytes_new, bytes_dedup, chunks)

    def record_changeset(self, version_id: str, ref: ChangeSetRef) -> VersionManifest:
        """Append an uploaded change-set to a draft: the single step that makes it visible."""
        return self.update_draft(version_id, lambda m: m.changesets.append(ref))

    def changeset_items(self, ref: ChangeSetRef, tmp_dir: str,
                        parse: Callable[[BinaryIO, str], Iterator[T]] = iter_changeset) -> Iterator[T]:
        """Stream a change-set's items without holding the file in memory: ``parse(stream, key)``
        of the file opened (``iter_changeset``, or one of its variants)."""
        try:
            with contextlib.ExitStack() as stack:
                local = self.store.local_path(ref.key) or stack.enter_context(
                    tmpfiles.downloaded(self.store, ref.key, tmp_dir, "changeset-"))
                with open(local, "rb") as stream:
                    yield from parse(stream, ref.key)
        except (NotFound, FileNotFoundError):
            raise Corrupt(f"change-set missing from store: {ref.key!r}") from None

    def publish(self, version_id: str, name: str | None = None) -> VersionManifest:
        manifest = self.version(version_id)
        if manifest.is_published:
            raise InvalidInput(f"version is already published: {version_id!r} ({manifest.name!r})")
        if name is not None and name != manifest.name:
            # The new name is held first and the old one freed last, so no two versions ever
            # show one name, whatever step a crash interrupts.
            self.update_dataset(manifest.dataset, lambda r: self._claim_name(r, name, version_id))

        def mark(m: VersionManifest) -> None:
            m.state = PUBLISHING
            if name is not None:
                m.name = name

        manifest = self.update_draft(version_id, mark, allow_publishing=True)
        manifest.state = PUBLISHED
        manifest.published = now_iso()
        try:
            self.store.put_if_absent(published_key(version_id), manifest.dumps())
        except AlreadyExists:
            pass  # an earlier, interrupted publish got this far
        self.store.delete(draft_key(version_id))
        self._release_names(manifest.dataset, version_id, keep=manifest.name)
        return self.version(version_id)

    def delete_version_records(self, manifest: VersionManifest) -> None:
        def unlist(record: DatasetRecord) -> None:
            if manifest.id in record.versions:
                record.versions.remove(manifest.id)
            if record.names is not None:
                record.names = {n: v for n, v in record.names.items() if v != manifest.id}

        self.update_dataset(manifest.dataset, unlist)
        # Change-sets go with the version; chunks stay for gc, which keeps those another version
        # still references (dedup pointers, squashes).
        for ref in manifest.changesets:
            self.store.delete(ref.key)
        self.store.delete(draft_key(manifest.id))
        self.store.delete(published_key(manifest.id))


def did_you_mean(word: str, candidates: list[str]) -> str:
    """' (did you mean 'x'?)' naming the closest candidate, or ''."""
    import difflib  # only on the error path: mount start-up skips it

    close = difflib.get_close_matches(word, candidates, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _retry_cas(attempt):
    for _ in range(_CAS_ATTEMPTS):
        try:
            return attempt()
        except Conflict:
            continue
    raise Conflict("record kept changing under concurrent writers; gave up after 50 attempts")
