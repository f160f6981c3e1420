"""The options of one mount, shared by every way to start one.

``dsfs mount`` and the mount daemon declare them with ``add_arguments`` (the daemon reads what
``to_argv`` writes), ``mount.dsfs`` (dsfs/mountd/fstab.py) and ``dsfs.mounted()`` build a
``MountOptions`` directly. Where the store, the cache and the config file are is not a mount
option: that is ``Settings`` (dsfs/config.py).
"""

from __future__ import annotations

import argparse
import dataclasses

from ..config import parse_size
from ..errors import InvalidInput

ADAPTERS = ("auto", "direct", "lowlevel")  # how a read-only mount is served; a writable draft has its own


@dataclasses.dataclass(frozen=True)
class MountOptions:
    cache_size: str | None = None  # bound of the shared block cache ("20G"); None: the config's
    allow_other: bool = False      # let other users see the mount
    fuse: tuple[str, ...] = ()     # extra FUSE mount options ("noatime", "fsname=x"; comma lists split)
    adapter: str = "auto"
    read_only: bool = False        # mount a draft read-only
    break_lease: bool = False      # take over a draft's write lease from an expired holder
    warm: bool = False             # warm the whole version in the background (published mounts)
    verbose: bool = False          # the daemon logs at DEBUG

    def __post_init__(self) -> None:
        given = [self.fuse] if isinstance(self.fuse, str) else self.fuse
        object.__setattr__(self, "fuse", tuple(o for text in given for o in text.split(",") if o))
        if self.adapter not in ADAPTERS:
            raise InvalidInput(f"unknown adapter: {self.adapter!r} (auto, direct or lowlevel)")
        if self.cache_size is not None:
            parse_size(self.cache_size, what="cache size")

    @property
    def cache_bytes(self) -> int | None:
        return None if self.cache_size is None else parse_size(self.cache_size, what="cache size")

    @property
    def fuse_options(self) -> list[str]:
        """Every FUSE option the mount is asked for."""
        return [*self.fuse, "allow_other"] if self.allow_other else list(self.fuse)

    def to_argv(self) -> list[str]:
        """These options as the daemon's command line flags (``add_arguments``)."""
        argv = ["--adapter", self.adapter]
        if self.cache_size is not None:
            argv += ["--cache-size", self.cache_size]
        for field in dataclasses.fields(self):
            if field.type == "bool" and getattr(self, field.name):
                argv.append("--" + field.name.replace("_", "-"))
        for option in self.fuse:
            argv += ["-o", option]
        return argv

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "MountOptions":
        return cls(**{f.name: getattr(args, f.name) for f in dataclasses.fields(cls)})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The mount options as flags (``verbose`` is the command's own ``-v``)."""
    parser.add_argument("--cache-size", help="bound of the shared block cache (e.g. 20G)")
    parser.add_argument("--allow-other", action="store_true", help="let other users see the mount")
    parser.add_argument("-o", dest="fuse", action="append", default=[], metavar="FUSE_OPTS",
                        help="extra FUSE mount options, comma-separated (repeat)")
    parser.add_argument("--adapter", default="auto", choices=ADAPTERS,
                        help="how read-only mounts are served (default auto: the fastest that works)")
    parser.add_argument("--read-only", action="store_true", help="mount a draft read-only")
    parser.add_argument("--break-lease", action="store_true",
                        help="take over the write lease of an expired or dead holder")
    parser.add_argument("--warm", action="store_true",
                        help="warm the whole version in the background, at the lowest priority")
