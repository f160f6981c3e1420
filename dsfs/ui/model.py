"""What ``dsfs ui`` shows, as JSON-ready dicts: read-only queries over a ``Repository``.

Everything here reads; nothing writes to the store. Listings page through the version's SQLite
index (a folder at a time, ``after`` a name), so a million-file version costs a page per request;
file bytes come through the block cache, capped. Results that cannot change (published
manifests, a change-set's counts, diffs of two published versions) are remembered, a bounded few.

Threading: one ``UiModel`` serves every request thread; its memos are guarded by a lock, and the
repository's index and cache objects are themselves thread-safe.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import dataclasses
import io
import itertools
import json
import re
import threading
from collections.abc import Iterator

from ..changeset.manifest import (
    DRAFT,
    STORED,
    Entry,
    Removal,
    VersionManifest,
    changeset_time,
    check_dataset_name,
    new_id,
)
from ..changeset.reader import iter_member
from ..errors import InvalidInput, NotFound
from ..paths import check_path
from ..repo import Repository, _count_files
from ..resolver import Node, VersionIndex

PAGE = 200  # folder entries per page
DIFF_PAGE = 500
TEXT_HEAD = 64 << 10  # bytes of a text file a preview shows
TEXT_LINES = 60
CSV_ROWS = 30
IMAGE_MAX = 8 << 20  # images up to this size preview inline
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp", "bmp": "image/bmp"}
TABLE_TYPES = {"csv": ",", "tsv": "\t"}
_DIFF_MEMO_ROWS = 200_000  # a bigger diff is computed again for each page rather than held
_COUNT_BATCH = 10_000
_FULL_ID = re.compile(r"[0-9a-f]{32}")


class _Memo:
    """A small thread-safe LRU of results that never change."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: collections.OrderedDict = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key, value):
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


