"""Upload records: what each uploaded chunk of a not-yet-recorded change-set holds, so an
interrupted ``add`` can be resumed without uploading those bytes again.

Right after a chunk ``versions/<id>/chunks/<cs>-<n>.zip`` is uploaded, its entries are written to
``versions/<id>/uploads/<cs>-<n>.jsonl.gz`` (a change-set file holding only add lines). A record
therefore never names a chunk that is not fully stored. A later commit to the same draft looks up
new content there (after the lineage) and points at those bytes instead of uploading them; once
a recorded change-set references a chunk, its upload record has done its job and is deleted.
``dsfs gc`` deletes records, and the chunks they name, when they outlive the grace period; a
commit that reuses a record first rewrites it, which restarts that grace period.
"""

from __future__ import annotations

import io
import logging

from ..errors import Corrupt, NotFound
from ..store.base import ObjectStore
from .manifest import ChangeSet, Entry, iter_changeset, now_iso

log = logging.getLogger(__name__)


def uploads_prefix(version_id: str) -> str:
    return f"versions/{version_id}/uploads/"


def record_key(chunk_key: str) -> str:
    """``versions/<id>/chunks/<name>.zip`` -> ``versions/<id>/uploads/<name>.jsonl.gz``."""
    folder, _, name = chunk_key.rpartition("/chunks/")
    return f"{folder}/uploads/{name.removesuffix('.zip')}.jsonl.gz"


def chunk_of_record(key: str) -> str:
    folder, _, name = key.rpartition("/uploads/")
    return f"{folder}/chunks/{name.removesuffix('.jsonl.gz')}.zip"


def write_record(store: ObjectStore, version_id: str, chunk_key: str, entries: list[Entry]) -> None:
    """Say what ``chunk_key`` holds; call only once the chunk is fully stored."""
    name = chunk_key.rpartition("/")[2].removesuffix(".zip")
    store.put(record_key(chunk_key), ChangeSet(version_id, name, now_iso(), entries, []).dumps())


class PendingUploads:
    """The blobs of a draft's uploaded but unrecorded chunks, by sha256 (read on first use)."""

    def __init__(self, store: ObjectStore, version_id: str) -> None:
        self.store, self.version_id = store, version_id
        self._blobs: dict[str, Entry] | None = None
        self._raw: dict[str, bytes] = {}     # record key -> its bytes, to rewrite on reuse
        self.reused: set[str] = set()         # chunk keys this commit points into

    def find(self, sha256: str) -> Entry | None:
        if self._blobs is None:
            self._blobs = self._load()
        entry = self._blobs.get(sha256)
        if entry is None or entry.chunk in self.reused:
            return entry
        if not self._claim(entry.chunk):
            self._blobs = {k: e for k, e in self._blobs.items() if e.chunk != entry.chunk}
            return None
        self.reused.add(entry.chunk)
        return entry

    def _claim(self, chunk: str) -> bool:
        """Rewrite the chunk's record (restarting gc's grace period), then check the chunk is
        still there: gc deletes a chunk before its record."""
        key = record_key(chunk)
        self.store.put(key, self._raw[key])
        try:
            self.store.head(chunk)
        except NotFound:
            self.store.delete(key)
            return False
        return True

    def _load(self) -> dict[str, Entry]:
        blobs: dict[str, Entry] = {}
        for info in self.store.list(uploads_prefix(self.version_id)):
            try:
                data, _ = self.store.get(info.key)
                entries = list(iter_changeset(io.BytesIO(data), info.key))
            except NotFound:
                continue  # gc took it meanwhile
            except Corrupt as exc:
                log.warning("ignoring an unreadable upload record: %s", exc)
                continue
            chunk = chunk_of_record(info.key)
            self._raw[info.key] = data
            for entry in entries:
                if isinstance(entry, Entry) and entry.chunk == chunk:
                    blobs.setdefault(entry.sha256, entry)
        return blobs

    def forget(self, chunks: list[str]) -> None:
        """The chunks are referenced by a recorded change-set now: drop their records."""
        for chunk in chunks:
            self.store.delete(record_key(chunk))
