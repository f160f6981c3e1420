"""Starting and stopping mount daemons from the outside (the CLI and the Python API)."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import threading
import time

from ..config import Settings
from ..errors import Busy, InvalidInput, MountError, NotFound, NotRecorded, from_kind
from . import registry
from .options import MountOptions
from .registry import log_file

FUSERMOUNT = "fusermount3"


def daemon_argv(settings: Settings, ref: str, mountpoint: str, options: MountOptions,
                config: str | None = None) -> list[str]:
    """The mount daemon's command line (``dsfs.mountd.daemon.main``) for one mount."""
    argv = ["--store", settings.store, "--cache-dir", settings.cache_dir]
    if config:
        argv += ["--config", config]
    return argv + options.to_argv() + ["--", ref, mountpoint]


def spawn(settings: Settings, ref: str, mountpoint: str, options: MountOptions = MountOptions(), *,
          config: str | None = None, timeout: float = 600, fork: bool = False) -> registry.MountRecord:
    """Start a detached daemon and return once the mount is ready (or raise its error).

    ``fork``: a single-threaded caller that imported little else (the ``dsfs mount`` command)
    forks the daemon off itself rather than starting a new interpreter, which then imports
    dsfs's modules all over again: about a third of a mount's time to its first byte. Anything
    else (the Python API, a caller with threads) starts ``python -m dsfs.mountd.daemon``."""
    read_fd, write_fd = os.pipe()
    argv = ["--ready-fd", str(write_fd), *daemon_argv(settings, ref, mountpoint, options, config)]
    log_path = log_file(settings, mountpoint)
    if fork and threading.active_count() == 1:
        proc: subprocess.Popen | _Forked = _Forked(argv, read_fd, write_fd, log_path)
    else:
        with open(log_path, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "dsfs.mountd.daemon", *argv], pass_fds=(write_fd,),
                                    start_new_session=True, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        # Reap the daemon when it exits, so a long-lived caller (the Python API) keeps no zombie.
        threading.Thread(target=proc.wait, name="dsfs-reaper", daemon=True).start()
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        line = _read_line(pipe, timeout)
    if line == "ready":
        record = registry.read_record(settings.state_dir, mountpoint)
        if record is None:
            raise MountError(f"daemon reported ready but left no record for {mountpoint!r}")
        return record
    if proc.poll() is None and not line:
        proc.kill()
    if line.startswith("error"):
        kind, _, message = line[len("error"):].partition(": ")
        raise from_kind(kind.strip(), message)
    proc.wait(timeout=10)
    raise MountError(f"mount daemon exited ({proc.returncode}) before the mount was ready; "
                     f"see {log_path}")


class _Forked:
    """A mount daemon forked off this (single-threaded) process, as much of a Popen as spawn
    uses. The child becomes what ``python -m dsfs.mountd.daemon`` would be: a session of its own,
    stdin from /dev/null, stdout and stderr to the mount's log, no file descriptor of ours but
    the ready pipe's write end (a caller reading our output to its end must not wait for the
    daemon's), the default signal handlers; it never returns into the caller's code."""

    def __init__(self, argv: list[str], read_fd: int, write_fd: int, log_path) -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()  # (or the child would write out our pending output too)
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            self._child(argv, read_fd, write_fd, log_path)
        # Reap the daemon when it exits (as spawn does a Popen's): no zombie in a caller that
        # lives on, such as a test running the command in-process.
        threading.Thread(target=self._reap, name="dsfs-reaper", daemon=True).start()

    def _reap(self) -> None:
        _, status = os.waitpid(self.pid, 0)
        self.returncode = os.waitstatus_to_exitcode(status)

    @staticmethod
    def _child(argv: list[str], read_fd: int, write_fd: int, log_path) -> None:
        code = 1
        try:
            # The caller's objects stay as they are: none is ever collected here, so no finalizer
            # closes a file descriptor number the daemon has since reused.
            gc.freeze()
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(read_fd)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, os.sysconf("SC_OPEN_MAX"))
            # Python's streams over the new descriptors (the caller's may be anything: a test
            # runs the command with its output captured in memory)
            sys.stdin = open(0, closefd=False)  # noqa: SIM115
            sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
            sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
            signal.signal(signal.SIGINT, signal.default_int_handler)
            for signum in (signal.SIGTERM, signal.SIGHUP):
                signal.signal(signum, signal.SIG_DFL)
            from .daemon import main

            code = main(argv)
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            try:
                import logging

                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code if isinstance(code, int) else 1)

    def poll(self) -> int | None:
        return self.returncode

    def kill(self) -> None:
        if self.poll() is None:
            os.kill(self.pid, signal.SIGKILL)

    def wait(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while self.poll() is None:
            if time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"dsfs mount daemon {self.pid}", timeout)
            time.sleep(0.01)
        return self.returncode