class UiModel:
    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self.catalog = repo.catalog
        self._published = _Memo(4096)
        self._changesets = _Memo(4096)
        self._diffs = _Memo(4)
        self._indexes = _Memo(64)
        self._cache = None
        self._cache_lock = threading.Lock()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()

    # -- datasets -------------------------------------------------------------------------------

    def datasets(self, project: str | None = None, tag: str | None = None, q: str | None = None) -> dict:
        """Every dataset (with what to filter by), and the ones that pass the filters."""
        records = self.catalog.datasets()
        needle = (q or "").strip().lower()
        chosen = [r for r in records
                  if (not project or r.project == project) and (not tag or tag in r.tags)
                  and (not needle or needle in r.name.lower() or needle in r.description.lower())]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            rows = list(pool.map(self._dataset_row, chosen))
        return {"datasets": rows, "projects": sorted({r.project for r in records if r.project}),
                "tags": sorted({t for r in records for t in r.tags}),
                "filters": {"project": project or "", "tag": tag or "", "q": q or ""}}

    def _dataset_row(self, record) -> dict:
        versions = self._manifests(record.versions)
        published = sum(v.is_published for v in versions)
        return {"name": record.name, "project": record.project, "tags": record.tags,
                "description": record.description, "created": record.created,
                "versions": len(versions), "published": published, "drafts": len(versions) - published,
                "last_change": max([record.created] + [last_change(v) for v in versions])}

    def dataset(self, name: str) -> dict:
        """A dataset's record, its versions (oldest first, each with its kind) and the parents
        they have in other datasets (``external``)."""
        record = self._record(name)
        versions = self._manifests(record.versions)
        kinds = version_kinds(versions)
        rows = [_version_row(v, kinds.get(v.id, "")) for v in versions]
        own = {v.id for v in versions}
        external = []
        for pid in dict.fromkeys(p for v in versions for p in v.parents if p not in own):
            try:
                parent = self._manifest(pid)
            except NotFound:
                continue  # a parent deleted by force: the edge has nowhere to start
            external.append(_version_row(parent, "external"))
        return {"name": record.name, "project": record.project, "tags": record.tags,
                "description": record.description, "created": record.created,
                "versions": rows, "external": external,
                "names": {v["id"]: v["name"] for v in external + rows}}

    def _record(self, name: str):
        """A dataset's record; a name no dataset can have (``..``, ``a/b``) is simply not found."""
        try:
            check_dataset_name(name)
        except InvalidInput:
            raise NotFound(f"dataset not found: {name!r}") from None
        return self.catalog.dataset(name)

    # -- versions -------------------------------------------------------------------------------

    def _manifests(self, ids: list[str]) -> list[VersionManifest]:
        """The versions with these ids that still exist, oldest first (published ones from the
        memo: a page view of a long history costs a read per draft, not per version)."""
        def get(version_id: str) -> VersionManifest | None:
            try:
                return self._manifest(version_id)
            except NotFound:
                return None  # listed but deleted mid-way by another process

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            found = [m for m in pool.map(get, ids) if m is not None]
        return sorted(found, key=lambda v: v.created)

    def _manifest(self, version_id: str) -> VersionManifest:
        manifest = self._published.get(version_id)
        if manifest is None:
            manifest = self.catalog.version(version_id)
            if manifest.is_published:
                self._published.put(version_id, manifest)
        return manifest

    def resolve(self, ref: str) -> VersionManifest:
        """A version by ref; a full id (what the pages link to) skips the store listing."""
        if _FULL_ID.fullmatch(ref):
            return self._manifest(ref)
        dataset, at, _ = ref.partition("@")
        if at:
            self._record(dataset)
        return self.repo.resolve(ref)

    def version(self, ref: str) -> dict:
        manifest = self.resolve(ref)
        siblings = self._manifests(self._record(manifest.dataset).versions)
        kinds = version_kinds(siblings)
        index = self._index(manifest)
        parents = []
        for pid in manifest.parents:
            try:
                parents.append(_version_row(self._manifest(pid), kinds.get(pid, "")))
            except NotFound:
                parents.append({"id": pid, "name": "(deleted)", "state": "", "missing": True})
        children = [_version_row(v, kinds.get(v.id, "")) for v in siblings if manifest.id in v.parents]
        return {**_version_row(manifest, kinds.get(manifest.id, "")),
                "comment": manifest.comment, "metadata": manifest.metadata,
                "mask_labels": mask_labels(manifest.metadata), "parents": parents, "children": children,
                "files": index.files, "bytes": index.total_size,
                "changesets": [{"id": c.id, "entries": c.entries, "removals": c.removals,
                                "bytes_new": c.bytes_new, "bytes_dedup": c.bytes_dedup,
                                "chunks": len(c.chunks)} for c in manifest.changesets]}

    def _changeset_at(self, ref: str, changeset_id: str) -> tuple[VersionManifest, int]:
        manifest = self.resolve(ref)
        position = next((i for i, c in enumerate(manifest.changesets) if c.id == changeset_id), None)
        if position is None:
            raise NotFound(f"no change-set {changeset_id!r} in version {manifest.name!r}")
        return manifest, position

    def changeset(self, ref: str, changeset_id: str) -> dict:
        """What one change-set did to the view it was applied to: files (and symlinks) added,
        modified and removed, counted as ``dsfs add`` reports them, plus its byte counts."""
        manifest, position = self._changeset_at(ref, changeset_id)
        key = (manifest.id, changeset_id)
        found = self._changesets.get(key)
        if found is not None:
            return found
        ref_ = manifest.changesets[position]
        with self._view_before(manifest, position) as before:
            added, modified, removed = _count_changeset(
                before, self.catalog.changeset_items(ref_, self.repo.tmp_dir))
        # A change-set never changes once recorded, nor does the view it was applied to.
        return self._changesets.put(key, {
            "id": ref_.id, "added": added, "modified": modified, "removed": removed,
            "entries": ref_.entries, "removals": ref_.removals, "bytes_new": ref_.bytes_new,
            "bytes_dedup": ref_.bytes_dedup, "chunks": len(ref_.chunks)})

    def changeset_lines(self, ref: str, changeset_id: str, offset: int = 0, limit: int = DIFF_PAGE) -> dict:
        """One page of a change-set's lines as recorded: removals, then adds with their size,
        sha256 and where their bytes are (chunk, offset). Read as a stream: a page costs the
        lines before it, never the whole file in memory."""
        manifest, position = self._changeset_at(ref, changeset_id)
        offset, limit = max(0, int(offset)), max(1, min(int(limit), 5000))
        items = self.catalog.changeset_items(manifest.changesets[position], self.repo.tmp_dir)
        with contextlib.closing(items):
            page = list(itertools.islice(items, offset, offset + limit + 1))
        return {"version": _version_row(manifest, ""), "id": changeset_id, "offset": offset,
                "lines": [_line_row(item) for item in page[:limit]],
                "next": offset + limit if len(page) > limit else None}

    def _view_before(self, manifest: VersionManifest, position: int):
        """The merged view a change-set was applied to: the parents' merge plus the change-sets
        before it (a single parent's own index when it is the first)."""
        if position == 0 and len(manifest.parents) == 1:
            return contextlib.nullcontext(self._index(self._manifest(manifest.parents[0])))
        probe = dataclasses.replace(manifest, id=new_id(), state=DRAFT, published=None,
                                    changesets=manifest.changesets[:position])
        return self.repo.views.merged(probe)

    # -- files ----------------------------------------------------------------------------------

    def _index(self, manifest: VersionManifest) -> VersionIndex:
        """The version's index: a published one's is opened once (its connections are reused),
        a draft's is looked up again each time (a change-set makes a new one)."""
        if not manifest.is_published:
            return self.repo.index(manifest)
        return self._indexes.get(manifest.id) or self._indexes.put(manifest.id, self.repo.index(manifest))

    def _node(self, manifest: VersionManifest, path: str) -> Node:
        node = self._index(manifest).by_path(_dataset_path(path, manifest))
        if node is None:
            raise NotFound(f"no such path in {manifest.name!r}: {path!r}")
        return node

    def listing(self, ref: str, path: str = "", after: str | None = None, limit: int = PAGE) -> dict:
        """One page of a folder, in name order, starting after the name ``after``."""
        manifest = self.resolve(ref)
        node = self._node(manifest, path)
        if not node.is_dir:
            raise InvalidInput(f"not a folder in {manifest.name!r}: {path!r}")
        limit = max(1, min(int(limit), 1000))
        page = self._index(manifest).children(node.ino, after, limit + 1)
        more = len(page) > limit
        page = page[:limit]
        return {"version": manifest.id, "path": node.path, "crumbs": _crumbs(node.path),
                "entries": [self._entry(n) for n in page],
                "next": page[-1].name if more else None}

    def file(self, ref: str, path: str) -> dict:
        manifest = self.resolve(ref)
        node = self._node(manifest, path)
        return {"version": manifest.id, "crumbs": _crumbs(node.path), **self._entry(node)}

    def _entry(self, node: Node) -> dict:
        return {"name": node.name, "path": node.path, "type": node.type, "size": node.size,
                "sha256": node.sha256 if not node.is_dir else None, "target": node.target,
                "mode": f"{node.mode:04o}", "mtime_ns": node.mtime_ns, "provider": node.version,
                "provider_name": self._version_name(node.version)}

    def _version_name(self, version_id: str) -> str:
        try:
            return self._manifest(version_id).name
        except NotFound:
            return version_id[:12]

    def _open_cache(self):
        with self._cache_lock:
            if self._cache is None:
                from ..cache import BlockCache

                settings, store = self.repo.settings, self.repo.store
                self._cache = BlockCache(settings.cache_dir, store, size_limit=settings.cache_size,
                                         block_size=settings.block_size, persist=settings.caches(store),
                                         neighbour_bytes=settings.neighbour_bytes)
            return self._cache

    def preview(self, ref: str, path: str) -> dict:
        """What a file page shows of a file's bytes: an image (its bytes come from ``image``),
        the head of a CSV/TSV file as rows, or the head of a text file; nothing for other bytes."""
        manifest = self.resolve(ref)
        node = self._node(manifest, path)
        if node.type != "file":
            return {"kind": "none", "reason": f"a {node.type} has no bytes to show"}
        suffix = node.name.rpartition(".")[2].lower() if "." in node.name else ""
        if suffix in IMAGE_TYPES:
            if node.size > IMAGE_MAX:
                return {"kind": "none", "reason": f"image larger than {IMAGE_MAX >> 20} MiB"}
            return {"kind": "image", "type": IMAGE_TYPES[suffix]}
        head, checked = self._head(node.to_entry())
        truncated = node.size > len(head)
        text = _as_text(head, truncated)
        if text is None:
            return {"kind": "none", "reason": "binary file"}
        lines = text.splitlines()
        if truncated and lines:
            lines.pop()  # the last line was cut by the size cap
        if suffix in TABLE_TYPES:
            rows = list(csv.reader(io.StringIO("\n".join(lines[:CSV_ROWS + 1])), delimiter=TABLE_TYPES[suffix]))
            return {"kind": "table", "rows": rows, "truncated": truncated or len(lines) > CSV_ROWS + 1,
                    "checked": checked}
        return {"kind": "text", "text": "\n".join(lines[:TEXT_LINES]),
                "truncated": truncated or len(lines) > TEXT_LINES, "checked": checked}

    def _head(self, entry: Entry) -> tuple[bytes, bool]:
        """The first ``TEXT_HEAD`` bytes of a file, fetching about that much, and whether they
        were checked. The block cache fetches a compressed member whole (only the whole can be
        checked against its sha256): fine up to a block, but a preview of a big compressed CSV
        must not fetch all of it, so its head is inflated from the member's first compressed
        bytes, unchecked, and the page says so."""
        if entry.method == STORED or entry.csize <= self.repo.settings.block_size:
            return self._open_cache().read(None, entry, 0, TEXT_HEAD), True
        head = bytearray()
        with contextlib.closing(iter_member(self.repo.store, entry, block=TEXT_HEAD)) as pieces:
            for piece in pieces:
                head += piece
                if len(head) >= TEXT_HEAD:
                    break
        return bytes(head[:TEXT_HEAD]), False

    def image(self, ref: str, path: str) -> tuple[bytes, str]:
        """An image's bytes (checked against its sha256) and media type, for ``preview``."""
        manifest = self.resolve(ref)
        node = self._node(manifest, path)
        suffix = node.name.rpartition(".")[2].lower()
        if node.type != "file" or suffix not in IMAGE_TYPES:
            raise NotFound(f"not an image in {manifest.name!r}: {path!r}")
        if node.size > IMAGE_MAX:
            raise InvalidInput(f"image larger than {IMAGE_MAX >> 20} MiB: {path!r}")
        return self._open_cache().read_all(None, node.to_entry()), IMAGE_TYPES[suffix]

    # -- diff -----------------------------------------------------------------------------------

    def diff(self, a: str, b: str, kind: str = "", q: str = "", offset: int = 0, limit: int = DIFF_PAGE) -> dict:
        """Files added, modified and removed from A to B (as ``dsfs diff``), filtered by kind and
        a path substring, one page at a time."""
        if kind and kind not in ("added", "modified", "removed"):
            raise InvalidInput(f"kind must be added, modified or removed: {kind!r}")
        old, new = self.resolve(a), self.resolve(b)
        rows = self._diff_rows(old, new)
        counts = collections.Counter(r["kind"] for r in rows)
        chosen = [r for r in rows if (not kind or r["kind"] == kind) and (not q or q in r["path"])]
        offset, limit = max(0, int(offset)), max(1, min(int(limit), 5000))
        return {"a": _version_row(old, ""), "b": _version_row(new, ""),
                "counts": {k: counts[k] for k in ("added", "modified", "removed")},
                "bytes": {k: sum(r["size"] for r in rows if r["kind"] == k) for k in ("added", "modified", "removed")},
                "filters": {"kind": kind, "q": q}, "matched": len(chosen), "offset": offset,
                "rows": self._with_old_sizes(old, chosen[offset:offset + limit]),
                "next": offset + limit if offset + limit < len(chosen) else None}

    def _with_old_sizes(self, old: VersionManifest, rows: list[dict]) -> list[dict]:
        """A page's rows, the modified ones with the size they had in A (``old_size``)."""
        if not any(r["kind"] == "modified" for r in rows):
            return rows
        index = self._index(old)
        return [{**r, "old_size": index.by_path(r["path"]).size} if r["kind"] == "modified" else r
                for r in rows]

    def _diff_rows(self, old: VersionManifest, new: VersionManifest) -> list[dict]:
        key = (old.id, new.id)
        fixed = old.is_published and new.is_published
        rows = self._diffs.get(key) if fixed else None
        if rows is None:
            result = self.repo.diff(old.id, new.id)
            rows = sorted(({"kind": k, "path": n.path, "type": n.type, "size": n.size, "sha256": n.sha256,
                            "provider": n.version} for k, nodes in result.items() for n in nodes),
                          key=lambda r: r["path"])
            if fixed and len(rows) <= _DIFF_MEMO_ROWS:
                self._diffs.put(key, rows)
        return rows


