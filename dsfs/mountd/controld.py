"""The daemon side of a writable draft mount's control socket.

``dsfs commit`` and ``dsfs umount`` (dsfs/mountd/control.py, the client side) send one JSON
line to the mount's abstract unix socket and read one back: ``commit`` commits the closed
changes now, ``finish`` says what the unmount does with them (commit, discard or publish),
``pending`` asks whether there are any. Every request runs as a task of the mount's trio loop;
a commit in a worker thread, so requests to the mount go on meanwhile.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket

import trio

from ..draft.session import DraftSession
from ..errors import DsfsError, InvalidInput
from .registry import control_address

log = logging.getLogger(__name__)

FINISH_MODES = ("commit", "discard", "publish")


async def serve(session: DraftSession, mountpoint: str, task_status=trio.TASK_STATUS_IGNORED) -> None:
    """Answer control requests until cancelled; ``started`` once the socket listens."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await sock.bind(control_address(mountpoint))
    sock.listen(8)
    task_status.started()
    async with trio.open_nursery() as nursery:
        while True:
            conn, _ = await sock.accept()
            nursery.start_soon(_request, session, conn)


async def _request(session: DraftSession, conn) -> None:
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = await conn.recv(65536)
            if not chunk:
                break
            data += chunk
        try:
            reply = await answer(session, json.loads(data or b"{}"))
        except DsfsError as exc:
            reply = {"ok": False, "error": str(exc), "kind": type(exc).__name__}
        except Exception as exc:
            log.exception("control request failed")
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        await conn.send(json.dumps(reply).encode() + b"\n")


async def answer(session: DraftSession, request: dict) -> dict:
    """The reply to one request (a ``DsfsError`` is the caller's to report)."""
    op = request.get("op")
    if op == "commit":
        summary = await trio.to_thread.run_sync(session.commit_now)
        return {"ok": True, "summary": dataclasses.asdict(summary)}
    if op == "finish":
        mode = request.get("mode", "commit")
        if mode not in FINISH_MODES:
            raise InvalidInput(f"unknown finish mode: {mode!r}")
        session.exit_mode = mode
        return {"ok": True}
    if op == "pending":
        return {"ok": True, "pending": await trio.to_thread.run_sync(session.overlay.has_changes)}
    raise InvalidInput(f"unknown control request: {op!r}")