def _read_line(pipe, timeout: float) -> str:
    import select

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([pipe], [], [], 0.5)
        if ready:
            return pipe.readline().strip()
    return ""


def request(mountpoint: str, message: dict, timeout: float = 3600) -> dict:
    """One request to a mount's daemon over its control socket (a writable draft's: commit and
    finish; a published mount's: prefetch)."""
    import json
    import socket

    from .registry import control_address

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(control_address(mountpoint))
        except OSError:
            raise NotFound(f"no dsfs mount answers at {os.path.abspath(mountpoint)!r}") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    reply = json.loads(data or b'{"ok": false, "error": "the daemon closed the connection"}')
    if not reply.get("ok"):
        raise from_kind(reply.get("kind"), reply.get("error", "request failed"))
    return reply


def unmount(settings: Settings, mountpoint: str, *, timeout: float = 3600, lazy: bool = False,
            mode: str | None = None) -> str:
    """Unmount and wait for the daemon to exit (and, for a writable draft, finish its commit);
    clean up after a dead daemon. Returns a note; raises NotRecorded if the changes of a
    writable draft were not recorded."""
    path = os.path.abspath(mountpoint)
    record = registry.read_record(settings.state_dir, path)
    if record is not None and record.writable and registry.pid_alive(record.pid):
        request(path, {"op": "finish", "mode": mode or "commit"}, timeout=30)
    elif mode not in (None, "commit") and (record is None or not record.writable):
        raise InvalidInput(f"--{mode} needs a writable draft mount: {path!r}")
    fstype = registry.mount_fstype(path)
    if fstype is None and record is None:
        raise NotFound(f"not a dsfs mount: {path!r}")
    if fstype is not None and fstype != registry.FSTYPE:
        raise NotFound(f"not a dsfs mount ({fstype}): {path!r}")
    note = "unmounted"
    if fstype is not None:
        # Stale: the kernel says so, or the daemon in the record is gone (the kernel may not have
        # torn the connection down yet when umount follows the daemon's death closely).
        stale = registry.is_stale(path) or (record is not None and not registry.pid_alive(record.pid))
        args = [FUSERMOUNT, "-u"] + (["-z"] if stale or lazy else []) + [path]
        result = subprocess.run(args, capture_output=True, text=True)
        for pause in (0.05, 0.1, 0.2, 0.4):
            # A process passing through (a stat, a file manager's scan) makes the mount busy for
            # a moment: wait a little before saying so.
            if result.returncode == 0 or "busy" not in result.stderr.lower():
                break
            time.sleep(pause)
            result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            message = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "failed"
            if "busy" in message.lower():
                raise Busy(f"mountpoint is busy: {path!r} (close files using it, or --lazy)")
            raise MountError(f"cannot unmount {path!r}: {message}")
        if stale:
            note = "cleaned up a stale mount (its daemon had died)"
    if record is not None:
        deadline = time.monotonic() + timeout
        while registry.pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if registry.pid_alive(record.pid):
            os.kill(record.pid, signal.SIGTERM)
            time.sleep(1)
            if registry.pid_alive(record.pid):
                os.kill(record.pid, signal.SIGKILL)
        registry.remove_record(settings.state_dir, path)
        if record.writable:
            note = _draft_outcome(settings, path, record, note)
    return note


