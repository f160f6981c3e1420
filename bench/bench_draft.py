#!/usr/bin/env python3
"""Benchmark writing through a writable draft mount, and the commit on `dsfs umount`.

Two write workloads, each written twice natively and once through dsfs, and a read workload,
in one run:

  large   --large-files (4) files of --large-mib (256) MiB, written in --block-kib (1024) KiB
          write()s: 1 GiB
  small   --small-files (20000) files of --small-kib (16) KiB in --small-dirs (200) folders,
          one write() each
  reads   --read-files (4000) files of --small-kib KiB made into a published version; each
          read whole, in folder order, twice, through a fresh mount of it and through a fresh
          draft mount of its child (unmodified parent files there)

Per write workload:

  native, no fsync         write + close into a plain folder on the same disk (page cache only)
  native, + one sync       the same pass, up to a sync(2) after the last close
  native, fsync per file   write + fsync + close (the baseline for `durable_close: true`, which
                           fsyncs every closed file)
  dsfs draft mount         `dsfs create` + `dsfs mount DS@draft DIR`, then write + close into DIR
  zip -0 -r -q             a store-only zip of the fsync'd native folder
  cp zip + sync            "upload" of that zip into a folder on the same disk (the local-folder
                           store's equivalent of an upload)
  dsfs umount (commit)     `dsfs umount DIR`: packs the staged files into zip chunks, uploads them
                           into the store and records the change-set

Ratios are dsfs time / baseline time from the same run (>1 = dsfs slower); the last table gives
issue #10's goals as the issue states them (speeds relative to native, no fsync). The mount daemon's
VmRSS (pid from `dsfs status --json`) is sampled every --sample-interval (0.2) s during the
writes and the commit. After the measured runs, unless --no-profile, an unmeasured pass repeats
a smaller burst of each workload with `py-spy record` (and a few `py-spy dump`s) attached to
the daemon, during the writes and during the commit, and prints the hot frames (file:line).

Run:  .venv/bin/python bench/bench_draft.py            (2 x 1 GiB; ~10-15 min on 2 cores)
      .venv/bin/python bench/bench_draft.py --quick    (~2 min smoke run)
See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import hashlib
import json
import mmap
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
REPO_ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- arguments ----------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="small smoke run (~2 min): 4 x 32 MiB, 2000 small files in 20 folders")
    p.add_argument("--cases", default="large,small,reads", help="which workloads: large,small,reads")
    p.add_argument("--large-files", type=int, default=None, help="large files (default 4)")
    p.add_argument("--large-mib", type=int, default=None, help="size of each large file (default 256)")
    p.add_argument("--no-pretouch", dest="pretouch", action="store_false",
                   help="do not touch fresh memory right before each timed write pass (see pretouch)")
    p.add_argument("--block-kib", type=int, default=1024, help="write() size for large files")
    p.add_argument("--small-files", type=int, default=None, help="small files (default 20000)")
    p.add_argument("--small-dirs", type=int, default=None, help="folders for them (default 200)")
    p.add_argument("--small-kib", type=int, default=16, help="size of each small file (16 KiB)")
    p.add_argument("--read-files", type=int, default=None,
                   help="files of the parent read through a published and a draft mount (default 4000)")
    p.add_argument("--pool-mib", type=int, default=64, help="random buffer the data is cut from")
    p.add_argument("--sample-interval", type=float, default=0.2, help="daemon RSS sampling period, s")
    p.add_argument("--no-profile", dest="profile", action="store_false",
                   help="skip the py-spy pass after the measured runs")
    p.add_argument("--profile-small-files", type=int, default=None,
                   help="small files in the profiled burst (default min(5000, --small-files))")
    p.add_argument("--profile-large-mib", type=int, default=None,
                   help="one large file of this size in the profiled large burst (default 256)")
    p.add_argument("--min-free-gib", type=float, default=10.0,
                   help="scale the workloads down if the work folder's disk has less free space")
    p.add_argument("--workdir", help="work folder (default: a new folder under $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--out-dir", help="where the JSON goes (default bench/out)")
    p.add_argument("--dsfs", help="dsfs command (default: the venv's)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    quick = args.quick
    defaults = {
        "large_files": 4, "large_mib": 32 if quick else 256,
        "small_files": 2000 if quick else 20000, "small_dirs": 20 if quick else 200,
        "read_files": 1000 if quick else 4000,
    }
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.profile_small_files is None:
        args.profile_small_files = min(500 if quick else 5000, args.small_files)
    if args.profile_large_mib is None:
        args.profile_large_mib = 64 if quick else 256
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    for case in args.cases:
        if case not in ("large", "small", "reads"):
            p.error(f"unknown case {case!r} (large, small, reads)")
    return args


# -- data ---------------------------------------------------------------------------------------

class Payload:
    """Incompressible, never-repeating blocks cut from one random buffer made once.

    Block (case, file, block) is a slice of the pool at an offset that moves with all three, with
    its first 24 bytes replaced by those numbers: every block, hence every file, is distinct (no
    dedup), and zlib finds nothing to compress. Costs one memcpy per block, the same on every
    contender."""

    TAG = struct.Struct("<QQQ")

    def __init__(self, pool_mib: int, max_block: int) -> None:
        self.pool = memoryview(os.urandom(pool_mib * MiB))
        self.buf = bytearray(max_block)
        self.view = memoryview(self.buf)

    def block(self, case: int, file_no: int, block_no: int, n: int) -> memoryview:
        span = len(self.pool) - n
        off = ((file_no * 2654435761 + block_no * 40503 + case * 97) * 8) % max(span, 1)
        out = self.view[:n]
        out[:] = self.pool[off:off + n]
        tag = self.TAG.pack(case, file_no, block_no)[:n]
        out[:len(tag)] = tag
        return out


class Workload:
    def __init__(self, name: str, case_no: int, files: list[tuple[str, int]], block: int) -> None:
        self.name, self.case_no, self.files, self.block = name, case_no, files, block
        self.total = sum(size for _, size in files)
        self.dirs = sorted({os.path.dirname(rel) for rel, _ in files if os.path.dirname(rel)})

    def describe(self) -> str:
        n = len(self.files)
        sizes = f"{self.total / n / KiB:.1f} KiB" if self.total / n < MiB else f"{self.total / n / MiB:.0f} MiB"
        where = f" in {len(self.dirs)} folders" if self.dirs else ""
        return f"{n} files x {sizes}{where} = {self.total / MiB:.0f} MiB"


def large_workload(files: int, mib: int, block: int, case_no: int = 1, name: str = "large") -> Workload:
    return Workload(name, case_no, [(f"large_{i:03d}.bin", mib * MiB) for i in range(files)], block)


def small_workload(files: int, dirs: int, size: int, case_no: int = 2, name: str = "small") -> Workload:
    per_dir = -(-files // dirs)
    layout = [(f"d{i // per_dir:03d}/f{i:05d}.bin", size) for i in range(files)]
    return Workload(name, case_no, layout, MiB)


def write_tree(root: Path, work: Workload, payload: Payload, *, fsync: bool,
               progress_every: float = 15.0) -> dict:
    """Create the workload's folders and files under ``root``; return timings."""
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0)
    me = f"/proc/self/task/{threading.get_native_id()}/schedstat"
    sched0 = schedstat(me)
    drops0 = pagecache_drops()
    start = time.perf_counter()
    next_note = start + progress_every
    written = 0
    for file_no, (rel, size) in enumerate(work.files):
        folder = os.path.dirname(rel)
        if folder and folder not in made:
            os.makedirs(root / folder, exist_ok=True)
            made.add(folder)
        fd = os.open(root / rel, flags, 0o644)
        try:
            offset = block_no = 0
            while offset < size:
                n = min(work.block, size - offset)
                data = payload.block(work.case_no, file_no, block_no, n)
                done = 0
                while done < n:
                    done += os.write(fd, data[done:])
                offset += n
                block_no += 1
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        written += size
        now = time.perf_counter()
        if now >= next_note:
            log(f"  ... {file_no + 1}/{len(work.files)} files, {written / MiB:.0f} MiB, "
                f"{(file_no + 1) / (now - start):.0f} files/s")
            next_note = now + progress_every
    seconds = time.perf_counter() - start
    doc = {"seconds": seconds, "files": len(work.files), "bytes": work.total}
    drops1 = pagecache_drops()
    if drops0 is not None and drops1 is not None:
        doc["writer_cache_drops"] = drops1 - drops0
    sched1 = schedstat(me)
    if sched0 and sched1:
        # the writing thread: on a CPU / runnable but waiting for one / the rest, blocked in
        # syscalls (the disk, or a FUSE reply)
        doc["writer_cpu_s"] = sched1[0] - sched0[0]
        doc["writer_runq_wait_s"] = sched1[1] - sched0[1]
        doc["writer_blocked_s"] = seconds - doc["writer_cpu_s"] - doc["writer_runq_wait_s"]
    return doc