# -- helpers --------------------------------------------------------------------------------------


def version_kinds(versions: list[VersionManifest]) -> dict[str, str]:
    """'squash' or 'snapshot' for the versions that are one (others are left out).

    A squash is a parentless version holding one ``squash-`` change-set (docs/FORMAT.md). A
    snapshot is a published version in a linear stretch of history, the seed's simple structure:
    at most one parent, and exactly one child, which has it as its only parent."""
    children: dict[str, list[VersionManifest]] = collections.defaultdict(list)
    for v in versions:
        for p in v.parents:
            children[p].append(v)
    kinds = {}
    for v in versions:
        kids = children.get(v.id, [])
        if not v.parents and v.changesets and all(c.id.startswith("squash-") for c in v.changesets):
            kinds[v.id] = "squash"
        elif v.is_published and len(v.parents) <= 1 and len(kids) == 1 and len(kids[0].parents) == 1:
            kinds[v.id] = "snapshot"
    return kinds


def last_change(v: VersionManifest) -> str:
    """When ``v`` last changed: created, published, or given a change-set (a draft changes long
    after it was created; its change-set ids carry their commit times, to the second)."""
    return max([v.created, v.published or ""] + [t for ref in v.changesets if (t := changeset_time(ref.id))])


def _line_row(item: Entry | Removal) -> dict:
    if isinstance(item, Removal):
        return {"op": "remove", "path": item.path, "type": "dir" if item.is_dir else "file", "size": None,
                "sha256": None, "target": None, "chunk": None, "offset": None}
    return {"op": "add", "path": item.path, "type": item.type, "size": item.size,
            "sha256": item.sha256 if item.type == "file" else None, "target": item.target,
            "chunk": item.chunk, "offset": item.offset if item.chunk else None}


