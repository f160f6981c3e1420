"""One writer per draft: a lease record in the store, created once and renewed by heartbeat.

``leases/<version>.json`` names the holder (host, boot, pid, mountpoint, since) and an expiry.
It is created with a conditional put, renewed with compare-and-swap, deleted on release. A
holder that dies stops renewing and its lease expires. A holder that is a dead process of this
very boot of this host is certainly gone: its lease is taken over (with a warning); taking over
any other expired lease needs ``--break-lease``, as its holder may still be writing somewhere.

The heartbeat is a thread of its own, and a holder gives it a store client of its own, so an
upload that hogs (or hangs in) the main client never starves it. A holder that could not renew
for longer than ``TTL`` may have been taken over: ``check`` refuses to let it commit until a
renewal succeeds again.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import socket
import threading
import time

from ..errors import AlreadyExists, Conflict, NotFound, StoreUnavailable
from ..procs import boot_id, pid_alive
from ..store.base import ObjectStore

log = logging.getLogger(__name__)

TTL = 60.0


def lease_key(version_id: str) -> str:
    return f"leases/{version_id}.json"


def read_lease(store: ObjectStore, version_id: str) -> tuple[dict, str] | None:
    try:
        data, etag = store.get(lease_key(version_id))
    except NotFound:
        return None
    try:
        return json.loads(data), etag
    except ValueError:
        return {"host": "?", "pid": 0, "since": "?", "expires": 0}, etag


def describe(lease: dict) -> str:
    return f"host {lease.get('host')!r} pid {lease.get('pid')} since {lease.get('since')}"


def holder_state(lease: dict) -> str:
    """'dead' (a process of this boot of this host, gone), 'expired' or 'live'."""
    if lease.get("host") == socket.gethostname() and lease.get("boot", boot_id()) == boot_id():
        try:
            if not pid_alive(int(lease.get("pid", 0))):
                return "dead"
        except ValueError:
            pass
    if lease.get("expires", 0) < time.time():
        return "expired"
    return "live"


def check_not_leased(store: ObjectStore, version_id: str) -> None:
    found = read_lease(store, version_id)
    if found is not None and holder_state(found[0]) == "live":
        raise Conflict(f"draft {version_id!r} is mounted writable by {describe(found[0])}; unmount it first")


class Lease:
    def __init__(self, store: ObjectStore, version_id: str, body: dict, etag: str) -> None:
        self.store, self.version_id, self.body, self.etag = store, version_id, body, etag
        self.lost = False
        self.renewed = time.time()  # when the lease was last made or renewed
        self.took_over: str | None = None  # the dead holder whose lease this one replaced
        self.on_stale = lambda stale: None  # told when the heartbeat finds it stale, or renewed again
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def acquire(cls, store: ObjectStore, version_id: str, mountpoint: str, *,
                break_lease: bool = False) -> "Lease":
        body = {"host": socket.gethostname(), "boot": boot_id(), "pid": os.getpid(), "mountpoint": mountpoint,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "token": secrets.token_hex(8), "expires": time.time() + TTL}
        data = json.dumps(body).encode()
        try:
            return cls(store, version_id, body, store.put_if_absent(lease_key(version_id), data))
        except AlreadyExists:
            pass
        found = read_lease(store, version_id)
        if found is None:  # released between our two calls: try once more
            return cls(store, version_id, body, store.put_if_absent(lease_key(version_id), data))
        current, etag = found
        state = holder_state(current)
        if state == "live":
            raise Conflict(f"draft {version_id!r} is already mounted writable by {describe(current)}")
        if state != "dead" and not break_lease:
            raise Conflict(f"draft {version_id!r} has a lease by {describe(current)} whose holder is "
                           f"{state}; use --break-lease to take it over")
        log.warning("taking over the %s lease of %s held by %s", state, version_id, describe(current))
        lease = cls(store, version_id, body, store.put_if_match(lease_key(version_id), data, etag))
        if state == "dead":
            lease.took_over = describe(current)
        return lease

    def renew(self) -> None:
        now = time.time()
        self.body["expires"] = now + TTL
        try:
            self.etag = self.store.put_if_match(lease_key(self.version_id), json.dumps(self.body).encode(),
                                                self.etag)
        except Conflict:
            self.lost = True
            log.error("lost the lease of %s: another writer took it over", self.version_id)
            raise
        was_stale = self.stale
        self.renewed = now
        if was_stale:
            log.info("renewed the lease of %s again; commits may go ahead", self.version_id)
            self.on_stale(False)

    @property
    def stale(self) -> bool:
        """Not renewed for longer than TTL: another host may have taken it over by now."""
        return time.time() - self.renewed > TTL

    def check(self) -> None:
        """Raise unless this holder can be sure it is still the draft's one writer."""
        if self.lost:
            raise Conflict(f"lost the lease of draft {self.version_id!r} to another writer; not committing")
        if self.stale:
            raise StoreUnavailable(f"the lease of draft {self.version_id!r} could not be renewed for "
                                   f"{time.time() - self.renewed:.0f} s (is the store reachable?); not "
                                   "committing until it is, as another writer may have taken it over")

    def start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(TTL / 3):
                try:
                    self.renew()
                except Conflict:
                    return
                except Exception as exc:  # store outage: keep trying, the lease has slack
                    if self.stale:
                        log.error("the lease of %s was not renewed for %.0f s: %s; commits are refused "
                                  "until it is", self.version_id, time.time() - self.renewed, exc)
                        self.on_stale(True)
                    else:
                        log.warning("lease renewal of %s failed: %s", self.version_id, exc)

        self._thread = threading.Thread(target=beat, name="dsfs-lease", daemon=True)
        self._thread.start()

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.lost:
            return
        found = read_lease(self.store, self.version_id)
        if found is not None and found[0].get("token") == self.body["token"]:
            self.store.delete(lease_key(self.version_id))
