"""Warm (second-epoch) ratios of a published dsfs mount against the native folder, in one run.

The rows the read-only mount issue sets targets for: 8-thread small-file reads, stat walk and
sequential reads, each repeated until warm (page cache, kernel attribute and listing caches),
best of three. Small and quick on purpose; bench_mount.py is the full comparison with cold
rows and ratarmount.

    .venv/bin/python bench/bench_warm.py [--files 10000] [--big-mib 300] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DSFS = str(Path(sys.executable).parent / "dsfs")


def run(*args: str, env: dict) -> str:
    return subprocess.run([DSFS, *args], env=env, check=True, capture_output=True, text=True).stdout.strip()


def read_all(paths: list[str], threads: int) -> float:
    def one(p: str) -> int:
        with open(p, "rb") as f:
            return len(f.read())

    start = time.perf_counter()
    if threads == 1:
        for p in paths:
            one(p)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - start)


def stat_walk(root: str) -> float:
    start, n = time.perf_counter(), 0
    for folder, _, files in os.walk(root):
        for name in files:
            os.stat(os.path.join(folder, name))
            n += 1
    return n / (time.perf_counter() - start)


def sequential(path: str) -> float:
    start, n = time.perf_counter(), 0
    with open(path, "rb", buffering=0) as f:
        while block := f.read(1 << 20):
            n += len(block)
    return n / (time.perf_counter() - start) / (1 << 20)


def best(fn, *args, repeat: int = 3) -> float:
    fn(*args)  # warm up
    return max(fn(*args) for _ in range(repeat))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--big-mib", type=int, default=300)
    parser.add_argument("--workdir")
    parser.add_argument("--adapter", default="direct", choices=["direct", "lowlevel"])
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dsfs-bench-warm-"))
    env = {**os.environ, "DSFS_STORE": str(work / "store"), "DSFS_CACHE_DIR": str(work / "cache")}
    src = work / "src"
    rng = random.Random(1)
    for i in range(args.files):
        path = src / f"d{i // 500:04d}" / f"f{i:06d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(4 << 10, 64 << 10)))
    with open(src / "big.bin", "wb") as f:
        for _ in range(args.big_mib):
            f.write(os.urandom(1 << 20))
    vid = run("create", "warm", env=env)
    run("-q", "add", vid, str(src), env=env)
    run("publish", vid, env=env)
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    run("mount", "--adapter", args.adapter, vid, str(mnt), env=env)
    rows = {}
    try:
        for label, root in (("native", src), ("dsfs", mnt)):
            small = sorted(str(p) for p in Path(root).rglob("f*.bin"))
            random.Random(2).shuffle(small)
            rows[label] = {
                "small reads, 8 threads (files/s)": best(read_all, small, 8),
                "small reads, 1 thread (files/s)": best(read_all, small, 1),
                "stat walk (files/s)": best(stat_walk, str(root)),
                "sequential 1 MiB reads (MiB/s)": best(sequential, str(Path(root) / "big.bin")),
            }
    finally:
        run("umount", str(mnt), env=env)
    targets = {"small reads, 8 threads (files/s)": 0.5, "stat walk (files/s)": 0.5,
               "sequential 1 MiB reads (MiB/s)": 0.9}
    print(f"load average {os.getloadavg()[0]:.1f}; adapter {args.adapter}; {args.files} files")
    print(f"{'row':<36}{'native':>12}{'dsfs':>12}{'ratio':>8}  target")
    result = {}
    for row in rows["native"]:
        ratio = rows["dsfs"][row] / rows["native"][row]
        target = targets.get(row)
        verdict = "" if target is None else f">= {target}: {'met' if ratio >= target else 'not met'}"
        print(f"{row:<36}{rows['native'][row]:>12.0f}{rows['dsfs'][row]:>12.0f}{ratio:>8.2f}  {verdict}")
        result[row] = {"native": rows["native"][row], "dsfs": rows["dsfs"][row], "ratio": ratio}
    out = Path(__file__).parent / "out"
    out.mkdir(exist_ok=True)
    (out / "bench_warm.json").write_text(json.dumps({"adapter": args.adapter, "files": args.files,
                                                     "loadavg": os.getloadavg(), "rows": result}, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
