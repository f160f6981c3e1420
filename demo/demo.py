"""The main job: a tour of dsfs on the local-folder store.

Creates a dataset from generated files, publishes it, makes a child version that adds, changes
and removes files, lists and diffs the two, then mounts the child and reads from it.
Run: .venv/bin/python demo/demo.py [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

BIN = Path(sys.executable).parent / "dsfs"


def dsfs(*args: str, env: dict, quiet: bool = False) -> str:
    if not quiet:
        print(f"$ dsfs {' '.join(shlex.quote(a) for a in args)}", flush=True)
    out = subprocess.run([str(BIN), *args], env=env, check=True, capture_output=True, text=True)
    if quiet:
        return out.stdout.strip()
    if out.stdout.strip():
        print(out.stdout.rstrip())
    if out.stderr.strip():
        print(out.stderr.rstrip())
    return out.stdout.strip()


def generate(root: Path, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        split = "train" if i % 5 else "val"
        path = root / "images" / split / f"img{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.randbytes(rng.randint(4 << 10, 64 << 10)))
    (root / "labels.csv").write_text("".join(f"img{i:04d},{i % 10}\n" for i in range(n)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", help="where to put the store, cache and files (default: a temp dir)")
    parser.add_argument("--files", type=int, default=200)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dsfs-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DSFS_STORE": str(work / "store"), "DSFS_CACHE_DIR": str(work / "cache")}
    print(f"# store: {env['DSFS_STORE']}")

    src = work / "src"
    generate(src, args.files)
    v1 = dsfs("create", "pets", "--project", "demo", "--tag", "images", "--comment", "first import", env=env)
    dsfs("add", v1, str(src), env=env)
    dsfs("publish", v1, env=env)

    v2 = dsfs("create", "pets", "--comment", "relabel and prune", env=env)
    (work / "patch").mkdir(exist_ok=True)
    (work / "patch" / "labels.csv").write_text("relabelled\n")
    (work / "patch" / "README.txt").write_text("pets dataset, v2\n")
    dsfs("add", v2, str(work / "patch"), env=env)
    dsfs("remove", v2, "images/val", env=env)
    dsfs("publish", v2, env=env)

    dsfs("versions", "pets", env=env)
    dsfs("log", "pets", env=env)
    dsfs("ls", "pets", env=env)
    print(f"$ dsfs diff {v1[:8]} {v2[:8]} | head")
    print("\n".join(dsfs("diff", v1, v2, env=env, quiet=True).splitlines()[:10]))
    dsfs("show", "pets", env=env)

    mount_demo(work, env)
    print(f"# done; everything is under {work}")
    return 0


def mount_demo(work: Path, env: dict) -> None:
    mnt = work / "mnt"
    mnt.mkdir(exist_ok=True)
    dsfs("mount", "pets", str(mnt), env=env)
    try:
        files = sorted(p for p in mnt.rglob("*") if p.is_file())
        total = sum(len(p.read_bytes()) for p in files)
        print(f"# read {len(files)} files, {total} bytes through the mount at {mnt}")
        print(f"$ head -c 60 {mnt}/README.txt\n{(mnt / 'README.txt').read_text()[:60]}")
        dsfs("status", env=env)
    finally:
        dsfs("umount", str(mnt), env=env)

    # A draft mounts writable: edit it with ordinary tools, unmount to commit.
    dsfs("create", "pets", "--comment", "edited through a mount", env=env)
    dsfs("mount", "pets@draft", str(mnt), env=env)
    try:
        print(f"$ echo 'cats only' > {mnt}/NOTES.txt; mv {mnt}/images/train {mnt}/images/training")
        (mnt / "NOTES.txt").write_text("cats only\n")
        (mnt / "images" / "train").rename(mnt / "images" / "training")
    finally:
        dsfs("umount", "--publish", str(mnt), env=env)
    print("$ dsfs diff pets@v2 pets | tail -3")
    print("\n".join(dsfs("diff", "pets@v2", "pets", env=env, quiet=True).splitlines()[-3:]))


if __name__ == "__main__":
    sys.exit(main())
