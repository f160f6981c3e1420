#!/usr/bin/env python3
"""Benchmark reading through a dsfs mount against a native folder and a ratarmount'ed zip.

One data set, one run, four contenders:

  native        the folder the data was generated in (ext4/overlay, the page cache)
  dsfs-direct   `dsfs mount` of a published version made from that folder, --adapter direct
                (libfuse low-level API via ctypes: no_open, no_opendir, readdirplus)
  dsfs-ll       the same version, --adapter lowlevel (pyfuse3 on trio, keep_cache)
  ratarmount    `ratarmount data.zip mnt` of `zip -r -0 -q` of the same folder

Rows (each cold pass starts from a fresh mount, an emptied dsfs block cache and
`echo 3 > /proc/sys/vm/drop_caches`; each warm pass repeats the same files right after):

  first mount     mount command with no index yet + first byte of one file   (s, lower better)
  mount           mount command (index cached) + first byte of one file      (s, lower better)
  stat walk       os.walk + os.lstat of every file (or `find -printf`)        files/s
  random reads    whole small files in shuffled order, 1 and 8 threads       files/s
  folder order    whole small files in path (folder) order, 8 threads, cold  files/s
  sequential      1 MiB read()s through the large files                      MiB/s
  first bytes     open + read of the first 4 KiB of a large file, cold         ms (lower better)
  pread           random 4-128 KiB os.pread()s in one large file             ops/s
  pool loader     multiprocessing Pool(4) reading shuffled batches, 2 epochs files/s
  hinted loader   the Pool(4) epoch 1 after `dsfs prefetch MNT --order`      files/s (direct only)
  torch loader    torch.utils.data.DataLoader(num_workers=4), 2 epochs       files/s (if torch)
  daemon RSS      VmHWM / VmRSS of the mount daemon at the end of sessions   MiB (lower better)

Every pass is capped at --time-cap seconds: a capped pass reports the rate over what it got
through (marked '*'); its warm pass repeats exactly the files (or ops) the cold one finished.

Run:  .venv/bin/python bench/bench_mount.py            (~16 min on 2 cores, 100k files + 1 GiB;
                                                         ~8 min of it makes the data, store and zip:
                                                         --workdir DIR, then --reuse, skips that)
      .venv/bin/python bench/bench_mount.py --quick    (~2 min smoke run)
See bench/README.md for details.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import itertools
import json
import multiprocessing
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20
VENV_BIN = Path(sys.executable).parent

CONTENDERS = ("native", "direct", "lowlevel", "ratarmount")
LABELS = {"native": "native", "direct": "dsfs-direct", "lowlevel": "dsfs-ll", "ratarmount": "ratarmount"}
SESSIONS = ("first", "stat", "read", "folder", "seq", "ttfb", "pread", "pool", "hint", "torch")

# key -> (label, unit, higher_is_better)
ROWS = [
    ("first_mount", "first mount, no index + 1st byte", "s", False),
    ("mount", "mount + first byte (cold)", "s", False),
    ("stat_cold", "stat walk, cold", "files/s", True),
    ("stat_warm", "stat walk, warm", "files/s", True),
    ("read1_cold", "random small reads 1 thr, cold", "files/s", True),
    ("read1_warm", "random small reads 1 thr, warm", "files/s", True),
    ("read8_cold", "random small reads 8 thr, cold", "files/s", True),
    ("read8_warm", "random small reads 8 thr, warm", "files/s", True),
    ("folder8_cold", "small reads in folder order 8 thr, cold", "files/s", True),
    ("seq_cold", "sequential 1 MiB reads, cold", "MiB/s", True),
    ("seq_warm", "sequential 1 MiB reads, warm", "MiB/s", True),
    ("ttfb", "first 4 KiB of a large file, cold (median)", "ms", False),
    ("pread_cold", "random preads 4-128K, cold", "ops/s", True),
    ("pread_warm", "random preads 4-128K, warm", "ops/s", True),
    ("pool_e1", "Pool(4) loader epoch 1 (cold)", "files/s", True),
    ("pool_e2", "Pool(4) loader epoch 2 (warm)", "files/s", True),
    ("pool_hint_e1", "Pool(4) epoch 1, order hinted (cold)", "files/s", True),
    ("torch_e1", "torch DataLoader(4) epoch 1", "files/s", True),
    ("torch_e2", "torch DataLoader(4) epoch 2", "files/s", True),
    ("rss_hwm", "daemon peak RSS (VmHWM, max)", "MiB", False),
    ("rss_end", "daemon RSS at session end (max)", "MiB", False),
]
ROW_INFO = {key: (label, unit, higher) for key, label, unit, higher in ROWS}
TARGETS = [("read8_warm", 0.5), ("stat_warm", 0.5), ("seq_warm", 0.9)]


# -- arguments ----------------------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a ~2-3 minute smoke run: 6000 small files, 2 x 48 MiB, 3 s caps")
    p.add_argument("--files", type=int, help="small files (default 100000; --quick 6000)")
    p.add_argument("--min-kib", type=int, default=4, help="smallest small file, KiB (default 4)")
    p.add_argument("--max-kib", type=int, default=64, help="largest small file, KiB (default 64)")
    p.add_argument("--per-dir", type=int, default=100, help="files per leaf folder (default 100)")
    p.add_argument("--dirs-per-group", type=int, default=100, help="leaf folders per group (default 100)")
    p.add_argument("--large-files", type=int, default=2, help="large files (default 2)")
    p.add_argument("--large-mib", type=int, help="size of each large file, MiB (default 512; --quick 48)")
    p.add_argument("--time-cap", type=float,
                   help="seconds one measured pass may take; the rate is taken over what it got "
                        "through (default 10; --quick 3; 0 = no cap)")
    p.add_argument("--read-files", type=int,
                   help="files per random-read pass (default: all small files)")
    p.add_argument("--threads", default="1,8", help="thread counts for random reads (default 1,8)")
    p.add_argument("--pread-ops", type=int, help="preads per pass (default 20000; --quick 3000)")
    p.add_argument("--pread-min-kib", type=int, default=4)
    p.add_argument("--pread-max-kib", type=int, default=128)
    p.add_argument("--loader-files", type=int, help="files per loader epoch (default 20000; --quick 3000)")
    p.add_argument("--loader-workers", type=int, default=4)
    p.add_argument("--loader-batch", type=int, default=32)
    p.add_argument("--walker", choices=["python", "find"], default="python",
                   help="stat walk with os.walk + os.lstat (default) or `find -printf '%%s'`")
    p.add_argument("--contenders", default=",".join(CONTENDERS),
                   help=f"comma-separated subset of {','.join(CONTENDERS)}")
    p.add_argument("--ttfb-runs", type=int, default=7,
                   help="fresh cold sessions whose first-4-KiB time makes the median of that row (default 7)")
    p.add_argument("--sessions", default=",".join(SESSIONS),
                   help=f"comma-separated subset of {','.join(SESSIONS)}")
    p.add_argument("--no-torch", action="store_true", help="skip the torch DataLoader row")
    p.add_argument("--cache-size", help="dsfs mount --cache-size (default: dsfs's default)")
    p.add_argument("--compression", default="store", choices=["auto", "store", "deflate"],
                   help="dsfs compression for the version (default store: the data is random)")
    p.add_argument("--prefetch-local", action="store_true",
                   help="prefetch_local: true in the mounts' config (the local store prepares files ahead)")
    p.add_argument("--no-drop-caches", action="store_true",
                   help="do not write /proc/sys/vm/drop_caches before cold passes")
    p.add_argument("--py-spy", default="",
                   help="comma-separated measurement keys (e.g. read8_warm,stat_cold) or 'all': "
                        "record the dsfs daemon with py-spy during them and print the hot frames")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--workdir", help="work folder (default: a new folder under /tmp)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse data, store and zip in --workdir if made with the same parameters")
    p.add_argument("--keep", action="store_true", help="keep the work folder")
    p.add_argument("--dsfs", help="dsfs command (default: the dsfs next to this python)")
    p.add_argument("--ratarmount", help="ratarmount command (default: the one next to this python)")
    p.add_argument("--out-dir", help="where to write bench_mount.json (default bench/out)")
    p.add_argument("--torch-child", nargs=6, metavar="X", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.torch_child:
        return args
    quick = args.quick
    args.files = args.files or (6000 if quick else 100_000)
    args.large_mib = args.large_mib or (48 if quick else 512)
    args.time_cap = args.time_cap if args.time_cap is not None else (3.0 if quick else 10.0)
    args.pread_ops = args.pread_ops or (3000 if quick else 20_000)
    args.loader_files = args.loader_files or (3000 if quick else 20_000)
    args.threads = [int(t) for t in args.threads.split(",") if t.strip()]
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    args.sessions = [s.strip() for s in args.sessions.split(",") if s.strip()]
    for c in args.contenders:
        if c not in CONTENDERS:
            p.error(f"unknown contender {c!r}")
    for s in args.sessions:
        if s not in SESSIONS:
            p.error(f"unknown session {s!r}")
    if "native" not in args.contenders:
        args.contenders.insert(0, "native")  # every ratio needs it
    args.py_spy = {k.strip() for k in args.py_spy.split(",") if k.strip()}
    return args


# -- data ---------------------------------------------------------------------------------------


def small_rel(i: int, args) -> str:
    leaf = i // args.per_dir
    return f"small/g{leaf // args.dirs_per_group:03d}/d{leaf:05d}/f{i:07d}.bin"


def large_rel(i: int) -> str:
    return f"large/big{i}.bin"


def setup_params(args) -> dict:
    return {k: getattr(args, k) for k in ("files", "min_kib", "max_kib", "per_dir", "dirs_per_group",
                                          "large_files", "large_mib", "seed", "compression")}


def generate(src: Path, args) -> int:
    rng = random.Random(args.seed)
    total = 0
    made: set[str] = set()
    for i in range(args.files):
        rel = small_rel(i, args)
        parent = rel.rpartition("/")[0]
        if parent not in made:
            (src / parent).mkdir(parents=True, exist_ok=True)
            made.add(parent)
        size = rng.randint(args.min_kib * KiB, args.max_kib * KiB)
        with open(src / rel, "wb") as f:
            f.write(os.urandom(size))
        total += size
    (src / "large").mkdir(parents=True, exist_ok=True)
    for i in range(args.large_files):
        with open(src / large_rel(i), "wb") as f:
            for _ in range(args.large_mib // 4):
                f.write(os.urandom(4 * MiB))
        total += args.large_mib // 4 * 4 * MiB
    return total


class Setup:
    """The work folder: source data, a dsfs store with one published version, a zip."""

    def __init__(self, args, work: Path) -> None:
        self.args = args
        self.work = work
        self.src = work / "src"
        self.store = work / "store"
        self.cache = work / "cache"
        self.config = work / "dsfs.yaml"
        self.zip = work / "data.zip"
        self.env = bl.isolated_env(self.store, self.cache, self.config)
        self.dsfs = bl.dsfs_command(args.dsfs)
        self.version = ""
        self.timings: dict[str, float] = {}

    def dsfs_run(self, *argv, check=True, capture=True) -> subprocess.CompletedProcess:
        proc = subprocess.run(self.dsfs + ["-q", *argv], env=self.env, capture_output=capture, text=True)
        if check and proc.returncode != 0:
            raise bl.CommandFailed(f"dsfs {' '.join(argv)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return proc

    def prepare(self) -> None:
        marker = self.work / "setup.json"
        params = setup_params(self.args)
        # Written each run: a reused store keeps its data, not the last run's prefetch setting.
        self.config.write_text(f"compression: {self.args.compression}\n"
                               f"prefetch_local: {'true' if self.args.prefetch_local else 'false'}\n")
        if self.args.reuse and marker.exists():
            doc = json.loads(marker.read_text())
            if doc.get("params") == params and self.zip.exists() and self.store.exists():
                self.version = doc["version"]
                self.timings = doc.get("timings", {})
                log(f"reusing data, store and zip in {self.work} (version {self.version[:12]})")
                return
        for path in (self.src, self.store, self.cache, self.zip, self.zip.with_name("data.zip.index.sqlite")):
            bl.remove_tree(path)
        marker.unlink(missing_ok=True)
        log(f"generating {self.args.files} small files + {self.args.large_files} x "
            f"{self.args.large_mib} MiB in {self.src}")
        t = time.perf_counter()
        self.src.mkdir(parents=True)
        generate(self.src, self.args)
        self.timings["generate_s"] = time.perf_counter() - t
        log("dsfs create + add + publish")
        t = time.perf_counter()
        self.version = self.dsfs_run("create", "bench", "--root", "--name", "v1").stdout.strip()
        self.dsfs_run("add", self.version, str(self.src))
        self.dsfs_run("publish", self.version)
        self.timings["dsfs_add_publish_s"] = time.perf_counter() - t
        t = time.perf_counter()
        self.dsfs_run("show", self.version)  # builds the published index
        self.timings["dsfs_index_s"] = time.perf_counter() - t
        log("zip -r -0 -q")
        t = time.perf_counter()
        subprocess.run(["zip", "-r", "-0", "-q", str(self.zip), "small", "large"], cwd=self.src, check=True)
        self.timings["zip_s"] = time.perf_counter() - t
        marker.write_text(json.dumps({"params": params, "version": self.version, "timings": self.timings}))

    def sizes(self) -> dict:
        def du(path: Path) -> int:
            return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0
        return {"store_bytes": du(self.store), "zip_bytes": self.zip.stat().st_size}


# -- small utilities ----------------------------------------------------------------------------


_T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - _T0:7.1f}s load {os.getloadavg()[0]:4.1f}] {msg}", file=sys.stderr, flush=True)


def drop_caches(enabled: bool) -> bool:
    if not enabled:
        return False
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def fuse_mounts_under(prefix: Path) -> list[str]:
    found = []
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and parts[2].startswith("fuse"):
                point = parts[1].replace("\\040", " ")
                if point == str(prefix) or point.startswith(str(prefix) + "/"):
                    found.append(point)
    return found


def is_mounted(path: Path) -> bool:
    return str(path) in fuse_mounts_under(path)


def pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def wait_pid_gone(pid: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def proc_memory(pid: int | None) -> dict:
    out = {}
    if not pid:
        return out
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS"):
                    out[key] = int(value.split()[0]) / 1024  # kB -> MiB
    except OSError:
        pass
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int | None) -> float | None:
    """user + system CPU seconds of a live process (all its threads)."""
    if not pid:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / _TICK
    except (OSError, IndexError, ValueError):
        return None


def damon_reclaim() -> dict | None:
    """Proactive reclaim by DAMON (some VMs run it): it pages out page-cache memory that has
    not been touched for a while, so a "warm" pass may find part of the page cache gone."""
    base = Path("/sys/kernel/mm/damon/admin/kdamonds")
    found = None
    for state in base.glob("*/state"):
        try:
            if state.read_text().strip() != "on":
                continue
            ctx = state.parent / "contexts" / "0"
            scheme = ctx / "schemes" / "0"
            aggr_us = int((ctx / "monitoring_attrs" / "intervals" / "aggr_us").read_text())
            age = int((scheme / "access_pattern" / "age" / "min").read_text())
            found = {"kdamond": state.parent.name, "action": (scheme / "action").read_text().strip(),
                     "min_idle_s": age * aggr_us / 1e6}
        except (OSError, ValueError):
            found = found or {"kdamond": state.parent.name}
    return found


def find_pid(*needles: str) -> int | None:
    """A process whose command line holds every needle (not this process)."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if all(n in cmd for n in needles):
            return int(entry)
    return None


