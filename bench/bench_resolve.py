#!/usr/bin/env python3
"""Benchmark resolving a large version: a synthetic 1,000,000-file root and a 20-deep lineage.

No real files are made. The store records are written directly with the dsfs API (Catalog,
ChangeSet, Entry, Removal): a root version whose one change-set lists --files file entries
(fake sha256s and chunk keys: resolving never reads chunks) in about --folders folders, then
--depth - 1 published descendants, each with one change-set of --modify modifications,
--remove removals (of which --tombstones are whole-folder tombstones) and --add additions.

Each measured resolve runs in a fresh child process, so its peak RSS (from wait4) is its own:

  root, cold            index of the 1M-file root alone, nothing cached (no lineage to replay)
  leaf, cold            index of the 20th version, nothing cached: replays all 20 change-sets
  leaf, cached          the same again: the published index is on disk, so this only opens it
  child draft, cold     a new draft whose parent is the leaf: a file copy of the leaf's cached
                        index (no change-sets to apply)
  child draft, cached   the same draft again (its index is named after the draft record's etag)
  child draft + 10-file change-set   the 1M-file draft after one tiny change-set: a new etag, so
                        a new index, made by copying the draft's previous one and applying just
                        the 10 adds in place ("by": updated, and how many nodes it wrote)
  dsfs show leaf, cold  (with --cli) the CLI path, nothing cached

Run:  .venv/bin/python bench/bench_resolve.py [--files 1000000] [--depth 20] [--workdir DIR]
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

# Issue 9's targets for the default 1M-file root + 20-deep lineage (a quiet machine).
TARGET_RSS_MIB = 300
TARGET_LEAF_S = 8
TARGET_INDEX_MIB = 150
DATASET = "synthetic"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", type=int, default=1_000_000, help="files in the root version (default 1000000)")
    p.add_argument("--folders", type=int, default=1000, help="leaf folders in the root version (default 1000)")
    p.add_argument("--depth", type=int, default=20, help="versions in the lineage, root included (default 20)")
    p.add_argument("--modify", type=int, default=10_000, help="modified files per descendant (default 10000)")
    p.add_argument("--remove", type=int, default=1_000,
                   help="removals per descendant, folder tombstones included (default 1000)")
    p.add_argument("--tombstones", type=int, default=5,
                   help="of the removals, how many remove a whole folder (default 5)")
    p.add_argument("--add", type=int, default=5_000, help="added files per descendant (default 5000)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--workdir", help="where the store and cache go (default: a new /tmp dir)")
    p.add_argument("--reuse", action="store_true",
                   help="reuse a store already generated in --workdir with the same parameters")
    p.add_argument("--keep", action="store_true", help="keep the work dir (default: delete it)")
    p.add_argument("--cli", action="store_true", help="also time a cold `dsfs show` of the leaf")
    p.add_argument("--profile", choices=("auto", "always", "never"), default="auto",
                   help="run the cold leaf resolve once more under cProfile: always, never, or "
                        "auto = when it takes over 30 s or over 300 MiB (default auto)")
    p.add_argument("--dsfs", help="dsfs command for --cli (default: the dsfs next to this python)")
    p.add_argument("--out-dir", help="where to write the JSON results (default bench/out)")
    return p.parse_args()


# -- generating the store ------------------------------------------------------------------------


class Model:
    """What the current version's view should hold: folder -> file names (no hashes, except for
    a fixed sample of paths that the final check looks up)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.folders: list[str] = []
        self.files: dict[str, list[str]] = {}
        self.sample: dict[str, str | None] = {}  # path -> expected sha256, None = removed

    def count(self) -> int:
        return sum(len(v) for v in self.files.values())

    def add_folder(self, folder: str) -> None:
        self.folders.append(folder)
        self.files[folder] = []

    def remove_folder(self) -> str:
        i = self.rng.randrange(len(self.folders))
        self.folders[i], self.folders[-1] = self.folders[-1], self.folders[i]
        folder = self.folders.pop()
        del self.files[folder]
        for p in self.sample:
            if p.startswith(folder + "/"):
                self.sample[p] = None
        return folder

    def pick_file(self, pop: bool) -> str:
        while True:
            folder = self.folders[self.rng.randrange(len(self.folders))]
            names = self.files[folder]
            if names:
                break
        i = self.rng.randrange(len(names))
        if pop:
            names[i], names[-1] = names[-1], names[i]
            name = names.pop()
        else:
            name = names[i]
        return f"{folder}/{name}"


