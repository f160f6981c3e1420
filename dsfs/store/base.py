"""The object store interface every backend implements.

Keys are '/'-separated strings relative to the store's root. Records are small and read whole;
chunks are large and read by byte range. Conditional writes are how concurrent writers avoid
losing each other's updates: ``put_if_absent`` for records created once (published manifests,
change-sets), ``put_if_match`` (compare-and-swap on the etag) for records that change.
"""

from __future__ import annotations

import abc
import dataclasses
import os
from collections.abc import Callable, Iterator

from ..errors import InvalidInput

Progress = Callable[[int], None]


@dataclasses.dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    mtime: float = 0.0  # seconds since the epoch; 0 when the backend does not say


def check_key(key: str) -> str:
    if not key or key.startswith("/") or "\x00" in key or any(
        part in ("", ".", "..") for part in key.split("/")
    ):
        raise InvalidInput(f"invalid store key: {key!r}")
    return key


class ObjectStore(abc.ABC):
    """A bucket-like store of immutable-or-CAS objects."""

    url: str
    is_local = False  # a folder on this machine: reads cost no more than the disk cache's

    @abc.abstractmethod
    def get(self, key: str) -> tuple[bytes, str]:
        """The whole object and its etag; NotFound if absent."""

    @abc.abstractmethod
    def get_range(self, key: str, start: int, length: int) -> bytes:
        """``length`` bytes from ``start``; fewer only at the end of the object."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes) -> str:
        """Write unconditionally; returns the new etag."""

    @abc.abstractmethod
    def put_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        """Upload a local file (streamed, multipart where the backend has it)."""

    def move_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        """Upload a local file the caller is done with, which is gone afterwards (a local store
        on the same filesystem renames it into place instead of copying it)."""
        try:
            return self.put_file(key, path, progress)
        finally:
            os.unlink(path)

    @abc.abstractmethod
    def put_if_absent(self, key: str, data: bytes) -> str:
        """Create ``key``; AlreadyExists if it exists."""

    @abc.abstractmethod
    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        """Replace ``key`` only if its etag is still ``etag``; Conflict otherwise."""

    @abc.abstractmethod
    def head(self, key: str) -> ObjectInfo:
        """Size and etag; NotFound if absent."""

    @abc.abstractmethod
    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Every object whose key starts with ``prefix``, in key order."""

    @abc.abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; absent keys are not an error."""

    def download_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        """Copy an object to a local file (streamed)."""
        data, _ = self.get(key)
        with open(path, "wb") as f:
            f.write(data)
        if progress:
            progress(len(data))

    def local_path(self, key: str) -> str | None:
        """A local file holding the object, if the backend keeps one (zero-copy reads)."""
        return None

    def will_need(self, key: str, start: int, length: int) -> None:
        """A hint that ``length`` bytes from ``start`` are about to be read: a backend that can
        start reading them in the background does (a local folder asks the kernel to); the
        others ignore it. Never fails."""

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.url}>"
