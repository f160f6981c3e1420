"""A store in a local folder: the zero-setup default.

Only a command that creates records makes the folder (``create=True``); any other command on a
folder that does not exist fails with "store not found", so a typo in ``--store`` is not taken
for an empty store. Writes go to a temp file in the same folder (a finished chunk: the packer's temp file,
when it is on the store's filesystem), are fsync'd and renamed into place, so a reader sees
the old object or the new one, never a torn one. Conditional writes hold an flock on the store's
lock file while they check and swap, which serializes them across processes on this host.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from ..errors import AlreadyExists, Conflict, DsfsError, NoSpace, NotFound, StoreUnavailable
from .base import ObjectInfo, ObjectStore, Progress, check_key

_COPY_BLOCK = 4 << 20
_CHUNKS = "/chunks/"  # keys of chunk files (FORMAT.md §1)


def fsync_path(path: str | os.PathLike) -> int:
    """fsync a file (its data) or a folder (its entries); its size."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


def _etag(st: os.stat_result) -> str:
    # Every write renames a fresh file into place, so (inode, size, mtime) changes on each write.
    return f"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"


class _OpenFiles:
    """Chunk files kept open for ranged reads, the least recently read closed past ``limit``.

    A mount reads one small range per file from chunk files: opening and closing the chunk around
    each read doubled the system calls of the commonest request (and each call lets another
    thread take the interpreter). Only chunks are kept open: FORMAT.md has them created once and
    never changed, so an open file never serves bytes the key no longer holds (a chunk deleted by
    gc keeps its bytes until closed). A file in use by a reader is closed only after the read."""

    def __init__(self, limit: int = 64) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._files: OrderedDict[str, list] = OrderedDict()  # key -> [fd, readers, evicted]

    def pread(self, key: str, path: str, length: int, start: int) -> bytes:
        slot = self._acquire(key, path)
        try:
            return os.pread(slot[0], length, start)
        finally:
            self._release(slot)

    def will_need(self, key: str, path: str, length: int, start: int) -> None:
        slot = self._acquire(key, path)
        try:
            os.posix_fadvise(slot[0], start, length, os.POSIX_FADV_WILLNEED)
        finally:
            self._release(slot)

    def _acquire(self, key: str, path: str) -> list:
        with self._lock:
            slot = self._files.get(key)
            if slot is not None:
                self._files.move_to_end(key)
                slot[1] += 1
                return slot
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"object not found in store: {key!r}") from None
        evicted = []
        with self._lock:
            slot = self._files.get(key)
            if slot is None:  # else another thread opened it meanwhile: use that one
                slot = self._files[key] = [fd, 0, False]
                fd = None
                while len(self._files) > self._limit:
                    evicted.append(self._files.popitem(last=False)[1])
            slot[1] += 1
        if fd is not None:
            os.close(fd)
        for old in evicted:
            self._release(old, evict=True)
        return slot

    def _release(self, slot: list, *, evict: bool = False) -> None:
        with self._lock:
            if evict:
                slot[2] = True
            else:
                slot[1] -= 1
            close = slot[2] and slot[1] == 0
        if close:
            os.close(slot[0])

    def close(self) -> None:
        with self._lock:
            slots, self._files = list(self._files.values()), OrderedDict()
        for slot in slots:
            self._release(slot, evict=True)