def fake_sha(*parts) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()


class EntryMaker:
    """Fake but well-formed file entries, packed into fake ~512 MiB chunks in order."""

    def __init__(self, rng: random.Random, version_id: str, changeset_id: str) -> None:
        from dsfs.changeset.manifest import chunk_key

        self.rng, self.chunk_key = rng, chunk_key
        self.version_id, self.changeset_id = version_id, changeset_id
        self.n = 0
        self.offset = 0
        self.key = chunk_key(version_id, changeset_id, 0)
        self.mtime = 1_700_000_000_000_000_000

    def __call__(self, path: str, sha: str):
        from dsfs.changeset.manifest import STORED, Entry

        size = self.rng.randint(10_000, 500_000)
        if self.offset + size > 512 << 20:
            self.n += 1
            self.offset = 0
            self.key = self.chunk_key(self.version_id, self.changeset_id, self.n)
        entry = Entry(path, "file", size, sha, 0o644, self.mtime, chunk=self.key,
                      offset=self.offset + 30 + len(path.encode()), csize=size, method=STORED)
        self.offset += size + 30 + len(path.encode())
        return entry


class LazyEntries:
    """A sized iterable ChangeSet.dumps can stream, so the root's 1M entries are never all
    held in memory at once."""

    def __init__(self, n: int, make) -> None:
        self.n, self.make = n, make

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        return self.make()


def root_layout(files: int, folders: int) -> list[str]:
    """~`folders` leaf folders under a few splits and groups, like an image dataset."""
    splits = [("train", 0.8), ("val", 0.1), ("test", 0.1)]
    out = []
    for split, share in splits:
        n = max(1, round(folders * share))
        for c in range(n):
            out.append(f"images/{split}/group{c // 100:02d}/class{c:04d}")
    return out[:folders] if len(out) > folders else out


def commit(catalog, version, changeset) -> None:
    ref = catalog.write_changeset(changeset, len(changeset.entries), 0, 0, [])
    catalog.record_changeset(version.id, ref)


def build_store(store_dir: Path, args) -> dict:
    from dsfs.catalog import Catalog
    from dsfs.changeset.manifest import ChangeSet, Removal, new_id, now_iso
    from dsfs.store.local import LocalStore

    rng = random.Random(args.seed)
    catalog = Catalog(LocalStore(store_dir, create=True))
    catalog.ensure_dataset(DATASET, description="synthetic resolve benchmark")
    model = Model(rng)
    timings = []

    # The root: --files entries spread evenly over the leaf folders, in path order.
    t0 = time.perf_counter()
    root = catalog.create_version(DATASET, "v01", [])
    cs_id = f"root-{new_id()[:8]}"
    layout = sorted(root_layout(args.files, args.folders))
    per_folder = [args.files // len(layout) + (1 if i < args.files % len(layout) else 0)
                  for i in range(len(layout))]
    for folder, n in zip(layout, per_folder):
        model.add_folder(folder)
        model.files[folder] = [f"img_{j:08d}.jpg" for j in range(n)]
    sample_paths = set()
    while len(sample_paths) < min(1000, args.files):
        sample_paths.add(model.pick_file(pop=False))
    make = EntryMaker(rng, root.id, cs_id)

    def root_entries():
        for folder in layout:
            for name in model.files[folder]:
                path = f"{folder}/{name}"
                sha = fake_sha(root.id, path)
                if path in sample_paths:
                    model.sample[path] = sha
                yield make(path, sha)

    commit(catalog, root, ChangeSet(root.id, cs_id, now_iso(), LazyEntries(args.files, root_entries), []))
    catalog.publish(root.id)
    timings.append(time.perf_counter() - t0)
    print(f"  v01: root, {args.files} files in {len(layout)} folders ({timings[-1]:.1f}s)", flush=True)

    parent = catalog.version(root.id)
    last_added: list[tuple[str, str]] = []
    for gen in range(2, args.depth + 1):
        t0 = time.perf_counter()
        version = catalog.create_version(DATASET, f"v{gen:02d}", [parent.id])
        cs_id = f"g{gen:02d}-{new_id()[:8]}"
        make = EntryMaker(rng, version.id, cs_id)
        removals = []
        for _ in range(min(args.tombstones, args.remove)):
            removals.append(Removal(model.remove_folder(), True))
        for _ in range(args.remove - len(removals)):
            path = model.pick_file(pop=True)
            if path in model.sample:
                model.sample[path] = None
            removals.append(Removal(path, False))
        removals.sort(key=lambda r: r.path)
        modified: dict[str, str] = {}
        while len(modified) < args.modify:
            path = model.pick_file(pop=False)
            modified[path] = fake_sha(version.id, path)
        for path, sha in modified.items():
            if path in model.sample:
                model.sample[path] = sha
        # Adds: 80% in new folders of up to 1000 files, the rest as new names in old folders.
        added: list[tuple[str, str]] = []
        in_new = args.add * 4 // 5
        for k in range(0, in_new, 1000):
            folder = f"images/train/added/v{gen:02d}/batch{k // 1000:02d}"
            model.add_folder(folder)
            for j in range(k, min(k + 1000, in_new)):
                name = f"new_{j:06d}.jpg"
                model.files[folder].append(name)
                added.append((f"{folder}/{name}", fake_sha(version.id, folder, name)))
        for j in range(args.add - in_new):
            folder = model.folders[rng.randrange(len(model.folders))]
            name = f"extra_v{gen:02d}_{j:06d}.jpg"
            model.files[folder].append(name)
            added.append((f"{folder}/{name}", fake_sha(version.id, folder, name)))
        items = sorted(list(modified.items()) + added)
        entries = [make(path, sha) for path, sha in items]
        commit(catalog, version, ChangeSet(version.id, cs_id, now_iso(), entries, removals))
        catalog.publish(version.id)
        parent = catalog.version(version.id)
        last_added = added
        timings.append(time.perf_counter() - t0)
        print(f"  v{gen:02d}: {len(modified)} modified, {len(removals)} removed "
              f"({min(args.tombstones, args.remove)} folders), {len(added)} added ({timings[-1]:.1f}s)",
              flush=True)

    rng2 = random.Random(args.seed + 1)
    expect = {
        "leaf": parent.id,
        "root": root.id,
        "files": model.count(),
        "folders": len(model.folders),
        "sample": model.sample,
        "added_sample": dict(rng2.sample(last_added, min(100, len(last_added)))) if last_added else {},
        "generate_s": sum(timings),
    }
    return expect


