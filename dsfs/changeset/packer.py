"""Packing local files into zip chunks: hash, deduplicate, compress, upload, reading each byte
of a source once (the read that hashes a file is the one that packs it).

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
import io
import os
import secrets
import shutil
import stat
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence

from .. import tmpfiles
from ..config import Settings
from ..errors import Conflict, DsfsError, InvalidInput, NoSpace
from ..paths import name_bytes
from ..store.base import ObjectStore
from .manifest import DEFLATED, DIR, EMPTY_SHA256, FILE, HASH_BLOCK, STORED, SYMLINK, Entry, chunk_key
from .tree import TreeBuilder
from .tree import member_name as tree_member_name
from .uploads import write_record

Progress = Callable[[int], None]
BlobLookup = Callable[[list[str]], dict[str, Entry]]  # sha256s -> stored entries of those found

_READ_BLOCK = 1 << 20
_WRITE_BUFFER = 1 << 20  # chunk writes are gathered up to this size
_SMALL_FILE = 1 << 20  # read whole, and hashed before it is written
# Sources whose stored copies are looked up in one query: so many, holding so many bytes of
# small files read ahead.
_BATCH_FILES = 256
_BATCH_BYTES = 16 << 20
_READERS = min(4, os.cpu_count() or 1)  # threads reading and hashing small files ahead of the writer
_PROBE_BYTES = 16 << 10  # enough to tell text from noise; deflating more costs real CPU
_QUICK_PROBE_BYTES = 2 << 10  # noise is told sooner
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
    def from_local(cls, path: str, local: str, st: os.stat_result | None = None) -> "Source":
        """The source for ``local`` (a symlink is not followed), from its ``lstat`` if given."""
        st = os.lstat(local) if st is None else st
        mode = st.st_mode
        if stat.S_ISLNK(mode):
            return cls(path, SYMLINK, local, stat.S_IMODE(mode), st.st_mtime_ns, target=os.readlink(local))
        if stat.S_ISDIR(mode):
            return cls(path, DIR, local, stat.S_IMODE(mode), st.st_mtime_ns)
        if not stat.S_ISREG(mode):
            raise InvalidInput(f"not a regular file, folder or symlink: {local!r}")
        return cls(path, FILE, local, stat.S_IMODE(mode), st.st_mtime_ns, size=st.st_size)


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
    """Does the start of a file deflate well? (How 'auto' compression decides.) Noise (media,
    ciphertext, random bytes) is told by its first 2 KiB not shrinking at all, for an eighth of
    the cost of deflating 16 KiB of it (zlib's slowest input)."""
    probe = head[:_PROBE_BYTES]
    if len(probe) > _QUICK_PROBE_BYTES and len(zlib.compress(probe[:_QUICK_PROBE_BYTES], 1)) >= _QUICK_PROBE_BYTES:
        return False
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
    if _extension(src.path) in ALREADY_COMPRESSED:
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


@dataclasses.dataclass(slots=True)
class _Member:
    """A file member written to the chunk but not yet kept: a dedup hit found only once the
    bytes were hashed (a big file, hashed as it is written) is cut back out."""

    info: zipfile.ZipInfo
    entry: Entry
    tree: bytes | None = None  # the tree member's data, written when the file is kept


class _ChunkFile:
    """The file under a chunk's ZipFile: small writes gathered into big ones, and zipfile's seek
    back to finish a member's local header patched in memory while that header is still there.

    The file on disk holds bytes ``[0, base)``, ``buf`` the bytes from ``base`` on. zipfile
    only seeks to a member's header and back to the end, so a write lands in ``buf`` or, for a
    header already written out, at its place on disk.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = bytearray()
        self.base = 0
        self.pos = 0

    def tell(self) -> int:
        return self.pos

    def seek(self, pos: int, whence: int = os.SEEK_SET) -> int:
        if whence != os.SEEK_SET:
            raise io.UnsupportedOperation("a chunk file seeks only to absolute offsets")
        self.pos = pos
        return pos

    def write(self, data) -> int:
        data = memoryview(data).cast("B")
        n = len(data)
        if self.pos == self.base + len(self.buf):
            if n < _WRITE_BUFFER:  # the usual case: appending a little
                self.buf += data
            else:  # a big block goes straight to disk, not through the buffer
                self.flush()
                _pwrite_all(self.fd, data, self.pos)
                self.base = self.pos + n
        else:  # zipfile finishing a member's local header
            at = self.pos - self.base
            if at < 0:  # that header is on disk already
                _pwrite_all(self.fd, data[:-at], self.pos)
                data, at = data[-at:], 0
            self.buf[at:at + len(data)] = data
        self.pos += n
        if len(self.buf) >= _WRITE_BUFFER:
            self.flush()
        return n

    def flush(self) -> None:
        if self.buf:
            _pwrite_all(self.fd, self.buf, self.base)
            self.base += len(self.buf)
            self.buf.clear()

    def cut(self, size: int) -> None:
        """Drop everything from ``size`` on."""
        if size >= self.base:
            del self.buf[size - self.base:]
        else:
            self.buf.clear()
            os.ftruncate(self.fd, size)
            self.base = size
        self.pos = size


def _pwrite_all(fd: int, data, offset: int) -> None:
    with memoryview(data) as view:
        while view:
            n = os.pwrite(fd, view, offset)
            view, offset = view[n:], offset + n


class _ChunkWriter:
    """One zip chunk being written to a temp file, then uploaded as a whole."""

    def __init__(self, store: ObjectStore, key: str, tmp_dir: str, level: int) -> None:
        self.store, self.key = store, key
        fd, self.tmp = tmpfiles.make(tmp_dir, "chunk-", ".zip")
        self.held = os.dup(fd)  # the lock stays while the file is uploaded (tmpfiles.sweep)
        self.file = _ChunkFile(fd)
        self.zip = zipfile.ZipFile(self.file, "w", allowZip64=True, compresslevel=level)
        self.members: list[Entry] = []
        self.size = 0

    def write(self, src: Source, method: int, blocks: Iterable[memoryview], digest,
              helper: concurrent.futures.Executor) -> _Member:
        """Write a file member from ``blocks``; a big stored file also gets its hash tree, built
        on ``helper`` while this thread hashes (``digest``) and writes the same block."""
        info = self._info(src, method)
        tree = TreeBuilder() if method == STORED and src.size > HASH_BLOCK else None
        with self.zip.open(info, "w", force_zip64=src.size > (1 << 31) - 1) as out:
            # The rewrite of the local header at close keeps its length: the data starts here.
            offset = self.file.tell()
            for block in blocks:
                side = None if tree is None else helper.submit(tree.update, block)
                try:
                    if digest is not None:
                        digest.update(block)
                    out.write(block)
                finally:
                    if side is not None:
                        side.result()  # before the block's buffer is read into again
        member = self._member(src, info, offset, method)
        if tree is not None:
            member.entry.tree, member.tree = tree.finish()
        return member

    def write_bytes(self, src: Source, method: int, data: bytes) -> _Member:
        """Write a small file member whole: its CRC and sizes are known before its local header
        is, so the header is written once (what ``ZipFile.open`` does, less the rewrite)."""
        info = self._info(src, method)
        if method == DEFLATED:
            deflate = zlib.compressobj(self.zip.compresslevel, zlib.DEFLATED, -15)
            payload = deflate.compress(data) + deflate.flush()
        else:
            payload = data
        info.CRC, info.compress_size = zlib.crc32(data), len(payload)
        info.header_offset = self.file.tell()
        self.file.write(info.FileHeader(False))  # a small file needs no zip64 header
        offset = self.file.tell()
        self.file.write(payload)
        self.zip.start_dir = self.file.tell()
        self.zip.filelist.append(info)
        self.zip.NameToInfo[info.filename] = info
        return self._member(src, info, offset, method)

    def _info(self, src: Source, method: int) -> _MemberInfo:
        info = _MemberInfo(src.path, date_time=_zip_time(src.mtime_ns))
        info.compress_type = zipfile.ZIP_DEFLATED if method == DEFLATED else zipfile.ZIP_STORED
        info.external_attr = (0o100000 | src.mode) << 16
        info.file_size = src.size  # lets zipfile choose zip64 headers for big files up front
        return info

    def _member(self, src: Source, info: zipfile.ZipInfo, offset: int, method: int) -> _Member:
        self.size += info.compress_size + 100 + len(info.filename)
        return _Member(info, Entry(src.path, FILE, src.size, src.sha256, src.mode, src.mtime_ns,
                                   chunk=self.key, offset=offset, csize=info.compress_size, method=method))

    def keep(self, member: _Member, sha256: str) -> Entry:
        entry = member.entry
        entry.sha256 = sha256
        if member.tree is not None:
            entry.tree_offset = self._add_tree(member.info, sha256, member.tree)
        self.members.append(entry)
        return entry

    def drop(self, member: _Member) -> None:
        """Cut the last member written back out of the chunk (its bytes were already stored)."""
        info = member.info
        if self.zip.filelist[-1] is not info:
            raise AssertionError(f"only the last member can be cut out: {info.filename!r}")
        self.zip.filelist.remove(info)
        del self.zip.NameToInfo[info.filename]
        self.zip.start_dir = info.header_offset  # where zipfile writes the next member
        self.file.cut(info.header_offset)
        self.size -= info.compress_size + 100 + len(info.filename)

    def _add_tree(self, file_info: zipfile.ZipInfo, sha256: str, hashes: bytes) -> int:
        """Write a file's tree member (its block and leaf digests) right after the file."""
        info = zipfile.ZipInfo(tree_member_name(sha256), date_time=file_info.date_time)
        info.compress_type = zipfile.ZIP_STORED
        info.external_attr = 0o100444 << 16
        with self.zip.open(info, "w") as out:
            offset = self.file.tell()
            out.write(hashes)
        self.size += len(hashes) + 100 + len(info.filename)
        return offset

    def finish(self, progress: Progress | None) -> None:
        self.zip.close()  # flushes the chunk file
        self._close_file()
        try:
            self.store.move_file(self.key, self.tmp, progress)
        finally:
            if os.path.exists(self.tmp):
                os.unlink(self.tmp)
            self._release()

    def abort(self) -> None:
        try:
            self.zip.close()
        except Exception:  # closing a half-written zip may fail; the file goes anyway
            pass
        self._close_file()
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)
        self._release()

    def _release(self) -> None:
        held, self.held = self.held, None
        tmpfiles.close(held)

    def _close_file(self) -> None:
        if self.file.fd >= 0:
            fd, self.file.fd = self.file.fd, -1
            os.close(fd)


