"""Turning a draft overlay's closed changes into one change-set on the draft.

The overlay is compared with the draft's *current* view, not the view it was mounted on, so a
commit is idempotent: committing again (after a crash between upload and cleanup, or a second
``dsfs commit``) finds nothing left to record. Bytes the lineage already holds — a renamed or
copied file, a file rewritten with the same content — are referenced, not uploaded.
"""

from __future__ import annotations

import logging

from ..changeset.manifest import DIR, EMPTY_SHA256, FILE, SYMLINK, Removal
from ..changeset.packer import Source
from ..repo import CommitSummary, Repository
from ..resolver.index import VersionIndex
from .overlay import Attr, Overlay

log = logging.getLogger(__name__)


Change = tuple[str, "Attr | None", "str | None", "str | None"]


def collect(changes: list[Change], view: VersionIndex) -> tuple[list[Source], list[Removal]]:
    """Sources and removals of an overlay snapshot (``Overlay.snapshot``) against ``view``."""
    sources: list[Source] = []
    removals: dict[str, Removal] = {}
    for path, attr, removed, local in changes:
        if removed is not None:
            node = view.by_path(removed)
            if node is not None:
                removals[removed] = Removal(removed, node.is_dir)
            continue
        if attr.type == DIR:
            sources.append(Source(path, DIR, mode=attr.mode, mtime_ns=attr.mtime_ns))
        elif attr.type == SYMLINK:
            sources.append(Source(path, SYMLINK, mode=attr.mode, mtime_ns=attr.mtime_ns, target=attr.target))
        elif local is not None:
            sources.append(Source(path, FILE, local, attr.mode, attr.mtime_ns, size=attr.size,
                                  sha256=attr.sha256, hashed=True, compressible=attr.compressible))
        elif attr.base_node is not None and attr.base_node.type == FILE:
            node = attr.base_node
            sources.append(Source(path, FILE, None, attr.mode, attr.mtime_ns, size=node.size,
                                  sha256=node.sha256, hashed=True, known=node.to_entry()))
        else:
            sources.append(Source(path, FILE, None, attr.mode, attr.mtime_ns, size=0,
                                  sha256=EMPTY_SHA256, hashed=True))
    # A removal under a path that is itself removed adds nothing.
    kept = []
    for removal in sorted(removals.values(), key=lambda r: r.path):
        if kept and kept[-1].is_dir and removal.path.startswith(kept[-1].path + "/"):
            continue
        kept.append(removal)
    return sorted(sources, key=lambda s: s.path), kept


def commit_overlay(repo: Repository, version_id: str, overlay: Overlay) -> CommitSummary:
    """Commit a snapshot of the overlay: the mount-wide lock is held only while it is taken,
    so writes go on during the packing and upload (and join the next commit)."""
    manifest = repo.catalog.version(version_id)
    view = repo.index(manifest)
    with overlay.snapshot() as changes:
        sources, removals = collect(changes, view)
        summary = repo.commit_changes(manifest, sources, removals)
    log.info("commit of %s: %d added, %d modified, %d removed, %d bytes uploaded, %d deduplicated",
             version_id, summary.added, summary.modified, summary.removed, summary.bytes_uploaded,
             summary.bytes_dedup)
    return summary
