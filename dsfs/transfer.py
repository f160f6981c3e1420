"""Bulk transfers of a whole view: extracting it to a local folder and verifying it.

Files are grouped by chunk. On a local store members are read in place; on a remote store a
chunk from which many members are needed is downloaded once and read locally, while a chunk
that serves a few files is read with ranged GETs. Every extracted file is checked against its
sha256 before it is renamed into place.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import hashlib
import os

from . import tmpfiles
from .changeset.manifest import SYMLINK
from .changeset.reader import iter_member, read_tree
from .changeset.tree import TreeBuilder, member_size
from .errors import Corrupt, NotFound
from .resolver.index import Node, VersionIndex
from .store.base import ObjectStore
from .store.local import LocalStore

_WHOLE_CHUNK_MEMBERS = 16


def extract_view(store: ObjectStore, index: VersionIndex, dest: str, tmp_dir: str, progress=None) -> int:
    os.makedirs(dest, exist_ok=True)
    dirs: list[Node] = []
    by_chunk: dict[str | None, list[Node]] = collections.defaultdict(list)
    for node in index.walk():
        target = os.path.join(dest, node.path)
        if node.is_dir:
            os.makedirs(target, exist_ok=True)
            dirs.append(node)
        elif node.type == SYMLINK:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(target)
            os.symlink(node.target, target)
            os.utime(target, ns=(node.mtime_ns, node.mtime_ns), follow_symlinks=False)
            if progress:
                progress(node.size)  # the index's total counts a link's target bytes
        else:
            by_chunk[node.chunk].append(node)

    def extract_chunk(chunk: str | None, nodes: list[Node]) -> None:
        source = store
        with contextlib.ExitStack() as stack:
            if chunk is not None and store.local_path(chunk) is None and len(nodes) >= _WHOLE_CHUNK_MEMBERS:
                try:
                    tmp = stack.enter_context(tmpfiles.downloaded(store, chunk, tmp_dir, "get-"))
                except NotFound:
                    raise Corrupt(f"chunk missing from store: {chunk!r}") from None
                source = _SingleFile(chunk, tmp)
            for node in sorted(nodes, key=lambda n: n.offset or 0):
                _write_file(source, node, os.path.join(dest, node.path))
                if progress:
                    progress(node.size)

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        for fut in [pool.submit(extract_chunk, c, n) for c, n in by_chunk.items()]:
            fut.result()
    for node in reversed(dirs):  # children first: writing into a folder changes its mtime
        target = os.path.join(dest, node.path)
        os.chmod(target, node.mode)
        os.utime(target, ns=(node.mtime_ns, node.mtime_ns))
    return sum(len(n) for n in by_chunk.values())


def _write_file(store: ObjectStore, node: Node, target: str) -> None:
    entry = node.to_entry()
    # Named by inode, not by the file's name: a name of 255 bytes leaves no room for a suffix.
    tmp = os.path.join(os.path.dirname(target), f".dsfs-part-{node.ino}")
    digest = hashlib.sha256()
    with open(tmp, "wb") as out:
        for block in iter_member(store, entry):
            digest.update(block)
            out.write(block)
    if digest.hexdigest() != entry.sha256:
        os.unlink(tmp)
        raise Corrupt(f"sha256 mismatch for {entry.path!r} in {entry.chunk!r}")
    os.chmod(tmp, node.mode)
    os.utime(tmp, ns=(node.mtime_ns, node.mtime_ns))
    os.replace(tmp, target)


class _SingleFile(LocalStore):
    """A downloaded chunk posing as a store that holds just that one object."""

    def __init__(self, key: str, path: str) -> None:
        self.key, self.path, self.url = key, path, path

    def get_range(self, key: str, start: int, length: int) -> bytes:
        with open(self.path, "rb") as f:
            f.seek(start)
            return f.read(length)


class Problem(str):
    """A problem ``verify_view`` found, as its text; ``path`` is the file it is about (None for
    a chunk), so output that must be valid UTF-8 can give a name's exact bytes apart."""

    path: str | None

    def __new__(cls, text: str, path: str | None = None) -> "Problem":
        problem = super().__new__(cls, text)
        problem.path = path
        return problem


def verify_view(store: ObjectStore, index: VersionIndex, *, hash_files: bool, progress=None) -> list[Problem]:
    problems: list[Problem] = []
    needed: dict[str, int] = collections.defaultdict(int)
    files: list[Node] = []
    for node in index.walk():
        if node.chunk is not None:
            needed[node.chunk] = max(needed[node.chunk], (node.offset or 0) + (node.csize or 0))
            if node.tree is not None:
                needed[node.chunk] = max(needed[node.chunk], node.tree_offset + member_size(node.size))
            files.append(node)
    bad_chunks = set()
    for chunk, end in sorted(needed.items()):
        try:
            size = store.head(chunk).size
        except NotFound:
            problems.append(Problem(f"chunk missing: {chunk}"))
            bad_chunks.add(chunk)
            continue
        if size < end:
            problems.append(Problem(f"chunk truncated: {chunk} ({size} bytes, members need {end})"))
            bad_chunks.add(chunk)
    if not hash_files:
        return problems

    def check(node: Node) -> Problem | None:
        if node.chunk in bad_chunks:
            return None
        entry = node.to_entry()
        digest = hashlib.sha256()
        tree = TreeBuilder() if entry.tree is not None else None
        try:
            for block in iter_member(store, entry):
                digest.update(block)
                if tree is not None:
                    tree.update(block)
            if digest.hexdigest() != node.sha256:
                return Problem(f"sha256 mismatch: {node.path}", node.path)
            if tree is not None:
                root, member = tree.finish()
                if root != entry.tree or read_tree(store, entry, 0, len(member)) != member:
                    return Problem(f"hash tree mismatch: {node.path}", node.path)
        except Corrupt as exc:
            return Problem(str(exc), node.path)
        finally:
            if progress:
                progress(node.size)
        return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        problems += [p for p in pool.map(check, files) if p]
    return problems


