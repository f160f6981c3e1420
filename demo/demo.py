"""The main job: a tour of dsfs on the local-folder store.

Creates a dataset from generated files, publishes it, makes a child version that adds, changes
and removes files, lists and diffs the two, then mounts the child and reads from it; then does
the same kind of work through the Python API (``from dsfs import Dataset, DatasetVersion``) on
the same store, with the CLI showing the result; and asks ``dsfs ui`` (non-interactively) for
the lineage graph.
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
    sdk_demo(work, env)
    ui_demo(env)
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



def python(statement: str, scope: dict):
    """Run one API statement, printed as at a Python prompt, and print its value."""
    print(f">>> {statement}", flush=True)
    value = eval(compile(statement, "<demo>", "eval"), scope)
    if value is not None:
        print(repr(value))
    return value


def sdk_demo(work: Path, env: dict) -> None:
    """The seed documents' API on the same store, next to the CLI."""
    from dsfs import Dataset, DatasetVersion, configure

    print("# the same store from Python")
    configure(store=env["DSFS_STORE"], cache_dir=env["DSFS_CACHE_DIR"], show_progress=False)
    (work / "extra").mkdir(exist_ok=True)
    (work / "extra" / "mask.png").write_bytes(bytes(range(256)) * 4)
    scope = {"Dataset": Dataset, "DatasetVersion": DatasetVersion, "extra": str(work / "extra")}
    python("Dataset.get('pets')", scope)
    python("[v.name for v in DatasetVersion.get_versions('pets')]", scope)
    # v1 then v3, merged in order (a later parent wins): v3 plus what only v1 has (images/val, and
    # images/train, which v3 renamed to images/training and which goes again here).
    scope["child"] = python("DatasetVersion.create_version('pets', 'masks', parent_version_names=['v1', 'v3'], "
                            "comment='v3, with the val split of v1 back')", scope)
    python("child.remove_files('images/train').describe()", scope)
    python("child.add_files(extra, wildcard='*.png', dataset_path='masks').describe()", scope)
    python("child.set_masks_labels({(0, 0, 0): ['background'], (255, 255, 255): ['pet']})", scope)
    python("child.publish_version()", scope)
    python("{k: len(v) for k, v in DatasetVersion.get('pets@v3').diff(child).items()}", scope)
    print("$ dsfs diff pets@v3 pets@masks | tail -2")
    print("\n".join(dsfs("diff", "pets@v3", "pets@masks", env=env, quiet=True).splitlines()[-2:]))
    copy = python("child.get_local_copy()", scope)
    print(f"# {sum(1 for p in Path(copy).rglob('*') if p.is_file())} files in the read-only copy")
    python("child.verify(hash=True)", scope)
    python("DatasetVersion.squash('pets-flat', [child]).list_files('masks')", scope)
    # The seed's simple structure: one draft ("Current") that each snapshot publishes, keeping
    # its id, and continues in a new draft child.
    python("Dataset.create('masks-only', dataset_project='demo').name", scope)
    python("DatasetVersion.get_current('masks-only').add_files(extra).describe()", scope)
    python("DatasetVersion.create_snapshot('masks-only', publish_name='first').name", scope)
    python("[(v.name, v.state) for v in DatasetVersion.get_versions('masks-only')]", scope)
    dsfs("show", "pets@masks", env=env)


def ui_demo(env: dict) -> None:
    """``dsfs ui`` serves the same store to a browser; here it is asked over its JSON API and
    stopped again (run ``dsfs ui --open`` yourself to look)."""
    import json
    import signal
    import urllib.request

    print("$ dsfs ui --port 0          # (stopped again below; dsfs ui --open shows it in a browser)")
    server = subprocess.Popen([str(BIN), "ui", "--port", "0"], env=env, stdout=subprocess.PIPE, text=True)
    try:
        line = server.stdout.readline().strip()
        print(line)
        url = line.split(" at ")[1].split()[0]
        with urllib.request.urlopen(url + "api/datasets/pets") as response:
            versions = json.load(response)["versions"]
        with urllib.request.urlopen(url + "api/datasets/pets/graph.svg") as response:
            svg = response.read().decode()
        nodes, edges = svg.count('class="node version'), svg.count('class="edge parent"')
        print(f"$ curl {url}api/datasets/pets/graph.svg   # the lineage, laid out by Graphviz")
        print(f"# {len(versions)} versions: {nodes} nodes and {edges} parent edges in the SVG")
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=30)
        server.stdout.close()


if __name__ == "__main__":
    sys.exit(main())
