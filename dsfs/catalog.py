"""The catalog: datasets and versions as records in an object store.

All record changes go through compare-and-swap loops (``_update``), so two writers updating the
same dataset or draft never lose each other's change. Publishing is a three-step protocol that
survives a crash at any point: the draft is marked ``publishing`` (no more change-sets accepted),
the published manifest is created once, the draft record is deleted.
"""

from __future__ import annotations

import concurrent.futures
import os
import tempfile
from collections.abc import Callable, Iterator

from .changeset.manifest import (
    DRAFT,
    PUBLISHED,
    PUBLISHING,
    ChangeSet,
    ChangeSetRef,
    DatasetRecord,
    Entry,
    Removal,
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
            raise NotFound(f"dataset not found: {name!r}") from None
        return DatasetRecord.loads(data, key), etag

    def datasets(self) -> list[DatasetRecord]:
        keys = [info.key for info in self.store.list("datasets/") if info.key.endswith(".json")]
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
        record = self.dataset(dataset)
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(self.version, vid) for vid in record.versions]
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
        existing = self.versions(dataset)
        if any(v.name == name for v in existing):
            raise AlreadyExists(f"version name already exists in dataset {dataset!r}: {name!r}")
        manifest = VersionManifest(new_id(), dataset, name, list(parents), DRAFT, now_iso(),
                                   comment=comment, metadata=dict(metadata or {}))
        # The record first, then the dataset's list: a crash in between leaves an unlisted
        # draft that nothing shows and `dsfs gc` removes, never a listed id with no record.
        self.store.put_if_absent(draft_key(manifest.id), manifest.dumps())
        self.update_dataset(dataset, lambda r: r.versions.append(manifest.id))
        return manifest

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

    def changeset_items(self, ref: ChangeSetRef, tmp_dir: str) -> Iterator[Entry | Removal]:
        """Stream a change-set's items without holding the file in memory."""
        local = self.store.local_path(ref.key)
        tmp = None
        try:
            if local is None:
                os.makedirs(tmp_dir, exist_ok=True)
                fd, tmp = tempfile.mkstemp(dir=tmp_dir, prefix="changeset-")
                os.close(fd)
                self.store.download_file(ref.key, tmp)
                local = tmp
            with open(local, "rb") as stream:
                yield from iter_changeset(stream, ref.key)
        except (NotFound, FileNotFoundError):
            raise Corrupt(f"change-set missing from store: {ref.key!r}") from None
        finally:
            if tmp is not None:
                os.unlink(tmp)

    def publish(self, version_id: str, name: str | None = None) -> VersionManifest:
        manifest = self.version(version_id)
        if manifest.is_published:
            raise InvalidInput(f"version is already published: {version_id!r} ({manifest.name!r})")
        if name is not None and name != manifest.name:
            if any(v.name == name for v in self.versions(manifest.dataset) if v.id != version_id):
                raise AlreadyExists(f"version name already exists in dataset {manifest.dataset!r}: {name!r}")

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
        return self.version(version_id)

    def delete_version_records(self, manifest: VersionManifest) -> None:
        self.update_dataset(manifest.dataset,
                            lambda r: r.versions.remove(manifest.id) if manifest.id in r.versions else None)
        # Change-sets go with the version; chunks stay for gc, which keeps those another version
        # still references (dedup pointers, squashes).
        for ref in manifest.changesets:
            self.store.delete(ref.key)
        self.store.delete(draft_key(manifest.id))
        self.store.delete(published_key(manifest.id))


def _retry_cas(attempt):
    for _ in range(_CAS_ATTEMPTS):
        try:
            return attempt()
        except Conflict:
            continue
    raise Conflict("record kept changing under concurrent writers; gave up after 50 attempts")
