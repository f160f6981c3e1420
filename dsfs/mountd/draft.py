"""A writable draft mount's life: lease, staging area, serving, and the commit on the way out.

Staging lives in ``<state>/drafts/<version>/`` (overlay journal, staged data, and a hard link
of the base index it was made against, so pending changes always refer to the same inodes).
When the mount ends the overlay becomes one change-set; if that fails the staging area stays,
``dsfs status`` lists it as pending, and the next mount or ``dsfs commit --pending`` retries.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
from pathlib import Path

from ..config import Settings
from ..errors import Conflict, DsfsError
from ..lease import Lease
from ..repo import CommitSummary, Repository
from ..resolver.build import upgrade_pinned
from ..resolver.index import VersionIndex
from .commit import commit_overlay
from .overlay import Overlay

log = logging.getLogger(__name__)


def stage_dir(settings: Settings, version_id: str) -> Path:
    return settings.state_dir / "drafts" / version_id


def result_path(settings: Settings, mountpoint: str) -> Path:
    from .registry import record_path

    path = record_path(settings.state_dir, mountpoint)
    return path.with_suffix(".result")


def pending_drafts(settings: Settings) -> list[str]:
    root = settings.state_dir / "drafts"
    return sorted(p.name for p in root.iterdir() if (p / "journal.sqlite").exists()) if root.exists() else []


def open_overlay(repo: Repository, version_id: str, read_base) -> Overlay:
    """The draft's overlay, pinning the base index it was (or is now) made against."""
    stage = stage_dir(repo.settings, version_id)
    stage.mkdir(parents=True, exist_ok=True)
    pinned = stage / "base.sqlite"
    if not pinned.exists():
        index = repo.index(repo.catalog.version(version_id))
        os.link(index.path, pinned)
    else:
        upgrade_pinned(str(pinned))  # staged by an older dsfs
    return Overlay(stage, VersionIndex(str(pinned), immutable=False), read_base,
                   durable_close=repo.settings.durable_close)


def discard(settings: Settings, version_id: str) -> None:
    shutil.rmtree(stage_dir(settings, version_id), ignore_errors=True)


def commit_pending(repo: Repository, version_id: str, read_base) -> CommitSummary | None:
    """Commit a staging area left by an earlier mount; None if there was nothing pending."""
    stage = stage_dir(repo.settings, version_id)
    if not (stage / "journal.sqlite").exists():
        return None
    overlay = open_overlay(repo, version_id, read_base)
    try:
        summary = commit_overlay(repo, version_id, overlay)
    finally:
        overlay.close()
    discard(repo.settings, version_id)
    return summary


@dataclasses.dataclass
class DraftSession:
    repo: Repository
    version_id: str
    mountpoint: str
    overlay: Overlay
    lease: Lease
    exit_mode: str = "commit"  # commit | discard | publish

    def commit_now(self) -> CommitSummary:
        if self.lease.lost:
            raise Conflict("lost the draft's lease to another writer; not committing")
        self.overlay.sync()
        return commit_overlay(self.repo, self.version_id, self.overlay)

    def finish(self) -> dict:
        """After unmount: commit, publish or discard, as asked. Returns the result record."""
        result: dict = {"ok": True, "mode": self.exit_mode, "version": self.version_id}
        try:
            if self.exit_mode == "discard":
                self.overlay.close()
                discard(self.repo.settings, self.version_id)
                result["discarded"] = True
            else:
                summary = self.commit_now()
                self.overlay.close()
                discard(self.repo.settings, self.version_id)
                result["summary"] = dataclasses.asdict(summary)
                if self.exit_mode == "publish":
                    self.lease.release()
                    self.repo.publish(self.version_id)
                    result["published"] = True
        except DsfsError as exc:
            log.error("commit of %s failed, changes kept pending: %s", self.version_id, exc)
            result = {"ok": False, "mode": self.exit_mode, "version": self.version_id, "error": str(exc)}
        except Exception as exc:
            log.exception("commit of %s failed, changes kept pending", self.version_id)
            result = {"ok": False, "mode": self.exit_mode, "version": self.version_id,
                      "error": f"{type(exc).__name__}: {exc}"}
        finally:
            with contextlib.suppress(Exception):
                self.overlay.close()
            with contextlib.suppress(Exception):
                self.lease.release()
        path = result_path(self.repo.settings, self.mountpoint)
        path.write_text(json.dumps(result))
        return result