def _zip_time(mtime_ns: int) -> tuple[int, ...]:
    import time

    t = time.gmtime(max(mtime_ns // 1_000_000_000, 315532800))  # zip cannot say before 1980
    return (min(t.tm_year, 2107), t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec & ~1)


def _alias(known: Entry, src: Source) -> Entry:
    return dataclasses.replace(known, path=src.path, mode=src.mode, mtime_ns=src.mtime_ns)


def _open_source(src: Source) -> int:
    try:
        return os.open(src.local, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Conflict(f"file vanished while being added: {src.local!r}") from None
    except PermissionError:
        raise InvalidInput(f"cannot read file: {src.local!r}") from None


def _check_read(fd: int, src: Source, read: int) -> None:
    """The bytes read are the file as listed: same size, and (for a local file; a staged file's
    times are the draft's, not its own) the same mtime after the read as when it was listed, so
    no write landed in between. The bytes stored are always the ones hashed; this makes sure they
    are not a mix of two versions of the file."""
    st = os.fstat(fd)
    if read != src.size or st.st_size != src.size or (not src.hashed and st.st_mtime_ns != src.mtime_ns):
        raise Conflict(f"file changed while being added: {src.local!r}")


def _read_small(src: Source) -> bytes:
    """A small file whole, in one read: hashed before anything is written, so a dedup hit
    writes nothing."""
    fd = _open_source(src)
    try:
        parts, got = [], 0
        while got < src.size and (part := os.read(fd, src.size - got)):  # more than one: a short read
            parts.append(part)
            got += len(part)
        _check_read(fd, src, got)
    finally:
        os.close(fd)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _probes(src: Source, settings: Settings) -> bool:
    """Does choosing the method need the compressibility probe?"""
    return settings.compression == "auto" and _extension(src.path) not in ALREADY_COMPRESSED


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _batches(sources: Sequence[Source]) -> Iterator[list[Source]]:
    batch, held = [], 0
    for src in sources:
        batch.append(src)
        held += src.size if src.size <= _SMALL_FILE else 0
        if len(batch) >= _BATCH_FILES or held >= _BATCH_BYTES:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def _reads_ahead(src: Source) -> bool:
    """A small local file, read and hashed before its batch's lookup."""
    return (src.type == FILE and 0 < src.size <= _SMALL_FILE and not src.hashed
            and src.known is None and src.local is not None)


def _write_read(writer: _ChunkWriter, src: Source, buf: bytearray, settings: Settings,
                digest, helper: concurrent.futures.Executor) -> _Member:
    """Stream a file into the chunk in ``buf``-sized reads: each byte is read once, and hashed
    (``digest``), tree-hashed and written from the same buffer."""
    fd = _open_source(src)
    try:
        n = os.readv(fd, [buf])
        if not src.hashed and _probes(src, settings):
            src.compressible = looks_compressible(memoryview(buf)[:n])
        member = writer.write(src, choose_method(src, settings), _blocks(fd, buf, n), digest, helper)
        _check_read(fd, src, member.info.file_size)
    finally:
        os.close(fd)
    return member


def _blocks(fd: int, buf: bytearray, n: int) -> Iterator[memoryview]:
    """``buf`` refilled from ``fd`` (each block must be used up before the next is asked for)."""
    view = memoryview(buf)
    while n:
        yield view[:n]
        n = os.readv(fd, [buf])


def pack(
    store: ObjectStore,
    version_id: str,
    changeset_id: str,
    sources: Sequence[Source],
    lookup_blobs: BlobLookup,
    settings: Settings,
    tmp_dir: str,
    progress: Progress | None = None,
) -> tuple[list[Entry], PackStats]:
    """Turn sources into manifest entries, uploading new bytes as zip chunks.

    Each file is read once, and hashed as it is packed unless its sha256 is already known
    (``Source.hashed``: a draft mount's staged file, hashed at its close). A staged file is not
    hashed again because its bytes cannot have changed since: a closed staged file is never
    written again (a later write goes to a new working copy, renamed over it), and a commit
    packs a hard link made at its snapshot. Its size is checked, and every reader checks the
    sha256. Small files are read whole, a batch at a time, and their stored copies looked up
    for the whole batch at once; a big file is hashed as it is written, and cut back out of
    the chunk if its bytes turn out to be stored already.
    """
    stats = PackStats()
    entries: list[Entry] = []
    packed: dict[str, Entry] = {}
    writer: _ChunkWriter | None = None
    buf = bytearray(_READ_BLOCK)
    os.makedirs(tmp_dir, exist_ok=True)
    # Chunks are written in a folder of this run's own, named before it exists: however early an
    # interrupt (Ctrl-C, SIGTERM) lands, the cleanup below knows what to remove.
    work = os.path.join(tmp_dir, f"pack-{os.getpid()}-{secrets.token_hex(4)}")

    def close_writer() -> None:
        nonlocal writer
        if writer is not None and not writer.members:  # every member was a dedup hit, cut out
            writer.abort()
        elif writer is not None:
            writer.finish(None)
            stats.chunks.append(writer.key)
            write_record(store, version_id, writer.key, writer.members)
        writer = None

    def writer_for(src: Source) -> _ChunkWriter:
        nonlocal writer
        if writer is not None and writer.size and writer.size + src.size > settings.chunk_size:
            close_writer()
        if writer is None:
            key = chunk_key(version_id, changeset_id, len(stats.chunks))
            writer = _ChunkWriter(store, key, work, settings.compress_level)
        return writer

    def read_ahead(src: Source) -> bytes:
        data = _read_small(src)
        src.sha256 = hashlib.sha256(data).hexdigest()
        if _probes(src, settings):
            src.compressible = looks_compressible(data)
        return data

    def deduplicated(src: Source, stored: dict[str, Entry]) -> bool:
        """Point at bytes already stored (in this run, the lineage or an earlier upload)."""
        known = packed.get(src.sha256) or src.known or stored.get(src.sha256)
        if known is None or known.size != src.size:
            return False
        entries.append(_alias(known, src))
        stats.bytes_dedup += src.size
        return True

    def kept(entry: Entry) -> None:
        packed[entry.sha256] = entry
        entries.append(entry)
        stats.bytes_new += entry.size

    def pack_file(src: Source, data: bytes | None, stored: dict[str, Entry]) -> None:
        if (data is not None or src.hashed or src.known is not None) and deduplicated(src, stored):
            return
        if src.local is None:
            raise InvalidInput(f"no bytes for {src.path!r}: not staged and not stored")
        if src.size <= _SMALL_FILE:
            data = _read_small(src) if data is None else data
            out = writer_for(src)
            kept(out.keep(out.write_bytes(src, choose_method(src, settings), data), src.sha256))
            return
        out = writer_for(src)
        digest = None if src.hashed else hashlib.sha256()
        member = _write_read(out, src, buf, settings, digest, pool)
        if digest is not None:
            src.sha256 = digest.hexdigest()
            if deduplicated(src, lookup_blobs([src.sha256])):
                out.drop(member)
                return
        kept(out.keep(member, src.sha256))

    def read_slice(part: list[Source]) -> list[bytes]:
        return [read_ahead(src) for src in part]

    def start(batch: list[Source]) -> tuple[list[Source], list[concurrent.futures.Future]]:
        """Read a batch's small files in a few slices on the pool (sha256 and zlib run there
        without the GIL) while the batch before it is written."""
        small = [src for src in batch if _reads_ahead(src)]
        step = max(1, -(-len(small) // _READERS))
        return batch, [pool.submit(read_slice, small[i:i + step]) for i in range(0, len(small), step)]

    def contents_of(batch: list[Source], slices: list[concurrent.futures.Future]) -> list[bytes | None]:
        read = iter([data for part in slices for data in part.result()])
        return [next(read) if _reads_ahead(src) else None for src in batch]

    pool = concurrent.futures.ThreadPoolExecutor(_READERS)
    try:
        os.mkdir(work)
        batches = _batches(sources)
        ahead = start(next(batches, []))
        while ahead[0]:
            batch, slices = ahead
            ahead = start(next(batches, []))
            contents = contents_of(batch, slices)
            stored = lookup_blobs([src.sha256 for src, data in zip(batch, contents)
                                   if (data is not None or src.hashed) and src.size and src.known is None
                                   and src.sha256 not in packed])
            for src, data in zip(batch, contents):
                if src.type != FILE:
                    entries.append(Entry(src.path, src.type, mode=src.mode, mtime_ns=src.mtime_ns,
                                         target=src.target))
                elif src.size == 0:
                    if not src.hashed and src.local and os.stat(src.local).st_size:  # listed empty, not now
                        raise Conflict(f"file changed while being added: {src.local!r}")
                    entries.append(Entry(src.path, FILE, 0, EMPTY_SHA256, src.mode, src.mtime_ns))
                else:
                    pack_file(src, data, stored)
                    if progress:
                        progress(src.size)
        close_writer()
    except BaseException as exc:
        if writer is not None:
            writer.abort()
        # The local disk filled up; a NoSpace from the store (an OSError too) says where already.
        if isinstance(exc, OSError) and not isinstance(exc, DsfsError) and exc.errno == errno.ENOSPC:
            raise NoSpace(f"no space left in {tmp_dir!r} while packing a chunk") from None
        raise
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(work, ignore_errors=True)
    return entries, stats
