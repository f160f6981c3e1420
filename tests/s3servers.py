"""Pytest plugin: real S3 servers on 127.0.0.1 for tests (load with ``pytest_plugins``).

Two session-scoped fixtures, each yielding an ``S3Server``:

``moto_server``
    moto's ``ThreadedMotoServer`` in this process. Its data lives in moto's in-process backends,
    so ``stop()`` / ``start()`` (same port) keeps every bucket and object.
``seaweed_server``
    ``weed mini`` (SeaweedFS: master, volume, filer and S3 gateway in one process) in a temp
    folder, with an access key configured so requests are really signed and checked. Skipped if
    the ``weed`` binary is not installed. ``stop()`` kills the process, ``start()`` relaunches it
    on the same ports and data folder, so data survives.

Using a server from a test::

    def test_something(moto_server, monkeypatch):
        moto_server.apply_env(monkeypatch)        # AWS_ENDPOINT_URL, keys, region
        store = open_store(moto_server.new_bucket())  # "s3://bucket-<n>/prefix", a fresh bucket

``server.env`` is the same variables as a dict, for a subprocess (``env={**os.environ,
**server.env}``). ``server.client()`` is a plain boto3 client for checking things directly.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REGION = "us-east-1"
_bucket_numbers = itertools.count(1)


def free_ports(count: int) -> list[int]:
    """``count`` distinct ports that were free a moment ago (all bound at once, then released)."""
    socks = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class S3Server:
    """An S3-compatible server on 127.0.0.1 that tests can point stores at."""

    name = "s3"

    def __init__(self, access_key: str, secret_key: str) -> None:
        self.access_key = access_key
        self.secret_key = secret_key
        self.port = 0
        self.running = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
        }

    def apply_env(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Point boto3 (and so S3Store) in this process at this server, for one test."""
        for name in ("AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN",
                     "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        # Keep a developer's ~/.aws settings out of the tests.
        monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)

    def client(self, **config):
        """A plain boto3 S3 client for this server (one attempt, short timeouts by default)."""
        import boto3
        from botocore.config import Config

        options = {"retries": {"mode": "standard", "max_attempts": 1}, "connect_timeout": 2,
                   "read_timeout": 10, "s3": {"addressing_style": "path"}}
        options.update(config)
        return boto3.session.Session().client(
            "s3", endpoint_url=self.endpoint, region_name=REGION,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(**options),
        )

    def new_bucket(self, prefix: str = "prefix") -> str:
        """Create a fresh, empty bucket; returns ``s3://bucket-<n>/<prefix>`` for a store."""
        client = self.client()
        while True:
            bucket = f"bucket-{next(_bucket_numbers)}"
            try:
                client.create_bucket(Bucket=bucket)
            except client.exceptions.BucketAlreadyOwnedByYou:
                continue  # left over from an earlier start of the same server
            except client.exceptions.BucketAlreadyExists:
                continue
            break
        client.close()
        return f"s3://{bucket}/{prefix}" if prefix else f"s3://{bucket}"

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.name} server {self.endpoint}{'' if self.running else ' (stopped)'}>"


class MotoS3Server(S3Server):
    name = "moto"

    def __init__(self) -> None:
        super().__init__("testing", "testing")
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        if self.running:
            return
        # ThreadedMotoServer.start() waits forever if its thread cannot bind; check first.
        if self.port and not port_is_free(self.port):
            raise RuntimeError(f"moto port {self.port} is taken, cannot restart there")
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        server.start()
        self.port = server.get_host_and_port()[1]
        self._server = server
        self.running = True

    def stop(self) -> None:
        if not self.running:
            return
        # werkzeug answers every request with "Connection: close", so once the listening
        # socket is closed no client has a live connection left: requests are refused.
        self._server.stop()
        self._server = None
        self.running = False


def find_weed() -> str | None:
    found = shutil.which("weed")
    if found:
        return found
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() and os.access(beside, os.X_OK) else None


