"""The ``dsfs`` command line: argument parsing and output over the Python API (dsfs/sdk.py) and
the ``Repository`` operations it is made of; no operation is implemented here.

Global options work before or after the command. Errors print one line on stderr and exit with
their class's code (``errors.EXIT_CODES``; usage errors exit 2, as argparse's do); nothing a user
does wrong prints a traceback (``-v`` shows one for bugs).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import logging
import os
import signal
import stat
import sys
import threading
import time

from . import __version__
from .config import load_settings
from .errors import EXIT_CODES, Corrupt, DsfsError, InvalidInput
from .paths import name_bytes
from .progress import human_size, plural

log = logging.getLogger("dsfs")


def _meta(values: list[str] | None) -> dict:
    result = {}
    for item in values or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"metadata must be KEY=VALUE: {item!r}")
        result[key] = value
    return result


def _print_json(doc) -> None:
    json.dump(doc, sys.stdout, indent=1, ensure_ascii=False)
    sys.stdout.write("\n")


def _node_json(node) -> dict:
    target = _name_json("target", node.target) if node.target is not None else {"target": None}
    return {**_name_json("path", node.path), "type": node.type, "size": node.size, "sha256": node.sha256,
            "mode": f"{node.mode:04o}", "mtime_ns": node.mtime_ns, **target, "version": node.version}


def _text(text: str) -> str:
    """``text`` as valid UTF-8 text: the bytes of a name in it that are not UTF-8 as U+FFFD."""
    return name_bytes(text).decode("utf-8", "replace")


def _name_json(key: str, name: str) -> dict:
    """A name for JSON output: as text when its bytes are UTF-8; else the text with U+FFFD for
    each bad byte, plus ``KEY_b64``, the exact bytes in base64 (docs/FORMAT.md)."""
    raw = name_bytes(name)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "replace"), f"{key}_b64": base64.b64encode(raw).decode()}


def _version_json(v) -> dict:
    return {"id": v.id, "dataset": v.dataset, "name": v.name, "state": v.state, "parents": v.parents,
            "created": v.created, "published": v.published, "comment": v.comment,
            "metadata": v.metadata, "changesets": len(v.changesets)}


# -- commands ---------------------------------------------------------------------------------


def cmd_create(repo, args):
    v = repo.create(args.dataset, parents=args.parent, root=args.root, name=args.name,
                    project=args.project or "", tags=args.tag, description=args.description or "",
                    comment=args.comment or "", metadata=_meta(args.meta))
    print(v.id)
    others = [o for o in repo.catalog.versions(v.dataset) if not o.is_published and o.id != v.id]
    if others and not args.quiet:
        names = ", ".join(f"{o.dataset}@{o.name}" for o in sorted(others, key=lambda o: o.created))
        print(f"dsfs: note: dataset {v.dataset!r} has other drafts: {names}; {v.dataset}@draft is "
              f"ambiguous now, name drafts as {v.dataset}@NAME (this one is {v.dataset}@{v.name})",
              file=sys.stderr)


cmd_create.creates_store = True  # the one command that may start a new store


def cmd_add(repo, args):
    from .sdk import DatasetVersion
    s = DatasetVersion.get(args.ref).add_files(args.paths, wildcard=args.wildcard,
                                               recursive=not args.non_recursive, dataset_path=args.dest or "",
                                               strict=args.strict)
    _report(args, s)


def cmd_remove(repo, args):
    from .sdk import DatasetVersion
    _report(args, DatasetVersion.get(args.ref).remove_files(args.patterns, recursive=not args.non_recursive))


def cmd_sync(repo, args):
    from .sdk import DatasetVersion
    _report(args, DatasetVersion.get(args.ref).sync_folder(args.folder, dataset_path=args.dest or "",
                                                           strict=args.strict))


def _report(args, summary):
    if args.json:
        _print_json({"version": summary.version_id, "changeset": summary.changeset,
                     "added": summary.added, "modified": summary.modified, "removed": summary.removed,
                     "bytes_uploaded": summary.bytes_uploaded, "bytes_dedup": summary.bytes_dedup,
                     "folders": summary.folders})
    else:
        print(summary.describe())


def cmd_publish(repo, args):
    from .sdk import DatasetVersion
    print(DatasetVersion.get(args.ref).publish_version(name=args.name).id)


def cmd_snapshot(repo, args):
    snap, child = repo.snapshot(args.dataset, name=args.name, child_name=args.child_name,
                                child_comment=args.child_comment or "", child_metadata=_meta(args.child_meta))
    if args.json:
        _print_json({"snapshot": _version_json(snap), "current": _version_json(child)})
    else:
        print(f"snapshot {snap.id} ({snap.name}); current draft {child.id} ({child.name})")


def cmd_datasets(repo, args):
    from .sdk import Dataset
    records = [d.record for d in Dataset.list(project=args.project, tag=args.tag, partial_name=args.partial_name)]
    if args.json:
        _print_json([{"name": r.name, "project": r.project, "tags": r.tags,
                      "description": r.description, "created": r.created,
                      "versions": len(r.versions)} for r in records])
        return
    for r in records:
        tags = f" [{', '.join(r.tags)}]" if r.tags else ""
        project = f" ({r.project})" if r.project else ""
        print(f"{r.name}{project}{tags}  {plural(len(r.versions), 'version')}")


def cmd_versions(repo, args):
    from .sdk import DatasetVersion
    versions = [v.manifest for v in DatasetVersion.get_versions(args.dataset, only_published=args.published,
                                                                only_draft=args.drafts)]
    if args.json:
        _print_json([_version_json(v) for v in versions])
        return
    for v in versions:
        print(f"{v.id[:12]}  {v.state:<9}  {v.created[:19]}  {v.name}")


def cmd_show(repo, args):
    v = repo.resolve(args.ref)
    index = repo.index(v)
    doc = _version_json(v) | {"files": index.files, "bytes": index.total_size,
                              "changeset_list": [c.__dict__ for c in v.changesets]}
    if args.json:
        _print_json(doc)
        return
    print(f"version   {v.id}\ndataset   {v.dataset}\nname      {v.name}\nstate     {v.state}")
    print(f"parents   {', '.join(v.parents) or '(none)'}\ncreated   {v.created}")
    if v.published:
        print(f"published {v.published}")
    if v.comment:
        print(f"comment   {v.comment}")
    for k, val in v.metadata.items():
        print(f"meta      {k}={val}")
    print(f"content   {plural(index.files, 'file')}, {human_size(index.total_size)}")
    for c in v.changesets:
        print(f"changeset {c.id}: {plural(c.entries, 'entry')}, {plural(c.removals, 'removal')}, "
              f"{human_size(c.bytes_new)} new, {human_size(c.bytes_dedup)} deduplicated")


def cmd_log(repo, args):
    root = repo.resolve(args.ref)
    seen: dict[str, object] = {}
    lines: list[str] = []
    nodes: list[dict] = []

    def draw(v, prefix: str, last: bool, top: bool) -> None:
        connector = "" if top else ("└── " if last else "├── ")
        label = f"{v.id[:12]} {v.dataset}@{v.name} [{v.state}]"
        if v.id in seen:
            lines.append(f"{prefix}{connector}{label} (shown above)")
            return
        seen[v.id] = v
        nodes.append(_version_json(v))
        lines.append(f"{prefix}{connector}{label}" + (f"  {v.comment}" if v.comment else ""))
        child_prefix = prefix + ("" if top else ("    " if last else "│   "))
        for i, pid in enumerate(v.parents):
            draw(repo.catalog.version(pid), child_prefix, i == len(v.parents) - 1, False)

    draw(root, "", True, True)
    if args.json:
        _print_json(nodes)
    else:
        print("\n".join(lines))


def cmd_tag(repo, args):
    from .sdk import Dataset
    dataset = Dataset.get(args.dataset)
    if args.add:
        dataset.add_tags(args.add)
    if args.remove:
        dataset.remove_tags(args.remove)
    if args.json:
        _print_json(dataset.tags)
    else:
        print(", ".join(dataset.tags))


def _mode_string(node) -> str:
    kind = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK}.get(node.type, stat.S_IFREG)
    return stat.filemode(kind | node.mode)


def cmd_ls(repo, args):
    nodes = repo.ls(args.ref, args.path or "", recursive=args.recursive)
    if args.json:
        _print_json([_node_json(n) for n in nodes])
        return
    for n in nodes:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(n.mtime_ns / 1e9))
        name = n.path + ("/" if n.is_dir else "") + (f" -> {n.target}" if n.target else "")
        print(f"{_mode_string(n)} {n.size:>12} {when} {n.version[:8]} {name}")


def cmd_diff(repo, args):
    result = repo.diff(args.ref_a, args.ref_b)
    if args.json:
        _print_json({k: [_node_json(n) for n in v] for k, v in result.items()})
        return
    marks = {"added": "+", "modified": "M", "removed": "-"}
    rows = sorted((n.path, marks[k]) for k, v in result.items() for n in v)
    for path, mark in rows:
        print(f"{mark} {path}")
    print(f"{plural(len(result['added']), 'file')} added, {len(result['modified'])} modified, "
          f"{len(result['removed'])} removed", file=sys.stderr)


def cmd_get(repo, args):
    n = repo.get(args.ref, args.dest, overwrite=args.overwrite)
    if not args.quiet:
        print(f"{plural(n, 'file')} in {args.dest}", file=sys.stderr)


def cmd_verify(repo, args):
    from .sdk import DatasetVersion
    problems = DatasetVersion.get(args.ref).verify(hash=args.hash)
    if args.json:
        # Each problem as valid UTF-8 text (a byte of a name that is not: U+FFFD), and each one
        # about a file also under "files", with the name's exact bytes where they are not UTF-8.
        _print_json({"ok": not problems, "problems": [_text(p) for p in problems],
                     "files": [{"problem": _text(p), **_name_json("path", p.path)}
                               for p in problems if getattr(p, "path", None) is not None]})
    else:
        for p in problems:
            print(p)
        print("ok" if not problems else plural(len(problems), "problem"), file=sys.stderr)
    return Corrupt.exit_code if problems else 0


def cmd_squash(repo, args):
    from .sdk import DatasetVersion
    print(DatasetVersion.squash(args.dataset, args.refs, version_name=args.name).id)


def cmd_delete(repo, args):
    from .sdk import Dataset
    if args.dataset:
        if args.ref:
            raise InvalidInput("give a REF or --dataset NAME, not both")
        n = Dataset.delete(args.dataset, delete_all_versions=args.all_versions, force=args.force)
        print(f"deleted dataset {args.dataset!r} and {plural(n, 'version')}", file=sys.stderr)
    elif args.ref:
        v = repo.delete_version(args.ref, force=args.force)
        print(f"deleted version {v.id} ({v.dataset}@{v.name})", file=sys.stderr)
    else:
        raise InvalidInput("delete needs a REF or --dataset NAME")


def cmd_gc(repo, args):
    doomed = repo.gc(grace_seconds=args.grace, dry_run=args.dry_run)
    if args.json:
        _print_json(doomed)
    else:
        for key in doomed:
            print(key)
        print(f"{'would remove' if args.dry_run else 'removed'} {plural(len(doomed), 'object')}", file=sys.stderr)


# -- parser -----------------------------------------------------------------------------------


DESCRIPTION = """\
Mount versions of datasets as folders.

