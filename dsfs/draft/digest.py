"""The sha256 of a staged file, computed so that closing it rarely reads it again.

``RunningHash`` follows a file written front to back (the common case: a job writing its
output): every write extends the digest, so at close the digest is done without a read. A write
before what was hashed (a rewrite, writes out of order) drops it, and close hashes the file
with ``hash_staged``, which reads only its data: holes (a sparse file) are fed as zeros
without reading them. Both also sniff the first bytes for ``looks_compressible``.

Big pieces (a 1 MiB write request, a block read at close) are hashed by one pipeline thread of
the process, in the order they came, while the writer's request goes on: hashlib lets go of the
interpreter, so on a second core the sha256 (about half a millisecond per MiB) leaves the reply
path. ``finish`` waits for the file's pieces. At most ``PIPELINE_BYTES`` wait; a writer past
that waits for the thread (the bytes are the request's own buffers, kept, not copied).
"""

from __future__ import annotations

import collections
import errno
import hashlib
import os
import threading

from ..changeset.packer import looks_compressible

_READ = 1 << 20
_ZEROS = memoryview(bytes(_READ))
_PROBE = 16 << 10
# A write this far past what was hashed would hash the zeros between at once, in the writer's
# request; past it the digest is dropped and close hashes the file (holes without reading).
MAX_GAP = 64 << 20
PIPELINE_MIN = 256 << 10  # a piece this big is hashed by the pipeline thread; smaller, in place
PIPELINE_BYTES = 16 << 20  # bytes queued for the pipeline at most


class _Pipeline:
    """The process's hashing thread (started on first use, again in a forked child)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: collections.deque = collections.deque()
        self._bytes = 0
        self._thread: threading.Thread | None = None

    def put(self, owner: RunningHash, data) -> None:
        with self._cond:
            while self._bytes >= PIPELINE_BYTES:
                self._cond.wait()
            self._jobs.append((owner, data))
            self._bytes += len(data)
            owner.queued += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="dsfs-hash", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def wait(self, owner: RunningHash) -> None:
        """Until every piece of ``owner`` is hashed."""
        with self._cond:
            while owner.queued:
                self._cond.wait()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs:
                    self._cond.wait()
                owner, data = self._jobs.popleft()
            try:
                owner.sha.update(data)
            finally:
                with self._cond:
                    self._bytes -= len(data)
                    owner.queued -= 1
                    self._cond.notify_all()

    def _forked(self) -> None:
        self.__init__()  # the thread did not come along; nor did anything it held


_PIPELINE = _Pipeline()
os.register_at_fork(after_in_child=_PIPELINE._forked)


class RunningHash:
    """sha256 of bytes [0, upto) of a file whose bytes from ``upto`` to its end are zeros."""

    def __init__(self) -> None:
        self.sha = hashlib.sha256()
        self.upto = 0  # bytes fed, hashed or queued
        self.queued = 0  # pieces the pipeline has not hashed yet (changed under its lock)
        self._head = b""

    def feed(self, data) -> None:
        if len(self._head) < _PROBE:
            self._head += bytes(data[:_PROBE - len(self._head)])
        if self.queued or len(data) >= PIPELINE_MIN:  # in order behind the queued pieces
            _PIPELINE.put(self, data)
        else:
            self.sha.update(data)
        self.upto += len(data)

    def zeros(self, count: int) -> None:
        while count > 0:
            step = min(count, _READ)
            self.feed(_ZEROS[:step])
            count -= step

    def write(self, offset: int, data: bytes) -> bool:
        """Follow a write of ``data`` at ``offset``; False if the digest cannot follow it."""
        if offset < self.upto or offset - self.upto > MAX_GAP:
            return False
        self.zeros(offset - self.upto)
        self.feed(data)
        return True

    def truncate(self, size: int) -> bool:
        """Follow a truncate; False if it cut hashed bytes off."""
        return size >= self.upto

    def finish(self, size: int) -> tuple[str, int, bool]:
        """(sha256, size, compressible) of the file, now ``size`` bytes long."""
        self.zeros(size - self.upto)
        if self.queued:
            _PIPELINE.wait(self)
        return self.sha.hexdigest(), size, looks_compressible(self._head)


def hash_staged(fd: int) -> tuple[str, int, bool]:
    """(sha256, size, compressible) of an open file, reading only its data, not its holes."""
    size = os.fstat(fd).st_size
    digest = RunningHash()
    while digest.upto < size:
        data_at = _next_data(fd, digest.upto, size)
        digest.zeros(data_at - digest.upto)
        hole_at = _next_hole(fd, data_at, size)
        while digest.upto < hole_at:
            block = os.pread(fd, min(_READ, hole_at - digest.upto), digest.upto)
            if not block:  # shrunk under us: the caller holds the file, so only by a bug
                raise OSError(errno.EIO, "staged file shrank while it was hashed")
            digest.feed(block)
    return digest.finish(size)


def _next_data(fd: int, offset: int, size: int) -> int:
    try:
        return min(os.lseek(fd, offset, os.SEEK_DATA), size)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # only a hole from here to the end
            return size
        if exc.errno == errno.EINVAL:  # no SEEK_DATA on this filesystem: all data
            return offset
        raise


def _next_hole(fd: int, offset: int, size: int) -> int:
    try:
        return min(os.lseek(fd, offset, os.SEEK_HOLE), size)
    except OSError as exc:
        if exc.errno in (errno.ENXIO, errno.EINVAL):
            return size
        raise
