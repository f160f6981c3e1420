"""Adapter: libfuse's low-level (inode) API called directly through ctypes, for published versions.

Why this adapter for immutable data, over pyfuse3 and libfuse's high-level API:

- ``open`` and ``opendir`` answer ENOSYS, so the kernel stops sending open/release and
  opendir/releasedir for the whole mount. It then treats every file as FOPEN_KEEP_CACHE and every
  folder as FOPEN_CACHE_DIR: a second epoch reads from the page cache and a second walk lists
  from the kernel's readdir cache without a round trip into Python. pyfuse3 cannot serve reads
  without open (its read() gets only the file handle), and libfuse's high-level API needs its
  opendir for its own folder handles, so neither can do both.
- ``readdirplus`` returns each entry's attributes with the listing, so a cold ``find -ls`` or
  ``os.walk`` + ``stat`` needs no lookup per file.
- Requests carry the inode, which is the index's rowid: no path resolution per read.

The ABI-sensitive structures (``struct stat``, ``fuse_file_info``, ``statvfs``) come from
mfusepy, which tracks them across libfuse versions, bound to libfuse 3 by ``libfuse`` (never
libfuse 2, whatever else is installed). libfuse's worker threads
call the handlers below; the view is thread-safe, and ctypes drops the GIL around every libfuse
call. Only errors with an errno leave a handler as a reply; anything else is logged with the
operation and inode and answered with EIO, so a bad request never kills the daemon.

Prefetch (``prefetchd``) pushes verified file bytes into the kernel's page cache with
``fuse_lowlevel_notify_store``. The kernel takes them only for inodes it knows, so the adapter
keeps each inode's lookup count (lookups and readdirplus entries up, forgets down) and pushes
only to inodes with a count. A walk leaves the kernel holding nearly every inode of the version
(entries are cached for a day), so the counts take 4 bytes an inode (``LookupCounts``), not a
dict entry and an int object (about 70 bytes).
"""

from __future__ import annotations

import array
import collections
import ctypes
import errno
import functools
import json
import logging
import os
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable
from ctypes import CFUNCTYPE, POINTER, Structure, c_char_p, c_double, c_int, c_int64, c_size_t
from ctypes import c_uint, c_uint64, c_void_p

from ..cache import ReadState
from ..errors import DsfsError, MountError
from ..resolver.index import ROOT_INO, Node
from .libfuse import mfusepy_bound_to_libfuse3
from .prefetchd import PrefetchService
from .view import ST_BLKSIZE, VersionView

log = logging.getLogger(__name__)

mfusepy = mfusepy_bound_to_libfuse3()
LONG_TIMEOUT = 86400.0
XATTR_STATS = "user.dsfs.stats"
PUSH_PIECE = 1 << 20  # bytes per notify_store message
_PAGE = 4096  # the kernel's page cache granularity (a spill sends whole pages)
_SENT_BYTES = 16 << 20  # the spiller's record of pages sent, a byte each: 64 GiB of files read at random
_CAP_READDIRPLUS_AUTO = 1 << 14  # fuse_common.h: plus only for a folder's first page, or after lookups
_lib = mfusepy._libfuse
_stat_t = mfusepy.c_stat
_fi_p = POINTER(mfusepy.fuse_file_info)


class _EntryParam(Structure):
    _fields_ = [("ino", c_uint64), ("generation", c_uint64), ("attr", _stat_t),
                ("attr_timeout", c_double), ("entry_timeout", c_double)]


class _Buf(Structure):  # struct fuse_buf
    _fields_ = [("size", c_size_t), ("flags", c_int), ("mem", c_void_p), ("fd", c_int),
                ("pos", c_int64)]


class _BufVec(Structure):  # struct fuse_bufvec with one buffer
    _fields_ = [("count", c_size_t), ("idx", c_size_t), ("off", c_size_t), ("buf", _Buf * 1)]