class LocalStore(ObjectStore):
    is_local = True

    def __init__(self, root: str | os.PathLike, *, create: bool = False) -> None:
        self.root = Path(root).expanduser().absolute()
        self.url = str(self.root)
        if not self.root.exists() and not create:
            raise StoreUnavailable(f"store not found: {self.url!r}")
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreUnavailable(f"cannot create store folder {self.url!r}: {exc.strerror}") from None
        if not self.root.is_dir():
            raise StoreUnavailable(f"store path is not a folder: {self.url!r}")
        self._open = _OpenFiles()

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _lock(self):
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _write_atomic(self, key: str, write) -> str:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, path)
        except BaseException as exc:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(exc, OSError) and not isinstance(exc, DsfsError) and exc.errno == errno.ENOSPC:
                raise NoSpace(f"no space left in store {self.url!r} writing {key!r}") from None
            raise
        fsync_path(path.parent)
        return _etag(path.stat())

    def get(self, key: str) -> tuple[bytes, str]:
        try:
            with open(self._path(key), "rb") as f:
                return f.read(), _etag(os.fstat(f.fileno()))
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"object not found in store: {key!r}") from None

    def get_range(self, key: str, start: int, length: int) -> bytes:
        if _CHUNKS in key:
            return self._open.pread(key, os.path.join(self.url, check_key(key)), length, start)
        try:
            fd = os.open(os.path.join(self.url, check_key(key)), os.O_RDONLY)
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"object not found in store: {key!r}") from None
        try:
            return os.pread(fd, length, start)
        finally:
            os.close(fd)

    def will_need(self, key: str, start: int, length: int) -> None:
        if _CHUNKS in key:  # (a chunk is the only object read in pieces)
            with contextlib.suppress(OSError, DsfsError):
                self._open.will_need(key, os.path.join(self.url, check_key(key)), length, start)

    def close(self) -> None:
        self._open.close()

    def put(self, key: str, data: bytes) -> str:
        return self._write_atomic(key, lambda f: f.write(data))

    def put_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        def copy(dst) -> None:
            with open(path, "rb") as src:
                while block := src.read(_COPY_BLOCK):
                    dst.write(block)
                    if progress:
                        progress(len(block))

        return self._write_atomic(key, copy)

    def move_file(self, key: str, path: str, progress: Progress | None = None) -> str:
        dest = self._path(key)
        try:
            size = fsync_path(path)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.rename(path, dest)  # atomic, as _write_atomic's rename of its temp file
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # another filesystem: copy, as put_file does
                raise
            return super().move_file(key, path, progress)
        fsync_path(dest.parent)
        if progress:
            progress(size)
        return _etag(dest.stat())

    def put_if_absent(self, key: str, data: bytes) -> str:
        with self._lock():
            if self._path(key).exists():
                raise AlreadyExists(f"object already exists in store: {key!r}")
            return self.put(key, data)

    def put_if_match(self, key: str, data: bytes, etag: str) -> str:
        with self._lock():
            try:
                current = _etag(self._path(key).stat())
            except FileNotFoundError:
                raise Conflict(f"object changed concurrently (now absent): {key!r}") from None
            if current != etag:
                raise Conflict(f"object changed concurrently: {key!r}")
            return self.put(key, data)

    def head(self, key: str) -> ObjectInfo:
        try:
            st = self._path(key).stat()
        except (FileNotFoundError, NotADirectoryError):
            raise NotFound(f"object not found in store: {key!r}") from None
        return ObjectInfo(key, st.st_size, _etag(st), st.st_mtime)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        # Walk only the folder the prefix points into, not the whole store.
        base_dir, _, _ = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        if not start.is_dir():
            return
        found = []
        for dirpath, dirnames, filenames in os.walk(start):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            dirnames[:] = [d for d in dirnames if (rel_dir + d + "/").startswith(prefix)
                           or prefix.startswith(rel_dir + d + "/")]
            for name in filenames:
                key = rel_dir + name
                if name.startswith(".") or not key.startswith(prefix):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    found.append(ObjectInfo(key, *self._stat_info(dirpath, name)))
        found.sort(key=lambda info: info.key)
        yield from found

    @staticmethod
    def _stat_info(dirpath: str, name: str) -> tuple[int, str, float]:
        st = os.stat(os.path.join(dirpath, name))
        return st.st_size, _etag(st), st.st_mtime

    def delete(self, key: str) -> None:
        path = self._path(key)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        # Drop folders left empty so the store stays tidy to read by hand.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def download_file(self, key: str, path: str, progress: Progress | None = None) -> None:
        try:
            shutil.copyfile(self._path(key), path)
        except FileNotFoundError:
            raise NotFound(f"object not found in store: {key!r}") from None
        if progress:
            progress(os.path.getsize(path))

    def local_path(self, key: str) -> str | None:
        return str(self._path(key))
