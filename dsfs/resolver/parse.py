"""Reading change-sets into the index build's work rows, here or in a second process.

``row_maker`` turns a decoded "add" line into its row. A build spends about as long reading a big
change-set (gunzip, JSON, the checks and the rows) as inserting its rows into SQLite, so on two
cores the two overlap: once a build has met ``PARSE_APART`` entries, its ``Reader`` has a thread
gunzip each change-set file into a child process (``_child``), which decodes and checks the lines,
and yields what ``parse_here`` would, in the same order, a batch at a time: rows, Removals, and
the first bad line's error where the child met it (``Corrupt``, same message). The child's chunk
ids are the build's: it is told the keys the build interned since (from overlaid indexes), and
the keys it interns are interned here in the same order.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import logging
import os
import pickle
import subprocess
import sys
import tempfile
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..changeset.manifest import (CHANGESET_BLOCK, DEFLATED, FILE, STORED, Removal, entry_fields, iter_changeset,
                                  read_changeset)
from ..errors import Corrupt, InvalidInput
from ..paths import check_path
from .index import TYPE_CODES
from .update import entry_row

log = logging.getLogger(__name__)

PARSE_APART = 100_000  # entries a build meets before its change-sets are read in a second process
_BATCH = 5000  # items per message from a child
_FILE = TYPE_CODES[FILE]
# (Not ``-m``: the package imports this module before runpy would run it as __main__.)
_CHILD = f"from {__name__} import _child; _child()"
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def intern(ids: dict[str, int], key: str) -> int:
    """The id of ``key`` in ``ids``, the next one if it has none yet."""
    got = ids.get(key)
    if got is None:
        got = ids[key] = len(ids) + 1
    return got


def row_maker(chunks: dict[str, int], provider: int) -> Callable[[dict], tuple]:
    """The maker of a change-set's work rows from its decoded "add" lines: ``entry_row`` of
    ``entry_fields`` (16 values), or for a plain file (the most common line by far) the same
    values without the four that are None, checked and made in one call. The fast path takes
    only lines whose fields have exactly the types and values ``entry_fields`` accepts as they
    are; any other line goes through ``entry_fields``, which refuses a bad one with its error."""

    def make(d: dict) -> tuple:
        if d.get("type") == FILE and "blocks" not in d and "tree" not in d:
            try:
                size, sha, mode, mtime_ns = d["size"], d["sha256"], d["mode"], d["mtime_ns"]
                if "chunk" in d:
                    chunk, offset, csize, method = d["chunk"], d["offset"], d["csize"], d["method"]
                    located = (type(chunk) is str and type(offset) is int and type(csize) is int
                               and type(method) is int and offset >= 0 and csize >= 0
                               and (method == STORED or method == DEFLATED))
                else:
                    chunk, offset, csize, method = None, 0, 0, STORED
                    located = size == 0
                raw = check_path(d["path"], what="manifest path").encode("utf-8", "surrogateescape")
                digest = bytearray.fromhex(sha)  # (bound as it is: bytes go through an adapter first)
            except (KeyError, InvalidInput, ValueError, TypeError):
                return general(d)
            if (located and type(size) is int and type(mode) is int and type(mtime_ns) is int and size >= 0
                    and len(digest) == 32 and digest.hex() == sha):
                if chunk is not None:
                    chunk = chunks.get(chunk) or intern(chunks, chunk)
                return (raw, len(raw) - raw.rfind(b"/") - 1, _FILE, size, mode & 0o7777, mtime_ns, digest, chunk,
                        offset, csize, method, provider)
        return general(d)

    def general(d: dict) -> tuple:
        fields = entry_fields(d)
        chunk = fields[7]
        return entry_row(fields, provider, None if chunk is None else intern(chunks, chunk))

    return make


def parse_here(stream: BinaryIO, key: str, *, chunks: dict[str, int], provider: int) -> Iterator[tuple | Removal]:
    """A change-set's removals and its adds as rows of ``row_maker(chunks, provider)``."""
    return iter_changeset(stream, key, make=row_maker(chunks, provider))


