"""The sha256 of a staged file, computed so that closing it rarely reads it again.

``RunningHash`` follows a file written front to back (the common case: a job writing its
output): every write extends the digest, so at close the digest is done without a read. A write
before what was hashed (a rewrite, writes out of order) drops it, and close hashes the file
with ``hash_staged``, which reads only its data: holes (a sparse file) are fed as zeros
without reading them. Both also sniff the first bytes for ``looks_compressible``.
"""

from __future__ import annotations

import errno
import hashlib
import os

from ..changeset.packer import looks_compressible

_READ = 1 << 20
_ZEROS = memoryview(bytes(_READ))
_PROBE = 16 << 10
# A write this far past what was hashed would hash the zeros between at once, in the writer's
# request; past it the digest is dropped and close hashes the file (holes without reading).
MAX_GAP = 64 << 20


class RunningHash:
    """sha256 of bytes [0, upto) of a file whose bytes from ``upto`` to its end are zeros."""

    def __init__(self) -> None:
        self._sha = hashlib.sha256()
        self.upto = 0
        self._head = b""

    def feed(self, data) -> None:
        if len(self._head) < _PROBE:
            self._head += bytes(data[:_PROBE - len(self._head)])
        self._sha.update(data)
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
        return self._sha.hexdigest(), size, looks_compressible(self._head)


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
