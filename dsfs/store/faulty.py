"""A store that misbehaves on purpose: latency, errors, cut and corrupted bodies.

``FaultyStore(inner, ...)`` wraps any store and, on each read, may wait, fail with
StoreUnavailable, return fewer bytes than asked (a body cut short, as a dropped connection
leaves it) or return the right number of wrong bytes (one flipped bit, which only a hash can
catch). Writes pass through unless ``write_errors`` is set. Faults are drawn from a seeded
random generator, so a failing run can be replayed. The cache and prefetch tests run on it to
show that no fault ever turns into a wrong byte served; it is not a product feature.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Iterator

from ..errors import StoreUnavailable
from .base import ObjectInfo, ObjectStore, Progress


class FaultyStore(ObjectStore):
    def __init__(self, inner: ObjectStore, *, errors: float = 0.0, cuts: float = 0.0, flips: float = 0.0,
                 latency: float = 0.0, write_errors: float = 0.0, seed: int = 0) -> None:
        self.inner = inner
        self.url = inner.url
        self.is_local = False  # every read goes through the faults, none in place
        self.errors, self.cuts, self.flips = errors, cuts, flips
        self.latency, self.write_errors = latency, write_errors
        self.counts: Counter[str] = Counter()  # faults injected, by kind, and reads
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def _draw(self) -> float:
        with self._lock:
            return self._rng.random()

    def _before(self, op: str, key: str, rate: float) -> None:
        if self.latency:
            time.sleep(self.latency)
        with self._lock:
            self.counts[op] += 1
        if rate and self._draw() < rate:
            with self._lock:
                self.counts["errors"] += 1
            raise StoreUnavailable(f"injected fault: {op} of {key!r} failed")

    def _mangle(self, data: bytes) -> bytes:
        """Maybe cut ``data`` short or flip one of its bits."""
        if data and self.cuts and self._draw() < self.cuts:
            with self._lock:
                self.counts["cuts"] += 1
            return data[:int(self._draw() * len(data))]
        if data and self.flips and self._draw() < self.flips:
            with self._lock:
                self.counts["flips"] += 1
            i = int(self._draw() * len(data))
            return data[:i] + bytes([data[i] ^ 1 << int(self._draw() * 8)]) + data[i + 1:]
        return data

    def get(self, key: str) -> tuple[bytes, str]:
        self._before("get", key, self.errors)
        data, etag = self.inner.get(key)
        return self._mangle(data), etag

    def get_range(self, key: str, start: int, length: int) -> bytes:
        self._before("get_range", key, self.errors)
        return self._mangle(self.inner.get_range(key, start, length))

    def head(self, key: str) -> ObjectInfo:
        self._before("head", key, self.errors)
        return self.inner.head(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self._before("list", prefix, self.errors)
        return self.inner.list(prefix)

    def put(self, key: str, data: bytes) -> str:
        self._before("put", key, self.write_errors)
        return self.inner.put(key, data)

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        self._before("put", key, self.write_errors)
        return self.inner.put_file(key, path, progress)

    def put_if_absent(self, key: str, data: bytes) -> str:
        self._before("put", key, self.write_errors)
        return self.inner.put_if_absent(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        self._before("put", key, self.write_errors)
        return self.inner.put_if_match(key, data, etag)

    def delete(self, key: str) -> None:
        self._before("delete", key, self.write_errors)
        self.inner.delete(key)

    def close(self) -> None:
        self.inner.close()