class SeaweedS3Server(S3Server):
    name = "seaweed"
    STARTUP_TIMEOUT = 60.0

    def __init__(self, weed: str, workdir: Path) -> None:
        super().__init__("dsfs-test-key", "dsfs-test-secret")
        self.weed = weed
        self.workdir = workdir
        self.data_dir = workdir / "data"
        self.log_dir = workdir / "logs"
        self.log_path = workdir / "weed.log"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        names = ["master", "master.grpc", "volume", "volume.grpc", "filer", "filer.grpc",
                 "s3", "s3.grpc", "admin", "admin.grpc"]
        self.ports = dict(zip(names, free_ports(len(names))))
        self.port = self.ports["s3"]
        self._proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        p = self.ports
        cmd = [
            self.weed, f"-logdir={self.log_dir}", "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master.grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume.grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer.grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3.grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # behave like AWS: writing to a missing bucket fails
            "-webdav=false",
            # Every bucket is a collection that takes 7 volumes on its first write; the automatic
            # bound (free disk / 128 MiB) runs out after ~60 buckets on a small disk.
            "-volume.max=5000",
            "-admin.ui=false", f"-admin.port={p['admin']}", f"-admin.port.grpc={p['admin.grpc']}",
        ]
        # Unix sockets default to /tmp/seaweedfs-*-<port>.sock; keep ours in the work folder
        # when its path fits in a socket address.
        if len(str(self.workdir)) < 80:
            cmd += [f"-filer.localSocket={self.workdir / 'filer.sock'}",
                    f"-s3.localSocket={self.workdir / 's3.sock'}"]
        return cmd

    def start(self) -> None:
        if self.running:
            return
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        # weed mini turns these into the credentials of its "mini" admin identity.
        env["AWS_ACCESS_KEY_ID"] = self.access_key
        env["AWS_SECRET_ACCESS_KEY"] = self.secret_key
        with open(self.log_path, "ab") as log:
            log.write(f"\n--- {' '.join(self.command())}\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.workdir, start_new_session=True,
            )
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            raise
        self.running = True

    def _wait_ready(self) -> None:
        """Poll until a bucket can be created and written to (volumes are up), or fail loudly."""
        deadline = time.monotonic() + self.STARTUP_TIMEOUT
        last_error: Exception | None = None
        client = self.client(connect_timeout=1, read_timeout=5)
        try:
            while time.monotonic() < deadline:
                if self._proc.poll() is not None:
                    self._fail(f"weed exited with status {self._proc.returncode} while starting")
                try:
                    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou,
                                             client.exceptions.BucketAlreadyExists):
                        client.create_bucket(Bucket="ready-probe")
                    client.put_object(Bucket="ready-probe", Key="probe", Body=b"ok")
                    return
                except Exception as exc:  # not up yet: refused, 5xx, no writable volume...
                    last_error = exc
                    time.sleep(0.25)
        finally:
            client.close()
        self._fail(f"seaweedfs s3 not ready on port {self.port} after "
                   f"{self.STARTUP_TIMEOUT:.0f} s (last error: {last_error})")

    def _fail(self, message: str) -> None:
        log = self.log_tail()
        print(f"{message}\n--- weed log ({self.log_path}):\n{log}", file=sys.stderr)
        raise RuntimeError(f"{message}\n--- weed log tail:\n{log}")

    def log_tail(self, lines: int = 80) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _kill(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        # weed is the session leader we started; signal its process group only.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def stop(self) -> None:
        self._kill()
        self.running = False

    def cleanup(self) -> None:
        self.stop()
        # weed puts its gRPC unix sockets in /tmp, named by port.
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                with contextlib.suppress(OSError):
                    sock.unlink()


@pytest.fixture(scope="session")
def moto_server():
    pytest.importorskip("moto.server", reason="moto[server] not installed")
    # werkzeug logs every request at INFO; keep test output readable.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = MotoS3Server()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def seaweed_server(tmp_path_factory):
    weed = find_weed()
    if weed is None:
        pytest.skip("seaweedfs (weed) not installed")
    server = SeaweedS3Server(weed, tmp_path_factory.mktemp("seaweed"))
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


def use_server_env(monkeypatch: pytest.MonkeyPatch, server: S3Server) -> None:
    """Function form of ``server.apply_env(monkeypatch)``."""
    server.apply_env(monkeypatch)