class _Forget(Structure):  # struct fuse_forget_data
    _fields_ = [("ino", c_uint64), ("nlookup", c_uint64)]


class _Args(Structure):
    _fields_ = [("argc", c_int), ("argv", POINTER(c_char_p)), ("allocated", c_int)]


_REQ_INO = (c_void_p, c_uint64)
_CALLBACKS = {  # the handlers this adapter implements, with their C signatures
    "init": CFUNCTYPE(None, c_void_p, c_void_p),
    "lookup": CFUNCTYPE(None, *_REQ_INO, c_char_p),
    "forget": CFUNCTYPE(None, *_REQ_INO, c_uint64),
    "getattr": CFUNCTYPE(None, *_REQ_INO, _fi_p),
    "readlink": CFUNCTYPE(None, *_REQ_INO),
    "open": CFUNCTYPE(None, *_REQ_INO, _fi_p),
    "read": CFUNCTYPE(None, *_REQ_INO, c_size_t, c_int64, _fi_p),
    "opendir": CFUNCTYPE(None, *_REQ_INO, _fi_p),
    "readdir": CFUNCTYPE(None, *_REQ_INO, c_size_t, c_int64, _fi_p),
    "statfs": CFUNCTYPE(None, *_REQ_INO),
    "getxattr": CFUNCTYPE(None, *_REQ_INO, c_char_p, c_size_t),
    "listxattr": CFUNCTYPE(None, *_REQ_INO, c_size_t),
    "forget_multi": CFUNCTYPE(None, c_void_p, c_size_t, c_void_p),
    "readdirplus": CFUNCTYPE(None, *_REQ_INO, c_size_t, c_int64, _fi_p),
}
# struct fuse_lowlevel_ops up to readdirplus, in libfuse 3's order (stable since 3.0; later
# members are left out and op_size says so). Unimplemented members stay NULL: libfuse answers
# ENOSYS, and the read-only mount makes the kernel answer EROFS for writes before that.
_OPS_ORDER = ("init destroy lookup forget getattr setattr readlink mknod mkdir unlink rmdir symlink "
              "rename link open read write flush release fsync opendir readdir releasedir fsyncdir "
              "statfs setxattr getxattr listxattr removexattr access create getlk setlk bmap ioctl "
              "poll write_buf retrieve_reply forget_multi flock fallocate readdirplus").split()


class _Ops(Structure):
    _fields_ = [(name, _CALLBACKS.get(name, c_void_p)) for name in _OPS_ORDER]


def _bind(name: str, restype, *argtypes):
    fn = getattr(_lib, name)
    fn.restype, fn.argtypes = restype, list(argtypes)
    return fn


_reply_err = _bind("fuse_reply_err", c_int, c_void_p, c_int)
_reply_none = _bind("fuse_reply_none", None, c_void_p)
_reply_entry = _bind("fuse_reply_entry", c_int, c_void_p, POINTER(_EntryParam))
_reply_attr = _bind("fuse_reply_attr", c_int, c_void_p, POINTER(_stat_t), c_double)
_reply_readlink = _bind("fuse_reply_readlink", c_int, c_void_p, c_char_p)
_reply_buf = _bind("fuse_reply_buf", c_int, c_void_p, c_void_p, c_size_t)
_reply_statfs = _bind("fuse_reply_statfs", c_int, c_void_p, POINTER(mfusepy.c_statvfs))
_reply_xattr = _bind("fuse_reply_xattr", c_int, c_void_p, c_size_t)
_add_direntry = _bind("fuse_add_direntry", c_size_t, c_void_p, c_void_p, c_size_t, c_char_p,
                      POINTER(_stat_t), c_int64)
_add_direntry_plus = _bind("fuse_add_direntry_plus", c_size_t, c_void_p, c_void_p, c_size_t, c_char_p,
                           POINTER(_EntryParam), c_int64)
