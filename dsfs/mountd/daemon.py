"""The mount daemon: resolve a ref, check the mountpoint, mount, serve, clean up.

``dsfs mount`` runs ``main`` in a detached child it forks off itself (the Python API, in one it
starts with ``python -m dsfs.mountd.daemon``; see control.spawn) and waits on a pipe for one line: ``ready``, ``error <ErrorClass>: <message>`` (so the caller raises the
same class and exits with its code) or ``error: <message>`` for a bug; ``--foreground`` (and systemd) run it
in the calling process. Readiness also goes to systemd (READY=1 / STOPPING=1).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import json
import logging
import os
import re
import sys
import threading
from pathlib import Path

from ..config import Settings, load_settings
from ..errors import DsfsError, InvalidInput, MountError
from . import registry
from .registry import log_file
from .notify import sd_notify
from .options import MountOptions, add_arguments

log = logging.getLogger("dsfs.mountd")


def check_mountpoint(mountpoint: str, *, nonempty: bool = False) -> str:
    path = os.path.abspath(mountpoint)
    if registry.is_stale(path):
        raise MountError(f"mountpoint has a stale mount (transport endpoint is not connected): {path!r}; "
                         "run 'dsfs umount' on it first")
    if not os.path.exists(path):
        raise MountError(f"mountpoint does not exist: {path!r}")
    if not os.path.isdir(path):
        raise MountError(f"mountpoint is not a folder: {path!r}")
    if registry.mount_fstype(path) is not None:
        raise MountError(f"mountpoint is already a mount: {path!r}")
    if not nonempty and os.listdir(path):
        raise MountError(f"mountpoint is not empty: {path!r}")
    return path


def setup_logging(path: Path, *, verbose: bool, to_stderr: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(path)]
    if to_stderr:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        h.setFormatter(fmt)
        root.addHandler(h)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)


def serve(settings: Settings, ref: str, mountpoint: str, options: MountOptions = MountOptions(), *,
          ready=lambda: None, log_path: str = "") -> int:
    """Resolve, mount and serve until unmounted. Calls ``ready()`` once the mount works."""
    from ..cache import open_cache
    from ..catalog import Catalog
    from ..resolver import ViewBuilder, resolve_ref
    from ..resolver.index import VersionIndex
    from ..store import open_store
    from .view import VersionView

    from .libfuse import find as find_libfuse3

    find_libfuse3()  # every adapter needs it: one clear line, not an ImportError, when it is missing
    mountpoint = check_mountpoint(mountpoint, nonempty="nonempty" in options.fuse)
    store = open_store(settings.store, settings)  # not a Repository: its write path is not needed here
    catalog = Catalog(store)
    manifest = resolve_ref(catalog, ref)
    index = ViewBuilder(catalog, settings.index_dir).index_for(manifest)
    writable = manifest.state == "draft" and not options.read_only
    pin = None
    if not manifest.is_published and not writable:
        # A draft's index file is replaced (and the old one deleted) when anyone adds a
        # change-set; a read-only mount keeps serving the state it mounted, through a hard link.
        pin = _pin_index(settings, index.path)
        index = VersionIndex(str(pin), immutable=False)
    cache = open_cache(settings, store, size_limit=options.cache_bytes)
    view = VersionView(manifest, index, store, cache)
    # A draft caught mid-publish ("publishing") takes no more change-sets: serve it read-only.
    adapter = options.adapter
    if adapter == "auto":
        adapter = "direct" if manifest.is_published else "lowlevel"
    if writable:
        adapter = "writable"
    record = registry.MountRecord(
        mountpoint=mountpoint, ref=ref, version=manifest.id, dataset=manifest.dataset,
        state=manifest.state, writable=writable, pid=os.getpid(),
        started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), adapter=adapter,
        log=log_path, cache_dir=settings.cache_dir,
        # A local store's mount caches nothing on disk: it opens the disk tier only for a bound given.
        cache_limit=cache.size_limit if cache.persist or options.cache_size or settings.cache_size else 0)
    prefetch = None
    record_lock = threading.Lock()  # the warm thread rewrites the record too (one temp file)
    if adapter == "direct":
        from .prefetchd import PrefetchService

        def on_progress(progress: dict) -> None:
            with record_lock:
                record.warm = progress
                registry.write_record(settings.state_dir, record)

        prefetch = PrefetchService(view, workers=2 if store.is_local else 4, on_progress=on_progress,
                                   prepare=settings.prefetch_local or not store.is_local)
    elif options.warm:
        raise InvalidInput("--warm needs a published version mounted with the direct adapter")

    def tune_then_ready() -> None:
        from .kernel import set_read_ahead

        # The mount is reported ready only after this: the stat child that finds the device is
        # inside the mount while it waits, and an umount right after "mounted" would find it busy.
        kib = set_read_ahead(mountpoint, settings.read_ahead)
        with record_lock:
            record.read_ahead_kb = kib
            registry.write_record(settings.state_dir, record)
        log.info("mounted %s (%s@%s) at %s with the %s adapter", manifest.id, manifest.dataset,
                 manifest.name, mountpoint, adapter)
        sd_notify("READY=1")
        ready()

    def on_ready() -> None:
        with record_lock:
            if prefetch is not None:
                prefetch.start(mountpoint, warm=options.warm)
                record.warm = dict(prefetch.warm) if prefetch.warm else None
            registry.write_record(settings.state_dir, record)
        # The kernel sets the read-ahead when it gets the INIT answer, which this callback comes
        # before: tune in a thread of its own, after that answer.
        threading.Thread(target=tune_then_ready, name="dsfs-tune", daemon=True).start()

    fuse_options = options.fuse_options
    if not any(o.startswith("fsname=") for o in fuse_options):
        fuse_options.append(f"fsname={_fsname(ref)}")
    if writable:
        from ..repo import Repository

        repo = Repository(settings, store)

        def note(problem: str | None) -> None:
            with record_lock:
                record.problem = problem
                registry.write_record(settings.state_dir, record)

        def took_over(holder: str) -> None:
            record.note = f"took over the lease of the draft from a writer that died ({holder})"

        return _serve_draft(repo, manifest, view, cache, mountpoint, fuse_options, on_ready,
                            break_lease=options.break_lease, settings=settings, note=note,
                            took_over=took_over)
    try:
        if adapter == "direct":
            from . import direct

            # Python work is GIL-bound: a few workers serve a local folder best, no more than the
            # CPUs (on 2 cores, 2 workers read 5-10 % more small files than 4, with a fifth less
            # daemon CPU per file: bench_mount); two at least, so one's disk read overlaps the
            # other's work. A remote store's misses wait on the network, so they get more.
            workers = min(4, max(2, os.cpu_count() or 2)) if store.is_local else 16
            direct.serve(view, mountpoint, fuse_options, on_ready, max_threads=workers, prefetch=prefetch)
        else:
            from . import lowlevel

            lowlevel.serve(view, mountpoint, fuse_options, on_ready)
    finally:
        sd_notify("STOPPING=1")
        if prefetch is not None:
            prefetch.close()
        registry.remove_record(settings.state_dir, mountpoint, os.getpid())
        cache.close()
        index.close()
        if pin is not None:
            pin.unlink(missing_ok=True)
        log.info("unmounted %s", mountpoint)
    return 0


def _fsname(ref: str) -> str:
    """The mount's source as mount(8) and /proc/mounts show it: the ref as given, so ``mount -a``
    sees an fstab line as mounted; "dsfs" for a ref that FUSE's option syntax or the mount table
    would have to escape."""
    return ref if re.fullmatch(r"[A-Za-z0-9._@+:-]{1,200}", ref) else "dsfs"


def _pin_index(settings: Settings, path: str) -> Path:
    pins = settings.state_dir / "pins"
    pins.mkdir(parents=True, exist_ok=True)
    for old in pins.glob("*.sqlite"):  # left by daemons that died
        with contextlib.suppress(ValueError, FileNotFoundError):
            if not registry.pid_alive(int(old.stem.partition("-")[0])):
                old.unlink()
    pin = pins / f"{os.getpid()}-{Path(path).name}"
    pin.unlink(missing_ok=True)
    os.link(path, pin)
    return pin


def _serve_draft(repo, manifest, view, cache, mountpoint, options, on_ready, *, break_lease, settings,
                 note, took_over) -> int:
    from ..draft.lease import Lease
    from ..store import open_store
    from ..draft import session as draft
    from . import writable

    # The heartbeat gets a store client of its own: an upload hogging (or hung in) the main one
    # never holds up a renewal.
    lease = Lease.acquire(open_store(settings.store, settings), manifest.id, mountpoint,
                          break_lease=break_lease)
    if lease.took_over:
        took_over(lease.took_over)
    try:
        try:
            earlier = draft.commit_pending(repo, manifest.id, view.read)
            if earlier is not None:
                log.info("committed changes left pending by an earlier mount of %s", manifest.id)
        except DsfsError as exc:
            log.warning("changes pending from an earlier mount of %s still cannot be committed "
                        "(%s); they stay staged in this mount", manifest.id, exc)
        overlay = draft.open_overlay(repo, manifest.id, view.read)
    except BaseException:
        lease.release()
        raise
    lease.start_heartbeat()
    session = draft.DraftSession(repo, manifest.id, mountpoint, overlay, lease, note=note)
    result_file = registry.result_path(settings.state_dir, mountpoint)
    result_file.unlink(missing_ok=True)
    try:
        writable.serve(session, mountpoint, options, on_ready)
    finally:
        sd_notify("STOPPING=1")
        registry.remove_record(settings.state_dir, mountpoint, os.getpid())
        log.info("unmounted %s; finishing (%s)", mountpoint, session.exit_mode)
        result = session.finish()
        result_file.write_text(json.dumps(result))
        cache.close()
    return 0 if result["ok"] else 1


MMAP_THRESHOLD = 9 << 20  # a 4 MiB block, its envelope and a join of its pieces all fit under it


def _fix_malloc_thresholds() -> None:
    """Serve big buffers from two heap arenas instead of fresh memory maps.

    Blocks (4 MiB), a block in its disk-cache envelope and a read's joined pieces are allocated
    and freed again and again: as an mmap each, every one was faulted in page by page and unmapped
    after (about a tenth of the daemon's CPU on a cold S3 read; a 1 MiB write request's bytes
    object cost a draft daemon 15 % of its CPU the same way). Below this threshold they come from
    the heap and its pages are used again. glibc would otherwise give each worker thread an arena
    of its own, each keeping its peak size, and the RSS would grow with the threads: two arenas
    keep it flat (the GIL serializes most allocations anyway). Measured on a cold 512 MiB S3 read:
    374-396 against 325-328 MB/s, peak RSS 132-135 against 128-138 MiB. A fixed threshold also
    turns off glibc's dynamic one, which rises to the largest chunk ever freed."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, MMAP_THRESHOLD)  # M_MMAP_THRESHOLD
        libc.mallopt(-8, 2)  # M_ARENA_MAX


