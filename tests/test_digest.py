"""The running sha256 of staged files (dsfs/draft/digest.py), with its pipeline thread, without
FUSE: the digests equal hashlib's whatever the mix of small (hashed in place) and big (queued)
pieces, across threads and a fork; the queue is bounded; close-time hashing skips holes."""

from __future__ import annotations

import hashlib
import os
import random
import threading

import pytest

from dsfs.draft import digest
from dsfs.draft.digest import PIPELINE_MIN, RunningHash, hash_staged


def _pieces(rng: random.Random, total: int) -> list[bytes]:
    out, left = [], total
    while left:
        n = min(left, rng.choice([1, 100, 4096, PIPELINE_MIN - 1, PIPELINE_MIN, 1 << 20, 3 << 20]))
        out.append(rng.randbytes(n))
        left -= n
    return out


@pytest.mark.parametrize("seed", range(6))
def test_small_and_big_pieces_in_any_mix_give_hashlibs_digest(seed):
    rng = random.Random(seed)
    pieces = _pieces(rng, rng.randrange(1, 12 << 20))
    h, offset, expected = RunningHash(), 0, hashlib.sha256()
    for piece in pieces:
        gap = rng.randrange(1, 2 << 20) if rng.random() < 0.2 else 0  # zeros between, as a write past the end leaves
        assert h.write(offset + gap, piece)
        expected.update(bytes(gap) + piece)
        offset += gap + len(piece)
    tail = rng.randrange(0, 1 << 20)
    sha, size, _ = h.finish(offset + tail)
    expected.update(bytes(tail))
    assert size == offset + tail and sha == expected.hexdigest()
    assert h.queued == 0


def test_a_write_before_what_was_hashed_is_refused():
    h = RunningHash()
    assert h.write(0, bytes(PIPELINE_MIN))
    assert not h.write(10, b"x")  # a rewrite: close hashes the file instead
    assert h.truncate(PIPELINE_MIN) and not h.truncate(PIPELINE_MIN - 1)


def test_files_hashed_at_once_from_many_threads_keep_their_own_digests():
    datas = [random.Random(i).randbytes((i + 1) * (700 << 10)) for i in range(8)]
    got: dict[int, str] = {}

    def writer(i: int) -> None:
        h, data = RunningHash(), datas[i]
        for at in range(0, len(data), 1 << 20):
            h.write(at, data[at:at + (1 << 20)])
        got[i] = h.finish(len(data))[0]

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == {i: hashlib.sha256(d).hexdigest() for i, d in enumerate(datas)}


def test_the_pipeline_works_in_a_forked_child():
    data = os.urandom(3 << 20)
    h = RunningHash()
    h.write(0, data)  # the parent's thread is running now
    assert h.finish(len(data))[0] == hashlib.sha256(data).hexdigest()
    pid = os.fork()
    if pid == 0:  # the child: no pipeline thread came along; a new one must start
        try:
            c = RunningHash()
            c.write(0, data)
            os._exit(0 if c.finish(len(data))[0] == hashlib.sha256(data).hexdigest() else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


class _HeldSha:
    """A sha256 whose updates wait for ``go``: the pipeline thread stalls in it."""

    def __init__(self) -> None:
        self.go = threading.Event()
        self.sha = hashlib.sha256()

    def update(self, data) -> None:
        self.go.wait(30)
        self.sha.update(data)

    def hexdigest(self) -> str:
        return self.sha.hexdigest()


def test_a_writer_waits_once_the_queue_holds_its_bound(monkeypatch):
    monkeypatch.setattr(digest, "PIPELINE_BYTES", 2 * PIPELINE_MIN)
    h = RunningHash()
    h.sha = held = _HeldSha()
    piece = bytes(PIPELINE_MIN)
    h.write(0, piece)
    h.write(PIPELINE_MIN, piece)  # the queue (and the stalled thread) now hold the bound
    third = threading.Thread(target=h.write, args=(2 * PIPELINE_MIN, piece))
    third.start()
    third.join(0.5)
    assert third.is_alive()  # waits for room
    held.go.set()
    third.join(30)
    assert not third.is_alive()
    assert h.finish(3 * PIPELINE_MIN)[0] == hashlib.sha256(bytes(3 * PIPELINE_MIN)).hexdigest()


def test_close_time_hashing_reads_data_and_feeds_holes_as_zeros(tmp_path):
    path = tmp_path / "sparse"
    with open(path, "wb") as f:
        f.write(b"head")
        f.seek(40 << 20)
        f.write(b"tail" * 100_000)
        f.truncate(50 << 20)
    with open(path, "rb") as f:
        sha, size, _ = hash_staged(f.fileno())
    assert size == 50 << 20
    assert sha == hashlib.sha256(path.read_bytes()).hexdigest()