_session_new = _bind("fuse_session_new", c_void_p, POINTER(_Args), POINTER(_Ops), c_size_t, c_void_p)
_session_mount = _bind("fuse_session_mount", c_int, c_void_p, c_char_p)
_session_unmount = _bind("fuse_session_unmount", None, c_void_p)
_session_destroy = _bind("fuse_session_destroy", None, c_void_p)
_notify_store = _bind("fuse_lowlevel_notify_store", c_int, c_void_p, c_uint64, c_int64,
                      POINTER(_BufVec), c_int)
_session_exit = _bind("fuse_session_exit", None, c_void_p)
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_WAKE_SIGNAL = signal.SIGUSR1  # interrupts the loop's wait once the session is marked exited


def _loop_mt(session: int, max_threads: int) -> int:
    """Run libfuse's multi-threaded loop (the 3.12+ entry point when the library has it)."""
    if hasattr(_lib, "fuse_session_loop_mt_312"):
        cfg = _bind("fuse_loop_cfg_create", c_void_p)()
        _bind("fuse_loop_cfg_set_max_threads", None, c_void_p, c_uint)(cfg, max_threads)
        _bind("fuse_loop_cfg_set_idle_threads", None, c_void_p, c_uint)(cfg, max_threads)
        try:
            return _bind("fuse_session_loop_mt_312", c_int, c_void_p, c_void_p)(session, cfg)
        finally:
            _bind("fuse_loop_cfg_destroy", None, c_void_p)(cfg)
    return _bind("fuse_session_loop_mt_31", c_int, c_void_p, c_int)(session, 0)


class LookupCounts:
    """The kernel's lookup count of each inode it holds, as pages of ``PAGE`` 32-bit counters.

    Inodes are index rows numbered in path order, so the inodes a walk or a listing hands out
    fill pages densely: 1M inodes take about 4 MiB. A page is made when the first of its inodes
    is learnt and dropped when the last is forgotten. A count stops at 2**32 - 1 (the kernel
    would need that many replies for one inode); a wrong count only misplaces a push, which the
    kernel then refuses. Not thread-safe: the caller locks."""

    PAGE = 1 << 14
    MAX = (1 << 32) - 1

    def __init__(self) -> None:
        self._pages: dict[int, array.array] = {}
        self._live: dict[int, int] = {}  # page -> inodes in it with a count

    def add(self, ino: int, n: int) -> None:
        page, slot = divmod(ino, self.PAGE)
        counts = self._pages.get(page)
        if counts is None:
            if n <= 0:
                return
            counts = self._pages[page] = array.array("I", [0]) * self.PAGE
            self._live[page] = 0
        old = counts[slot]
        new = counts[slot] = min(max(old + n, 0), self.MAX)
        if (old > 0) != (new > 0):
            live = self._live[page] + (1 if new else -1)
            if live:
                self._live[page] = live
            else:
                del self._pages[page], self._live[page]

    def __getitem__(self, ino: int) -> int:
        page, slot = divmod(ino, self.PAGE)
        counts = self._pages.get(page)
        return 0 if counts is None else counts[slot]

    def __len__(self) -> int:
        """Inodes with a count."""
        return sum(self._live.values())

    @property
    def nbytes(self) -> int:
        return len(self._pages) * self.PAGE * 4


_pinned = threading.local()  # lives as long as the thread state it is kept in
_gil_ensure = ctypes.pythonapi.PyGILState_Ensure
_gil_ensure.restype = c_int


def _keep_thread_state(callback, tally):
    """Give each libfuse worker thread one Python thread state for its whole life.

    ctypes runs a callback from a foreign thread in a fresh thread state and deletes it after,
    which also empties every ``threading.local``: diskcache would then open (and configure) a new
    SQLite connection on every read. One extra, never released PyGILState_Ensure per OS thread
    keeps the state; libfuse keeps its workers alive (idle threads = max threads)."""

    name = callback.__name__

    @functools.wraps(callback)
    def run(*args):
        tally(name)
        if not hasattr(_pinned, "state"):  # empty until this OS thread's state is kept
            _gil_ensure()
            _pinned.state = True
        return callback(*args)

    return run