class Reader:
    """Reads one build's change-sets into items: in this process, and from the change-set that
    brings the build to ``PARSE_APART`` entries on, in one child process kept until ``close``
    (``apart`` counts the change-sets it read). A thread here gunzips each file into the child's
    input (zlib lets go of the GIL), so the child only decodes and checks. Where no child starts,
    or one dies, this process reads on from the first item it did not get."""

    def __init__(self) -> None:
        self.child: subprocess.Popen | None = None
        self.feeder: threading.Thread | None = None
        self.errors: BinaryIO | None = None  # the child's stderr
        self.entries = 0  # met so far
        self.failed = False
        self.synced = 0  # chunk ids the child has (they are the build's: it interns alike)
        self.apart = 0

    def items(self, stream: BinaryIO, key: str, *, entries: int, chunks: dict[str, int], provider: int
              ) -> Iterator[list[tuple | Removal]]:
        """What ``parse_here`` yields for the open change-set file ``stream``, in lists."""
        self.entries += entries
        done = 0
        if self.child is None and self.entries >= PARSE_APART and not self.failed:
            self._start(key)
        if self.child is not None:
            ended = False
            try:
                _send(self.child.stdin, ("parse", key, list(chunks)[self.synced:], provider, _BATCH))
                self.feeder = threading.Thread(target=_feed, args=(stream, self.child.stdin), daemon=True,
                                               name="dsfs-changeset-feed")
                self.feeder.start()
                while True:
                    kind, *rest = pickle.load(self.child.stdout)
                    if kind == "items":
                        items, new_chunks = rest
                        for chunk in new_chunks:
                            intern(chunks, chunk)
                        done += len(items)
                        yield items
                    elif kind == "error":
                        raise Corrupt(rest[0])
                    else:
                        ended = True
                        self.feeder.join()
                        self.synced = len(chunks)
                        self.apart += 1
                        return
            except Corrupt:
                raise  # the file's own error (Corrupt is an OSError too)
            except (EOFError, OSError, pickle.UnpicklingError):
                self._lost(key, done)
            finally:
                if not ended:  # a bad line, the child lost, or the build stopped mid-way (a conflict)
                    self.close(kill=True)
        stream.seek(0)
        left = itertools.islice(parse_here(stream, key, chunks=chunks, provider=provider), done, None)
        while batch := list(itertools.islice(left, _BATCH)):
            yield batch

    def _start(self, key: str) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
        self.errors = tempfile.TemporaryFile()
        try:
            self.child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                          stdout=subprocess.PIPE, stderr=self.errors, env=env)
        except OSError as exc:
            log.warning("cannot start a change-set reader (%s): reading %s here", exc, key)
            self.close()
            self.failed = True

    def _lost(self, key: str, done: int) -> None:
        self.child.kill()
        self.child.wait()
        self.errors.seek(0)
        log.warning("change-set reader exited with %s after %d items of %s: reading on here (%s)",
                    self.child.returncode, done, key, self.errors.read()[-500:].decode(errors="replace").strip())
        self.failed = True

    def close(self, kill: bool = False) -> None:
        """End the child, if any (it exits when its input ends), and the thread feeding it."""
        child, self.child = self.child, None
        if child is not None:
            if kill:
                child.kill()  # (a feeder blocked on the pipe gets an error and ends)
            if self.feeder is not None:
                self.feeder.join()
            with contextlib.suppress(OSError):
                child.stdin.close()
            try:
                child.wait(timeout=5)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
            child.stdout.close()
        self.feeder = None
        if self.errors is not None:
            self.errors.close()
            self.errors = None


def _send(pipe: BinaryIO, message: object) -> None:
    pickle.dump(message, pipe, protocol=pickle.HIGHEST_PROTOCOL)
    pipe.flush()


def _feed(stream: BinaryIO, pipe: BinaryIO) -> None:
    """Gunzip ``stream`` into ``pipe`` as ``GzipFile.read(CHANGESET_BLOCK)`` returns it, a block
    at a time, then None (False where the stream breaks)."""
    gz = gzip.GzipFile(fileobj=stream, mode="rb")
    try:
        while True:
            try:
                block = gz.read(CHANGESET_BLOCK) or None
            except (OSError, EOFError, zlib.error):
                block = False
            _send(pipe, block)
            if not block:
                return
    except (OSError, ValueError):
        pass  # the child is gone: the reader finds out


def _frames(source: BinaryIO) -> Callable[[int], bytes]:
    """The blocks ``_feed`` sends, as ``GzipFile.read`` returned them (``read_changeset``'s read)."""
    def read(_size: int) -> bytes:
        block = pickle.load(source)
        if block is False:
            raise EOFError("change-set stream cut short")
        return block or b""
    return read


def _child() -> None:
    """The child's side: for each ("parse", ...) message on stdin and the blocks after it, the
    file's items as pickled batches to stdout, then "end" (or its first bad line's error)."""
    source, out = sys.stdin.buffer, sys.stdout.buffer
    chunks: dict[str, int] = {}
    while True:
        try:
            _, key, new_chunks, provider, size = pickle.load(source)
        except EOFError:
            return
        for chunk in new_chunks:
            intern(chunks, chunk)
        known = len(chunks)
        batch: list[tuple | Removal] = []

        def send(*message) -> None:
            nonlocal known
            new = list(chunks)[known:]
            known += len(new)
            pickle.dump(("items", batch, new), out, protocol=pickle.HIGHEST_PROTOCOL)
            batch.clear()
            if message:
                pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()

        try:
            for item in read_changeset(_frames(source), key, make=row_maker(chunks, provider)):
                batch.append(item)
                if len(batch) >= size:
                    send()
            send("end")
        except Corrupt as exc:
            send("error", str(exc))
            return  # (the build stops: the rest of the file's blocks are not read)
