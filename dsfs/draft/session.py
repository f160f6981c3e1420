"""A writable draft mount's life: lease, staging area, serving, and the commit on the way out.

Staging lives in ``<state>/drafts/<version>/`` (overlay journal, staged data, and a hard link
of the base index it was made against, so pending changes always refer to the same inodes).
When the mount ends the overlay becomes one change-set; if that fails the staging area stays,
``dsfs status`` lists it as pending, and the next mount or ``dsfs commit --pending`` retries.

A commit runs in a thread of its own, watched: one that makes no progress (no byte hashed,
packed or uploaded) for ``commit_stall_timeout`` seconds fails with every change kept pending,
and is left to end on its own (a later commit waits for it: it may still record its change-set,
which the later one then finds already done). A holder whose lease went stale commits nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..config import Settings
from ..errors import Busy, DsfsError, StoreUnavailable
from .lease import Lease
from ..procs import pid_alive
from ..progress import Progress
from ..repo import CommitSummary, Repository
from ..resolver.build import upgrade_pinned
from ..resolver.index import VersionIndex
from .commit import commit_overlay
from .overlay import Overlay

log = logging.getLogger(__name__)


def stage_dir(settings: Settings, version_id: str) -> Path:
    return settings.state_dir / "drafts" / version_id


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
    """Remove a staging area. It is renamed aside at once and deleted by a detached, low-priority
    ``rm`` (20k staged files took 2-3 s to delete, which ``dsfs umount`` waited for); one left by
    an ``rm`` that did not finish is deleted with the next one."""
    stage = stage_dir(settings, version_id)
    trash = settings.state_dir / "trash"
    doomed = trash / f"{version_id}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        trash.mkdir(parents=True, exist_ok=True)
        os.rename(stage, doomed)
    except FileNotFoundError:
        return
    except OSError as exc:
        log.warning("could not move %s aside (%s): deleting it in place", stage, exc)
        shutil.rmtree(stage, ignore_errors=True)
        return
    leftovers = [str(p) for p in trash.iterdir() if p != doomed and not _being_removed(p)]
    try:
        subprocess.Popen(["nice", "-n", "19", "rm", "-rf", "--", str(doomed), *leftovers],
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    except OSError as exc:  # no rm or nice: delete it here
        log.warning("could not start rm (%s): deleting %s in place", exc, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def _being_removed(path: Path) -> bool:
    """Whether the process that moved ``path`` aside (its name says which) may still be
    deleting it."""
    try:
        return pid_alive(int(path.name.split("-")[-2]))
    except (IndexError, ValueError):
        return False


def commit_pending(repo: Repository, version_id: str, read_base) -> CommitSummary | None:
    """Commit a staging area left by an earlier mount; None if there was nothing pending."""
    stage = stage_dir(repo.settings, version_id)
    if not (stage / "journal.sqlite").exists():
        return None
    overlay = open_overlay(repo, version_id, read_base)
    overlay.freeze()  # no mount has it: nothing else changes it
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
    progressed: float = dataclasses.field(default_factory=time.monotonic)  # last commit progress
    committing: threading.Lock = dataclasses.field(default_factory=threading.Lock)
    # Shows a problem in `dsfs status` (the daemon writes it into the mount's record); None: none.
    note: Callable[[str | None], None] = lambda problem: None
    failed: str | None = None  # why the last commit failed

    def __post_init__(self) -> None:
        session = self
        self.lease.on_stale = lambda stale: self._report()

        class Watched(Progress):
            """The daemon draws no bar: progress only marks the commit as alive."""

            def __call__(self, amount: int) -> None:
                session.progressed = time.monotonic()
                super().__call__(amount)

        self.repo.progress = lambda label, total: Watched(label, total, enabled=False)

    def _report(self) -> None:
        if self.lease.stale:
            self.note("the lease could not be renewed for longer than its TTL: commits are refused")
        else:
            self.note(self.failed and f"the last commit failed, changes kept pending: {self.failed}")

    def commit_now(self) -> CommitSummary:
        """Sync the overlay and commit it; raise if it fails or stalls (the changes stay)."""
        try:
            summary = self._commit()
        except DsfsError as exc:
            self.failed = str(exc)
            self._report()
            raise
        if self.failed:
            self.failed = None
            self._report()
        return summary

    def _commit(self) -> CommitSummary:
        self.lease.check()
        stall = self.repo.settings.commit_stall_timeout
        if not self.committing.acquire(timeout=stall):
            raise Busy(f"an earlier commit of {self.version_id} is still running; try again later")
        outcome: dict = {}

        def run() -> None:
            try:
                outcome["summary"] = commit_overlay(self.repo, self.version_id, self.overlay)
            except BaseException as exc:
                outcome["error"] = exc
                # The changes stay pending: make them durable now. A commit that succeeds needs no
                # fsync of each staged file first: its bytes are in the store, fsync'd there.
                with contextlib.suppress(Exception):
                    self.overlay.sync()
            finally:
                self.committing.release()

        self.progressed = time.monotonic()
        worker = threading.Thread(target=run, name="dsfs-commit", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.5)
            if worker.is_alive() and time.monotonic() - self.progressed > stall:
                log.error("commit of %s made no progress for %g s; its changes are kept pending",
                          self.version_id, stall)
                raise StoreUnavailable(f"the commit made no progress for {stall:g} s (is the store "
                                       "reachable?); the changes are kept pending")
        if "error" in outcome:
            raise outcome["error"]
        return outcome["summary"]

    def finish(self) -> dict:
        """After unmount: commit, publish or discard, as asked. Returns the result record (the
        daemon leaves it for ``dsfs umount``)."""
        self.note = lambda problem: None  # the mount's record is gone: the result tells instead
        result: dict = {"ok": True, "mode": self.exit_mode, "version": self.version_id}
        try:
            if self.exit_mode == "discard":
                self.overlay.close()
                discard(self.repo.settings, self.version_id)
                result["discarded"] = True
            else:
                self.overlay.release_all()
                self.overlay.freeze()  # the mount is gone
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
        return result
