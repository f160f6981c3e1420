"""Packing local files into zip chunks: hash, deduplicate, compress, upload.

A file is never split across chunks; a chunk is closed when the next file would take it past
the chunk size. Content whose sha256 is already stored (in the lineage, or earlier in this same
change-set) becomes an entry pointing at the existing bytes, so renames and copies upload nothing.
Chunks are uploaded before the caller records the change-set, so an interrupted pack leaves at
worst orphaned chunks: each fully uploaded one with an upload record (``uploads.py``) that lets
the next commit to the draft reuse its bytes, and ``dsfs gc`` removes what nobody reuses. The
chunk being written when the interruption comes is removed on the way out.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import errno
import hashlib
import os
import secrets
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Sequence

from ..config import Settings
from ..errors import Conflict, DsfsError, InvalidInput, NoSpace
from ..paths import name_bytes
from ..store.base import ObjectStore
from .manifest import DEFLATED, DIR, EMPTY_SHA256, FILE, HASH_BLOCK, STORED, SYMLINK, Entry, chunk_key
from .tree import TreeBuilder
from .tree import member_name as tree_member_name
from .uploads import write_record

Progress = Callable[[int], None]
BlobLookup = Callable[[str], Entry | None]

_READ_BLOCK = 1 << 20
_PROBE_BYTES = 16 << 10  # enough to tell text from noise; deflating more costs real CPU
# Types whose bytes are already compressed: deflating them again costs CPU and saves nothing.
ALREADY_COMPRESSED = frozenset(
    ".jpg .jpeg .png .gif .webp .avif .heic .mp4 .mkv .mov .avi .webm .mp3 .aac .ogg .opus .flac "
    ".gz .tgz .bz2 .xz .zst .lz4 .zip .7z .rar .npz .parquet .arrow .feather .tfrecord .pt .pth "
    ".safetensors .h5 .hdf5 .jxl .jp2 .tif .tiff .pdf .br .snappy".split()
)


@dataclasses.dataclass(slots=True)
class Source:
    """Something to add: a local file, a symlink, or a directory, at a dataset path."""

    path: str
    type: str
    local: str | None = None
    mode: int = 0o644
    mtime_ns: int = 0
    target: str | None = None
    size: int = 0
    sha256: str = EMPTY_SHA256
    compressible: bool = True
    hashed: bool = False            # sha256/size already known (a journaled staged file)
    known: Entry | None = None      # bytes already stored: reference them, never upload

    @classmethod
    def from_local(cls, path: str, local: str) -> "Source":
        st = os.lstat(local)
        if os.path.islink(local):
            return cls(path, SYMLINK, local, st.st_mode & 0o7777, st.st_mtime_ns,
                       target=os.readlink(local))
        if os.path.isdir(local):
            return cls(path, DIR, local, st.st_mode & 0o7777, st.st_mtime_ns)
        if not os.path.isfile(local):
            raise InvalidInput(f"not a regular file, folder or symlink: {local!r}")
        return cls(path, FILE, local, st.st_mode & 0o7777, st.st_mtime_ns, size=st.st_size)


@dataclasses.dataclass
class PackStats:
    bytes_new: int = 0
    bytes_dedup: int = 0
    chunks: list[str] = dataclasses.field(default_factory=list)


def hash_file(local: str) -> tuple[str, int, bool]:
    """(sha256, size, compressible) of a local file, in one read."""
    digest = hashlib.sha256()
    size = 0
    probe = b""
    with open(local, "rb") as f:
        while block := f.read(_READ_BLOCK):
            if not probe:
                probe = block[:_PROBE_BYTES]
            digest.update(block)
            size += len(block)
    return digest.hexdigest(), size, looks_compressible(probe)


def looks_compressible(head: bytes) -> bool:
    """Does the start of a file deflate well? (How 'auto' compression decides.)"""
    probe = head[:_PROBE_BYTES]
    return bool(probe) and len(zlib.compress(probe, 1)) < 0.9 * len(probe)


def hash_sources(sources: Sequence[Source], progress: Progress | None = None, threads: int = 4) -> None:
    """Fill in sha256/size/compressible of every file source (hashlib releases the GIL)."""
    files = [s for s in sources if s.type == FILE and not s.hashed and s.known is None]

    def work(src: Source) -> None:
        try:
            src.sha256, src.size, src.compressible = hash_file(src.local)
        except FileNotFoundError:
            raise Conflict(f"file vanished while being added: {src.local!r}") from None
        except PermissionError:
            raise InvalidInput(f"cannot read file: {src.local!r}") from None
        if progress:
            progress(src.size)

    # In batches, so a million files never means a million pending futures in memory.
    pool = concurrent.futures.ThreadPoolExecutor(threads)
    try:
        for start in range(0, len(files), 1024):
            for fut in [pool.submit(work, s) for s in files[start:start + 1024]]:
                fut.result()
    finally:
        # On an error or an interruption, files not started yet are not hashed at all.
        pool.shutdown(cancel_futures=True)


def choose_method(src: Source, settings: Settings) -> int:
    if settings.compression == "store":
        return STORED
    if os.path.splitext(src.path)[1].lower() in ALREADY_COMPRESSED:
        return STORED
    if settings.compression == "deflate":
        return DEFLATED
    return DEFLATED if src.compressible else STORED


class _MemberInfo(zipfile.ZipInfo):
    """A zip member whose name is the dataset name's own bytes (see dsfs/paths.py): UTF-8 names
    carry the zip UTF-8 flag as zipfile writes them; other byte names are written raw, without the
    flag, as Info-ZIP does for names from a non-UTF-8 system. (zipfile would refuse them.)"""

    __slots__ = ()

    def _encodeFilenameFlags(self):  # zipfile's hook for the name bytes and flag bits
        try:
            return super()._encodeFilenameFlags()
        except UnicodeEncodeError:
            return name_bytes(self.filename), self.flag_bits


class _ChunkWriter:
    """One zip chunk being written to a temp file, then uploaded as a whole."""

    def __init__(self, store: ObjectStore, key: str, tmp_dir: str, level: int) -> None:
        self.store, self.key = store, key
        fd, self.tmp = tempfile.mkstemp(dir=tmp_dir, prefix="chunk-", suffix=".zip")
        os.close(fd)
        self.zip = zipfile.ZipFile(self.tmp, "w", allowZip64=True, compresslevel=level)
        # (file member, its entry, its tree member or None)
        self.members: list[tuple[zipfile.ZipInfo, Entry, zipfile.ZipInfo | None]] = []
        self.size = 0

    def add(self, src: Source, method: int) -> Entry:
        info = _MemberInfo(src.path, date_time=_zip_time(src.mtime_ns))
        info.compress_type = zipfile.ZIP_DEFLATED if method == DEFLATED else zipfile.ZIP_STORED
        info.external_attr = (0o100000 | src.mode) << 16
        info.file_size = src.size  # lets zipfile choose zip64 headers for big files up front
        digest = hashlib.sha256()
        # Big stored files get a hash tree, so a small read of them can be checked on its own.
        tree = TreeBuilder() if method == STORED and src.size > HASH_BLOCK else None
        with open(src.local, "rb") as f, self.zip.open(info, "w", force_zip64=src.size > (1 << 31) - 1) as out:
            while block := f.read(_READ_BLOCK):
                digest.update(block)
                out.write(block)
                if tree is not None:
                    tree.update(block)
        if digest.hexdigest() != src.sha256:
            raise Conflict(f"file changed while being added: {src.local!r}")
        entry = Entry(src.path, FILE, src.size, src.sha256, src.mode, src.mtime_ns,
                      chunk=self.key, csize=info.compress_size, method=method)
        tree_info = None
        if tree is not None:
            entry.tree, hashes = tree.finish()
            tree_info = self._add_tree(src, hashes)
        self.members.append((info, entry, tree_info))
        self.size += info.compress_size + 100 + len(info.filename)
        return entry

    def _add_tree(self, src: Source, hashes: bytes) -> zipfile.ZipInfo:
        """Write a file's tree member (its block and leaf digests) right after the file."""
        info = zipfile.ZipInfo(tree_member_name(src.sha256), date_time=_zip_time(src.mtime_ns))
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o100444 << 16
        self.zip.writestr(info, hashes)
        self.size += len(hashes) + 100 + len(info.filename)
        return info

    def finish(self, progress: Progress | None) -> None:
        self.zip.close()
        with open(self.tmp, "rb") as f:
            for info, entry, tree_info in self.members:
                entry.offset = _data_offset(f, info.header_offset)
                if tree_info is not None:
                    entry.tree_offset = _data_offset(f, tree_info.header_offset)
        try:
            self.store.put_file(self.key, self.tmp, progress)
        finally:
            os.unlink(self.tmp)

    def abort(self) -> None:
        try:
            self.zip.close()
        except Exception:  # closing a half-written zip may fail; the file goes anyway
            pass
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _data_offset(f, header_offset: int) -> int:
    f.seek(header_offset)
    header = f.read(30)
    sig, name_len, extra_len = struct.unpack("<I22xHH", header)
    if sig != 0x04034B50:
        raise AssertionError(f"bad local header at {header_offset}")
    return header_offset + 30 + name_len + extra_len


