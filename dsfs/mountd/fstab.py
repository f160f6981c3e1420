"""``mount.dsfs``: the helper mount(8) runs for ``mount -t dsfs`` and dsfs lines in /etc/fstab.

mount(8) calls ``/sbin/mount.dsfs SPEC DIR [-sfnv] [-N NAMESPACE] [-o OPTIONS] [-t TYPE]``, where
SPEC is a ref and OPTIONS says where the store is::

    pets  /mnt/pets  dsfs  store=/srv/dsfs-store,ro,_netdev,nofail  0 0

The helper starts the same detached daemon as ``dsfs mount`` and exits 0 once the mount answers,
or prints one line and exits 32 (mount(8)'s "mount failure"); a bad invocation exits 1.
"""

from __future__ import annotations

import dataclasses
import sys

from ..config import load_settings, parse_size
from ..errors import DsfsError, InvalidInput
from .options import MountOptions

# Our own settings, as KEY=VALUE.
_SETTINGS = ("store", "cache_dir", "cache_size", "config")
# For mount(8), systemd or the fstab reader, not for the filesystem.
_IGNORED = {"defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "_netdev",
            "nofail", "rw"}
_IGNORED_PREFIXES = ("x-", "comment=")
# Kernel mount flags that libfuse applies itself.
_KERNEL_FLAGS = {"suid", "nosuid", "dev", "nodev", "exec", "noexec", "atime", "noatime",
                 "diratime", "nodiratime", "relatime", "norelatime", "strictatime",
                 "nostrictatime", "lazytime", "nolazytime", "sync", "async", "dirsync"}

EXIT_USAGE = 1
EXIT_FAILURE = 32


@dataclasses.dataclass(frozen=True)
class HelperOptions:
    """An fstab line's options: where the store, cache and config are, and the mount's own."""

    store: str | None = None
    cache_dir: str | None = None
    config: str | None = None
    mount: MountOptions = MountOptions()


def parse_options(text: str, *, sloppy: bool = False) -> HelperOptions:
    """An ``-o`` list. Unknown options are an error, or ignored with ``sloppy`` (mount -s)."""
    found: dict = {"fuse": []}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if key in _SETTINGS:
            if not sep or not value:
                raise InvalidInput(f"mount option needs a value: {key!r}")
            found[key] = value
        elif item == "ro":
            found["read_only"] = True
        elif item == "allow_other":
            found["allow_other"] = True
        elif item in _KERNEL_FLAGS:
            found["fuse"].append(item)
        elif item in _IGNORED or item.startswith(_IGNORED_PREFIXES):
            continue
        elif not sloppy:
            raise InvalidInput(f"unknown mount option: {item!r}")
    if found.get("cache_size"):
        parse_size(found["cache_size"], what="cache_size")
    return HelperOptions(found.pop("store", None), found.pop("cache_dir", None), found.pop("config", None),
                         MountOptions(**found))


def _parse_argv(argv: list[str]) -> tuple[str, str, str, bool, bool, bool]:
    """(spec, dir, options, sloppy, fake, verbose) from mount(8)'s helper command line."""
    positional, options = [], []
    sloppy = fake = verbose = False
    args = iter(argv)
    for arg in args:
        if arg in ("-o", "-t", "-N"):
            value = next(args, None)
            if value is None:
                raise InvalidInput(f"{arg} needs a value")
            if arg == "-o":
                options.append(value)
            elif arg == "-N":
                raise InvalidInput("mount namespaces (-N) are not supported")
        elif arg.startswith("-o") and len(arg) > 2:
            options.append(arg[2:])
        elif arg.startswith("-") and len(arg) > 1:
            for flag in arg[1:]:
                if flag not in "sfnvr":
                    raise InvalidInput(f"unknown flag: -{flag}")
                sloppy |= flag == "s"
                fake |= flag == "f"
                verbose |= flag == "v"
                if flag == "r":
                    options.append("ro")
        else:
            positional.append(arg)
    if len(positional) != 2:
        raise InvalidInput("usage: mount.dsfs REF DIR [-sfnv] [-o store=STORE,OPTIONS]")
    return positional[0], positional[1], ",".join(options), sloppy, fake, verbose


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        spec, mountpoint, text, sloppy, fake, verbose = _parse_argv(argv)
        opts = parse_options(text, sloppy=sloppy)
    except InvalidInput as exc:
        print(f"mount.dsfs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        from .control import spawn

        settings = load_settings(store=opts.store, cache_dir=opts.cache_dir, config=opts.config)
        if fake:
            return 0
        record = spawn(settings, spec, mountpoint, dataclasses.replace(opts.mount, verbose=verbose),
                       config=opts.config)
    except DsfsError as exc:
        print(f"mount.dsfs: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    if verbose:
        print(f"mount.dsfs: mounted {record.dataset} {record.version[:12]} at {record.mountpoint}",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
