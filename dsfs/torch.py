"""Tell a dsfs mount each epoch's read order from a PyTorch sampler (torch itself is optional).

    from dsfs.torch import HintedSampler
    sampler = HintedSampler(RandomSampler(dataset), dataset)     # ImageFolder: paths from .samples
    loader = DataLoader(dataset, sampler=sampler, num_workers=4)

On each ``__iter__`` the wrapper materializes the epoch's indices, maps them to file paths,
sends that order to the mount (``dsfs.prefetch``) and then yields the indices. DataLoader takes
any iterable with ``__len__`` as a sampler, so nothing here imports torch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator

from . import prefetch

__all__ = ["HintedSampler", "paths_of"]


def paths_of(dataset) -> Callable[[int], str]:
    """Index -> path for the usual datasets: a ``path_of(i)`` method, ``samples``/``imgs``
    (ImageFolder: (path, target) pairs), or ``files``/``paths`` lists."""
    method = getattr(dataset, "path_of", None)
    if callable(method):
        return method
    for name in ("samples", "imgs", "files", "paths"):
        seq = getattr(dataset, name, None)
        if seq is not None:
            return lambda i, seq=seq: _path(seq[i])
    raise TypeError(f"cannot find file paths on {type(dataset).__name__}: give a function "
                    "index -> path, or a dataset with .samples, .imgs, .files or .paths")


def _path(value) -> str:
    return os.fspath(value[0] if isinstance(value, tuple) else value)


def _mount_root(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            raise ValueError(f"not inside a mount: {path!r}")
        path = parent
    return path


class HintedSampler:
    """Wraps a sampler; before each epoch tells the mount the order its files will be read in.

    ``paths``: a function index -> path, or a dataset (see ``paths_of``). ``mountpoint``: where
    the version is mounted; by default the mount holding the first path (paths then absolute)."""

    def __init__(self, sampler: Iterable[int], paths, mountpoint: str | os.PathLike | None = None) -> None:
        self.sampler = sampler
        self.path_of = paths if callable(paths) and not hasattr(paths, "__getitem__") else paths_of(paths)
        self.mountpoint = None if mountpoint is None else os.fspath(mountpoint)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        indices = list(self.sampler)
        if indices:
            order = [self.path_of(i) for i in indices]
            prefetch(self.mountpoint or _mount_root(order[0]), order)
        return iter(indices)

    def set_epoch(self, epoch: int) -> None:
        """Passed on to the wrapped sampler (DistributedSampler has it)."""
        inner = getattr(self.sampler, "set_epoch", None)
        if inner is not None:
            inner(epoch)
