"""Streaming: ``send(iterable)`` sends one fragmented message without holding it whole, and
``receive_streaming()`` yields a message's pieces as they arrive; against real uWSGI in
every flavour, 100 MB messages in bounded memory."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .helpers import AppServer

pytestmark = pytest.mark.timeout(180)

CHUNK = 2**20  # 1 MiB fragments
CHUNKS = 100  # 100 MiB


def worker_rss(server: AppServer) -> int:
    """The resident memory of the server's (only) worker, in bytes."""
    master = server.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    for line in Path(f"/proc/{children[0]}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def chunks(seed: bytes) -> Iterator[bytes]:
    block = hashlib.sha256(seed).digest() * (CHUNK // 32)
    for i in range(CHUNKS):
        yield block[i % 32 :] + block[: i % 32]


@pytest.fixture(scope="module", params=["plain", "gevent", "asyncio"])
def server(request: pytest.FixtureRequest) -> Iterator[AppServer]:
    with AppServer(request.param, "http-socket") as srv:
        yield srv


@pytest.mark.parametrize("path", ["/stream-echo", "/stream-echo-deflate"])
def test_100_mb_echoed_as_it_streams_in_bounded_memory(server: AppServer, path: str) -> None:
    expected = hashlib.sha256()
    for piece in chunks(path.encode()):
        expected.update(piece)
    before = worker_rss(server)
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], worker_rss(server))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    with connect(f"{server.url}{path}", max_size=None, open_timeout=10) as ws:
        sender = threading.Thread(target=ws.send, args=(chunks(path.encode()),), daemon=True)
        sender.start()
        got = hashlib.sha256()
        size = pieces = 0
        for piece in ws.recv_streaming():
            assert isinstance(piece, bytes)
            got.update(piece)
            size += len(piece)
            pieces += 1
        sender.join(30)
    done.set()
    sampler.join(5)
    assert size == CHUNK * CHUNKS and got.digest() == expected.digest(), size
    # The pieces went back as they came, not the whole at the end. (Frames that arrive
    # before the handler starts streaming come together: in the plain flavour a few do.)
    assert pieces > CHUNKS // 2, f"{pieces} pieces"
    growth = peak[0] - before
    # The message is 100 MiB; a worker that held it would grow by that much at least.
    assert growth < 30 * 2**20, f"the worker grew by {growth / 2**20:.1f} MiB"


def test_fragmented_text_binary_and_whole_messages(server: AppServer) -> None:
    """Fragmented text comes back as text, binary as binary, a whole message whole."""
    with connect(f"{server.url}/stream-echo", open_timeout=10) as ws:
        ws.send(["h", "é" * 3, "llo €"])
        assert ws.recv(timeout=10) == "héééllo €"
        ws.send(iter([b"\x00", b"\xff"]))
        assert ws.recv(timeout=10) == b"\x00\xff"
        ws.send("whole")
        assert ws.recv(timeout=10) == "whole"
