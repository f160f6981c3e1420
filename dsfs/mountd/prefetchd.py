"""The daemon side of prefetch for a published mount: jobs, warm, and the control socket.

``PrefetchService`` carries out what the policy (``dsfs.cache.prefetch``) decides. A job reads a
file through the block cache, which checks its sha256 (a remote store's bytes land in the disk
cache on the way), and hands the verified bytes to ``push`` (the direct adapter's
``notify_store``), so the reader's read is answered by the kernel. A local store's members are
first announced to the kernel with ``posix_fadvise(WILLNEED)`` on their chunk range, so the disk
reads run in parallel ahead of the checks. Bytes that are not verified are never pushed.

Orders come from three places: a cold read of a small file (the members after it in its chunk,
i.e. folder order), a hint on the control socket (``dsfs prefetch MOUNTPOINT --order FILE``,
``dsfs.prefetch``), and ``--warm`` (every chunk of the version, at the lowest CPU and I/O
priority, pausing while demand reads arrive).

Threading: ``workers`` job threads, one warm thread and one control thread, all daemons of
this object; ``on_read`` is called from the adapter's request threads and only takes locks.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import itertools
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable

from ..cache.blocks import member_runs
from ..cache.prefetch import AHEAD_FILES, Item, Job, Prefetcher
from ..errors import DsfsError
from ..resolver.index import Node
from .view import VersionView

log = logging.getLogger(__name__)

PUSH_MAX = 8 << 20  # files up to this size are pushed into the page cache whole
PUSH_PIECE = 1 << 20
FOLLOW_SPAN = 4 << 20  # bytes of a chunk one folder-order step looks at
# A follow starts only once cold reads show folder order: this many in a row, each a little
# further on in the same chunk than the one before (threads reading in order arrive a little
# out of order; a shuffled epoch almost never does this, and would waste every follow).
FOLLOW_AFTER = 3
FOLLOW_FILES = 8  # "a little further on": within about this many files of the size just read
WARM_PIECE = 8 << 20
WARM_QUIET = 0.2  # warm pauses until demand reads have been quiet this long (seconds)
WARM_CACHE_SHARE = 0.5  # a remote warm fills at most this share of the disk cache
JOB_BATCH = 8
# A local store's order is dropped after this many files in a row the kernel had no inode for
# even after _introduce: no push can land, and preparing them only costs the daemon CPU the
# reader needs.
UNKNOWN_RUN = 64
# Folders listed through the mount so that the kernel holds inodes for their files: at most this
# many entries of one folder (a bigger one's files are looked up one by one), and a folder is
# listed again only after this long (the kernel may have forgotten its files under memory pressure).
LIST_MAX = 1 << 16
LIST_AGAIN = 30.0
# files prepared ahead; pushed into the page cache (and their bytes); pushes the kernel had no
# inode for, or refused; chunk ranges advised; jobs that failed; hints and their unknown paths;
# the order dropped because pushes stopped landing (local store); folders listed and files looked
# up through the mount to give the kernel their inodes
COUNTERS = ("prepared", "pushed", "pushed_bytes", "unknown", "refused", "advised", "failed",
            "hints", "hint_unknown", "dropped", "listed", "looked_up")

Push = Callable[[int, bytes], str]  # (inode, whole file) -> "pushed" | "unknown" | "refused"


class PrefetchService:
    def __init__(self, view: VersionView, *, workers: int = 2, ahead_bytes: int | None = None,
                 on_progress: Callable[[dict], None] | None = None, prepare: bool = True) -> None:
        self.view = view
        self.store = view.store
        self.cache = view.cache
        self.local = bool(view.store.is_local)
        # False (a local store's default, config prefetch_local): nothing is prepared ahead and
        # folder order is not followed; a hint only advises the disk (_advise_along). --warm
        # works either way.
        self.prepare = prepare
        if ahead_bytes is None:
            # A remote store prefetches into the disk cache: never more than a small share of it,
            # so what was fetched ahead cannot push out what the reader needs next.
            ahead_bytes = 64 << 20 if self.local else max(1 << 20, min(64 << 20, self.cache.size_limit // 8))
        self.policy = Prefetcher(ahead_bytes=ahead_bytes)
        self.push: Push | None = None
        # Whether the kernel holds an inode (only those can be pushed; None: assume it does).
        self.knows: Callable[[int], bool] | None = None
        self.on_progress = on_progress
        self.workers = workers
        self.counts: collections.Counter[str] = collections.Counter(dict.fromkeys(COUNTERS, 0))
        self.warm: dict | None = None
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._closing = threading.Event()
        self._server: socket.socket | None = None  # the control socket, once listening
        self._last_demand = 0.0
        self._cold: tuple[str, int] | None = None  # (chunk, offset) of the last cold read
        self._in_order = 0  # cold reads in a row that moved on in folder order
        self._unknown_run = 0  # files in a row a push could not land for (local store)
        self._mountpoint: str | None = None
        self._listed: collections.OrderedDict[int, float] = collections.OrderedDict()  # folder -> when
        # A local store that prepares nothing still advises the disk along a hint (_advise_along):
        # the hinted files' chunk ranges, where each inode is in that order, the furthest of them
        # a demand read reached, and a generation that a new hint bumps.
        self._along: list[tuple[str, int, int]] = []
        self._along_at: dict[int, int] = {}
        self._reader = -1
        self._along_gen = 0
        self._along_wake = threading.Event()

    # -- life -----------------------------------------------------------------------------------

    def start(self, mountpoint: str, *, warm: bool = False) -> None:
        self._mountpoint = mountpoint
        server = self._server = self._listen(mountpoint)  # bound before the mount is reported ready
        if server is not None:
            self._spawn(self._control, server, name="dsfs-control")
        for i in range(self.workers if self.prepare else 0):
            self._spawn(self._work, name=f"dsfs-prefetch-{i}")
        if self.local and not self.prepare:
            self._spawn(self._advise_along, name="dsfs-advise")
        if warm:
            self.warm = {"state": "starting", "done": 0, "total": 0}
            self._spawn(self._warm, name="dsfs-warm")

    def _spawn(self, target, *args, name: str) -> None:
        def run() -> None:
            with self.cache.keeping():  # what is fetched ahead is fetched to be kept
                target(*args)

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def close(self) -> None:
        """Stop every thread and wait for them (before the session they push into goes away).
        Call it while the FUSE loop still answers, or after the kernel dropped the mount: a
        push, and a listing through the mount, may wait for the loop's answer to a read."""
        self._closing.set()
        self._along_wake.set()
        self.policy.stop()
        if self._server is not None:  # wake its accept() now, not at its timeout
            with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as knock:
                knock.settimeout(1)
                knock.connect(self._server.getsockname())
        for thread in self._threads:
            thread.join()
        self._threads.clear()

    def stats(self) -> dict:
        with self._lock:
            counts = dict(self.counts)
        doc = {**self.policy.stats(), **counts, "prepares": self.prepare}
        if self.warm is not None:
            doc["warm"] = dict(self.warm)
        return doc

    def _count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counts[name] += n

    # -- demand reads ---------------------------------------------------------------------------

    def on_read(self, node: Node, offset: int) -> None:
        """A demand read reached the daemon: tell the policy; a cold small file that is not in
        the current order starts a folder-order follow from it."""
        self._last_demand = time.monotonic()
        if not self.prepare:
            at = self._along_at.get(node.ino)  # (a dict lookup a read: this path stays lean)
            if at is not None and at > self._reader:
                self._reader = at
            return
        if offset != 0 or node.chunk is None:
            return
        # neighbour_bytes 0 ("one GET per file") turns the folder-order follow off as well
        if self.policy.saw(node.ino) == "off" and self.cache.neighbour_bytes and self._shows_order(node) \
                and self.policy.wants_follow():
            self._follow(node)

    def _shows_order(self, node: Node) -> bool:
        """Is this cold read the latest of FOLLOW_AFTER that each moved a little further on in
        the same chunk (folder order)? A shuffled reader starts no follows."""
        with self._lock:
            prev, self._cold = self._cold, (node.chunk, node.offset)
            slack = FOLLOW_FILES * max(node.csize or node.size, 4096)
            moved_on = prev is not None and prev[0] == node.chunk and 0 < node.offset - prev[1] <= slack
            self._in_order = self._in_order + 1 if moved_on else 0
            return self._in_order >= FOLLOW_AFTER - 1

    def _follow(self, node: Node) -> None:
        nodes = [node] + [n for n in self.view.index.near(node.chunk, node.offset + 1,
                                                            node.offset + FOLLOW_SPAN, AHEAD_FILES)]
        if self.local:
            self._advise(nodes)
        self.policy.follow([Item(n.ino, n.size) for n in nodes], extend=self._after)

    def _after(self, last: Item) -> list[Item]:
        node = self.view.getattr(last.key)
        found = self.view.index.near(node.chunk, node.offset + 1, node.offset + FOLLOW_SPAN, AHEAD_FILES)
        return [Item(n.ino, n.size) for n in found]

    # -- hints ----------------------------------------------------------------------------------

    def hint(self, paths: list[str]) -> None:
        """Make ``paths`` (relative to the mount; a folder stands for its files) the order."""
        nodes: list[Node] = []
        unknown = 0
        for node in self.view.by_paths(paths):
            if node is None:
                unknown += 1
            elif node.is_dir:
                nodes += [n for n in self.view.index.walk(node.path) if n.chunk is not None]
            elif node.chunk is not None:
                nodes.append(node)
        items = [Item(n.ino, n.size) for n in nodes]
        if unknown:
            log.info("order hint: %d of %d paths are not in this version", unknown, len(paths))
        self._count("hints")
        self._count("hint_unknown", unknown)
        if not self.prepare:
            if self.local:
                self._along_at = {n.ino: i for i, n in enumerate(nodes)}
                self._along = [(n.chunk, n.offset, n.csize) for n in nodes]
                self._reader = -1
                self._along_gen += 1
                self._along_wake.set()
            return
        self.policy.hint(items)

    # -- jobs -----------------------------------------------------------------------------------

    def _work(self) -> None:
        while not self._closing.is_set():
            jobs = self.policy.wait(JOB_BATCH, timeout=1.0)
            nodes = []
            for job in jobs:
                try:
                    nodes.append(self.view.getattr(job.key))
                except DsfsError:
                    nodes.append(None)
            if self.local:  # let the disk work on the whole batch while we check them one by one
                self._advise([n for n in nodes if n is not None and n.chunk is not None])
            pushes = [node is not None and self._pushable(job, node) for job, node in zip(jobs, nodes)]
            ready = self._read_in_place([n for n, push in zip(nodes, pushes) if push])
            for job, node, push in zip(jobs, nodes, pushes):
                ok = node is not None and not self._closing.is_set() and \
                    self._prepare(job, node, push, ready.get(node.ino))
                self.policy.done(job, ok)

    def _pushable(self, job: Job, node: Node) -> bool:
        """Whether ``node``'s bytes go into the page cache: a small file the kernel holds (or now
        holds, after ``_introduce``) an inode for."""
        if not (job.push and self.push is not None and node.size <= PUSH_MAX and node.chunk is not None):
            return False
        if self.knows is None or self.knows(node.ino) or (self._introduce(node) and self.knows(node.ino)):
            self._note_unknown(False)
            return True
        if not self._closing.is_set():
            # The kernel holds no inode for the file and listing its folder did not give it one:
            # a push would be dropped. From a local store the advice the batch gave the disk is
            # the whole preparation; reading and checking the file here would only be done again
            # by its demand read.
            self._count("unknown")
            self._note_unknown(True)
        return False

    def _read_in_place(self, nodes: list[Node]) -> dict[int, bytes]:
        """A local store's small stored files, read straight from their chunks (neighbours by
        one read) and each checked against its sha256: inode -> bytes. Those missing here go
        through the cache one by one."""
        if not self.local or not nodes:
            return {}
        found = self.cache.read_small_in_place(self.store, [n.to_entry() for n in nodes])
        return {n.ino: data for n, data in zip(nodes, found) if data is not None}

    def _prepare(self, job: Job, node: Node, push: bool, data: bytes | None) -> bool:
        # Neighbours in the chunk help a folder-order follow; under a (shuffled) hint they would
        # be bytes nobody reads soon, taking cache space from what the reader needs next.
        # Passing ``near`` (even one that finds none) also routes the fetch through the cache's
        # single flight, so a demand read of a file being prepared waits for it, not refetches.
        near = _no_neighbours if self.policy.hinted else self.view._near
        try:
            if push:
                if data is None:
                    data = self.cache.read_all(self.store, node.to_entry(), near=near)
                self._push(node.ino, data)
            elif not self.local:
                self.cache.read_all(self.store, node.to_entry(), near=near) \
                    if node.size <= PUSH_MAX else self.cache.prefetch(self.store, node.to_entry())
            self._count("prepared")
            return True
        except Exception as exc:  # the demand read meets (and reports) the same failure
            log.debug("prefetch of %r failed: %s", node.path, exc)
            self._count("failed")
            return False

    def _introduce(self, node: Node) -> bool:
        """Give the kernel an inode for ``node`` so that its push can land: list its folder
        through the mount (readdirplus hands the kernel every entry with its attributes, one
        request per page of them: a loader that opens files by path then finds them looked up),
        or look the file up if that folder was listed lately or is too big. Runs in a job
        thread, which holds no lock the request threads answering it could need (see close).
        False if the mount could not be asked (it is going away, or not reachable from here)."""
        if self._mountpoint is None or self._closing.is_set():
            return False
        now = time.monotonic()
        with self._lock:
            listed = self._listed.get(node.parent)
            fresh = listed is None or now - listed > LIST_AGAIN
            if fresh:
                self._listed[node.parent] = now
                self._listed.move_to_end(node.parent)
                while len(self._listed) > 4096:
                    self._listed.popitem(last=False)
        folder = os.path.join(self._mountpoint, os.path.dirname(node.path))
        try:
            if fresh:
                with os.scandir(folder) as entries:
                    for n, _ in enumerate(entries, 1):
                        if n >= LIST_MAX:
                            break
                self._count("listed")
            if not self.knows(node.ino):
                os.stat(os.path.join(self._mountpoint, node.path))
                self._count("looked_up")
            return True
        except OSError as exc:
            log.debug("cannot introduce %r to the kernel: %s", node.path, exc)
            return False

    def _note_unknown(self, unknown: bool) -> None:
        """Drop a local store's order once pushes stop landing (see UNKNOWN_RUN)."""
        with self._lock:
            self._unknown_run = self._unknown_run + 1 if unknown else 0
            drop = self.local and self._unknown_run == UNKNOWN_RUN
        if drop:
            log.info("order dropped: the kernel held no inode for %d files in a row and listing their "
                     "folders through the mount gave it none (is something mounted over %s?)",
                     UNKNOWN_RUN, self._mountpoint)
            self._count("dropped")
            self.policy.hint([])

    def _push(self, ino: int, data: bytes) -> None:
        outcome = self.push(ino, data)
        self._count(outcome)
        if outcome == "pushed":
            self._count("pushed_bytes", len(data))

    def _advise_along(self) -> None:
        """A local store's hint without preparing: name the hinted files' chunk ranges to the
        kernel (posix_fadvise WILLNEED) in the hint's order, up to AHEAD_FILES files and
        ``ahead_bytes`` bytes past the furthest of them a demand read reached, so the disk reads
        them while the reader works. Nothing is read here and nothing pushed: a system call a
        file, in a thread that sleeps while it is far enough ahead. A new hint starts over."""
        gen = done = 0
        along: list[tuple[str, int, int]] = []
        sums = [0]  # sums[i]: the bytes of the hinted files before the i-th
        while not self._closing.is_set():
            if gen != self._along_gen:
                gen, along, done = self._along_gen, self._along, 0
                sums = list(itertools.accumulate((csize for _, _, csize in along), initial=0))
            if done >= len(along):
                self._along_wake.wait(1.0)
                self._along_wake.clear()
                continue
            reader = self._reader
            done = start = max(done, reader + 1)  # (files the reader went past are not advised)
            while (done < len(along) and done - reader <= AHEAD_FILES
                   and sums[done] - sums[reader + 1] < self.policy.ahead_bytes):
                chunk, offset, csize = along[done]
                self.store.will_need(chunk, offset, csize)  # (the store keeps its chunks open)
                done += 1
            if done > start:
                self._count("advised", done - start)
            if time.monotonic() - self._last_demand > 1.0:
                self._along_wake.wait(0.1)  # no reads lately: look less often
                self._along_wake.clear()
            else:
                time.sleep(0.002)  # as far ahead as allowed: let the reader move on

    def _advise(self, nodes: list[Node]) -> None:
        """Tell the disk which ranges of a local store's chunks are read next: one advice per
        run of neighbouring members (``member_runs``), one open per chunk."""
        runs = member_runs(nodes)
        for chunk, chunk_runs in itertools.groupby(runs, key=lambda run: nodes[run[0]].chunk):
            path = self.store.local_path(chunk)
            if path is None:
                continue
            with contextlib.suppress(OSError):
                fd = os.open(path, os.O_RDONLY)
                try:
                    for run in chunk_runs:
                        first, last = nodes[run[0]], nodes[run[-1]]
                        os.posix_fadvise(fd, first.offset, last.offset + last.csize - first.offset,
                                         os.POSIX_FADV_WILLNEED)
                        self._count("advised", len(run))
                finally:
                    os.close(fd)

    # -- warm -----------------------------------------------------------------------------------

    def _warm(self) -> None:
        _lowest_priority()
        try:
            chunks = self.view.index.chunks()
            if self.local:
                self._warm_chunks(chunks)
            else:
                self._warm_files(chunks)
        except Exception as exc:
            log.warning("warm stopped: %s", exc)
            self._progress(state="failed")
            return
        if self.warm["state"] == "running":
            self._progress(state="stopped" if self._closing.is_set() else "done")

    def _warm_chunks(self, chunks: list[str]) -> None:
        """A local store: every chunk file read in order, so the page cache holds it."""
        paths = [p for p in (self.store.local_path(c) for c in chunks) if p and os.path.exists(p)]
        self._progress(state="running", total=sum(os.path.getsize(p) for p in paths))
        buf = bytearray(WARM_PIECE)
        for path in paths:
            fd = os.open(path, os.O_RDONLY)
            try:
                pos = 0
                while self._yield_to_readers():
                    n = os.preadv(fd, [buf], pos)
                    if not n:
                        break
                    pos += n
                    self._progress(add=n)
            finally:
                os.close(fd)
            if self._closing.is_set():
                return

    def _warm_files(self, chunks: list[str]) -> None:
        """A remote store: every file, in chunk order, into the disk cache (verified), up to a
        share of the cache so the warm does not evict itself."""
        total = self.view.index.total_size
        budget = int(self.cache.size_limit * WARM_CACHE_SHARE)
        self._progress(state="running", total=total)
        for chunk in chunks:
            offset = 0
            while True:
                nodes = self.view.index.near(chunk, offset, 1 << 62, 256)
                if not nodes:
                    break
                for node in nodes:
                    if not self._yield_to_readers():
                        return
                    if self.warm["done"] + node.size > budget:
                        self._progress(state="budget")
                        return
                    with contextlib.suppress(DsfsError):
                        self.cache.read_all(self.store, node.to_entry(), near=self.view._near) \
                            if node.size <= PUSH_MAX else self.cache.prefetch(self.store, node.to_entry())
                    self._progress(add=node.size)
                offset = nodes[-1].offset + 1

    def _yield_to_readers(self) -> bool:
        """Wait while demand reads are arriving; False once the mount is closing."""
        while time.monotonic() - self._last_demand < WARM_QUIET:
            if self._closing.wait(WARM_QUIET):
                return False
        return not self._closing.is_set()

    def _progress(self, *, add: int = 0, **fields) -> None:
        with self._lock:
            self.warm["done"] += add
            self.warm.update(fields)
            snapshot = dict(self.warm)
            now = time.monotonic()
            due = fields or now - self.warm.get("_saved", 0) >= 1.0
            if due:
                self.warm["_saved"] = now
        if due and self.on_progress is not None:
            snapshot.pop("_saved", None)
            self.on_progress(snapshot)

    # -- control socket -------------------------------------------------------------------------

    @staticmethod
    def _listen(mountpoint: str) -> socket.socket | None:
        from .registry import control_address

        server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            server.bind(control_address(mountpoint))
        except OSError as exc:
            server.close()
            log.warning("no control socket (order hints are off): %s", exc)
            return None
        server.listen(8)
        server.settimeout(0.5)
        return server

    def _control(self, server: socket.socket) -> None:
        with server:
            while not self._closing.is_set():
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                with conn:
                    if self._closing.is_set():  # the knock of close()
                        return
                    self._answer(conn)

    def _answer(self, conn: socket.socket) -> None:
        conn.settimeout(30)
        data = b""
        try:
            while not data.endswith(b"\n"):
                piece = conn.recv(1 << 20)
                if not piece:
                    break
                data += piece
            request = json.loads(data)
            if request.get("op") != "prefetch" or not isinstance(request.get("paths"), list):
                reply = {"ok": False, "kind": "InvalidInput",
                         "error": f"unknown control request: {request.get('op')!r}"}
            else:
                reply = {"ok": True, "paths": len(request["paths"])}
            conn.sendall(json.dumps(reply).encode() + b"\n")
        except (OSError, ValueError, AttributeError) as exc:
            log.info("bad control request: %s", exc)
            return
        if reply["ok"]:  # the caller returns at once; paths resolve here
            self.hint([str(p) for p in request["paths"]])


def _no_neighbours(chunk: str, start: int, end: int) -> list:
    return []


def _lowest_priority() -> None:
    """This thread at nice 19 and in the idle I/O class (best effort)."""
    tid = threading.get_native_id()
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, tid, 19)
    numbers = {"x86_64": 251, "aarch64": 30}  # SYS_ioprio_set
    number = numbers.get(os.uname().machine)
    if number is not None:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).syscall(number, 1, tid, 3 << 13)  # WHO_PROCESS, CLASS_IDLE
