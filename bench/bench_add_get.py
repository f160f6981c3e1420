#!/usr/bin/env python3
"""Benchmark `dsfs add` / `dsfs get` of many small incompressible files against zip / unzip.

Generates N files (random sizes, random bytes) in nested folders, then times, each in its own
child process, right after the source files have been read once (to warm the page cache):

  zip -r -0 -q          the baseline for adding (store-only zip of the same folder)
  dsfs add  (auto)      default settings (compression: auto) into a fresh root draft
  dsfs add  (store)     a config file with `compression: store` (and others given by --variants)
  dsfs show             the first read of the published version (builds its index)
  dsfs get              extracting the published version (index already built)
  unzip -q              the baseline for getting

Run:  .venv/bin/python bench/bench_add_get.py [--files 100000] [--workdir DIR] [--keep]
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

KiB = 1 << 10
MiB = 1 << 20


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=100_000, help="number of files (default 100000)")
    p.add_argument("--min-kib", type=int, default=4, help="smallest file size in KiB (default 4)")
    p.add_argument("--max-kib", type=int, default=64, help="largest file size in KiB (default 64)")
    p.add_argument("--per-dir", type=int, default=100, help="files per leaf folder (default 100)")
    p.add_argument("--dirs-per-group", type=int, default=100,
                   help="leaf folders per top-level folder (default 100)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--variants", default="auto,store",
                   help="dsfs compression settings to time `add` with, comma-separated from "
                        "auto,store,deflate; the first is the one used for get (default auto,store)")
    p.add_argument("--repeat", type=int, default=1,
                   help="run each measured command this many times, report the median (default 1)")
    p.add_argument("--workdir", help="where to put files, stores and copies (default: a new /tmp dir)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse generated files in --workdir if they match the size parameters")
    p.add_argument("--keep", action="store_true", help="keep the work dir (default: delete it)")
    p.add_argument("--no-verify", action="store_true", help="skip comparing extracted files with the source")
    p.add_argument("--profile", action="store_true",
                   help="also run `dsfs add` and `dsfs get` once under cProfile (main thread only) "
                        "and print their top functions")
    p.add_argument("--breakdown", type=int, default=5000, metavar="N",
                   help="also time, in this process and on one thread, the per-byte steps of "
                        "`dsfs add` over the first N files: plain read, read+sha256, dsfs's "
                        "hash_file (sha256 + compressibility probe), the zlib probe alone, and "
                        "zip's crc32 (0 to skip; default 5000)")
    p.add_argument("--dsfs", help="dsfs command to run (default: the dsfs next to this python)")
    p.add_argument("--out-dir", help="where to write the JSON results (default bench/out)")
    return p.parse_args()


# -- data ---------------------------------------------------------------------------------------


def rel_path(i: int, per_dir: int, dirs_per_group: int) -> str:
    leaf = i // per_dir
    return f"g{leaf // dirs_per_group:03d}/d{leaf:05d}/f{i:07d}.bin"


def generate(src: Path, args) -> tuple[int, int]:
    rng = random.Random(args.seed)
    total = 0
    made_dirs: set[str] = set()
    for i in range(args.files):
        rel = rel_path(i, args.per_dir, args.dirs_per_group)
        folder = rel.rpartition("/")[0]
        if folder not in made_dirs:
            (src / folder).mkdir(parents=True, exist_ok=True)
            made_dirs.add(folder)
        size = rng.randint(args.min_kib * KiB, args.max_kib * KiB)
        with open(src / rel, "wb") as f:
            f.write(os.urandom(size))
        total += size
    return args.files, total


def prepare_source(work: Path, args) -> tuple[Path, int, int]:
    src = work / "src"
    marker = work / "src.params"
    params = f"{args.files} {args.min_kib} {args.max_kib} {args.per_dir} {args.dirs_per_group} {args.seed}"
    if args.reuse and src.is_dir() and marker.exists() and marker.read_text() == params:
        files, total = bl.tree_size(src)
        print(f"reusing {files} files ({total / MiB:.0f} MiB) in {src}")
        return src, files, total
    bl.remove_tree(src)
    t0 = time.perf_counter()
    files, total = generate(src, args)
    marker.write_text(params)
    print(f"generated {files} files, {total / MiB:.0f} MiB in {src} ({time.perf_counter() - t0:.1f}s)")
    return src, files, total


def verify_copy(src: Path, dest: Path, files: int, args, label: str, sample: int = 500) -> None:
    got, _ = bl.tree_size(dest)
    if got != files:
        raise SystemExit(f"{label}: expected {files} files in {dest}, found {got}")
    rng = random.Random(args.seed + 1)
    for i in rng.sample(range(files), min(sample, files)):
        rel = rel_path(i, args.per_dir, args.dirs_per_group)
        if hashlib.sha256((src / rel).read_bytes()).digest() != hashlib.sha256((dest / rel).read_bytes()).digest():
            raise SystemExit(f"{label}: {rel} differs from the source")


# -- measuring ----------------------------------------------------------------------------------


def write_config(path: Path, compression: str) -> Path:
    path.write_text(f"compression: {compression}\n")
    return path


class Runner:
    def __init__(self, args, work: Path) -> None:
        self.args, self.work = args, work
        self.dsfs = bl.dsfs_command(args.dsfs)

    def dsfs_env(self, name: str, compression: str) -> dict:
        base = self.work / name
        base.mkdir(parents=True, exist_ok=True)
        config = write_config(base / "config.yaml", compression)
        return bl.isolated_env(base / "store", base / "cache", config)

    def dsfs_run(self, env: dict, *argv: str) -> dict:
        return bl.run_measured(self.dsfs + ["-q", *argv], env=env)


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time, plus every run's wall time."""
    ordered = sorted(runs, key=lambda r: r["wall_s"])
    chosen = dict(ordered[(len(ordered) - 1) // 2])
    chosen["all_wall_s"] = [r["wall_s"] for r in runs]
    chosen.pop("stdout", None)
    chosen.pop("stderr", None)
    return chosen


def measure_add(runner: Runner, src: Path, variant: str, rep: int) -> tuple[dict, dict]:
    """A fresh store; create a root draft (not timed), then time `dsfs add`. Returns (run, env)."""
    env = runner.dsfs_env(f"dsfs-{variant}-{rep}", variant)
    vid = runner.dsfs_run(env, "create", "bench", "--root", "--name", "v1")["stdout"].strip()
    bl.warm_files(src)
    run = runner.dsfs_run(env, "add", vid, str(src), "--json")
    run["version"] = vid
    return run, env


def measure_zip(work: Path, src: Path, rep: int) -> dict:
    archive = work / f"data-{rep}.zip"
    bl.remove_tree(archive)  # zip -r would update an existing archive in place
    bl.warm_files(src)
    run = bl.run_measured(["zip", "-r", "-0", "-q", str(archive), src.name], cwd=src.parent)
    run["archive"] = str(archive)
    return run


def profile_commands(runner: Runner, src: Path, out_dir: Path) -> dict:
    """cProfile `dsfs add` and `dsfs get` once (main thread only: hashing and extraction run
    in worker threads, which show up as waits)."""
    import pstats
    import io

    env = runner.dsfs_env("dsfs-profile", runner.args.variants.split(",")[0])
    vid = runner.dsfs_run(env, "create", "bench", "--root", "--name", "v1")["stdout"].strip()
    report = {}
    for label, argv in (("add", ["add", vid, str(src)]), ("get", ["get", vid, str(runner.work / "get-profile")])):
        if label == "get":
            runner.dsfs_run(env, "publish", vid)
            runner.dsfs_run(env, "show", vid)
        prof = out_dir / f"bench_add_get.{label}.prof"
        bl.warm_files(src)
        run = bl.run_measured([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "dsfs", "-q", *argv],
                              env=env)
        buf = io.StringIO()
        pstats.Stats(str(prof), stream=buf).sort_stats("tottime").print_stats(15)
        print(f"\n== cProfile of dsfs {label} (wall {run['wall_s']:.1f}s under the profiler), by tottime ==")
        text = buf.getvalue()
        print(text[text.find("ncalls") - 3:] if "ncalls" in text else text)
        report[label] = {"profile": str(prof), "wall_s_profiled": run["wall_s"]}
    bl.remove_tree(runner.work / "get-profile")
    bl.remove_tree(runner.work / "dsfs-profile")
    return report


def breakdown(src: Path, args, n: int) -> dict:
    """Single-thread MiB/s of the CPU steps `dsfs add` does per file, on the first n files."""
    import zlib

    from dsfs.changeset.packer import _PROBE_BYTES, hash_file, looks_compressible

    paths = [src / rel_path(i, args.per_dir, args.dirs_per_group) for i in range(min(n, args.files))]
    size = sum(p.stat().st_size for p in paths)
    for p in paths:  # warm
        p.read_bytes()

    def read(p):
        return p.read_bytes()

    def sha(p):
        return hashlib.sha256(p.read_bytes()).hexdigest()

    def probe(p):
        with open(p, "rb") as f:
            return looks_compressible(f.read(_PROBE_BYTES))

    def crc(p):
        return zlib.crc32(p.read_bytes())

    steps = {"read": read, "read + sha256": sha, "read + crc32 (zip)": crc,
             "read + compressibility probe (zlib level 1, first 2 / 16 KiB)": probe,
             "dsfs hash_file (sha256 + probe)": lambda p: hash_file(str(p))}
    out = {}
    drops_before = bl.pagecache_drops()
    for label, func in steps.items():
        best = best_wall = None
        for _ in range(2):  # best of two; CPU time, since other work on the machine inflates wall time
            t0, c0 = time.perf_counter(), time.process_time()
            for p in paths:
                func(p)
            cpu, wall = time.process_time() - c0, time.perf_counter() - t0
            best = cpu if best is None else min(best, cpu)
            best_wall = wall if best_wall is None else min(best_wall, wall)
        best = max(best, 1e-6)
        out[label] = {"cpu_s": best, "wall_s": best_wall, "mib_per_cpu_s": size / MiB / best,
                      "files_per_cpu_s": len(paths) / best}
    if drops_before is not None and bl.pagecache_drops() != drops_before:
        out["cache_drops"] = bl.pagecache_drops() - drops_before
    print(f"\nper-step CPU cost, one thread, first {len(paths)} files ({size / MiB:.0f} MiB, read once "
          "just before, best of 2)")
    bl.print_table(["step", "CPU s", "MiB per CPU s", "files per CPU s", "wall s"],
                   [[k, v["cpu_s"], v["mib_per_cpu_s"], v["files_per_cpu_s"], v["wall_s"]]
                    for k, v in out.items() if k != "cache_drops"])
    if out.get("cache_drops"):
        print(f"note: the page cache was dropped {out['cache_drops']} times meanwhile; 'read' includes disk reads")
    return out


def main() -> int:
    args = parse_args()
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in ("auto", "store", "deflate") for v in variants):
        raise SystemExit("--variants takes auto, store and/or deflate")
    for tool in ("zip", "unzip"):
        if subprocess.run(["which", tool], capture_output=True).returncode != 0:
            raise SystemExit(f"{tool} is not installed")
    bl.compile_dsfs()
    work = bl.make_workdir(args.workdir, "dsfs-bench-add-")
    out_dir = Path(args.out_dir) if args.out_dir else bl.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}")
    runner = Runner(args, work)
    try:
        src, files, total = prepare_source(work, args)
        results: dict[str, dict] = {}

        # add: zip baseline and each dsfs variant, alternating per repetition.
        zip_runs, add_runs = [], {v: [] for v in variants}
        get_env = get_version = None
        for rep in range(args.repeat):
            zip_runs.append(measure_zip(work, src, rep))
            for variant in variants:
                run, env = measure_add(runner, src, variant, rep)
                add_runs[variant].append(run)
                if variant == variants[0] and rep == 0:
                    get_env, get_version = env, run["version"]  # kept for get
                else:
                    bl.remove_tree(work / f"dsfs-{variant}-{rep}")
        results["zip -r -0"] = median_run(zip_runs)
        for variant in variants:
            results[f"dsfs add ({variant})"] = median_run(add_runs[variant])
        archive = Path(zip_runs[0]["archive"])
        for run in zip_runs[1:]:
            bl.remove_tree(Path(run["archive"]))

        # get: publish, build the published index once (timed as `dsfs show`), then extract.
        runner.dsfs_run(get_env, "publish", get_version)
        results["dsfs show (index build)"] = median_run([runner.dsfs_run(get_env, "show", get_version)])
        get_runs, unzip_runs = [], []
        for rep in range(args.repeat):
            dest = work / f"get-dsfs-{rep}"
            bl.remove_tree(dest)
            get_runs.append(runner.dsfs_run(get_env, "get", get_version, str(dest)))
            if not args.no_verify and rep == 0:
                verify_copy(src, dest, files, args, "dsfs get")
            bl.remove_tree(dest)
            dest = work / f"get-unzip-{rep}"
            bl.remove_tree(dest)
            unzip_runs.append(bl.run_measured(["unzip", "-q", str(archive), "-d", str(dest)]))
            if not args.no_verify and rep == 0:
                verify_copy(src, dest / "src", files, args, "unzip")
            bl.remove_tree(dest)
        results["dsfs get"] = median_run(get_runs)
        results["unzip -q"] = median_run(unzip_runs)

        store_bytes = sum(p.stat().st_size for p in (work / f"dsfs-{variants[0]}-0" / "store").rglob("*")
                          if p.is_file())
        zip_bytes = archive.stat().st_size

        # ratios measured in this run
        baseline = {f"dsfs add ({v})": "zip -r -0" for v in variants}
        baseline.update({"dsfs get": "unzip -q"})
        rows = []
        for label, run in results.items():
            base = baseline.get(label)
            ratio = run["wall_s"] / results[base]["wall_s"] if base else None
            run["ratio_vs"] = base
            run["ratio"] = ratio
            rows.append([label, run["wall_s"], files / run["wall_s"], total / MiB / run["wall_s"],
                         run["user_s"], run["sys_s"], run["max_rss_mib"], run.get("cache_drops"),
                         f"{ratio:.2f}x {base}" if ratio else ""])
        variant_ratios = {}
        for v in variants[1:]:
            r = results[f"dsfs add ({v})"]["wall_s"] / results[f"dsfs add ({variants[0]})"]["wall_s"]
            variant_ratios[f"dsfs add ({v}) / dsfs add ({variants[0]})"] = r
        def cpu(label: str) -> float:
            return results[label]["user_s"] + results[label]["sys_s"]

        for label, base in baseline.items():
            variant_ratios[f"CPU (user+sys): {label} / {base}"] = cpu(label) / max(cpu(base), 1e-9)
        get_plus_show = results["dsfs get"]["wall_s"] + results["dsfs show (index build)"]["wall_s"]
        variant_ratios["(dsfs show + dsfs get) / unzip"] = get_plus_show / results["unzip -q"]["wall_s"]

        print(f"\n{files} files, {total / MiB:.0f} MiB ({args.min_kib}-{args.max_kib} KiB random bytes, "
              f"{args.per_dir} per folder), page cache warmed first, {os.cpu_count()} CPUs, "
              f"median of {args.repeat} run(s)")
        bl.print_table(["operation", "wall s", "files/s", "MiB/s", "user s", "sys s", "peak RSS MiB",
                        "cache drops", "ratio"], rows)
        if note := bl.cache_note(results.values()):
            print(note)
        if bl.damon_pageout():
            print("note: DAMON proactive reclaim (pageout) is on: page cache left idle for a while may be "
                  "paged out, so even without drops the warm-up may not hold")
        for label, r in variant_ratios.items():
            print(f"{label}: {r:.2f}x")
        print(f"stored size: dsfs store {store_bytes / MiB:.0f} MiB, zip {zip_bytes / MiB:.0f} MiB")

        steps = breakdown(src, args, args.breakdown) if args.breakdown else None
        profile = profile_commands(runner, src, out_dir) if args.profile else None
        doc = {
            "benchmark": "bench_add_get",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": bl.machine_info(),
            "params": {k: v for k, v in vars(args).items()},
            "files": files,
            "bytes": total,
            "store_bytes": store_bytes,
            "zip_bytes": zip_bytes,
            "results": results,
            "ratios": variant_ratios,
            "breakdown": steps,
            "profile": profile,
        }
        print(bl.load_note())
        doc["machine_end"] = bl.machine_info()
        path = bl.write_json("bench_add_get", doc, args.out_dir)
        print(f"\nresults written to {path}")
    finally:
        if not args.keep:
            bl.remove_tree(work)
        else:
            print(f"kept {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
