"""Mount-related commands: mount, umount, status, prefetch, cache."""

from __future__ import annotations

import concurrent.futures
import json
import os
import sys

from ..errors import InvalidInput, NotFound
from ..progress import human_size
from .options import MountOptions, add_arguments


def _open_cache(settings, store=None):
    from ..cache import open_cache

    return open_cache(settings, store)


def cmd_mount(settings, args):
    from .control import daemon_argv, spawn

    options = MountOptions.from_args(args)
    if args.foreground:
        from .daemon import main as daemon_main

        return daemon_main(["--foreground", *daemon_argv(settings, args.ref, args.mountpoint, options,
                                                         args.config)])
    record = spawn(settings, args.ref, args.mountpoint, options, config=args.config, fork=True)
    if not args.quiet:
        mode = "read-write" if record.writable else "read-only"
        print(f"mounted {record.dataset} {record.version[:12]} ({record.state}, {mode}) at "
              f"{record.mountpoint}", file=sys.stderr)
        if record.note:
            print(f"dsfs: {record.note}", file=sys.stderr)


cmd_mount.needs_repo = False


def cmd_umount(settings, args):
    from .control import unmount

    if args.publish and args.discard:
        raise InvalidInput("--publish and --discard exclude each other")
    mode = "publish" if args.publish else "discard" if args.discard else None
    if mode == "discard" and not args.yes:
        if not sys.stdin.isatty():
            raise InvalidInput("refusing to discard pending changes without --yes (no terminal to ask)")
        answer = input(f"discard every uncommitted change in {args.mountpoint}? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            raise InvalidInput("not discarding; nothing changed")
    note = unmount(settings, args.mountpoint, lazy=args.lazy, mode=mode)
    if not args.quiet:
        print(f"{note}: {os.path.abspath(args.mountpoint)}", file=sys.stderr)


cmd_umount.needs_repo = False


def cmd_status(settings, args):
    from .control import status

    mounts = status(settings)
    used = limit = 0
    if mounts:
        cache = _open_cache(settings)
        stats = cache.stats()
        cache.close()
        used = stats["size"]
        # Each daemon bounds the shared cache by its own --cache-size; show the mounts' bound.
        limit = max((m.get("cache_limit") or 0 for m in mounts), default=0) or stats["limit"]
        for m in mounts:
            m["cache_used"] = used  # one cache is shared by every mount
    if args.json:
        json.dump(mounts, sys.stdout, indent=1)
        sys.stdout.write("\n")
        return
    if not mounts:
        print("no dsfs mounts", file=sys.stderr)
    for m in mounts:
        if m["health"] == "pending":
            print(f"(not mounted)  {m['version'][:12]}  pending  {m['note']}")
            continue
        mode = "rw" if m.get("writable") else "ro"
        print(f"{m['mountpoint']}  {m['ref']}  {m['version'][:12]}  {m['state']} {mode}  "
              f"pid {m['pid']}  {m['health']}{_warm_note(m.get('warm'))}")
        if m.get("problem"):
            print(f"  {m['problem']}")
    if mounts:
        print(f"cache: {human_size(used)} used of {human_size(limit)}")


cmd_status.needs_repo = False


def _warm_note(warm: dict | None) -> str:
    if not warm:
        return ""
    total, done = warm.get("total") or 0, warm.get("done") or 0
    share = f" {100 * done // total}%" if total else ""
    return f"  warm {warm.get('state')}{share} ({human_size(done)} of {human_size(total)})"


def cmd_commit(repo, args):
    """Commit a writable mount's closed changes now, or a staging area left pending."""
    from .control import request

    if (args.mountpoint is None) == (args.pending is None):
        raise InvalidInput("give a MOUNTPOINT or --pending VERSION")
    if args.pending is not None:
        from ..draft.lease import check_not_leased
        from ..draft import session as draft
        from .view import VersionView

        manifest = repo.resolve(args.pending)
        check_not_leased(repo.store, manifest.id)
        cache = _open_cache(repo.settings, repo.store)
        try:
            view = VersionView(manifest, repo.index(manifest), repo.store, cache)
            summary = draft.commit_pending(repo, manifest.id, view.read)
        finally:
            cache.close()
        if summary is None:
            raise NotFound(f"no pending changes for {manifest.id!r}")
        doc = summary.__dict__
    else:
        doc = request(args.mountpoint, {"op": "commit"})["summary"]
    if args.json:
        json.dump(doc, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        from ..repo import CommitSummary

        print(CommitSummary(**doc).describe())


def cmd_prefetch(settings, args):
    """``TARGET`` a dsfs mountpoint: tell it the read order; else a ref: warm the cache now."""
    from . import registry

    target = os.path.abspath(args.target)
    if args.order is not None or registry.mount_fstype(target) == registry.FSTYPE:
        return _prefetch_mount(target, args)
    from ..repo import Repository

    repo = Repository(settings)
    if args.quiet:
        from ..progress import Progress

        repo.progress = lambda label, total: Progress(label, total, enabled=False)
    args.ref = args.target
    return _prefetch_ref(repo, args)


cmd_prefetch.needs_repo = False


def _prefetch_mount(mountpoint: str, args) -> None:
    from . import registry
    from .control import prefetch

    if registry.mount_fstype(mountpoint) != registry.FSTYPE:  # before reading a long order
        raise NotFound(f"not a dsfs mount: {mountpoint!r}")
    paths = list(args.paths)
    if args.order is not None:
        try:
            with (sys.stdin if args.order == "-" else open(args.order, encoding="utf-8",
                                                           errors="surrogateescape")) as f:
                paths += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as exc:
            raise InvalidInput(f"cannot read the order file {args.order!r}: {exc.strerror or exc}") from None
    count = prefetch(mountpoint, paths or [""])
    if not args.quiet:
        print(f"order of {count} paths sent to {mountpoint}", file=sys.stderr)


def _prefetch_ref(repo, args):
    manifest = repo.resolve(args.ref)
    index = repo.index(manifest)
    nodes = []
    for path in args.paths or [""]:
        rel = path.strip("/")
        if rel and index.by_path(rel) is None:
            raise NotFound(f"no such path in {manifest.name!r}: {path!r}")
        nodes += [n for n in index.walk(rel) if n.chunk is not None]
    cache = _open_cache(repo.settings, repo.store)
    try:
        with repo.progress("prefetching", sum(n.size for n in nodes)) as bar:
            with concurrent.futures.ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(cache.prefetch, repo.store, n.to_entry()) for n in nodes]
                for fut, node in zip(futures, nodes):
                    fut.result()
                    bar(node.size)
    finally:
        cache.close()
    if args.quiet:
        return
    if cache.persist:
        print(f"{len(nodes)} files warm in the cache", file=sys.stderr)
    else:
        print(f"{len(nodes)} files checked; a local-folder store is read in place, not cached "
              "(set cache_local_store: true to cache it)", file=sys.stderr)


def cmd_cache(settings, args):
    cache = _open_cache(settings)
    try:
        if args.action == "prune":
            cache.prune()
        elif args.action == "clear":
            cache.clear()
        stats = cache.stats()
    finally:
        cache.close()
    if args.json:
        json.dump(stats, sys.stdout, indent=1)
        sys.stdout.write("\n")
    else:
        print(f"{human_size(stats['size'])} used of {human_size(stats['limit'])}, "
              f"{stats.get('count', 0)} blocks")


cmd_cache.needs_repo = False


def add_commands(sub, command) -> None:
    sp = command("mount", cmd_mount, "mount a version as a folder")
    sp.add_argument("ref", help="the version (a draft mounts writable)")
    sp.add_argument("mountpoint", help="an empty folder")
    sp.add_argument("--foreground", action="store_true", help="serve in this process")
    add_arguments(sp)

    sp = command("umount", cmd_umount, "unmount; a writable draft commits its changes first")
    sp.add_argument("mountpoint", help="where the version is mounted")
    sp.add_argument("--lazy", action="store_true", help="detach now even if files are open")
    sp.add_argument("--publish", action="store_true", help="publish the draft after the commit")
    sp.add_argument("--discard", action="store_true", help="drop the pending changes instead")
    sp.add_argument("--yes", action="store_true", help="do not ask before discarding")

    sp = command("commit", cmd_commit, "commit a writable mount's closed changes now", json_flag=True)
    sp.add_argument("mountpoint", nargs="?", help="a writable draft mount")
    sp.add_argument("--pending", metavar="VERSION", help="commit changes a failed unmount left pending")

    command("status", cmd_status, "list live mounts", json_flag=True)

    sp = command("prefetch", cmd_prefetch,
                 "warm the cache with a version's files, or tell a mount the order it will be read in")
    sp.add_argument("target", metavar="REF|MOUNTPOINT",
                    help="a version (warm its files now) or a published mount (prefetch ahead of its reads)")
    sp.add_argument("paths", nargs="*", metavar="PATH", help="files or folders inside it (default: all)")
    sp.add_argument("--order", metavar="FILE",
                    help="with a MOUNTPOINT: paths in read order, one a line ('-': stdin)")

    sp = command("cache", cmd_cache, "cache stats, prune or clear", json_flag=True)
    sp.add_argument("action", choices=["stats", "prune", "clear"],
                    help="stats: show use; prune: shrink to the bound; clear: empty it")
