"""dsfs: mount versions of datasets as ordinary folders.

    import dsfs
    with dsfs.mounted("pets@v3") as root:        # a temp folder, unmounted on exit
        train = sorted((root / "images/train").iterdir())

    from dsfs import Dataset, DatasetVersion     # the seed documents' API (dsfs/sdk.py)
    DatasetVersion.get_version("pets", version_name="v3").get_local_copy()

``Dataset``, ``DatasetVersion`` and ``configure`` are imported on first use: a mount daemon, which
imports this package, does not pay for them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

__version__ = "0.1.0"
__all__ = ["Dataset", "DatasetVersion", "configure", "mounted", "prefetch", "__version__"]
_SDK = ("Dataset", "DatasetVersion", "configure")


def __getattr__(name: str):
    if name in _SDK:
        from . import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'dsfs' has no attribute {name!r}")


def prefetch(mountpoint: str | os.PathLike, paths) -> int:
    """Tell a published mount the order its files will be read in (paths relative to the mount,
    or absolute inside it). Returns at once, with how many paths were sent; the daemon fetches a
    bounded distance ahead of the reads it sees. See ``dsfs.torch`` for a sampler that does this."""
    from .mountd import control

    return control.prefetch(os.fspath(mountpoint), [os.fspath(p) for p in paths])


@contextlib.contextmanager
def mounted(ref: str, path: str | os.PathLike | None = None, *, store: str | None = None,
            cache_dir: str | None = None, config: str | None = None, **options) -> Iterator[Path]:
    """Mount ``ref`` at ``path`` (a new temp folder when None) for the duration of the block.

    ``options`` are those of ``dsfs mount`` (``dsfs.mountd.options.MountOptions``): ``read_only``
    (a draft), ``break_lease``, ``allow_other``, ``fuse`` (FUSE mount options such as
    ``["noatime"]``), ``cache_size``, ``adapter``, ``warm`` (the whole version, in the
    background) and ``verbose`` (the daemon's log)."""
    from .config import load_settings
    from .mountd import control
    from .mountd.options import MountOptions

    mount_options = MountOptions(**options)
    settings = load_settings(store=store, cache_dir=cache_dir, config=config)
    made = None
    if path is None:
        import tempfile

        made = tempfile.mkdtemp(prefix="dsfs-mount-")
        path = made
    try:
        record = control.spawn(settings, ref, str(path), mount_options, config=config)
    except BaseException:
        if made is not None:
            os.rmdir(made)
        raise
    try:
        yield Path(record.mountpoint)
    finally:
        try:
            control.unmount(settings, str(path))
        finally:
            if made is not None:
                with contextlib.suppress(OSError):
                    os.rmdir(made)