def _version_row(v: VersionManifest, kind: str) -> dict:
    return {"id": v.id, "dataset": v.dataset, "name": v.name, "state": v.state, "kind": kind,
            "created": v.created, "published": v.published, "changed": last_change(v), "parents": v.parents,
            "comment": v.comment, "changesets": len(v.changesets)}


def mask_labels(metadata: dict) -> list[dict]:
    """The seed's ``mask_labels`` metadata (``{"_all_": [{"value": [r, g, b], "labels": [...]}]}``,
    as a dict or as its JSON text) as swatches: colour, hex and labels. Anything else: none."""
    raw = metadata.get("mask_labels")
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError:
            return []
    entries = raw.get("_all_") if isinstance(raw, dict) else None
    swatches = []
    for item in entries if isinstance(entries, list) else []:
        value = item.get("value") if isinstance(item, dict) else None
        if (not isinstance(value, list) or len(value) != 3
                or not all(isinstance(c, int) and 0 <= c <= 255 for c in value)):
            continue
        labels = [str(label) for label in item.get("labels") or []]
        swatches.append({"value": value, "hex": "#{:02x}{:02x}{:02x}".format(*value), "labels": labels})
    return swatches


def _dataset_path(path: str, manifest: VersionManifest) -> str:
    """'' (the top) or a checked dataset path; anything that could name ``..`` is not found."""
    path = path.strip("/")
    if not path:
        return ""
    try:
        return check_path(path)
    except InvalidInput:
        raise NotFound(f"no such path in {manifest.name!r}: {path!r}") from None


