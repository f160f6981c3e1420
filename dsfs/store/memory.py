"""A store held in this process's memory: ``memory://NAME``.

For tests and experiments that need a store without a disk or a server: every ``open_store`` of
the same URL in a process gets the same store, and it is gone when the process ends. It keeps
the contract of every store (conditional writes, ranged reads, listing in key order), so the
cache, prefetch and resolver logic run on it exactly as on a folder or a bucket.
"""

from __future__ import annotations

import bisect
import hashlib
import threading
import time
from collections.abc import Iterator

from ..errors import AlreadyExists, Conflict, NotFound
from .base import ObjectInfo, ObjectStore, Progress, check_key

_named: dict[str, "MemoryStore"] = {}
_named_lock = threading.Lock()


def named(url: str) -> "MemoryStore":
    """The process-wide store for ``memory://NAME``, made on first use."""
    with _named_lock:
        store = _named.get(url)
        if store is None:
            store = _named[url] = MemoryStore(url)
        return store


class MemoryStore(ObjectStore):
    def __init__(self, url: str = "memory://") -> None:
        self.url = url
        self._objects: dict[str, tuple[bytes, str, float]] = {}
        self._keys: list[str] = []  # sorted, for listing
        self._lock = threading.Lock()

    def _get(self, key: str) -> tuple[bytes, str, float]:
        found = self._objects.get(check_key(key))
        if found is None:
            raise NotFound(f"object not found in store: {key!r}")
        return found

    def _set(self, key: str, data: bytes) -> str:
        data = bytes(data)
        etag = hashlib.md5(data, usedforsecurity=False).hexdigest() + f"-{time.monotonic_ns():x}"
        if key not in self._objects:
            bisect.insort(self._keys, key)
        self._objects[key] = (data, etag, time.time())
        return etag

    def get(self, key: str) -> tuple[bytes, str]:
        with self._lock:
            data, etag, _ = self._get(key)
        return data, etag

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with self._lock:
            data, _, _ = self._get(key)
        return data[start:start + max(0, length)]

    def put(self, key: str, data: bytes) -> str:
        with self._lock:
            return self._set(check_key(key), data)

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        with open(path, "rb") as f:
            data = f.read()
        etag = self.put(key, data)
        if progress:
            progress(len(data))
        return etag

    def put_if_absent(self, key: str, data: bytes) -> str:
        with self._lock:
            if check_key(key) in self._objects:
                raise AlreadyExists(f"object already exists in store: {key!r}")
            return self._set(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        with self._lock:
            current = self._objects.get(check_key(key))
            if current is None or current[1] != etag:
                raise Conflict(f"object changed concurrently: {key!r}")
            return self._set(key, data)

    def head(self, key: str) -> ObjectInfo:
        with self._lock:
            data, etag, mtime = self._get(key)
        return ObjectInfo(key, len(data), etag, mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        with self._lock:
            lo = bisect.bisect_left(self._keys, prefix)
            found = []
            for key in self._keys[lo:]:
                if not key.startswith(prefix):
                    break
                data, etag, mtime = self._objects[key]
                found.append(ObjectInfo(key, len(data), etag, mtime))
        yield from found

    def delete(self, key: str) -> None:
        with self._lock:
            if self._objects.pop(check_key(key), None) is not None:
                self._keys.remove(key)
