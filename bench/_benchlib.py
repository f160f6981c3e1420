"""Small helpers shared by the benchmark scripts (not part of the dsfs package).

Every measured command runs as its own child process, and its wall time is taken around the
child's whole life. Its CPU time and peak RSS come from GNU ``/usr/bin/time`` when present: a
process's peak RSS (ru_maxrss) includes the memory of the process it was forked from, up to
its exec, so a command forked straight from a big benchmark process would be charged with that
process's size; /usr/bin/time is tiny (~3 MiB) and forks the command itself. Without it we fall
back to ``os.wait4`` on the child (per child, unlike ``getrusage(RUSAGE_CHILDREN)``, but with
the caveat above: the figure is at least this script's own RSS).
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


def compile_dsfs() -> None:
    """Write dsfs's bytecode, as an installed package has it. In a source checkout (an editable
    install, often with PYTHONDONTWRITEBYTECODE set) every dsfs process would compile its modules
    again: ~60 ms of each mount's start-up that an installed dsfs does not pay."""
    import compileall

    import dsfs

    compileall.compile_dir(str(Path(dsfs.__file__).parent), quiet=1)


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


GNU_TIME = "/usr/bin/time"


def pagecache_drops() -> int | None:
    """How many times anyone wrote /proc/sys/vm/drop_caches since boot (None if unknown).
    Another benchmark on the same machine may drop the page cache; then "warm" runs read
    from disk."""
    try:
        with open("/proc/vmstat") as f:
            for line in f:
                if line.startswith("drop_pagecache "):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def damon_pageout() -> bool:
    """Whether a running DAMON scheme pages out idle memory (page cache included): then data
    left idle for some tens of seconds may be read from disk again (read-only check)."""
    import glob

    for state in glob.glob("/sys/kernel/mm/damon/admin/kdamonds/*/state"):
        try:
            if open(state).read().strip() != "on":
                continue
            kdamond = os.path.dirname(state)
            for action in glob.glob(f"{kdamond}/contexts/*/schemes/*/action"):
                if open(action).read().strip() == "pageout":
                    return True
        except OSError:
            continue
    return False


def rss_method() -> str:
    return "gnu-time" if os.access(GNU_TIME, os.X_OK) else "wait4"


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | os.PathLike | None = None,
                 check: bool = True) -> dict:
    """Run one command; return wall/user/sys seconds, peak RSS (MiB), exit code and output."""
    use_time = rss_method() == "gnu-time"
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", suffix=".time") as timing:
        full = [GNU_TIME, "-f", "%U %S %M", "-o", timing.name, *cmd] if use_time else list(cmd)
        drops_before = pagecache_drops()
        start = time.perf_counter()
        proc = subprocess.Popen(full, stdout=out, stderr=err, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        drops_after = pagecache_drops()
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout = out.read().decode(errors="replace")
        stderr = err.read().decode(errors="replace")
        user, system, maxrss_kib = usage.ru_utime, usage.ru_stime, usage.ru_maxrss
        if use_time:
            # "Command exited with non-zero status N" may come first; the numbers are last.
            lines = [ln for ln in timing.read().splitlines() if ln.strip()]
            try:
                u, s_, m = lines[-1].split()
                user, system, maxrss_kib = float(u), float(s_), int(m)
            except (IndexError, ValueError):
                pass
    result = {
        "cmd": " ".join(map(str, cmd)),
        "wall_s": wall,
        "user_s": user,
        "sys_s": system,
        "max_rss_mib": maxrss_kib / 1024,  # Linux reports KiB
        "rss_method": "gnu-time" if use_time else "wait4",
        "cache_drops": None if drops_before is None else drops_after - drops_before,
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


def code_version() -> dict:
    """The dsfs code measured: the commit, and whether dsfs/ had uncommitted edits."""
    repo = BENCH_DIR.parent

    def git(*argv: str) -> str:
        try:
            return subprocess.run(["git", *argv], cwd=repo, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    return {"commit": git("rev-parse", "--short", "HEAD"),
            "dsfs_uncommitted": bool(git("status", "--porcelain", "--", "dsfs"))}


def machine_info() -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpus": os.cpu_count(), "loadavg_1_5_15": os.getloadavg(), "rss_method": rss_method(),
            "pagecache_drops_since_boot": pagecache_drops(), "damon_pageout": damon_pageout(),
            "code": code_version()}
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_mib"] = int(f.readline().split()[1]) // 1024
    except OSError:
        pass
    return info


def load_note() -> str:
    """Other work on the machine skews wall times; say how busy it was."""
    one, five, _ = os.getloadavg()
    code = code_version()
    dirty = " + uncommitted dsfs/ edits" if code["dsfs_uncommitted"] else ""
    return (f"load average {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs; "
            f"dsfs at {code['commit'] or '?'}{dirty}")


def cache_note(runs) -> str | None:
    drops = [r.get("cache_drops") for r in runs if r.get("cache_drops") is not None]
    if not drops or not any(drops):
        return None
    return (f"note: something on this machine dropped the page cache (/proc/sys/vm/drop_caches) "
            f"{sum(drops)} times during the measured commands, so those read their input from disk")


def write_json(name: str, doc: dict, out_dir: str | None = None) -> Path:
    directory = Path(out_dir) if out_dir else OUT_DIR
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return path