def small_changeset(catalog, version, n: int) -> list[str]:
    """Record a change-set of n new files on a draft (what one small `dsfs add` leaves); their paths."""
    from dsfs.changeset.manifest import ChangeSet, new_id, now_iso

    cs_id = f"small-{new_id()[:8]}"
    make = EntryMaker(random.Random(0), version.id, cs_id)
    entries = [make(f"images/extra/{cs_id}/file_{i:04d}.jpg", fake_sha(cs_id, i)) for i in range(n)]
    commit(catalog, version, ChangeSet(version.id, cs_id, now_iso(), entries, []))
    return [e.path for e in entries]


def store_bytes(store_dir: Path) -> dict:
    changesets = records = 0
    for p in store_dir.rglob("*"):
        if p.is_file():
            if p.name.endswith(".jsonl.gz"):
                changesets += p.stat().st_size
            else:
                records += p.stat().st_size
    return {"changesets": changesets, "records": records}


# -- measuring -----------------------------------------------------------------------------------


def child_main(argv: list[str]) -> int:
    """In a fresh process: resolve REF and build (or open) its index; print one JSON line."""
    p = argparse.ArgumentParser()
    p.add_argument("--store", required=True)
    p.add_argument("--cache-dir", required=True)
    p.add_argument("--ref", required=True)
    p.add_argument("--profile")
    a = p.parse_args(argv)
    t_import = time.perf_counter()
    from dsfs.config import load_settings
    from dsfs.repo import Repository

    import_s = time.perf_counter() - t_import
    profiler = None
    if a.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    t0 = time.perf_counter()
    repo = Repository(load_settings(store=a.store, cache_dir=a.cache_dir))
    manifest = repo.resolve(a.ref)
    index = repo.index(manifest)
    seconds = time.perf_counter() - t0
    if profiler is not None:
        profiler.disable()
        profiler.dump_stats(a.profile)
    stats = repo.views.stats
    how = (f"updated ({stats['rows_updated']} nodes)" if stats["updated"] else "built" if stats["built"]
           else "cached")
    print(json.dumps({"index_s": seconds, "import_s": import_s, "files": index.files, "by": how,
                      "bytes": index.total_size, "index_path": index.path,
                      "index_mib": os.path.getsize(index.path) / (1 << 20)}))
    return 0


