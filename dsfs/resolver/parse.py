"""Reading a change-set's lines into the index build's work rows, here or in a second process.

``row_maker`` turns a decoded "add" line into its row. A build spends about as long reading a big
change-set (gunzip, JSON, the checks and the rows) as inserting its rows into SQLite, so on two
cores the two overlap: ``parse_apart`` reads the open change-set file in a child process
(``python -m dsfs.resolver.parse``) and yields what ``parse_here`` would, in the same order, a batch
at a time: rows, Removals, and the first bad line's error where the child met it (``Corrupt``,
same message). The child starts from the build's chunk ids, and the keys it interns are interned
here in the same order, so both number chunks alike.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import BinaryIO

from ..changeset.manifest import DEFLATED, FILE, STORED, Removal, entry_fields, iter_changeset
from ..errors import Corrupt, InvalidInput
from ..paths import check_path
from .index import TYPE_CODES
from .update import entry_row

log = logging.getLogger(__name__)

PARSE_APART = 100_000  # entries from which a change-set is read in a second process
_BATCH = 5000  # items per message from a child
_FILE = TYPE_CODES[FILE]
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
        size, sha, mode, mtime_ns = d.get("size"), d.get("sha256"), d.get("mode"), d.get("mtime_ns")
        chunk, offset, csize, method = d.get("chunk"), d.get("offset"), d.get("csize"), d.get("method")
        if (d.get("type") == FILE and type(size) is int and size >= 0 and type(sha) is str and len(sha) == 64
                and type(mode) is int and type(mtime_ns) is int and "blocks" not in d and "tree" not in d
                and (type(chunk) is str and type(offset) is int and type(csize) is int and type(method) is int
                     and offset >= 0 and csize >= 0 and (method == STORED or method == DEFLATED)
                     or chunk is None and size == 0 and "chunk" not in d)):
            try:
                raw = check_path(d.get("path"), what="manifest path").encode("utf-8", "surrogateescape")
                digest = bytes.fromhex(sha)
            except (InvalidInput, ValueError):
                return general(d)
            if digest.hex() == sha:
                if chunk is None:
                    offset = csize = method = 0
                else:
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


def parse_apart(stream: BinaryIO, key: str, *, chunks: dict[str, int], provider: int
                ) -> Iterator[tuple | Removal]:
    """What ``parse_here`` yields, read by a child process. Where none starts, or one dies, this
    process reads on from where it stopped."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [_PACKAGE_ROOT, os.environ.get("PYTHONPATH")])))
    done = 0
    with tempfile.TemporaryFile() as errors:
        try:
            child = subprocess.Popen([sys.executable, "-m", __name__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=errors, pass_fds=(stream.fileno(),), env=env)
        except OSError as exc:
            log.warning("cannot start a change-set reader (%s): reading %s here", exc, key)
        else:
            try:
                with child.stdin:
                    child.stdin.write(pickle.dumps((stream.fileno(), key, chunks, provider, _BATCH)))
                while True:
                    kind, *rest = pickle.load(child.stdout)
                    if kind == "items":
                        items, new_chunks = rest
                        for chunk in new_chunks:
                            intern(chunks, chunk)
                        done += len(items)
                        yield from items
                    elif kind == "error":
                        raise Corrupt(rest[0])
                    else:
                        return
            except Corrupt:
                raise  # the file's own error (Corrupt is an OSError too)
            except (EOFError, OSError, pickle.UnpicklingError):
                child.wait()
                errors.seek(0)
                log.warning("change-set reader exited with %s after %d items of %s: reading on here (%s)",
                            child.returncode, done, key, errors.read()[-500:].decode(errors="replace").strip())
            finally:
                if child.poll() is None:
                    child.kill()
                child.wait()
                child.stdout.close()
    stream.seek(0)
    yield from itertools.islice(parse_here(stream, key, chunks=chunks, provider=provider), done, None)


def _child() -> None:
    """The child's side: read the file given by descriptor, send pickled batches to stdout."""
    fd, key, chunks, provider, size = pickle.load(sys.stdin.buffer)
    out = sys.stdout.buffer
    batch: list[tuple | Removal] = []
    known = len(chunks)

    def send(*message) -> None:
        nonlocal known
        new = list(chunks)[known:]
        known += len(new)
        pickle.dump(("items", batch, new), out, protocol=pickle.HIGHEST_PROTOCOL)
        batch.clear()
        if message:
            pickle.dump(message, out, protocol=pickle.HIGHEST_PROTOCOL)

    try:
        with open(fd, "rb", closefd=False) as stream:
            for item in parse_here(stream, key, chunks=chunks, provider=provider):
                batch.append(item)
                if len(batch) >= size:
                    send()
        send("end")
    except Corrupt as exc:
        send("error", str(exc))
    out.flush()


if __name__ == "__main__":
    _child()