A dataset is a named collection of versions: drafts you change, and published versions that
never change. Commands name a version with a REF:

  ID, or a unique prefix of at least 6 hex digits   a version by id
  DATASET@NAME                                      a version by name (names are unique per dataset)
  DATASET@draft                                     the dataset's single draft
  DATASET                                           the dataset's latest published version
"""

EPILOG = """\
examples:
  V=$(dsfs create pets)                 a draft (and the dataset, if new); prints its id
  dsfs add $V ~/data/pets               copy a folder into the draft
  dsfs publish $V                       make it read-only for ever
  dsfs ls pets -r                       list the latest published version
  dsfs mount pets /mnt/pets             mount it read-only; bytes are fetched on first read
  dsfs mount pets@draft /mnt/work       mount a draft writable; umount records the changes
  dsfs versions pets --store s3://bucket/prefix -q

Global options work before or after the command. `dsfs COMMAND --help` describes a command.

""" + EXIT_CODES + "\n"


def _global_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """The options every command takes, before or after its name. After the name they default
    to SUPPRESS, so they never overwrite a value given before it."""
    value = None if top else argparse.SUPPRESS
    flag = False if top else argparse.SUPPRESS
    parser.add_argument("--store", default=value, metavar="STORE",
                        help="a folder or s3://bucket/prefix (env DSFS_STORE)")
    parser.add_argument("--cache-dir", default=value, metavar="DIR",
                        help="local cache, index and state folder (env DSFS_CACHE_DIR)")
    parser.add_argument("--config", default=value, metavar="FILE",
                        help="config file, yaml (env DSFS_CONFIG)")
    parser.add_argument("-v", "--verbose", action="store_true", default=flag,
                        help="debug logging, and tracebacks for bugs")
    parser.add_argument("-q", "--quiet", action="store_true", default=flag,
                        help="no progress bars or notices")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dsfs", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _global_options(p, top=True)
    p.add_argument("--version", action="version", version=f"dsfs {__version__}",
                   help="print the version and exit")
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common, top=False)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True,
                           help="one of the commands below")

    def command(name, func, help_text, *, json_flag=False):
        sp = sub.add_parser(name, help=help_text, description=help_text, parents=[common])
        sp.set_defaults(func=func)
        if json_flag:
            sp.add_argument("--json", action="store_true", help="one JSON document on stdout")
        return sp

    sp = command("create", cmd_create, "create a draft version (and the dataset if new)")
    sp.add_argument("dataset", help="dataset name")
    sp.add_argument("--parent", action="append", metavar="REF",
                    help="a published parent (repeat, in merge order; default: the latest published)")
    sp.add_argument("--root", action="store_true", help="no parents, even if the dataset has versions")
    sp.add_argument("--name", help="version name, unique in the dataset (default: v1, v2, ...)")
    sp.add_argument("--project", help="project of a new dataset")
    sp.add_argument("--tag", action="append", help="tag of a new dataset (repeat)")
    sp.add_argument("--description", help="description of a new dataset")
    sp.add_argument("--comment", help="a note on this version")
    sp.add_argument("--meta", action="append", metavar="K=V", help="version metadata (repeat)")

    sp = command("add", cmd_add, "add files or folders to a draft", json_flag=True)
    sp.add_argument("ref", help="the draft")
    sp.add_argument("paths", nargs="+", metavar="PATH", help="local files or folders")
    sp.add_argument("--dest", help="folder inside the dataset (default: the top)")
    sp.add_argument("--wildcard", metavar="GLOB", action="append",
                    help="only files whose name matches (a path glob such as train/*.jpg: whose path "
                         "in the folder matches); repeat for several")
    sp.add_argument("--non-recursive", action="store_true", help="only the top level of a folder")
    sp.add_argument("--strict", action="store_true",
                    help="refuse a fifo, socket or device instead of skipping it")

    sp = command("remove", cmd_remove, "remove paths or glob matches from a draft", json_flag=True)
    sp.add_argument("ref", help="the draft")
    sp.add_argument("patterns", nargs="+", metavar="PATTERN",
                    help="a path, or a glob (a bare name glob matches at any depth)")
    sp.add_argument("--non-recursive", action="store_true",
                    help="refuse folders; globs match at the top level only")

    sp = command("sync", cmd_sync, "make a draft's subtree equal to a local folder", json_flag=True)
    sp.add_argument("ref", help="the draft")
    sp.add_argument("folder", help="local folder, the source of truth")
    sp.add_argument("--dest", help="folder inside the dataset (default: the top)")
    sp.add_argument("--strict", action="store_true",
                    help="refuse a fifo, socket or device instead of skipping it")

    sp = command("publish", cmd_publish, "publish a draft (read-only forever)")
    sp.add_argument("ref", help="the draft")
    sp.add_argument("--name", help="rename while publishing (unique in the dataset)")

    sp = command("snapshot", cmd_snapshot, "publish the current draft and start a new one", json_flag=True)
    sp.add_argument("dataset", help="dataset name (it must have exactly one draft)")
    sp.add_argument("--name", help="name of the snapshot (default: snapshot DATE)")
    sp.add_argument("--child-name", help="name of the new draft (default: Current)")
    sp.add_argument("--child-comment", help="a note on the new draft")
    sp.add_argument("--child-meta", action="append", metavar="K=V", help="metadata of the new draft (repeat)")

    sp = command("datasets", cmd_datasets, "list datasets", json_flag=True)
    sp.add_argument("--project", help="only this project's")
    sp.add_argument("--tag", action="append", help="only those with this tag (repeat: all of them)")
    sp.add_argument("--partial-name", metavar="TEXT", help="only those whose name holds TEXT (any case)")

    sp = command("versions", cmd_versions, "list a dataset's versions", json_flag=True)
    sp.add_argument("dataset", help="dataset name")
    group = sp.add_mutually_exclusive_group()
    group.add_argument("--published", action="store_true", help="only published versions")
    group.add_argument("--drafts", action="store_true", help="only drafts")

    sp = command("show", cmd_show, "show one version", json_flag=True)
    sp.add_argument("ref", help="the version")

    sp = command("log", cmd_log, "draw a version's lineage", json_flag=True)
    sp.add_argument("ref", help="the version")

    sp = command("tag", cmd_tag, "add or remove dataset tags", json_flag=True)
    sp.add_argument("dataset", help="dataset name")
    sp.add_argument("--add", action="append", metavar="TAG", help="a tag to add (repeat)")
    sp.add_argument("--remove", action="append", metavar="TAG", help="a tag to remove (repeat)")

    sp = command("ls", cmd_ls, "list a version's files", json_flag=True)
    sp.add_argument("ref", help="the version")
    sp.add_argument("path", nargs="?", help="a folder or file inside it (default: the top)")
    sp.add_argument("-r", "--recursive", action="store_true", help="everything below, not one level")

    sp = command("diff", cmd_diff, "files added, modified and removed from A to B", json_flag=True)
    sp.add_argument("ref_a", metavar="A", help="the older version")
    sp.add_argument("ref_b", metavar="B", help="the newer version")

    sp = command("get", cmd_get, "a writable local copy of a version")
    sp.add_argument("ref", help="the version")
    sp.add_argument("dest", help="local folder to fill")
    sp.add_argument("--overwrite", action="store_true", help="replace what a non-empty destination holds")

    sp = command("verify", cmd_verify, "check chunks (and with --hash every file's sha256)", json_flag=True)
    sp.add_argument("ref", help="the version")
    sp.add_argument("--hash", action="store_true", help="read every byte and check its sha256")

    sp = command("squash", cmd_squash, "a new parentless version merging versions in order")
    sp.add_argument("refs", nargs="+", metavar="REF", help="published versions, later ones win")
    sp.add_argument("--dataset", required=True, help="dataset of the new version")
    sp.add_argument("--name", help="name of the new version")

    sp = command("delete", cmd_delete, "delete a version, or a dataset")
    sp.add_argument("ref", nargs="?", help="the version to delete")
    sp.add_argument("--dataset", help="delete this dataset instead")
    sp.add_argument("--all-versions", action="store_true", help="with --dataset: its versions too")
    sp.add_argument("--force", action="store_true", help="also published versions")

    sp = command("gc", cmd_gc, "remove chunks and change-sets no version references", json_flag=True)
    sp.add_argument("--grace", type=float, default=3600, help="keep objects younger than this (s)")
    sp.add_argument("--dry-run", action="store_true", help="list what would go; remove nothing")

    try:
        from .mountd import cli as mount_cli
    except ImportError:  # the mount daemon is optional for the data-model commands
        mount_cli = None
    if mount_cli is not None:
        mount_cli.add_commands(sub, command)
    from .ui.command import add_command as add_ui_command  # the web stack is imported only to serve

    add_ui_command(command)
    for sp in sub.choices.values():  # usage lines say REF DEST, like the help text
        for action in sp._actions:
            if not action.option_strings and action.metavar is None:
                action.metavar = action.dest.upper()
    return p


class Terminated(KeyboardInterrupt):
    """SIGTERM, unwound like Ctrl-C so partial uploads are cleaned up on the way out."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_as_interrupt(enabled: bool):
    """SIGTERM raises ``Terminated`` meanwhile. Not for the mount commands: a foreground daemon
    leaves SIGTERM to libfuse, which installs its handler only over the default one."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # names are bytes: print each one as its own bytes
        sys.stdout.reconfigure(errors="surrogateescape")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="dsfs: %(levelname)s: %(message)s")
    if not hasattr(args, "json"):
        args.json = False
    needs_repo = getattr(args.func, "needs_repo", True)
    try:
        with _sigterm_as_interrupt(needs_repo):
            settings = load_settings(store=args.store, cache_dir=args.cache_dir, config=args.config)
            repo = settings
            if needs_repo:  # mount, umount, status... import no more than they use (nor the API)
                from .repo import Repository
                from .sdk import using

                repo = Repository(settings, create_store=getattr(args.func, "creates_store", False))
            if args.quiet and needs_repo:
                from .progress import Progress

                repo.progress = lambda label, total: Progress(label, total, enabled=False)
            with using(repo) if needs_repo else contextlib.nullcontext():
                code = args.func(repo, args)
        return code or 0
    except DsfsError as exc:
        if args.verbose:
            log.exception("failed")
        print(f"dsfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        print("dsfs: interrupted; nothing was recorded", file=sys.stderr)
        return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