def _handler(method):
    """Reply with the errno of a DsfsError/OSError; log anything else and reply EIO."""
    name = method.__name__.lstrip("_")

    @functools.wraps(method)
    def wrapper(self, req, ino, *args):
        try:
            method(self, req, ino, *args)
        except DsfsError as exc:
            if exc.errno == errno.EIO:
                log.error("%s inode %d: %s", name, ino, exc)
            _reply_err(req, exc.errno)
        except OSError as exc:
            log.error("%s inode %d: %s", name, ino, exc)
            _reply_err(req, exc.errno or errno.EIO)
        except BaseException:
            log.exception("%s inode %d failed", name, ino)
            _reply_err(req, errno.EIO)

    return wrapper


class Spiller:
    """Pushes into the kernel's page cache what a random read of a big file fetched and checked
    beyond what the kernel asked: the rest of the 64 KiB leaves the read's ends fall in (the
    cache checks whole leaves, so these bytes cost nothing more to get). A later read of those
    pages is then answered by the kernel. On a 512 MiB file read at random 4-128 KiB, about half
    the reads that would reach the daemon do not.

    Pushes run in a thread of their own, never in a request thread: a push into a page that
    another read has locked waits for that read's answer, and a request thread must stay free to
    give it. At most ``limit`` bytes wait; more are dropped (a push is only ever a shortcut)."""

    def __init__(self, push: Callable[[int, memoryview, int], str], limit: int = 8 << 20) -> None:
        self._push = push
        self._limit = limit
        self._queue: collections.deque[tuple[int, list[tuple[int, memoryview]], int]] = collections.deque()
        self._waiting = 0  # bytes queued
        self._closed = False
        self._cond = threading.Condition()
        self._counts: collections.Counter[str] = collections.Counter()
        # Per file read at random lately, a byte per page: whether the kernel was sent it.
        self._sent: OrderedDict[int, bytearray] = OrderedDict()
        self._sent_bytes = 0
        self._thread = threading.Thread(target=self._run, name="dsfs-spill", daemon=True)
        self._thread.start()

    def sent(self, ino: int, size: int, start: int, length: int) -> None:
        """Note that the kernel got bytes ``[start, start+length)`` of a file of ``size`` bytes
        (a random read's answer): a spill then skips the pages it holds already."""
        first, end = start // _PAGE, -(-(start + length) // _PAGE)
        with self._cond:
            pages = self._pages_of(ino, size)
            if pages is not None:
                pages[first:end] = b"\x01" * (end - first)

    def offer(self, ino: int, pieces: list[tuple[int, memoryview]]) -> None:
        """Queue the pages of ``(start, bytes)`` pieces of inode ``ino`` that the kernel was not
        sent yet (``start`` is on a page boundary); never blocks."""
        todo = []
        with self._cond:
            pages = self._sent.get(ino)
            for start, data in pieces:
                first, end = start // _PAGE, -(-(start + len(data)) // _PAGE)
                at = first if pages is None else pages.find(0, first, end)
                while at != -1:
                    stop = end if pages is None else pages.find(1, at, end)
                    stop = end if stop == -1 else stop
                    todo.append((at * _PAGE, data[at * _PAGE - start:stop * _PAGE - start]))
                    if pages is not None:
                        pages[at:stop] = b"\x01" * (stop - at)
                    at = -1 if pages is None or stop == end else pages.find(0, stop, end)
            size = sum(len(data) for _, data in todo)
            if not todo:
                return
            if self._closed or self._waiting + size > self._limit:
                self._counts["dropped"] += len(todo)
                return
            self._queue.append((ino, todo, size))
            self._waiting += size
            self._cond.notify()

    def _pages_of(self, ino: int, size: int) -> bytearray | None:
        """The record of a file's pages sent, made if need be (the least recently read files'
        go to keep all within _SENT_BYTES); None for a file too big to keep one for."""
        pages = self._sent.get(ino)
        if pages is not None:
            self._sent.move_to_end(ino)
            return pages
        count = -(-size // _PAGE)
        if count > _SENT_BYTES // 4:
            return None
        while self._sent and self._sent_bytes + count > _SENT_BYTES:
            self._sent_bytes -= len(self._sent.popitem(last=False)[1])
        pages = self._sent[ino] = bytearray(count)
        self._sent_bytes += count
        return pages

    def stats(self) -> dict:
        with self._cond:
            return dict(self._counts)

    def close(self) -> None:
        """Drop what waits and wait for the push under way, if any, to end."""
        with self._cond:
            self._closed = True
            self._queue.clear()
            self._cond.notify_all()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                ino, pieces, size = self._queue.popleft()
            outcomes = []
            for start, data in pieces:
                try:
                    outcomes.append((self._push(ino, data, start), len(data)))
                except Exception as exc:  # never lose the thread: later offers would only queue up
                    log.debug("spill into inode %d at %d failed: %s", ino, start, exc)
                    outcomes.append(("failed", len(data)))
            with self._cond:
                self._waiting -= size
                for outcome, n in outcomes:
                    self._counts[outcome] += 1
                    if outcome == "pushed":
                        self._counts["pushed_bytes"] += n


class DirectOperations:
    """The handlers, bound to one read-only view."""

    def __init__(self, view: VersionView, on_ready=None, prefetch: PrefetchService | None = None) -> None:
        self.view = view
        self.on_ready = on_ready
        self.prefetch = prefetch
        self.session: int | None = None  # set once libfuse made it; pushes go through it
        self._known = LookupCounts()
        self.timeout = LONG_TIMEOUT if view.immutable else 1.0
        # Where a listing left off, so the next readdir call resumes by name, not by counting.
        self._cursors: OrderedDict[tuple[int, int], str] = OrderedDict()
        self._lock = threading.Lock()
        # No handles under no_open: sequential detection (block read-ahead) and the in-order
        # sha256 check are kept per inode of a multi-block file; a read at offset 0 starts over.
        self._states: OrderedDict[int, ReadState] = OrderedDict()
        self.requests: collections.Counter[str] = collections.Counter()
        self.spiller: Spiller | None = None  # set by serve() once there is a session to push through

    def tally(self, op: str) -> None:
        with self._lock:
            self.requests[op] += 1

    def stats(self) -> bytes:
        """The root's ``user.dsfs.stats``: requests served by operation and the block cache's
        counters, so a user can see whether a second epoch still reaches the daemon."""
        with self._lock:
            requests = dict(self.requests)
        doc = {"requests": requests, "cache": self.view.cache.stats()}
        if self.prefetch is not None:
            doc["prefetch"] = self.prefetch.stats()
        if self.spiller is not None:
            doc["spill"] = self.spiller.stats()
        return json.dumps(doc).encode()

    def _learn(self, pairs: Iterable[tuple[int, int]]) -> None:
        """Apply (inode, lookups gained or forgotten) pairs to the kernel's counts, in one lock."""
        with self._lock:
            for ino, n in pairs:
                self._known.add(ino, n)

    def knows(self, ino: int) -> bool:
        """Whether the kernel holds an inode for ``ino`` (it looked it up, or listed it with
        readdirplus, and has not forgotten it): only such a file can be pushed."""
        with self._lock:
            return self._known[ino] > 0

    def push(self, ino: int, data: bytes | memoryview, start: int = 0) -> str:
        """Put verified bytes of a file, from offset ``start``, into the kernel's page cache:
        "pushed", "unknown" (the kernel holds no inode for it) or "refused" (the kernel said no)."""
        if not self.knows(ino) or self.session is None:
            return "unknown"
        view = memoryview(data)
        for pos in range(0, len(view), PUSH_PIECE):
            piece = bytes(view[pos:pos + PUSH_PIECE])
            vec = _BufVec(1, 0, 0)
            vec.buf[0] = _Buf(len(piece), 0, ctypes.cast(ctypes.c_char_p(piece), c_void_p), -1, 0)
            if _notify_store(self.session, ino, start + pos, ctypes.byref(vec), 0) != 0:
                return "refused"
        return "pushed"

    # stat(2) fields into a C struct stat: the view's ``stat_fields``, set straight from the node
    # (no dict between them: a listing fills one per entry)
    def _fill(self, st, node: Node) -> None:
        view = self.view
        size = node.size
        st.st_ino, st.st_mode, st.st_nlink = node.ino, view.stat_mode(node), node.nlink
        st.st_size, st.st_uid, st.st_gid = size, view.uid, view.gid
        st.st_blksize, st.st_blocks = ST_BLKSIZE, (size + 511) // 512
        sec, nsec = divmod(node.mtime_ns, 1_000_000_000)
        for ts in (st.st_atimespec, st.st_mtimespec, st.st_ctimespec):
            ts.tv_sec, ts.tv_nsec = sec, nsec

    def _entry(self, node: Node | None) -> _EntryParam:
        e = _EntryParam()
        e.entry_timeout = self.timeout
        if node is not None:  # ino 0: a negative entry, cached for entry_timeout
            e.ino, e.attr_timeout = node.ino, self.timeout
            self._fill(e.attr, node)
        return e

    # --- the callbacks ------------------------------------------------------------------
    def init(self, userdata, conn) -> None:
        try:
            # Every listing page with attributes (readdirplus), not only a folder's first: the
            # kernel then holds an inode for every entry listed, so a stat walk sends no lookup
            # per file and prefetch can push into any file of a listed folder.
            info = ctypes.cast(conn, POINTER(mfusepy.fuse_conn_info)).contents
            info.want &= ~_CAP_READDIRPLUS_AUTO
            if self.on_ready is not None:
                self.on_ready()
        except BaseException:
            log.exception("init failed")

    @_handler
    def lookup(self, req, parent, name) -> None:
        try:
            node = self.view.lookup(parent, os.fsdecode(name))
        except DsfsError as exc:
            if exc.errno != errno.ENOENT:
                raise
            node = None
        if node is not None:
            self._learn(((node.ino, 1),))
        _reply_entry(req, ctypes.byref(self._entry(node)))

    def forget(self, req, ino, nlookup) -> None:
        self._learn(((ino, -nlookup),))  # inodes are index rows: nothing else to free
        _reply_none(req)

    def forget_multi(self, req, count, forgets) -> None:
        self._learn((item.ino, -item.nlookup) for item in ctypes.cast(forgets, POINTER(_Forget))[:count])
        _reply_none(req)

    @_handler
    def getattr(self, req, ino, fi) -> None:
        st = _stat_t()
        self._fill(st, self.view.getattr(ino))
        _reply_attr(req, ctypes.byref(st), self.timeout)

    @_handler
    def readlink(self, req, ino) -> None:
        _reply_readlink(req, os.fsencode(self.view.readlink(self.view.getattr(ino))))

    def open(self, req, ino, fi) -> None:
        _reply_err(req, errno.ENOSYS)  # no_open: see the module docstring

    def opendir(self, req, ino, fi) -> None:
        _reply_err(req, errno.ENOSYS)  # no_opendir: the kernel caches listings

    @_handler
    def read(self, req, ino, size, off, fi) -> None:
        node = self.view.getattr(ino)
        if self.prefetch is not None:
            self.prefetch.on_read(node, off)
        state = self._state(node, off)
        spilled: list[tuple[int, memoryview]] | None = (
            [] if node.tree is not None and self.spiller is not None else None)  # a big file's random reads
        data = self.view.read(node, off, size, state, spill=None if spilled is None else
                              lambda start, piece: spilled.append((start, piece)))
        _reply_buf(req, data, len(data))
        if spilled is None:
            return
        if state is None or not state.window:  # (a stream's pages are not spilled into)
            self.spiller.sent(ino, node.size, off, len(data))
        if spilled:
            self.spiller.offer(ino, spilled)

    def _state(self, node: Node, off: int) -> ReadState | None:
        if node.size <= self.view.cache.block_size:
            return None
        with self._lock:
            state = None if off == 0 else self._states.pop(node.ino, None)
            self._states[node.ino] = state = state or ReadState()
            while len(self._states) > 256:
                self._states.popitem(last=False)
        return state

    @_handler
    def readdir(self, req, ino, size, off, fi) -> None:
        self._list(req, ino, size, off, plus=False)

    @_handler
    def readdirplus(self, req, ino, size, off, fi) -> None:
        self._list(req, ino, size, off, plus=True)

    def _list(self, req, ino: int, size: int, off: int, *, plus: bool) -> None:
        """Entries from offset ``off`` on: '.' is at 0, '..' at 1, children from 2 in name order;
        each entry carries the offset of the next one."""
        folder = self.view.getattr(ino)
        entries: list[tuple[str, Node]] = []
        if off == 0:
            entries.append((".", folder))
        if off <= 1:
            entries.append(("..", self.view.getattr(folder.parent) if ino != ROOT_INO else folder))
        skip = max(off - 2, 0)
        with self._lock:
            after = self._cursors.pop((ino, off), None) if skip else None
        limit = max(size // 48, 16)  # a listing entry takes at least 32 bytes + name
        batch = (self.view.children(ino, after, limit) if after is not None or not skip
                 else self.view.children_at(ino, skip, limit))
        entries.extend((child.name, child) for child in batch)
        buf = ctypes.create_string_buffer(size)
        base = ctypes.addressof(buf)
        used, pos, last = 0, off, None
        listed: list[tuple[int, int]] = []  # inodes handed to the kernel with readdirplus
        st = _stat_t()
        for name, node in entries:
            raw = os.fsencode(name)
            if plus:
                if name in (".", ".."):  # listed with their attributes but no lookup (ino 0)
                    entry = _EntryParam()
                    self._fill(entry.attr, node)
                else:
                    entry = self._entry(node)
                n = _add_direntry_plus(req, base + used, size - used, raw, ctypes.byref(entry), pos + 1)
            else:
                self._fill(st, node)
                n = _add_direntry(req, base + used, size - used, raw, ctypes.byref(st), pos + 1)
            if n > size - used:
                break
            if plus and name not in (".", ".."):
                listed.append((node.ino, 1))
            used += n
            pos += 1
            last = name
        self._learn(listed)
        if pos >= 2 and last not in (None, ".", ".."):
            with self._lock:
                self._cursors[(ino, pos)] = last
                while len(self._cursors) > 1024:
                    self._cursors.popitem(last=False)
        _reply_buf(req, buf, used)

    @_handler
    def statfs(self, req, ino) -> None:
        sv = mfusepy.c_statvfs()
        for key, value in self.view.statfs().items():
            setattr(sv, key, value)
        _reply_statfs(req, ctypes.byref(sv))

    @_handler
    def getxattr(self, req, ino, name, size) -> None:
        name = os.fsdecode(name)
        if ino == ROOT_INO and name == XATTR_STATS:  # asked for by name only, never listed
            value = self.stats()
        else:
            value = self.view.getxattr(self.view.getattr(ino), name)
        self._reply_sized(req, value, size)

    @_handler
    def listxattr(self, req, ino, size) -> None:
        names = b"".join(os.fsencode(n) + b"\0" for n in self.view.xattrs(self.view.getattr(ino)))
        self._reply_sized(req, names, size)

    @staticmethod
    def _reply_sized(req, value: bytes, size: int) -> None:
        if size == 0:
            _reply_xattr(req, len(value))
        elif len(value) > size:
            _reply_err(req, errno.ERANGE)
        else:
            _reply_buf(req, value, len(value))


def serve(view: VersionView, mountpoint: str, options: list[str], on_ready, *, max_threads: int = 16,
          prefetch: PrefetchService | None = None) -> None:
    """Mount read-only and serve until unmounted or signalled (blocking). ``prefetch`` pushes
    through this session while it lives."""
    handlers = DirectOperations(view, on_ready, prefetch)
    ops = _Ops(**{name: proto(_keep_thread_state(getattr(handlers, name), handlers.tally))
                  for name, proto in _CALLBACKS.items()})
    fsname = [o for o in options if o.startswith("fsname=")] or ["fsname=dsfs"]
    rest = [o for o in options if not o.startswith("fsname=")]
    mount_opts = ",".join(["ro", "default_permissions", fsname[-1], "subtype=dsfs", *rest])
    argv = [b"dsfs", b"-o", mount_opts.encode()]
    args = _Args(len(argv), (c_char_p * len(argv))(*argv), 0)
    session = _session_new(ctypes.byref(args), ctypes.byref(ops), ctypes.sizeof(ops), None)
    if not session:
        raise MountError(f"libfuse refused the mount options: {mount_opts!r}")
    handlers.session = session
    handlers.spiller = Spiller(handlers.push)
    stoppers = [handlers.spiller.close]  # each stops a thread that pushes through the session
    if prefetch is not None:
        prefetch.push, prefetch.knows = handlers.push, handlers.knows
        stoppers.append(prefetch.close)
    try:
        if _session_mount(session, os.fsencode(mountpoint)) != 0:
            raise MountError(f"cannot mount at {mountpoint!r} (see the log for libfuse's reason)")
        try:
            status = _serve_until_stopped(session, max_threads, stoppers)
            if status != 0:
                raise MountError(f"fuse loop ended with status {status}")
        finally:
            _session_unmount(session)
    finally:
        for stop in stoppers:
            stop()  # (done already unless the mount failed)
        _session_destroy(session)
    del ops  # the callbacks must outlive the session


def _serve_until_stopped(session: int, max_threads: int, stoppers: list[Callable[[], None]]) -> int:
    """Run libfuse's loop in a thread of its own until the mount goes away or a stop signal
    (TERM, INT, HUP) arrives here, in the main thread.

    On a signal, the threads that push (``stoppers`` stop them: the spiller, prefetch) stop first
    while the loop still answers requests: a push into a page
    the kernel is reading waits for that read's answer, and a listing through the mount for its
    own, so with the loop gone first such a thread (and the process with it) could never finish.
    Then the session is marked exited and the loop's wait interrupted. Returns the loop's status."""
    status: list[int] = []
    stop: list[int] = []
    wake = threading.Event()  # set by a stop signal or by the loop's end

    def loop() -> None:
        try:
            status.append(_loop_mt(session, max_threads))
        finally:
            for stop in stoppers:
                stop()  # no push may outlive the session
            wake.set()

    def on_stop(signum, _frame) -> None:
        stop.append(signum)
        wake.set()

    previous = {signum: signal.signal(signum, on_stop) for signum in _STOP_SIGNALS}
    previous[_WAKE_SIGNAL] = signal.signal(_WAKE_SIGNAL, lambda *_: None)
    thread = threading.Thread(target=loop, name="dsfs-fuse-loop")
    try:
        thread.start()
        wake.wait()
        if stop:
            log.info("signal %d: stopping", stop[0])
            for stopper in stoppers:
                stopper()
            _session_exit(session)
            while thread.is_alive():
                signal.pthread_kill(thread.ident, _WAKE_SIGNAL)
                thread.join(0.1)
        thread.join()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return status[0] if status else 0