def _crumbs(path: str) -> list[dict]:
    parts = path.split("/") if path else []
    return [{"name": name, "path": "/".join(parts[:i + 1])} for i, name in enumerate(parts)]


def _as_text(head: bytes, truncated: bool) -> str | None:
    if b"\x00" in head:
        return None
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A multi-byte character cut by the size cap is not a reason to call the file binary.
        if truncated and exc.start >= len(head) - 3:
            return head[:exc.start].decode("utf-8", "replace")
        return None


def _count_changeset(before: VersionIndex, items: Iterator) -> tuple[int, int, int]:
    """(added, modified, removed) files of a change-set applied to ``before``, streamed in
    batches: removals come first in a change-set file, then adds."""
    removals: list[Removal] = []
    gone: set[str] = set()
    added = modified = 0
    batch = []

    def flush() -> None:
        nonlocal added, modified
        a, m, _ = _count_files(before, batch, [])
        added, modified = added + a, modified + m
        gone.difference_update(e.path for e in batch)
        batch.clear()

    for item in items:
        if isinstance(item, Removal):
            removals.append(item)
            continue
        if removals:
            gone.update(path for r in removals for path in _files_under(before, r.path))
            removals.clear()
        batch.append(item)
        if len(batch) >= _COUNT_BATCH:
            flush()
    gone.update(path for r in removals for path in _files_under(before, r.path))
    flush()
    return added, modified, len(gone)


def _files_under(index: VersionIndex, path: str) -> Iterator[str]:
    return (n.path for n in index.walk(path) if not n.is_dir)
