"""Small helpers shared by the benchmark scripts (not part of the dsfs package).

Every measured command runs as its own child process; its wall time is taken around the
child's whole life and its CPU time and peak RSS come from ``os.wait4`` on that one child, so
each number belongs to that command alone (``getrusage(RUSAGE_CHILDREN)`` would only give a
running maximum over every child so far).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
OUT_DIR = BENCH_DIR / "out"
MiB = 1 << 20


def dsfs_command(explicit: str | None = None) -> list[str]:
    """The dsfs CLI to run: --dsfs, else the script next to this interpreter, else ``-m dsfs``."""
    if explicit:
        return explicit.split()
    beside = Path(sys.executable).parent / "dsfs"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("dsfs")
    return [found] if found else [sys.executable, "-m", "dsfs"]


def make_workdir(workdir: str | None, prefix: str) -> Path:
    if workdir:
        path = Path(workdir).expanduser().absolute()
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix=prefix, dir=os.environ.get("TMPDIR", "/tmp")))


def isolated_env(store: Path, cache_dir: Path, config: Path | None = None) -> dict[str, str]:
    """Environment for a dsfs child: its own store, cache and config, never the user's."""
    env = dict(os.environ)
    env["DSFS_STORE"] = str(store)
    env["DSFS_CACHE_DIR"] = str(cache_dir)
    if config is not None:
        env["DSFS_CONFIG"] = str(config)
    else:
        env.pop("DSFS_CONFIG", None)
    return env


class CommandFailed(RuntimeError):
    pass


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
                 check: bool = True) -> dict:
    """Run one command; return wall/user/sys seconds, peak RSS (MiB), exit code and output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
    result = {
        "cmd": " ".join(map(str, cmd)),
        "wall_s": wall,
        "user_s": usage.ru_utime,
        "sys_s": usage.ru_stime,
        "max_rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
        "rc": proc.returncode,
        "stdout": stdout,
        "stderr": stderr,
    }
    if check and proc.returncode != 0:
        raise CommandFailed(f"command failed ({proc.returncode}): {result['cmd']}\n{stderr[-2000:]}")
    return result


def warm_files(root: Path) -> tuple[int, int]:
    """Read every file under ``root`` once so measured runs start from a warm page cache."""
    files = total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as f:
                while block := f.read(4 * MiB):
                    total += len(block)
            files += 1
    return files, total


def tree_size(root: Path) -> tuple[int, int]:
    files = total = 0
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            files += 1
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return files, total


def remove_tree(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and abs(value) < 0.1:
            return f"{value:.{digits + 1}f}"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(columns: list[str], rows: list[list]) -> None:
    cells = [columns] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(columns))]
    for n, row in enumerate(cells):
        line = "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                         for i, (c, w) in enumerate(zip(row, widths)))
        print(line)
        if n == 0:
            print("  ".join("-" * w for w in widths))


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return info


def write_json(name: str, doc: dict, out_dir: str | None = None) -> Path:
    directory = Path(out_dir) if out_dir else OUT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path