def _draft_outcome(settings: Settings, path: str, record: registry.MountRecord, note: str) -> str:
    """What became of a writable mount's changes: the daemon's result, or NotRecorded when
    they were not recorded (the commit failed, or the daemon died before it finished)."""
    import json

    from ..draft.session import pending_drafts

    retry = f"run 'dsfs commit --pending {record.version}'"
    result_file = registry.result_path(settings.state_dir, path)
    if result_file.exists():
        result = json.loads(result_file.read_text())
        result_file.unlink()
        if not result.get("ok"):
            raise NotRecorded(f"unmounted, but the commit failed and the changes are kept pending "
                              f"({retry} to retry): {result['error']}")
        return _describe_result(result)
    _release_dead_lease(settings, record)  # no result: the daemon died (or was killed by us)
    others = [r.mountpoint for r in registry.all_records(settings.state_dir)
              if r.version == record.version and r.writable and registry.pid_alive(r.pid)]
    if others:  # a writer that broke the dead daemon's lease took the staging area over
        return f"{note}; its changes are in the writable mount at {others[0]!r}"
    if record.version in pending_drafts(settings):
        raise NotRecorded(f"{note}, but the daemon died before recording the changes; they are "
                          f"kept pending: {retry}")
    # No staging area is left: the daemon recorded (or discarded) the changes and died after.
    return f"{note} (the daemon ended without a report; no changes are pending)"


def _release_dead_lease(settings: Settings, record: registry.MountRecord) -> None:
    """The daemon died holding the draft's write lease: it was ours, so give it back (if the
    store answers; if not, the next mount takes it over with --break-lease)."""
    import contextlib
    import socket

    from ..errors import DsfsError
    from ..draft.lease import lease_key, read_lease
    from ..store import open_store

    with contextlib.suppress(DsfsError):
        store = open_store(settings.store, settings)
        found = read_lease(store, record.version)
        if found and found[0].get("pid") == record.pid and found[0].get("host") == socket.gethostname():
            store.delete(lease_key(record.version))


def _describe_result(result: dict) -> str:
    if result.get("discarded"):
        return "unmounted; pending changes discarded"
    from ..repo import CommitSummary

    summary = CommitSummary(**result["summary"]) if result.get("summary") else None
    if summary is None or summary.empty:
        text = "unmounted; no changes"
    else:
        text = f"unmounted; committed {summary.describe()}"
    if result.get("published"):
        text += "; published"
    return text


def prefetch(mountpoint: str, paths: list[str]) -> int:
    """Tell a published mount the order its files will be read in; returns at once (the daemon
    prefetches a bounded distance ahead of the reads it sees). Paths are relative to the mount,
    or absolute paths inside it."""
    root = os.path.abspath(mountpoint)
    if registry.mount_fstype(root) != registry.FSTYPE:
        raise NotFound(f"not a dsfs mount: {root!r}")
    rel = []
    for path in paths:
        path = os.fspath(path)
        if os.path.isabs(path):
            inside = os.path.relpath(os.path.abspath(path), root)
            if inside == ".." or inside.startswith("../"):
                raise InvalidInput(f"path is not inside the mount {root!r}: {path!r}")
            path = inside
        rel.append("" if path == "." else path)
    return request(root, {"op": "prefetch", "paths": rel}, timeout=60)["paths"]


def status(settings: Settings) -> list[dict]:
    from ..draft.session import pending_drafts

    result = []
    for record in registry.all_records(settings.state_dir):
        alive = registry.pid_alive(record.pid)
        mounted = registry.mount_fstype(record.mountpoint) == registry.FSTYPE
        doc = record.to_json()
        doc["health"] = "ok" if alive and mounted and not registry.is_stale(record.mountpoint) else "dead"
        result.append(doc)
    mounted_versions = {r["version"] for r in result if r["health"] == "ok"}
    for version in pending_drafts(settings):
        if version not in mounted_versions:
            result.append({"version": version, "state": "pending", "health": "pending",
                           "mountpoint": None, "note": f"uncommitted changes; dsfs commit --pending {version}"})
    return result