def run_child(work: Path, env: dict, ref: str, profile: str | None = None) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child", "--store", str(work / "store"),
           "--cache-dir", str(work / "cache"), "--ref", ref]
    if profile:
        cmd += ["--profile", profile]
    run = bl.run_measured(cmd, env=env)
    run.update(json.loads(run.pop("stdout").strip().splitlines()[-1]))
    run.pop("stderr", None)
    return run


def clear_index(work: Path) -> None:
    shutil.rmtree(work / "cache" / "index", ignore_errors=True)


def verify(work: Path, expect: dict, leaf_files: int, draft: str, added: list[str]) -> list[str]:
    """Compare the leaf's index with what the generator meant it to hold, and the draft's with
    the leaf's plus what its small change-set added."""
    from dsfs.config import load_settings
    from dsfs.repo import Repository

    problems = []
    if leaf_files != expect["files"]:
        problems.append(f"leaf view has {leaf_files} files, the generator made {expect['files']}")
    repo = Repository(load_settings(store=str(work / "store"), cache_dir=str(work / "cache")))
    index = repo.index(repo.catalog.version(expect["leaf"]))
    for path, sha in list(expect["sample"].items()) + list(expect["added_sample"].items()):
        node = index.by_path(path)
        if sha is None and node is not None:
            problems.append(f"{path} should be removed but is in the view")
        elif sha is not None and (node is None or node.sha256 != sha):
            problems.append(f"{path}: expected sha {sha[:12]}, view has "
                            f"{node.sha256[:12] if node else 'nothing'}")
    updated = repo.index(repo.catalog.version(draft))
    if updated.files != leaf_files + len(added) or any(updated.by_path(p) is None for p in added):
        problems.append(f"the draft after its small change-set has {updated.files} files, not the leaf's "
                        f"{leaf_files} and the {len(added)} added")
    return problems