# -- contenders ---------------------------------------------------------------------------------


class Native:
    name = "native"

    def __init__(self, setup: Setup, args) -> None:
        self.setup = setup
        self.args = args
        self.pid = None
        self.memory: list[dict] = []
        self.extra: dict = {}

    def prepare(self, first: bool) -> bool:
        return drop_caches(not self.args.no_drop_caches)

    def mount(self) -> Path:
        return self.setup.src

    def after_mount(self) -> None:
        pass

    def unmount(self) -> None:
        pass

    def cleanup(self) -> None:
        pass


class Dsfs(Native):
    def __init__(self, setup: Setup, args, adapter: str) -> None:
        super().__init__(setup, args)
        self.name = adapter
        self.adapter = adapter
        self.mnt = setup.work / f"mnt-{adapter}"
        self.mnt.mkdir(exist_ok=True)
        self.pids: set[int] = set()

    def prepare(self, first: bool) -> bool:
        self.setup.dsfs_run("cache", "clear")
        if first:
            for path in (self.setup.cache / "index").glob(f"{self.setup.version}.sqlite*"):
                path.unlink()
        return super().prepare(first)

    def mount(self) -> Path:
        argv = ["mount", self.setup.version, str(self.mnt), "--adapter", self.adapter]
        if self.args.cache_size:
            argv += ["--cache-size", self.args.cache_size]
        self.setup.dsfs_run(*argv)
        return self.mnt

    def after_mount(self) -> None:
        # The daemon's command line names the mountpoint: cheaper than `dsfs status --json`
        # (one more interpreter start per session), which stays the fallback. `dsfs mount` forks
        # the daemon off itself, so it has the command's line; one started by the Python API
        # runs dsfs.mountd.daemon.
        self.pid = (find_pid(" mount ", f" {self.setup.version} {self.mnt} ")
                    or find_pid("dsfs.mountd.daemon", f"-- {self.setup.version} {self.mnt}"))
        if self.pid is None:
            status = json.loads(self.setup.dsfs_run("status", "--json").stdout or "[]")
            for record in status:
                if record.get("mountpoint") == str(self.mnt):
                    self.pid = int(record["pid"])
        if self.pid:
            self.pids.add(self.pid)

    def unmount(self) -> None:
        if is_mounted(self.mnt):
            proc = self.setup.dsfs_run("umount", str(self.mnt), check=False)
            if proc.returncode != 0:
                log(f"dsfs umount {self.mnt} failed: {proc.stderr.strip()[-300:]}; lazy unmount")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.pid and not wait_pid_gone(self.pid, 30):
            os.kill(self.pid, signal.SIGTERM)
            if not wait_pid_gone(self.pid, 5):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def cleanup(self) -> None:
        if is_mounted(self.mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        for pid in self.pids:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


class Ratarmount(Native):
    name = "ratarmount"

    def __init__(self, setup: Setup, args) -> None:
        super().__init__(setup, args)
        self.mnt = setup.work / "mnt-ratarmount"
        self.mnt.mkdir(exist_ok=True)
        beside = VENV_BIN / "ratarmount"
        self.cmd = args.ratarmount.split() if args.ratarmount else (
            [str(beside)] if beside.exists() else [shutil.which("ratarmount") or "ratarmount"])
        self.index = setup.zip.with_name(setup.zip.name + ".index.sqlite")
        self.pids: set[int] = set()

    def prepare(self, first: bool) -> bool:
        if first:
            self.index.unlink(missing_ok=True)
        return super().prepare(first)

    def mount(self) -> Path:
        proc = subprocess.run(self.cmd + [str(self.setup.zip), str(self.mnt)], capture_output=True, text=True)
        if proc.returncode != 0 or not is_mounted(self.mnt):
            raise bl.CommandFailed(f"ratarmount failed ({proc.returncode}): {proc.stderr[-2000:]}")
        return self.mnt

    def after_mount(self) -> None:
        self.pid = find_pid("ratarmount", str(self.setup.zip), str(self.mnt))
        if self.pid:
            self.pids.add(self.pid)

    def unmount(self) -> None:
        if is_mounted(self.mnt):
            proc = subprocess.run(["fusermount3", "-u", str(self.mnt)], capture_output=True, text=True)
            if proc.returncode != 0:
                log(f"fusermount3 -u {self.mnt} failed: {proc.stderr.strip()}; lazy unmount")
                subprocess.run(["fusermount3", "-u", "-z", str(self.mnt)], capture_output=True)
        if self.pid and not wait_pid_gone(self.pid, 30):
            os.kill(self.pid, signal.SIGTERM)
            if not wait_pid_gone(self.pid, 5):
                os.kill(self.pid, signal.SIGKILL)
        self.pid = None

    def cleanup(self) -> None:
        Dsfs.cleanup(self)


# -- py-spy -------------------------------------------------------------------------------------


class Spy:
    """py-spy record of a daemon during one measurement; summarised as hot frames."""

    def __init__(self, pid: int, out: Path) -> None:
        exe = VENV_BIN / "py-spy"
        self.exe = str(exe) if exe.exists() else (shutil.which("py-spy") or "")
        self.out = out
        self.proc = None
        if self.exe and pid:
            self.proc = subprocess.Popen(
                [self.exe, "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                 "--nonblocking", "--duration", "3600", "--output", str(out)],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.5)

    def stop(self) -> dict | None:
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if not self.out.exists():
            return {"error": (self.proc.stderr.read() or b"").decode(errors="replace")[-500:]}
        leaf, inner, inclusive = collections.Counter(), collections.Counter(), collections.Counter()
        total = 0
        for line in self.out.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            total += n
            frames = [f for f in stack.split(";") if f]
            if not frames:
                continue
            leaf[frames[-1]] += n
            ours = [f for f in frames if "dsfs/" in f]
            if ours:
                inner[ours[-1]] += n
            for f in set(frames):
                if "dsfs/" in f or "mfusepy" in f or "pyfuse3" in f:
                    inclusive[f] += n
        return {"samples": total, "file": str(self.out),
                "leaf": leaf.most_common(12), "innermost_dsfs": inner.most_common(12),
                "inclusive": inclusive.most_common(12)}


# -- measurements -------------------------------------------------------------------------------


def read_whole(path: str) -> int:
    with open(path, "rb", buffering=0) as f:
        return len(f.read())


def stat_walk(root: Path, cap: float, max_files: int | None, walker: str) -> dict:
    start = time.perf_counter()
    n = 0
    capped = False
    if walker == "find":
        # find stats every entry itself (%s needs it); we only count its lines.
        proc = subprocess.Popen(["find", str(root), "-type", "f", "-printf", "%s\n"],
                                stdout=subprocess.PIPE)
        assert proc.stdout is not None
        for _ in proc.stdout:
            n += 1
            if max_files and n >= max_files:
                proc.kill()
                break
            if cap and n % 256 == 0 and time.perf_counter() - start > cap:
                capped = True
                proc.kill()
                break
        proc.wait()
    else:
        lstat, join = os.lstat, os.path.join
        for dirpath, _dirs, names in os.walk(root):
            for name in names:
                lstat(join(dirpath, name))
                n += 1
                if max_files and n >= max_files:
                    break
            if max_files and n >= max_files:
                break
            if cap and time.perf_counter() - start > cap:
                capped = True
                break
    dt = time.perf_counter() - start
    return {"value": n / dt, "count": n, "seconds": dt, "capped": capped}


def read_files(root: Path, rels: list[str], threads: int, cap: float) -> tuple[dict, list[str]]:
    """Read whole files, `threads` at a time, in list order; returns (result, files done)."""
    base = str(root) + "/"
    counter = itertools.count()
    done: list[list[str]] = [[] for _ in range(threads)]
    nbytes = [0] * threads
    errors: list[BaseException] = []
    start = time.perf_counter()
    deadline = start + cap if cap else float("inf")
    clock = time.perf_counter

    def work(slot: int) -> None:
        mine = done[slot]
        total = 0
        try:
            while True:
                i = next(counter)
                if i >= len(rels) or clock() > deadline:
                    break
                rel = rels[i]
                total += read_whole(base + rel)
                mine.append(rel)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        nbytes[slot] = total

    workers = [threading.Thread(target=work, args=(s,)) for s in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    dt = clock() - start
    if errors:
        raise errors[0]
    finished = [r for lst in done for r in lst]
    return ({"value": len(finished) / dt, "count": len(finished), "seconds": dt,
             "mib": sum(nbytes) / MiB, "capped": len(finished) < len(rels)}, finished)


def seq_read(root: Path, rels: list[str], cap: float, limit: int | None = None) -> tuple[dict, int]:
    """1 MiB reads through the files in turn, stopping after `limit` bytes (the warm pass
    re-reads exactly what a capped cold pass got through). Returns (result, bytes read)."""
    buf = bytearray(MiB)
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    capped = False
    for rel in rels:
        with open(root / rel, "rb", buffering=0) as f:
            while limit is None or total < limit:
                n = f.readinto(view if limit is None else view[:min(MiB, limit - total)])
                if not n:
                    break
                total += n
                if cap and time.perf_counter() - start > cap:
                    capped = True
                    break
        if capped or (limit is not None and total >= limit):
            break
    dt = time.perf_counter() - start
    return {"value": total / MiB / dt, "mib": total / MiB, "seconds": dt, "capped": capped}, total


def pread_ops(path: Path, ops: list[tuple[int, int]], cap: float) -> tuple[dict, int]:
    fd = os.open(path, os.O_RDONLY)
    start = time.perf_counter()
    deadline = start + cap if cap else float("inf")
    n = total = 0
    try:
        for off, size in ops:
            total += len(os.pread(fd, size, off))
            n += 1
            if time.perf_counter() > deadline:
                break
    finally:
        os.close(fd)
    dt = time.perf_counter() - start
    return {"value": n / dt, "count": n, "seconds": dt, "mib": total / MiB, "capped": n < len(ops)}, n


_POOL_ROOT = ""


def _pool_init(root: str) -> None:
    global _POOL_ROOT
    _POOL_ROOT = root + "/"
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_batch(batch: list[str]) -> tuple[list[str], int]:
    return batch, sum(read_whole(_POOL_ROOT + rel) for rel in batch)


def pool_epoch(root: Path, rels: list[str], args, cap: float) -> tuple[dict, list[str]]:
    ctx = multiprocessing.get_context("fork")
    b = args.loader_batch
    batches = [rels[i:i + b] for i in range(0, len(rels), b)]
    pool = ctx.Pool(args.loader_workers, initializer=_pool_init, initargs=(str(root),))
    finished: list[str] = []
    nbytes = 0
    capped = done = False
    try:
        start = time.perf_counter()
        for batch, size in pool.imap_unordered(_pool_batch, batches):
            finished += batch
            nbytes += size
            if cap and time.perf_counter() - start > cap:
                capped = len(finished) < len(rels)
                break
        dt = time.perf_counter() - start
        done = not capped
    finally:
        # terminate() can race the pool's worker-repopulating thread and hang in join() on a
        # fresh worker; a finished pool closes cleanly, a capped one is terminated and then
        # any straggler is killed.
        if done:
            pool.close()
        else:
            pool.terminate()
        joiner = threading.Thread(target=pool.join, daemon=True)
        joiner.start()
        joiner.join(30)
        for child in multiprocessing.active_children():
            child.kill()
    return ({"value": len(finished) / dt, "count": len(finished), "seconds": dt, "mib": nbytes / MiB,
             "capped": capped}, finished)


class _FileDataset:
    """Map-style dataset for torch's DataLoader: item i is the whole file (returns its size)."""

    def __init__(self, root: str, rels: list[str]) -> None:
        self.base = root + "/"
        self.rels = rels

    def __len__(self) -> int:
        return len(self.rels)

    def __getitem__(self, i: int) -> tuple[int, int]:
        return i, read_whole(self.base + self.rels[i])


def _collate(items):
    return [i for i, _ in items], sum(n for _, n in items)


def torch_child(argv: list[str]) -> int:
    """Runs in a child process: two DataLoader epochs, JSON on stdout."""
    root, listfile, workers, batch, seed, cap = argv
    workers, batch, seed, cap = int(workers), int(batch), int(seed), float(cap)
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    rels = Path(listfile).read_text().split("\n")
    rels = [r for r in rels if r]
    results = []
    for epoch in range(2):
        ds = _FileDataset(root, rels)
        gen = torch.Generator()
        gen.manual_seed(seed + epoch)
        loader = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                            collate_fn=_collate, generator=gen, multiprocessing_context="fork")
        start = time.perf_counter()
        done: list[int] = []
        nbytes = 0
        capped = False
        it = iter(loader)
        for idx, size in it:
            done += idx
            nbytes += size
            if cap and time.perf_counter() - start > cap:
                capped = len(done) < len(rels)
                break
        dt = time.perf_counter() - start
        del it
        results.append({"value": len(done) / dt, "count": len(done), "seconds": dt,
                        "mib": nbytes / MiB, "capped": capped})
        if capped:  # the warm epoch repeats exactly what the cold one read
            rels = [rels[i] for i in done]
    json.dump(results, sys.stdout)
    return 0


def torch_available() -> bool:
    proc = subprocess.run([sys.executable, "-c", "import torch"], capture_output=True)
    return proc.returncode == 0


# -- the run ------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args, setup: Setup) -> None:
        self.args = args
        self.setup = setup
        self.results: dict[str, dict[str, dict]] = {}
        self.spy: dict[str, dict] = {}
        self.dropped: bool | None = None
        rng = random.Random(args.seed)
        small = [small_rel(i, args) for i in range(args.files)]
        self.read_list = small[:]
        rng.shuffle(self.read_list)
        if args.read_files:
            self.read_list = self.read_list[:args.read_files]
        self.loader_list = rng.sample(small, min(args.loader_files, len(small)))
        self.large = [large_rel(i) for i in range(args.large_files)]
        size = args.large_mib * MiB
        lo, hi = args.pread_min_kib * KiB, args.pread_max_kib * KiB
        self.preads = []
        for _ in range(args.pread_ops):
            n = rng.randint(lo, hi)
            self.preads.append((rng.randrange(0, max(1, size - n)), n))
        self.probe = small_rel(args.files // 2, args)
        self.torch = (not args.no_torch) and "torch" in args.sessions and torch_available()

    def record(self, contender, key: str, result: dict) -> None:
        result["load1"] = os.getloadavg()[0]
        self.results.setdefault(contender.name, {})[key] = result
        label, unit, _ = ROW_INFO[key]
        log(f"  {LABELS[contender.name]:10s} {label:34s} {result['value']:12.1f} {unit}"
            f"{' (capped)' if result.get('capped') else ''}")

    def measure(self, c, key: str, fn):
        """Run one measured pass: py-spy if asked, the daemon's CPU seconds; record it."""
        spy = None
        if c.name in ("direct", "lowlevel") and c.pid and (key in self.args.py_spy or "all" in self.args.py_spy):
            out = Path(self.args.out_dir) if self.args.out_dir else bl.OUT_DIR
            out.mkdir(parents=True, exist_ok=True)
            spy = Spy(c.pid, out / f"bench_mount.pyspy.{c.name}.{key}.txt")
        cpu0 = proc_cpu(c.pid)
        try:
            got = fn()
        finally:
            if spy is not None:
                summary = spy.stop()
                if summary:
                    self.spy[f"{c.name}:{key}"] = summary
        result, extra = got if isinstance(got, tuple) else (got, None)
        if c.name == "direct" and c.pid:
            with contextlib.suppress(OSError, ValueError):
                stats = json.loads(os.getxattr(c.mnt, "user.dsfs.stats"))
                result["daemon_requests"] = stats["requests"]
                result["prefetch"] = stats.get("prefetch")
        if cpu0 is not None:
            cpu1 = proc_cpu(c.pid)
            if cpu1 is not None:
                result["daemon_cpu_s"] = cpu1 - cpu0
        self.record(c, key, result)
        return extra

    @contextlib.contextmanager
    def session(self, contender, first: bool = False):
        """A fresh cold mount: cache cleared, page cache dropped. Yields (root, start, mount s)."""
        dropped = contender.prepare(first)
        self.dropped = dropped if self.dropped is None else (self.dropped and dropped)
        start = time.perf_counter()
        try:
            root = contender.mount()
            elapsed = time.perf_counter() - start
            contender.after_mount()
            yield root, start, elapsed
        finally:
            if contender.pid:
                mem = proc_memory(contender.pid)
                if mem:
                    contender.memory.append(mem)
            contender.unmount()

    def first_byte(self, contender, root: Path, start: float, mount_s: float, key: str) -> None:
        with open(root / self.probe, "rb", buffering=0) as f:
            assert len(f.read(1)) == 1
        total = time.perf_counter() - start
        self.record(contender, key, {"value": total, "seconds": total, "mount_cmd_s": mount_s})

    def run(self, contenders: list) -> None:
        """Sessions outermost, contenders inside: every row's contenders run minutes apart at
        most, so a change in the machine's load skews a row's ratios less."""
        for session in self.args.sessions:
            if session == "torch" and not self.torch:
                continue
            variants = self.args.threads if session == "read" else [None]
            for variant in variants:
                log(f"== {session}{variant or ''}")
                for c in contenders:
                    getattr(self, f"session_{session}")(c, *([variant] if variant else []))
        for c in contenders:
            if c.memory:
                self.record(c, "rss_hwm", {"value": max(m.get("VmHWM", 0) for m in c.memory),
                                           "sessions": c.memory})
                self.record(c, "rss_end", {"value": max(m.get("VmRSS", 0) for m in c.memory)})

    def session_first(self, c) -> None:
        with self.session(c, first=True) as (root, start, mount_s):
            self.first_byte(c, root, start, mount_s, "first_mount")

    def session_stat(self, c) -> None:
        cap, walker = self.args.time_cap, self.args.walker
        with self.session(c) as (root, start, mount_s):
            self.first_byte(c, root, start, mount_s, "mount")
            counted: list[int] = []

            def cold():
                r = stat_walk(root, cap, None, walker)
                counted.append(r["count"])
                return r
            self.measure(c, "stat_cold", cold)
            self.measure(c, "stat_warm", lambda: stat_walk(root, cap, counted[0], walker))

    def session_read(self, c, threads: int) -> None:
        key = f"read{threads}"
        for phase in ("cold", "warm"):
            if f"{key}_{phase}" not in ROW_INFO:
                ROWS.insert(next(i for i, r in enumerate(ROWS) if r[0] == "seq_cold"),
                            (f"{key}_{phase}", f"random small reads {threads} thr, {phase}", "files/s", True))
                ROW_INFO[f"{key}_{phase}"] = (f"random small reads {threads} thr, {phase}", "files/s", True)
        with self.session(c) as (root, _, _):
            done = self.measure(c, f"{key}_cold", lambda: read_files(root, self.read_list, threads, self.args.time_cap))
            again = done[:]
            random.Random(self.args.seed + 1).shuffle(again)
            self.measure(c, f"{key}_warm", lambda: read_files(root, again, threads, self.args.time_cap))

    def session_folder(self, c) -> None:
        """Cold small reads in folder order (the order an extracted tree is walked in), 8 threads."""
        in_order = sorted(self.read_list)
        with self.session(c) as (root, _, _):
            self.measure(c, "folder8_cold", lambda: read_files(root, in_order, 8, self.args.time_cap))

    def session_seq(self, c) -> None:
        with self.session(c) as (root, _, _):
            n = self.measure(c, "seq_cold", lambda: seq_read(root, self.large, self.args.time_cap))
            self.measure(c, "seq_warm", lambda: seq_read(root, self.large, self.args.time_cap, n))

    def session_ttfb(self, c) -> None:
        """Open + read of the first 4 KiB of a large file, each in a fresh cold session: one
        sample swung from 2.1 to 3.4 ms between runs, so the row is the median of several."""
        if not self.large:
            return
        samples = []
        for n in range(self.args.ttfb_runs):
            with self.session(c) as (root, _, _):
                start = time.perf_counter()
                with open(root / self.large[n % len(self.large)], "rb", buffering=0) as f:
                    assert len(f.read(4096)) == 4096
                samples.append((time.perf_counter() - start) * 1000)
        ms = statistics.median(samples)
        self.record(c, "ttfb", {"value": ms, "ms": ms, "samples_ms": [round(x, 3) for x in samples]})

    def session_pread(self, c) -> None:
        if not self.large:
            return
        with self.session(c) as (root, _, _):
            path = root / self.large[0]
            n = self.measure(c, "pread_cold", lambda: pread_ops(path, self.preads, self.args.time_cap))
            self.measure(c, "pread_warm", lambda: pread_ops(path, self.preads[:n], self.args.time_cap))

    def session_pool(self, c) -> None:
        with self.session(c) as (root, _, _):
            done = self.measure(c, "pool_e1", lambda: pool_epoch(root, self.loader_list, self.args, self.args.time_cap))
            again = done[:]
            random.Random(self.args.seed + 2).shuffle(again)
            self.measure(c, "pool_e2", lambda: pool_epoch(root, again, self.args, self.args.time_cap))

    def session_hint(self, c) -> None:
        """Epoch 1 of the Pool(4) loader, cold, the mount told the epoch's order first (`dsfs
        prefetch MNT --order`; the direct adapter's daemon takes hints). Native and ratarmount
        read the same epoch unhinted: they have nothing to tell."""
        if c.name == "lowlevel":
            return
        order = self.setup.work / "hint-order.txt"
        order.write_text("".join(r + "\n" for r in self.loader_list))
        with self.session(c) as (root, _, _):
            if c.name == "direct":
                self.setup.dsfs_run("prefetch", str(root), "--order", str(order))
            self.measure(c, "pool_hint_e1", lambda: pool_epoch(root, self.loader_list, self.args, self.args.time_cap))

    def session_torch(self, c) -> None:
        a = self.args
        listfile = self.setup.work / "torch-files.txt"
        listfile.write_text("\n".join(self.loader_list) + "\n")
        with self.session(c) as (root, _, _):
            spy_keys = {"torch_e1", "torch_e2"} & a.py_spy
            spy = None
            if c.name in ("direct", "lowlevel") and c.pid and (spy_keys or "all" in a.py_spy):
                out = Path(a.out_dir) if a.out_dir else bl.OUT_DIR
                spy = Spy(c.pid, out / f"bench_mount.pyspy.{c.name}.torch.txt")
            cpu0 = proc_cpu(c.pid)
            proc = subprocess.run(
                [sys.executable, __file__, "--torch-child", str(root), str(listfile),
                 str(a.loader_workers), str(a.loader_batch), str(a.seed), str(a.time_cap)],
                capture_output=True, text=True)
            cpu1 = proc_cpu(c.pid)
            if spy is not None:
                summary = spy.stop()
                if summary:
                    self.spy[f"{c.name}:torch"] = summary
            if proc.returncode != 0:
                log(f"torch DataLoader failed: {proc.stderr[-1500:]}")
                return
            e1, e2 = json.loads(proc.stdout)
            if cpu0 is not None and cpu1 is not None:
                e1["daemon_cpu_s_both_epochs"] = cpu1 - cpu0
            self.record(c, "torch_e1", e1)
            self.record(c, "torch_e2", e2)


# -- report -------------------------------------------------------------------------------------


def ratio(results: dict, key: str, num: str, den: str) -> float | None:
    """How many times better `num` is than `den` on this row (>1: num is better)."""
    a = results.get(num, {}).get(key, {}).get("value")
    b = results.get(den, {}).get(key, {}).get("value")
    if not a or not b:
        return None
    higher = ROW_INFO[key][2]
    return a / b if higher else b / a


def report(bench: Bench, contenders: list[str]) -> dict:
    res = bench.results
    others = [c for c in contenders if c != "native"]
    fuse = [c for c in others if c in ("direct", "lowlevel")]
    cols = ["row", "unit"] + [LABELS[c] for c in contenders]
    cols += [f"{LABELS[c]}/nat" for c in others]
    if "ratarmount" in contenders:
        cols += [f"{LABELS[c]}/rat" for c in fuse]
    rows = []
    ratios: dict[str, dict] = {}
    for key, label, unit, higher in ROWS:
        if not any(key in res.get(c, {}) for c in contenders):
            continue
        row = [label, unit]
        for c in contenders:
            r = res.get(c, {}).get(key)
            if r is None:
                row.append("-")
            else:
                v = r["value"]
                text = f"{v:.3f}" if unit == "s" else (f"{v:.0f}" if v >= 100 else f"{v:.1f}")
                row.append(text + ("*" if r.get("capped") else ""))
        for c in others:
            q = ratio(res, key, c, "native")
            ratios.setdefault(key, {})[f"{c}/native"] = q
            row.append("-" if q is None else f"{q:.2f}")
        if "ratarmount" in contenders:
            for c in fuse:
                q = ratio(res, key, c, "ratarmount")
                ratios.setdefault(key, {})[f"{c}/ratarmount"] = q
                row.append("-" if q is None else f"{q:.2f}")
        rows.append(row)
    print()
    bl.print_table(cols, rows)
    print("ratios: how many times better than native (or ratarmount) -- higher is better on every "
          "row; for seconds and MiB rows it is other/contender, for rates contender/other. "
          "'*' = pass hit the time cap (rate over the part it finished).")
    if not bench.dropped:
        print("NOTE: could not drop the page cache: native 'cold' rows are really warm.")
    damon = damon_reclaim()
    if damon:
        print(f"NOTE: DAMON proactive reclaim is on ({damon}): page cache idle for about "
              f"{damon.get('min_idle_s', '?')} s may be paged out, so warm passes can miss "
              "pages (a FUSE mount then pays a daemon round trip per page, a native folder a disk read).")

    # How busy each daemon was during each pass: CPU seconds over wall seconds (2 CPUs: <= 2.0).
    daemons = [c for c in others if any("daemon_cpu_s" in r for r in res.get(c, {}).values())]
    if daemons:
        cpu_rows = []
        for key, label, unit, _ in ROWS:
            cells = []
            for c in daemons:
                r = res.get(c, {}).get(key, {})
                cpu, secs = r.get("daemon_cpu_s"), r.get("seconds")
                cells.append("-" if cpu is None or not secs else f"{cpu:.2f} / {secs:.1f} = {cpu / secs:.2f}")
            if any(x != "-" for x in cells):
                cpu_rows.append([label] + cells)
        print("\nDaemon CPU seconds / pass wall seconds (how much of the pass the daemon was on a CPU):")
        bl.print_table(["row"] + [LABELS[c] for c in daemons], cpu_rows)

    # targets
    targets = []
    print("\nTargets (ratio to native):")
    for c in fuse:
        for key, want in TARGETS:
            q = ratios.get(key, {}).get(f"{c}/native")
            met = q is not None and q >= want
            targets.append({"contender": c, "row": key, "want": want, "ratio": q, "met": met})
            print(f"  {LABELS[c]:8s} {ROW_INFO[key][0]:34s} >= {want:.1f}: "
                  f"{'-' if q is None else f'{q:.2f}'}  {'MET' if met else 'NOT MET'}")
    if "ratarmount" in contenders:
        for c in fuse:
            behind = [k for k in ratios if (ratios[k].get(f"{c}/ratarmount") or 1e9) < 1.0]
            compared = [k for k in ratios if ratios[k].get(f"{c}/ratarmount") is not None]
            met = not behind and bool(compared)
            targets.append({"contender": c, "row": "ahead of ratarmount", "rows_compared": len(compared),
                            "behind_on": behind, "met": met})
            print(f"  {LABELS[c]:8s} ahead of ratarmount on every row: {'MET' if met else 'NOT MET'} "
                  f"({len(compared) - len(behind)}/{len(compared)} rows"
                  f"{'; behind on ' + ', '.join(behind) if behind else ''})")
    return {"ratios": ratios, "targets": targets}


def print_spy(spy: dict) -> None:
    for name, summary in spy.items():
        print(f"\n== py-spy of the dsfs daemon during {name}: {summary.get('samples', 0)} samples "
              f"(raw stacks: {summary.get('file')})")
        if "error" in summary:
            print("  " + summary["error"])
            continue
        total = max(1, summary["samples"])
        print("  innermost dsfs frame of each sample:")
        for frame, n in summary["innermost_dsfs"][:10]:
            print(f"    {100 * n / total:5.1f}%  {frame}")
        print("  leaf frames:")
        for frame, n in summary["leaf"][:10]:
            print(f"    {100 * n / total:5.1f}%  {frame}")


# -- main ---------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.torch_child:
        return torch_child(args.torch_child)
    for tool in ("zip", "fusermount3"):
        if shutil.which(tool) is None:
            raise SystemExit(f"{tool} is not installed")
    if "ratarmount" in args.contenders and not (args.ratarmount or (VENV_BIN / "ratarmount").exists()
                                                 or shutil.which("ratarmount")):
        raise SystemExit("ratarmount is not installed: .venv/bin/pip install ratarmount")
    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    bl.compile_dsfs()
    work = bl.make_workdir(args.workdir, "dsfs-bench-mount-")
    load_start = os.getloadavg()
    log(f"work dir {work}; {bl.load_note()}")
    setup = Setup(args, work)
    contenders: list = []
    doc: dict = {}
    wall = time.perf_counter()
    try:
        setup.prepare()
        bench = Bench(args, setup)
        for name in args.contenders:
            if name == "native":
                contenders.append(Native(setup, args))
            elif name == "ratarmount":
                contenders.append(Ratarmount(setup, args))
            else:
                contenders.append(Dsfs(setup, args, name))
        bench.run(contenders)
        names = [c.name for c in contenders]
        small_mib = sum((setup.src / r).stat().st_size for r in bench.read_list) / MiB
        print(f"\n{args.files} small files ({args.min_kib}-{args.max_kib} KiB, {args.per_dir}/folder, "
              f"{small_mib:.0f} MiB read per full pass) + {args.large_files} x {args.large_mib} MiB; "
              f"time cap {args.time_cap:g} s per pass; page cache dropped for cold: {bench.dropped}; "
              f"walker {args.walker}; torch: {bench.torch}")
        summary = report(bench, names)
        print_spy(bench.spy)
        load_end = os.getloadavg()
        print(f"\nload average at start {load_start[0]:.1f}/{load_start[1]:.1f}, at end "
              f"{load_end[0]:.1f}/{load_end[1]:.1f} (1/5 min) on {os.cpu_count()} CPUs; "
              f"run took {time.perf_counter() - wall:.0f} s")
        doc = {"benchmark": "bench_mount", "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
               "machine": bl.machine_info(), "load_start": load_start, "load_end": load_end,
               "params": {k: (sorted(v) if isinstance(v, set) else v) for k, v in vars(args).items()},
               "setup": {"version": setup.version, "timings": setup.timings, **setup.sizes()},
               "page_cache_dropped": bench.dropped, "torch": bench.torch, "damon_reclaim": damon_reclaim(),
               "rows": [{"key": k, "label": l, "unit": u, "higher_is_better": h} for k, l, u, h in ROWS],
               "results": bench.results, **summary, "py_spy": bench.spy,
               "run_s": time.perf_counter() - wall}
    finally:
        for c in contenders:
            try:
                c.unmount()
            except Exception as exc:  # noqa: BLE001
                log(f"unmount {c.name}: {exc}")
            c.cleanup()
        left = fuse_mounts_under(work)
        for point in left:
            subprocess.run(["fusermount3", "-u", "-z", point], capture_output=True)
        left_after = fuse_mounts_under(work)
        log(f"FUSE mounts left under {work}: {left_after or 'none'}")
        if doc:
            doc["mounts_left"] = left_after
            path = bl.write_json("bench_mount", doc, args.out_dir)
            log(f"wrote {path}")
        # A work dir given with --workdir is the caller's: it stays (for --reuse).
        if not args.keep and not args.workdir and not left_after:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