def main(argv: list[str] | None = None) -> int:
    _fix_malloc_thresholds()
    p = argparse.ArgumentParser(prog="dsfs-mountd")
    p.add_argument("--store")
    p.add_argument("--cache-dir")
    p.add_argument("--config")
    p.add_argument("--ready-fd", type=int)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("-v", "--verbose", action="store_true")
    add_arguments(p)
    p.add_argument("ref")
    p.add_argument("mountpoint")
    args = p.parse_args(argv)
    ready_pipe = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None

    def tell(line: str) -> None:
        nonlocal ready_pipe
        if ready_pipe is not None:
            try:
                ready_pipe.write(line + "\n")
                ready_pipe.close()
            except OSError:
                pass
            ready_pipe = None

    try:
        settings = load_settings(store=args.store, cache_dir=args.cache_dir, config=args.config)
        path = log_file(settings, args.mountpoint)
        under_systemd = "INVOCATION_ID" in os.environ or "NOTIFY_SOCKET" in os.environ
        setup_logging(path, verbose=args.verbose, to_stderr=args.foreground or under_systemd)
        return serve(settings, args.ref, args.mountpoint, MountOptions.from_args(args),
                     ready=lambda: tell("ready"), log_path=str(path))
    except DsfsError as exc:
        log.error("mount failed: %s", exc)
        tell(f"error {type(exc).__name__}: {exc}")
        if args.foreground:
            print(f"dsfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        log.exception("mount failed")
        tell(f"error: {type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