def _zip_time(mtime_ns: int) -> tuple[int, ...]:
    import time

    t = time.gmtime(max(mtime_ns // 1_000_000_000, 315532800))  # zip cannot say before 1980
    return (min(t.tm_year, 2107), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec & ~1)


def _alias(known: Entry, src: Source) -> Entry:
    return dataclasses.replace(known, path=src.path, mode=src.mode, mtime_ns=src.mtime_ns)


def pack(
    store: ObjectStore,
    version_id: str,
    changeset_id: str,
    sources: Sequence[Source],
    lookup_blob: BlobLookup,
    settings: Settings,
    tmp_dir: str,
    progress: Progress | None = None,
) -> tuple[list[Entry], PackStats]:
    """Turn hashed sources into manifest entries, uploading new bytes as zip chunks."""
    stats = PackStats()
    entries: list[Entry] = []
    packed: dict[str, Entry] = {}
    # Copies of bytes packed in this run: their offsets are known only once the chunk closes.
    aliases: list[tuple[int, Source, Entry]] = []
    writer: _ChunkWriter | None = None
    os.makedirs(tmp_dir, exist_ok=True)
    # Chunks are written in a folder of this run's own, named before it exists: however early an
    # interrupt (Ctrl-C, SIGTERM) lands, the cleanup below knows what to remove.
    work = os.path.join(tmp_dir, f"pack-{os.getpid()}-{secrets.token_hex(4)}")

    def close_writer() -> None:
        nonlocal writer
        if writer is not None:
            writer.finish(None)
            stats.chunks.append(writer.key)
            write_record(store, version_id, writer.key, [entry for _, entry, _ in writer.members])
            writer = None

    try:
        os.mkdir(work)
        for src in sources:
            if src.type != FILE:
                entries.append(Entry(src.path, src.type, mode=src.mode, mtime_ns=src.mtime_ns,
                                     target=src.target))
                continue
            if src.size == 0:
                entries.append(Entry(src.path, FILE, 0, EMPTY_SHA256, src.mode, src.mtime_ns))
                continue
            in_run = packed.get(src.sha256)
            known = in_run or src.known or lookup_blob(src.sha256)
            if known is not None and known.size == src.size:
                if in_run is not None:
                    aliases.append((len(entries), src, in_run))
                entries.append(_alias(known, src))
                stats.bytes_dedup += src.size
                if progress:
                    progress(src.size)
                continue
            if writer is not None and writer.size and writer.size + src.size > settings.chunk_size:
                close_writer()
            if src.local is None:
                raise InvalidInput(f"no bytes for {src.path!r}: not staged and not stored")
            if writer is None:
                key = chunk_key(version_id, changeset_id, len(stats.chunks))
                writer = _ChunkWriter(store, key, work, settings.compress_level)
            entry = writer.add(src, choose_method(src, settings))
            packed[src.sha256] = entry
            entries.append(entry)
            stats.bytes_new += src.size
            if progress:
                progress(src.size)
        close_writer()
        for index, src, original in aliases:
            entries[index] = _alias(original, src)
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        # The local disk filled up; a NoSpace from the store (an OSError too) says where already.
        if isinstance(exc, OSError) and not isinstance(exc, DsfsError) and exc.errno == errno.ENOSPC:
            raise NoSpace(f"no space left in {tmp_dir!r} while packing a chunk") from None
        raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return entries, stats