def pretouch(nbytes: int) -> float:
    """Touch ``nbytes`` of fresh anonymous memory (one byte a page), then give it back; the
    seconds it took. On a VM that returns free memory to its host, a page's first touch costs a
    host-side fault (bench/README.md): done right before a timed pass, the pass takes pages the
    guest already holds, so native and dsfs passes start from the same memory."""
    with contextlib.suppress(OSError, ValueError), open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                nbytes = min(nbytes, int(line.split()[1]) * KiB // 2)
    if nbytes <= 0:
        return 0.0
    start = time.perf_counter()
    page = mmap.PAGESIZE
    with mmap.mmap(-1, nbytes) as mem:
        for offset in range(0, nbytes, page):
            mem[offset] = 1
    return time.perf_counter() - start


def pagecache_drops() -> int | None:
    """Times the page cache was dropped since boot (some sandboxes do it every few seconds)."""
    fn = getattr(bl, "pagecache_drops", None)
    if fn is not None:
        return fn()
    with contextlib.suppress(OSError, ValueError), open("/proc/vmstat") as f:
        for line in f:
            if line.startswith("drop_pagecache "):
                return int(line.split()[1])
    return None


def writer_split(w: dict) -> dict:
    return {k: v for k, v in w.items() if k.startswith("writer_")}


def rates(seconds: float, work: Workload) -> dict:
    return {"seconds": seconds, "mib_s": work.total / MiB / seconds if seconds else None,
            "files_s": len(work.files) / seconds if seconds else None}


# -- the daemon ---------------------------------------------------------------------------------

def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rpartition(")")[2].split()[0]
        return state != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def read_proc(pid: int) -> dict | None:
    """VmRSS / VmHWM (MiB) and user+sys CPU seconds of a process, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            status = f.read()
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    doc = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            doc[key] = int(value.split()[0]) / 1024
    if "VmRSS" not in doc:  # a zombie has no memory lines
        return None
    doc["tasks"] = task_schedstats(pid)
    ticks = os.sysconf("SC_CLK_TCK")
    doc["cpu_s"] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return doc


def schedstat(path: str) -> tuple[float, float] | None:
    """(seconds on a CPU, seconds runnable but waiting for one) of a thread, from schedstat."""
    try:
        with open(path) as f:
            on_cpu, waiting = f.read().split()[:2]
        return int(on_cpu) / 1e9, int(waiting) / 1e9
    except (OSError, ValueError):
        return None


def task_schedstats(pid: int) -> dict[str, tuple[float, float]]:
    found = {}
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            value = schedstat(f"/proc/{pid}/task/{tid}/schedstat")
            if value is not None:
                found[tid] = value
    return found


class RssSampler:
    """Samples a process every ``interval`` seconds in a thread until stopped or it exits."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, float]] = []
        self.first: dict | None = None
        self.last: dict | None = None
        self.task_first: dict[str, tuple[float, float]] = {}
        self.task_last: dict[str, tuple[float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self.t0 = time.perf_counter()

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        while True:
            doc = read_proc(self.pid)
            if doc is None:
                return
            if self.first is None:
                self.first = doc
            self.last = doc
            for tid, value in doc["tasks"].items():
                # a thread born after the first sample started from zero
                self.task_first.setdefault(tid, value if doc is self.first else (0.0, 0.0))
                self.task_last[tid] = value
            self.samples.append((time.perf_counter() - self.t0, doc["VmRSS"]))
            if self._stop.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        rss = [r for _, r in self.samples]
        return {
            "samples": len(rss),
            "rss_start_mib": rss[0] if rss else None,
            "rss_peak_mib": max(rss) if rss else None,
            "rss_end_mib": rss[-1] if rss else None,
            "hwm_mib": self.last.get("VmHWM") if self.last else None,
            "daemon_cpu_s": (self.last["cpu_s"] - self.first["cpu_s"]) if self.first and self.last else None,
            # per-thread schedstat deltas: CPU time, and time runnable but waiting for a CPU
            "daemon_sched_cpu_s": sum(self.task_last[t][0] - self.task_first[t][0] for t in self.task_last),
            "daemon_runq_wait_s": sum(self.task_last[t][1] - self.task_first[t][1] for t in self.task_last),
            # one sample in 10: enough to plot the burst without bloating the JSON
            "trace": [(round(t, 2), round(r, 1)) for t, r in self.samples[::10]],
        }


def mounted(path: Path) -> bool:
    target = str(path)
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                if line.split()[4].replace("\\040", " ") == target:
                    return True
    except OSError:
        pass
    return False


def mounts_under(prefix: Path) -> list[str]:
    found = []
    with contextlib.suppress(OSError), open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(prefix) or point.startswith(str(prefix) + "/"):
                found.append(point)
    return found


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) (\d+) \w+ [\w.]+: (.*)$")


def daemon_log_times(path: str, pid: int) -> dict:
    """Epoch times of the daemon's 'finishing' and 'commit of' lines (ms resolution)."""
    times: dict = {}
    with contextlib.suppress(OSError), open(path, errors="replace") as f:
        for line in f:
            m = LOG_LINE.match(line.rstrip("\n"))
            if not m or int(m.group(3)) != pid:
                continue
            stamp = _dt.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timestamp() + int(m.group(2)) / 1000
            text = m.group(4)
            if "; finishing (" in text:
                times["finishing"] = stamp
            elif text.startswith("commit of "):
                times["committed"] = stamp
            elif "failed" in text:
                times.setdefault("errors", []).append(text[:300])
    return times


# -- py-spy -------------------------------------------------------------------------------------

def pyspy_command() -> str | None:
    beside = Path(sys.executable).parent / "py-spy"
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


class Profiler:
    """`py-spy record --format raw --idle` on the daemon plus periodic `py-spy dump`s."""

    def __init__(self, exe: str, pid: int, out: Path, *, rate: int = 100, dump_every: float = 2.0,
                 max_dumps: int = 5) -> None:
        self.exe, self.pid, self.out, self.rate = exe, pid, out, rate
        self.dump_every, self.max_dumps = dump_every, max_dumps
        self.dumps: list[tuple[float, str]] = []
        self.proc: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._dumper, daemon=True)
        self.t0 = 0.0
        self.wall = 0.0

    def start(self) -> Profiler:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.unlink(missing_ok=True)
        self.log = open(self.out.with_suffix(".log"), "w")
        self.proc = subprocess.Popen(
            [self.exe, "record", "--pid", str(self.pid), "--format", "raw", "-o", str(self.out),
             "--rate", str(self.rate), "--nonblocking", "--idle", "--threads"],
            stdout=self.log, stderr=subprocess.STDOUT)
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def _dumper(self) -> None:
        while not self._stop.wait(self.dump_every) and len(self.dumps) < self.max_dumps:
            if not pid_alive(self.pid):
                return
            proc = subprocess.run([self.exe, "dump", "--pid", str(self.pid), "--nonblocking"],
                                  capture_output=True, text=True, timeout=60)
            if proc.returncode == 0 and proc.stdout.strip():
                self.dumps.append((time.perf_counter() - self.t0, proc.stdout))

    def stop(self, *, wait_exit: bool = False, timeout: float = 120) -> None:
        """Stop sampling (SIGINT), or with ``wait_exit`` let py-spy end with the daemon."""
        self._stop.set()
        self._thread.join()
        if self.proc is None:
            return
        if wait_exit:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.wall = time.perf_counter() - self.t0
        self.log.close()

    def kill(self) -> None:
        self._stop.set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# A sample whose innermost frame is one of these is a thread waiting for work, not doing any.
IDLE_LEAVES = ("EpollIOManager.get_events", "WorkerThread._work", "BlockCache._writer")
IDLE_THREADS = ("dsfs-lease", "dsfs-cache-writer", "dsfs-reaper")
FRAME = re.compile(r"^(.*) \((.*):(\d+)\)$")


def analyse_raw(path: Path, wall: float, top: int = 12) -> dict:
    """Hot frames of a `py-spy record --format raw --idle --threads` file.

    Returns busy thread-seconds per thread kind, the innermost frames ('self' time) and every
    dsfs frame on the stack ('inclusive' time), both as file:line, in thread-seconds."""
    if not path.exists():
        return {"error": f"no py-spy output at {path}"}
    per_tid: collections.Counter = collections.Counter()
    tids_of_kind: dict[str, set] = collections.defaultdict(set)
    busy_thread: collections.Counter = collections.Counter()
    leaf: collections.Counter = collections.Counter()
    inclusive: collections.Counter = collections.Counter()
    total = 0
    lines = []
    names: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        m = re.match(r"^thread \((\w+)\)(?:: ?(.*))?$", frames[0])
        tid, thread = (m.group(1), m.group(2) or "") if m else (frames[0], frames[0])
        if thread and (tid not in names or " from " in names[tid]):
            names[tid] = thread
        lines.append((tid, frames[1:], int(count)))
    for tid, frames, n in lines:
        kind = thread_kind(names.get(tid, ""))
        per_tid[tid] += n
        tids_of_kind[kind].add(tid)
        total += n
        if not frames:
            continue
        innermost = frames[-1]
        fn = FRAME.match(innermost)
        if kind in IDLE_THREADS or (fn and fn.group(1) in IDLE_LEAVES) or \
                any("Lease.start_heartbeat" in f for f in frames):
            continue
        busy_thread[kind] += n
        leaf[innermost] += n
        seen = set()
        for frame in frames:
            m = FRAME.match(frame)
            if not m or not m.group(2).startswith("dsfs/") or frame in seen:
                continue
            if m.group(2) == "dsfs/mountd/daemon.py" or \
                    (m.group(2) == "dsfs/mountd/writable.py" and m.group(1) == "serve"):
                continue  # the daemon's entry frames: on every stack, say nothing
            seen.add(frame)
            inclusive[frame] += n
    # With --idle every live thread is sampled on each tick: the longest-lived thread's count
    # is the number of ticks.
    ticks = max(per_tid.values()) if per_tid else 0
    threads_of_kind = {k: len(v) for k, v in tids_of_kind.items()}
    rate = ticks / wall if wall and ticks else 100.0

    def frames_table(counter) -> list[dict]:
        rows = []
        for frame, n in counter.most_common(top):
            m = FRAME.match(frame)
            func, file, line = (m.group(1), m.group(2), int(m.group(3))) if m else (frame, "", 0)
            rows.append({"frame": f"{file}:{line}", "function": func, "thread_s": n / rate,
                         "pct_busy": 100.0 * n / max(1, sum(busy_thread.values())),
                         "source": source_line(file, line)})
        return rows

    return {
        "samples": total, "ticks": ticks, "rate_hz": rate, "wall_s": wall,
        "busy_thread_s": {k: v / rate for k, v in busy_thread.most_common()},
        "threads": threads_of_kind,
        "self": frames_table(leaf),
        "inclusive_dsfs": frames_table(inclusive),
    }


def thread_kind(name: str) -> str:
    """Group threads: trio's workers are 'Trio thread N', renamed '<fn> from <task>' while busy."""
    if not name or name.startswith("Trio thread") or " from " in name:
        return "trio workers"
    return re.sub(r"\d+", "N", name)


def source_line(file: str, line: int) -> str:
    if not file.startswith("dsfs/") or line <= 0:
        return ""
    try:
        with open(REPO_ROOT / file) as f:
            for n, text in enumerate(f, 1):
                if n == line:
                    return text.strip()[:100]
    except OSError:
        pass
    return ""


# -- the benchmark ------------------------------------------------------------------------------

class Bench:
    def __init__(self, args, work: Path) -> None:
        self.args = args
        self.work = work
        self.store = work / "store"
        self.cache = work / "cache"
        self.config = work / "dsfs.yaml"
        self.upload_dir = work / "upload"
        self.env = bl.isolated_env(self.store, self.cache, self.config)
        self.dsfs = bl.dsfs_command(args.dsfs)
        self.payload: Payload | None = None
        self.live: dict[Path, int | None] = {}   # mountpoints we mounted -> daemon pid
        self.profilers: list[Profiler] = []
        self.results: dict = {}
        self.profile: dict = {}

    # plumbing

    def dsfs_run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.dsfs + list(argv), env=self.env, capture_output=True, text=True)
        if check and proc.returncode != 0:
            raise bl.CommandFailed(f"dsfs {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def daemon_record(self, mnt: Path) -> dict:
        doc = json.loads(self.dsfs_run("status", "--json").stdout or "[]")
        for m in doc:
            if m.get("mountpoint") == str(mnt) and m.get("health") == "ok":
                return m
        raise bl.CommandFailed(f"`dsfs status --json` lists no live mount at {mnt}: {doc}")

    def mount_draft(self, dataset: str, mnt: Path) -> tuple[str, dict, dict]:
        version = self.dsfs_run("create", dataset).stdout.strip()
        bl.remove_tree(mnt)
        mnt.mkdir(parents=True)
        self.live[mnt] = None
        res = bl.run_measured(self.dsfs + ["mount", f"{dataset}@draft", str(mnt)], env=self.env)
        record = self.daemon_record(mnt)
        self.live[mnt] = record["pid"]
        return version, record, res

    def unmount_measured(self, mnt: Path, record: dict, *, profiler: Profiler | None = None) -> dict:
        """`dsfs umount` with the RSS sampler running until the daemon is gone."""
        pid = record["pid"]
        os.sync()  # earlier steps' dirty pages are not this commit's cost
        started = time.time()
        with RssSampler(pid, self.args.sample_interval) as sampler:
            res = bl.run_measured(self.dsfs + ["umount", str(mnt)], env=self.env, check=False)
            deadline = time.monotonic() + 60
            while pid_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            gone = time.time()
        if profiler is not None:
            profiler.stop(wait_exit=True)
        if res["rc"] != 0:
            raise bl.CommandFailed(f"dsfs umount {mnt} failed ({res['rc']}): {res['stderr'][-2000:]}")
        self.live.pop(mnt, None)
        summary = next((ln.strip() for ln in res["stderr"].splitlines() if "committed" in ln),
                       res["stderr"].strip().splitlines()[-1] if res["stderr"].strip() else "")
        marks = daemon_log_times(record.get("log", ""), pid)
        phases = {}
        if "finishing" in marks:
            phases["umount_to_finishing_s"] = marks["finishing"] - started
            if "committed" in marks:
                phases["commit_in_daemon_s"] = marks["committed"] - marks["finishing"]
                phases["after_commit_to_exit_s"] = gone - marks["committed"]
        return {"umount": strip_output(res), "summary_line": summary, "daemon": sampler.summary(),
                "daemon_phases": phases, "daemon_errors": marks.get("errors", [])}

    def ensure_payload(self) -> Payload:
        if self.payload is None:
            self.payload = Payload(self.args.pool_mib, max(self.args.block_kib * KiB, MiB))
        return self.payload

    # one workload

    def pretouch(self, work: Workload, case: dict, before: str) -> None:
        """Fresh memory for the pass ``before``: the workload's bytes plus 256 MiB (``pretouch``)."""
        if self.args.pretouch:
            case.setdefault("pretouch_s", {})[before] = round(pretouch(work.total + 256 * MiB), 3)

    def run_case(self, work: Workload) -> dict:
        args = self.args
        payload = self.ensure_payload()
        case: dict = {"workload": work.describe(), "files": len(work.files), "bytes": work.total,
                      "folders": len(work.dirs), "block_bytes": work.block}
        nat_a = self.work / f"native_{work.name}_nofsync"
        nat_b = self.work / f"native_{work.name}_fsync"
        mnt = self.work / f"mnt_{work.name}"
        for path in (nat_a, nat_b):
            bl.remove_tree(path)
            path.mkdir(parents=True)

        # 1. native, no fsync (then one sync); 2. native, fsync per file
        os.sync()
        log(f"{work.name}: native, no fsync: {work.describe()}")
        self.pretouch(work, case, "native_nofsync")
        w = write_tree(nat_a, work, payload, fsync=False)
        t = time.perf_counter()
        os.sync()
        sync_s = time.perf_counter() - t
        case["native_nofsync"] = rates(w["seconds"], work) | writer_split(w) | {"load1": os.getloadavg()[0]}
        case["native_nofsync_sync"] = rates(w["seconds"] + sync_s, work) | {"final_sync_s": sync_s}
        bl.remove_tree(nat_a)
        os.sync()
        log(f"{work.name}: native, fsync per file")
        self.pretouch(work, case, "native_fsync")
        w = write_tree(nat_b, work, payload, fsync=True)
        case["native_fsync"] = rates(w["seconds"], work) | writer_split(w) | {"load1": os.getloadavg()[0]}
        os.sync()

        # 3. dsfs draft mount
        log(f"{work.name}: dsfs create + mount {work.name}@draft")
        version, record, mount_res = self.mount_draft(work.name, mnt)
        case["dsfs_version"] = version
        case["dsfs_mount"] = strip_output(mount_res)
        pid = record["pid"]
        log(f"{work.name}: writing through the draft mount (daemon pid {pid})")
        self.pretouch(work, case, "dsfs_write")
        with RssSampler(pid, args.sample_interval) as sampler:
            w = write_tree(mnt, work, payload, fsync=False)
        case["dsfs_write"] = rates(w["seconds"], work) | writer_split(w) | {"load1": os.getloadavg()[0],
                                                         "daemon": sampler.summary()}
        staged = stage_bytes(self.cache / "state" / "drafts" / version)
        case["dsfs_write"]["staged_bytes"] = staged

        # 4. commit on unmount
        log(f"{work.name}: dsfs umount (commit)")
        commit = self.unmount_measured(mnt, record)
        case["dsfs_commit"] = commit | {"load1": os.getloadavg()[0]}
        log(f"{work.name}: {commit['summary_line']}  ({commit['umount']['wall_s']:.1f} s)")
        case["verify"] = self.verify(work, nat_b)

        # 5. zip + upload baseline of the same (fsync'd) native folder
        zip_path = self.work / f"{work.name}.zip"
        bl.remove_tree(zip_path)
        bl.remove_tree(self.upload_dir)
        self.upload_dir.mkdir(parents=True)
        os.sync()
        log(f"{work.name}: zip -0 -r -q, then cp + sync")
        case["zip"] = strip_output(bl.run_measured(["zip", "-0", "-r", "-q", str(zip_path), "."], cwd=nat_b))
        case["zip"]["zip_bytes"] = zip_path.stat().st_size
        case["upload"] = strip_output(bl.run_measured(
            ["sh", "-c", 'cp "$1" "$2"/ && sync', "sh", str(zip_path), str(self.upload_dir)]))
        case["zip_upload_s"] = case["zip"]["wall_s"] + case["upload"]["wall_s"]
        for path in (zip_path, self.upload_dir, nat_b):
            bl.remove_tree(path)

        # 6. native, no fsync, once more: this disk's create speed moves by 5x over minutes, so
        # the goal's ratio is taken against the mean of a native run before and one after dsfs's
        os.sync()
        log(f"{work.name}: native, no fsync, again")
        nat_a.mkdir(parents=True)
        self.pretouch(work, case, "native_nofsync_after")
        w = write_tree(nat_a, work, payload, fsync=False)
        case["native_nofsync_after"] = rates(w["seconds"], work) | writer_split(w) | {"load1": os.getloadavg()[0]}
        bl.remove_tree(nat_a)
        os.sync()

        case["cache_drops"] = {
            "native_nofsync": case["native_nofsync"].get("writer_cache_drops"),
            "native_fsync": case["native_fsync"].get("writer_cache_drops"),
            "dsfs_write": case["dsfs_write"].get("writer_cache_drops"),
            "dsfs_commit": commit["umount"].get("cache_drops"),
            "zip": case["zip"].get("cache_drops"), "upload": case["upload"].get("cache_drops"),
        }
        # ratios (dsfs time / baseline time)
        d_w = case["dsfs_write"]["seconds"]
        case["ratios"] = {
            "write_vs_native_nofsync": d_w / case["native_nofsync"]["seconds"],
            "write_vs_native_nofsync_sync": d_w / case["native_nofsync_sync"]["seconds"],
            "write_vs_native_fsync": d_w / case["native_fsync"]["seconds"],
            "commit_vs_zip_upload": commit["umount"]["wall_s"] / case["zip_upload_s"],
            "write_commit_vs_fsync_zip_upload": (d_w + commit["umount"]["wall_s"])
            / (case["native_fsync"]["seconds"] + case["zip_upload_s"]),
        }
        return case

    def run_reads(self) -> dict:
        """Whole-file reads, in folder order, of a published version's files: through a mount of
        it, and through a draft mount of its child (where they are unmodified parent files)."""
        files = self.args.read_files
        work = small_workload(files, max(1, files // 100), self.args.small_kib * KiB, 5, "reads")
        src = self.work / "reads_src"
        log(f"reads: {work.describe()} into a published version, and a draft on it")
        write_tree(src, work, self.ensure_payload(), fsync=False)
        parent = self.dsfs_run("create", "reads").stdout.strip()
        self.dsfs_run("add", parent, str(src))
        self.dsfs_run("publish", parent)
        child = self.dsfs_run("create", "reads").stdout.strip()
        bl.remove_tree(src)
        case: dict = {"workload": work.describe(), "files": files, "bytes": work.total}
        self.read_passes(parent, work)  # unmeasured: the store's bytes into the page cache
        for key, ref in (("published", parent), ("draft", child)):
            case[key] = self.read_passes(ref, work)
        case["ratios"] = {f"{k}_draft_vs_published": case["published"][k] / case["draft"][k]
                          for k in ("cold_s", "warm_s")}
        return case

    def read_passes(self, ref: str, work: Workload) -> dict:
        """A fresh mount of ``ref``; the seconds of a first pass over the files and a second."""
        mnt = self.work / "mnt_reads"
        bl.remove_tree(mnt)
        mnt.mkdir(parents=True)
        self.live[mnt] = None
        self.dsfs_run("mount", ref, str(mnt))
        self.live[mnt] = self.daemon_record(mnt)["pid"]
        times = {}
        for key in ("cold_s", "warm_s"):
            start = time.perf_counter()
            for rel, _ in work.files:
                with open(mnt / rel, "rb") as f:
                    while f.read(MiB):
                        pass
            times[key] = time.perf_counter() - start
        self.dsfs_run("umount", str(mnt))  # a draft mount only read commits nothing
        self.live.pop(mnt, None)
        return times

    def verify(self, work: Workload, native: Path, sample: int = 25) -> dict:
        """The committed draft lists every file with the native copy's size and sha256."""
        listing = json.loads(self.dsfs_run("ls", f"{work.name}@draft", "-r", "--json").stdout)
        files = {e["path"]: e for e in listing if e["type"] == "file"}
        problems = []
        if len(files) != len(work.files):
            problems.append(f"{len(files)} files committed, {len(work.files)} written")
        rng = random.Random(self.args.seed)
        for rel, size in rng.sample(work.files, min(sample, len(work.files))):
            entry = files.get(rel)
            digest = hashlib.sha256((native / rel).read_bytes()).hexdigest()
            if entry is None or entry["size"] != size or entry["sha256"] != digest:
                problems.append(f"{rel}: committed {entry and (entry['size'], entry['sha256'][:12])}, "
                                f"native {(size, digest[:12])}")
        if problems:
            log("VERIFY FAILED: " + "; ".join(problems[:5]))
        return {"ok": not problems, "files": len(files), "checked": min(sample, len(work.files)),
                "problems": problems[:20]}

    # profiling pass

    def run_profile(self, work: Workload, out_prefix: Path) -> dict:
        exe = pyspy_command()
        if exe is None:
            return {"skipped": "py-spy not found (pip install py-spy)"}
        payload = self.ensure_payload()
        mnt = self.work / f"mnt_{work.name}"
        log(f"profile {work.name}: {work.describe()} through a draft mount with py-spy attached")
        version, record, _ = self.mount_draft(work.name, mnt)
        pid = record["pid"]
        doc: dict = {"workload": work.describe(), "note": "unmeasured pass; py-spy attached"}
        prof = Profiler(exe, pid, out_prefix.with_name(out_prefix.name + ".write.raw"),
                        dump_every=3.0).start()
        self.profilers.append(prof)
        time.sleep(0.5)  # let py-spy attach before the burst
        w = write_tree(mnt, work, payload, fsync=False)
        prof.stop()
        doc["write"] = rates(w["seconds"], work) | writer_split(w) | {"hot": analyse_raw(prof.out, prof.wall),
                                                   "dumps": prof.dumps, "raw": str(prof.out)}
        os.sync()
        prof = Profiler(exe, pid, out_prefix.with_name(out_prefix.name + ".commit.raw"),
                        dump_every=1.5, max_dumps=6).start()
        self.profilers.append(prof)
        time.sleep(0.5)
        commit = self.unmount_measured(mnt, record, profiler=prof)
        doc["commit"] = {"seconds": commit["umount"]["wall_s"], "summary_line": commit["summary_line"],
                         "cache_drops": commit["umount"].get("cache_drops"),
                         "daemon_phases": commit["daemon_phases"],
                         "hot": analyse_raw(prof.out, prof.wall), "dumps": prof.dumps, "raw": str(prof.out)}
        return doc

    # cleanup

    def cleanup(self) -> list[str]:
        notes = []
        for prof in self.profilers:
            prof.kill()
        for mnt, pid in list(self.live.items()):
            if mounted(mnt):
                notes.append(f"unmounting {mnt} (discarding its pending changes)")
                with contextlib.suppress(Exception):
                    subprocess.run(self.dsfs + ["umount", "--discard", "--yes", str(mnt)], env=self.env,
                                   capture_output=True, timeout=600)
            if mounted(mnt):
                subprocess.run(["fusermount3", "-u", "-z", str(mnt)], capture_output=True)
            if pid and pid_alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + 10
                while pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if pid_alive(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                notes.append(f"stopped daemon {pid}")
            self.live.pop(mnt, None)
        return notes


def strip_output(res: dict) -> dict:
    doc = dict(res)
    for key in ("stdout", "stderr"):
        doc[key] = doc.get(key, "")[-2000:]
    return doc


def stage_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fit_to_disk(args, work_dir: Path) -> dict:
    """Scale the workloads down if the disk cannot hold them (peak ~4x the largest workload:
    native copy + staging + chunk + store, then zip + its copy; stores of earlier cases stay)."""
    large = args.large_files * args.large_mib * MiB if "large" in args.cases else 0
    small = args.small_files * args.small_kib * KiB if "small" in args.cases else 0
    need = 4 * max(large, small) + large + small + 1 * GiB
    free = free_bytes(work_dir)
    note = {"free_gib": free / GiB, "need_gib": need / GiB, "scaled": 1.0}
    if free < args.min_free_gib * GiB or free < need:
        scale = max(0.05, min(1.0, (free - 2 * GiB) / need))
        args.large_mib = max(1, int(args.large_mib * scale))
        args.small_files = max(10, int(args.small_files * scale))
        note["scaled"] = scale
        log(f"only {free / GiB:.1f} GiB free in {work_dir}: scaling the workloads by {scale:.2f}")
    return note


# -- report -------------------------------------------------------------------------------------

def native_nofsync_s(case: dict) -> float:
    """Seconds of the native no-fsync write: the mean of the runs before and after dsfs's."""
    runs = [case[k]["seconds"] for k in ("native_nofsync", "native_nofsync_after") if k in case]
    return sum(runs) / len(runs)


def goals(cases: dict) -> list[list]:
    """The rows of issue #10's goals: (goal, measured, target)."""
    rows = []
    done = {name: case for name, case in cases.items() if "error" not in case}
    for name, target in (("small", ">= 0.04"), ("large", ">= 0.18")):
        if name in done:
            c = done[name]
            rows.append([f"{name} files, write + close (speed vs native, no fsync)",
                         native_nofsync_s(c) / c["dsfs_write"]["seconds"], target])
    for name in ("small", "large"):
        if name in done:
            rows.append([f"{name} files, dsfs umount commit (time vs zip -0 -r + copy)",
                         done[name]["ratios"]["commit_vs_zip_upload"], "<= 1.0"])
    if "reads" in done:
        for key, label in (("cold_s", "first pass"), ("warm_s", "second pass")):
            rows.append([f"parent reads, draft vs published mount (speed), {label}",
                         done["reads"]["ratios"][f"{key}_draft_vs_published"], ">= 0.8"])
    return rows


def print_report(doc: dict) -> None:
    for name, case in doc["cases"].items():
        if "error" in case:
            print(f"\n{name}: FAILED: {case['error']}")
            continue
        if name == "reads":
            print(f"\n== reads: {case['workload']}")
            bl.print_table(["mount", "first pass s", "second pass s"],
                           [[key, case[key]["cold_s"], case[key]["warm_s"]] for key in ("published", "draft")])
            continue
        print(f"\n== {name}: {case['workload']}")
        d = case["dsfs_write"]["seconds"]
        rows = []
        for key, label in (("native_nofsync", "native write, no fsync"),
                           ("native_nofsync_after", "native write, no fsync, after dsfs"),
                           ("native_nofsync_sync", "native write, no fsync + 1 sync"),
                           ("native_fsync", "native write, fsync per file"),
                           ("dsfs_write", "dsfs draft mount write")):
            if key not in case:
                continue
            r = case[key]
            ratio = f"{d / r['seconds']:.2f}x" if key != "dsfs_write" else ""
            rows.append([label, r["seconds"], r["mib_s"], r["files_s"], ratio])
        c = case["dsfs_commit"]["umount"]["wall_s"]
        zu = case["zip_upload_s"]
        rows.append(["zip -0 -r -q", case["zip"]["wall_s"], case["bytes"] / MiB / case["zip"]["wall_s"],
                     case["files"] / case["zip"]["wall_s"], ""])
        rows.append(["cp zip + sync (upload)", case["upload"]["wall_s"],
                     case["bytes"] / MiB / case["upload"]["wall_s"], None, ""])
        rows.append(["zip + upload", zu, case["bytes"] / MiB / zu, case["files"] / zu, f"{c / zu:.2f}x"])
        rows.append(["dsfs umount (commit)", c, case["bytes"] / MiB / c, case["files"] / c, ""])
        bl.print_table(["step", "s", "MiB/s", "files/s", "dsfs / this"], rows)
        dw, dc = case["dsfs_write"]["daemon"], case["dsfs_commit"]["daemon"]
        phases = case["dsfs_commit"]["daemon_phases"]
        print(f"daemon RSS: writes start {bl.fmt(dw['rss_start_mib'], 1)} MiB, peak {bl.fmt(dw['rss_peak_mib'], 1)}"
              f" MiB; commit peak {bl.fmt(dc['rss_peak_mib'], 1)} MiB; VmHWM {bl.fmt(dc['hwm_mib'], 1)} MiB "
              f"({dw['samples'] + dc['samples']} samples)")
        print(f"daemon CPU: writes {bl.fmt(dw['daemon_cpu_s'])} s (+{bl.fmt(dw['daemon_runq_wait_s'])} s "
              f"runnable, waiting for a CPU), commit {bl.fmt(dc['daemon_cpu_s'])} s "
              f"(+{bl.fmt(dc['daemon_runq_wait_s'])} s waiting for a CPU)")
        print("commit phases: " + ", ".join(f"{k[:-2].replace('_', ' ')} {v:.2f} s" for k, v in phases.items()))
        for key, label in (("native_fsync", "native fsync"), ("dsfs_write", "dsfs")):
            r = case[key]
            if "writer_cpu_s" in r:
                print(f"writer thread, {label}: {r['seconds']:.2f} s = {r['writer_cpu_s']:.2f} on a CPU + "
                      f"{r['writer_runq_wait_s']:.2f} waiting for one + {r['writer_blocked_s']:.2f} blocked in syscalls")
        print(f"dsfs said: {case['dsfs_commit']['summary_line']}")
        r = case["ratios"]
        print(f"ratios (dsfs time / baseline): write vs native no-fsync {r['write_vs_native_nofsync']:.2f}x, "
              f"vs no-fsync+sync {r['write_vs_native_nofsync_sync']:.2f}x, vs fsync {r['write_vs_native_fsync']:.2f}x; "
              f"commit vs zip+upload {r['commit_vs_zip_upload']:.2f}x; "
              f"write+commit vs fsync-write+zip+upload {r['write_commit_vs_fsync_zip_upload']:.2f}x")
        drops = {k: v for k, v in case.get("cache_drops", {}).items() if v}
        if drops:
            print("page cache dropped by someone (/proc/sys/vm/drop_caches) during: "
                  + ", ".join(f"{k} {v}x" for k, v in drops.items())
                  + " -- those steps re-read their input from disk")
        v = case["verify"]
        print(f"verify: {'ok' if v['ok'] else 'FAILED'} ({v['files']} files listed, {v['checked']} sha256-checked)")
    for name, prof in doc.get("profile", {}).items():
        print(f"\n== py-spy, {name} ({prof.get('workload', '')}; unmeasured pass)")
        if "skipped" in prof or "error" in prof:
            print(f"  {prof.get('skipped') or prof.get('error')}")
            continue
        for phase in ("write", "commit"):
            part = prof.get(phase)
            if not part:
                continue
            hot = part["hot"]
            if "error" in hot:
                print(f"  {phase}: {hot['error']}")
                continue
            busy = ", ".join(f"{k} {v:.1f} s" for k, v in hot["busy_thread_s"].items())
            print(f"-- {phase}: {part['seconds']:.1f} s wall; busy thread-seconds: {busy}")
            rows = [[f"{r['frame']} {r['function']}", r["thread_s"], r["pct_busy"], r["source"][:60]]
                    for r in hot["self"][:10]]
            bl.print_table(["innermost frame (self)", "thread s", "% busy", "source"], rows)
            rows = [[f"{r['frame']} {r['function']}", r["thread_s"], r["pct_busy"], r["source"][:60]]
                    for r in hot["inclusive_dsfs"][:10]]
            bl.print_table(["dsfs frame on stack (inclusive)", "thread s", "% busy", "source"], rows)
    if goals(doc["cases"]):
        print("\n== issue #10 goals (ratios from this run)")
        bl.print_table(["goal", "measured", "target"], goals(doc["cases"]))
    print(f"\nload average: start {tuple(round(x, 2) for x in doc['load_start'])}, "
          f"end {tuple(round(x, 2) for x in doc['load_end'])} on {os.cpu_count()} CPUs")


def main(argv=None) -> int:
    args = parse_args(argv)
    bl.compile_dsfs()
    work = bl.make_workdir(args.workdir, "dsfs-bench-draft-")
    for tool in ("zip", "fusermount3"):
        if shutil.which(tool) is None:
            print(f"missing {tool}", file=sys.stderr)
            return 2
    disk = fit_to_disk(args, work)
    bench = Bench(args, work)
    bench.config.write_text("compression: auto\n")
    doc: dict = {"script": "bench_draft.py", "args": {k: v for k, v in vars(args).items()},
                 "machine": bl.machine_info(), "load_start": os.getloadavg(), "disk": disk,
                 "workdir": str(work), "cases": {}, "profile": {}}
    out_dir = Path(args.out_dir) if args.out_dir else bl.OUT_DIR

    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    old_term = signal.signal(signal.SIGTERM, on_term)
    rc = 0
    try:
        workloads = {
            "large": large_workload(args.large_files, args.large_mib, args.block_kib * KiB),
            "small": small_workload(args.small_files, args.small_dirs, args.small_kib * KiB),
        }
        log(f"work folder {work} ({disk['free_gib']:.1f} GiB free); {bl.load_note()}")
        # Untimed warm-up: the first pass would otherwise also pay for faulting in the data pool
        # and growing the page cache.
        scratch = work / "warmup"
        scratch.mkdir(exist_ok=True)
        write_tree(scratch, large_workload(1, min(256, args.large_mib * args.large_files), MiB, 0, "warmup"),
                   bench.ensure_payload(), fsync=True)
        bl.remove_tree(scratch)
        for name in args.cases:
            try:
                doc["cases"][name] = bench.run_reads() if name == "reads" else bench.run_case(workloads[name])
            except bl.CommandFailed as exc:
                log(f"{name} failed: {exc}")
                doc["cases"][name] = {"error": str(exc)}
                rc = 1
            bl.write_json("bench_draft", doc, args.out_dir)
        if args.profile:
            prefix = out_dir / "bench_draft.pyspy"
            plans = []
            if "small" in args.cases:
                n = args.profile_small_files
                plans.append(("small", small_workload(n, max(1, round(n * args.small_dirs / args.small_files)),
                                                      args.small_kib * KiB, 3, "profile_small")))
            if "large" in args.cases:
                plans.append(("large", large_workload(1, args.profile_large_mib, args.block_kib * KiB, 4,
                                                      "profile_large")))
            for name, wl in plans:
                try:
                    doc["profile"][name] = bench.run_profile(wl, prefix.with_name(f"{prefix.name}.{name}"))
                except bl.CommandFailed as exc:
                    doc["profile"][name] = {"error": str(exc)}
                bl.write_json("bench_draft", doc, args.out_dir)
    except KeyboardInterrupt:
        log("interrupted")
        rc = 130
    finally:
        notes = bench.cleanup()
        for note in notes:
            log(note)
        signal.signal(signal.SIGTERM, old_term)
        doc["load_end"] = os.getloadavg()
        doc["cleanup"] = notes
        left = mounts_under(work)
        if left:
            log(f"mounts still under {work}: {left}; not deleting it")
        elif not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        path = bl.write_json("bench_draft", doc, args.out_dir)
    if doc["cases"] or doc["profile"]:
        print_report(doc)
    print(f"\nJSON: {path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