def print_profile(prof: str, limit: int = 25) -> str:
    import io
    import pstats

    buf = io.StringIO()
    stats = pstats.Stats(prof, stream=buf)
    stats.sort_stats("tottime").print_stats(limit)
    stats.sort_stats("cumulative").print_stats(limit)
    return buf.getvalue()


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        return child_main(sys.argv[2:])
    args = parse_args()
    bl.compile_dsfs()
    work = bl.make_workdir(args.workdir, "dsfs-bench-resolve-")
    out_dir = Path(args.out_dir) if args.out_dir else bl.OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"work dir {work}")
    (work / "config.yaml").write_text("{}\n")
    env = bl.isolated_env(work / "store", work / "cache", work / "config.yaml")
    params = {k: getattr(args, k) for k in ("files", "folders", "depth", "modify", "remove",
                                            "tombstones", "add", "seed")}
    marker = work / "store.params.json"
    try:
        expect = None
        if args.reuse and marker.exists():
            saved = json.loads(marker.read_text())
            if saved.get("params") == params:
                expect = saved["expect"]
                print(f"reusing the store in {work / 'store'}")
        if expect is None:
            shutil.rmtree(work / "store", ignore_errors=True)
            shutil.rmtree(work / "cache", ignore_errors=True)
            print(f"generating: {args.files} files, {args.depth} versions", flush=True)
            expect = build_store(work / "store", args)
            marker.write_text(json.dumps({"params": params, "expect": expect}))
        sizes = store_bytes(work / "store")
        print(f"store: change-sets {sizes['changesets'] / (1 << 20):.0f} MiB, "
              f"generated in {expect['generate_s']:.0f}s; leaf should hold {expect['files']} files")

        # Drop drafts left by an earlier run of a reused store.
        from dsfs.catalog import Catalog
        from dsfs.store.local import LocalStore

        catalog = Catalog(LocalStore(work / "store"))
        for v in catalog.versions(DATASET):
            if not v.is_published:
                catalog.delete_version_records(v)

        results: dict[str, dict] = {}
        clear_index(work)
        results["root, cold (1 change-set)"] = run_child(work, env, expect["root"])
        clear_index(work)
        results[f"leaf, cold ({args.depth} change-sets)"] = leaf_cold = run_child(work, env, expect["leaf"])
        results["leaf, cached"] = run_child(work, env, expect["leaf"])
        draft = catalog.create_version(DATASET, f"draft-{int(time.time())}", [expect["leaf"]])
        results["child draft of leaf, cold"] = run_child(work, env, draft.id)
        results["child draft of leaf, cached"] = run_child(work, env, draft.id)
        added = small_changeset(catalog, draft, 10)
        results["child draft + 10-file change-set"] = run_child(work, env, draft.id)
        if args.cli:
            clear_index(work)
            run = bl.run_measured(bl.dsfs_command(args.dsfs) + ["-q", "show", expect["leaf"], "--json"], env=env)
            shown = json.loads(run.pop("stdout"))
            run.pop("stderr", None)
            run.update(index_s=None, files=shown["files"])
            results["dsfs show leaf, cold (CLI)"] = run

        problems = verify(work, expect, leaf_cold["files"], draft.id, added)

        rows = []
        for label, r in results.items():
            per_file = r["index_mib"] * (1 << 20) / r["files"] if r.get("index_mib") and r["files"] else None
            rows.append([label, r.get("by"), r.get("index_s"), r["wall_s"], r["user_s"], r["sys_s"],
                         r["max_rss_mib"], r["files"], r.get("index_mib"), per_file, r.get("cache_drops")])
        print(f"\nresolve of a {args.files}-file root + {args.depth - 1} descendants "
              f"({args.modify} modified, {args.remove} removed incl. {args.tombstones} folders, "
              f"{args.add} added each); {os.cpu_count()} CPUs")
        bl.print_table(["scenario", "by", "index s", "process s", "user s", "sys s", "peak RSS MiB",
                        "files", "index MiB", "B/file", "cache drops"], rows)
        if note := bl.cache_note(results.values()):
            print(note)
        cold = results[f"leaf, cold ({args.depth} change-sets)"]
        root_cold = results["root, cold (1 change-set)"]
        ratios = {
            "leaf cold / root cold": cold["index_s"] / root_cold["index_s"],
            "leaf cold / leaf cached": cold["index_s"] / results["leaf, cached"]["index_s"],
            "child draft cold / leaf cold": results["child draft of leaf, cold"]["index_s"] / cold["index_s"],
            "draft re-resolve after a 10-file change-set / child draft cold":
                results["child draft + 10-file change-set"]["index_s"]
                / results["child draft of leaf, cold"]["index_s"],
        }
        for label, r in ratios.items():
            print(f"{label}: {r:.2f}x")
        worst_rss = max(r["max_rss_mib"] for r in results.values())
        print(f"targets (for the 1M-file, 20-deep default): leaf cold <= {TARGET_LEAF_S} s, peak RSS <= "
              f"{TARGET_RSS_MIB} MiB, index <= {TARGET_INDEX_MIB} MiB -> leaf cold {cold['index_s']:.1f}s, "
              f"worst peak RSS {worst_rss:.0f} MiB, leaf index {cold['index_mib']:.0f} MiB")
        checked = len(expect["sample"]) + len(expect["added_sample"])
        print("view check: " + (f"ok (file count and {checked} sampled paths match the generator)"
                                if not problems else f"{len(problems)} PROBLEMS"))
        for problem in problems[:20]:
            print("  " + problem)

        profile = None
        if args.profile == "always" or (args.profile == "auto" and (
                cold["index_s"] > 30 or worst_rss > TARGET_RSS_MIB)):
            clear_index(work)
            prof = str(out_dir / "bench_resolve.leaf_cold.prof")
            run = run_child(work, env, expect["leaf"], profile=prof)
            text = print_profile(prof)
            print(f"\n== cProfile of the cold leaf resolve ({run['index_s']:.1f}s under the profiler) ==")
            print(text)
            profile = {"profile": prof, "index_s_profiled": run["index_s"]}

        doc = {
            "benchmark": "bench_resolve",
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": bl.machine_info(),
            "params": params,
            "expected_files": expect["files"],
            "generate_s": expect["generate_s"],
            "store_bytes": sizes,
            "results": results,
            "ratios": ratios,
            "target": {"rss_mib": TARGET_RSS_MIB, "leaf_s": TARGET_LEAF_S, "index_mib": TARGET_INDEX_MIB,
                       "worst_rss_mib": worst_rss},
            "view_problems": problems,
            "profile": profile,
        }
        print(bl.load_note())
        doc["machine_end"] = bl.machine_info()
        path = bl.write_json("bench_resolve", doc, args.out_dir)
        print(f"\nresults written to {path}")
        return 1 if problems else 0
    finally:
        if not args.keep:
            bl.remove_tree(work)
        else:
            print(f"kept {work}")


if __name__ == "__main__":
    sys.exit(main())
