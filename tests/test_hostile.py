"""Hostile peers against a real uWSGI worker: the worker and its other connections are unharmed.

One gevent worker (the most used flavour) serves ``tests/app.py`` with ``--http-socket``, so
the attackers reach the worker itself rather than uWSGI's ``--http`` router in front of it.
In every test an honest client echoes a message every few milliseconds while the attack
runs, and its worst round trip must stay under :data:`BOUND`; once the attacker has left,
the worker's file descriptors are back to their number before the attack and its resident
memory near it.

What each attack gets:

- slow handshakes (a byte a second) hold one of the worker's async cores each, for as
  long as they last (uWSGI has no deadline for a whole head), and nothing more; uWSGI
  drops a head that stalls for ``--socket-timeout`` (here 3 s; with uWSGI's defaults a
  stalled head was dropped after 30 s, measured);
- a request head over ``--buffer-size`` (here 8 KiB) is dropped by uWSGI before the app
  sees it: no HTTP answer at all (not 431), the connection is closed (reset when unread
  data is left), and uWSGI logs ``invalid HTTP request size (max 8192)...skip``; a larger
  ``--buffer-size`` admits larger heads. (Behind ``--http`` the worker's ``--buffer-size``
  applies the same way; uWSGI logs ``invalid request block size``.)
- garbage after the handshake: 1002;
- a frame that claims 2**62 bytes and stalls: 1009 at once, then the connection ends;
- fragments forever (each below ``max_message_size``, the message growing): 1009 once the
  message passes ``max_message_size``; empty or one-byte fragments cost no more memory
  than the message they make;
- a ping flood from a peer that never reads: the pongs wait in the connection's output;
  past ``write_limit`` the server stops reading (so the flood stops at TCP's flow control
  and memory is bounded), and the keepalive ping, stuck behind them, times out: the
  connection is dropped after ``ping_interval + ping_timeout`` (its 1011 close frame never
  reaches a peer that does not read).
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .helpers import BINARY, CONT, PING, TEXT, AppServer, RawClient, frame, wait_for

#: The worst round trip allowed to the honest client while an attack runs (seconds);
#: generous: the machine may be busy.
BOUND = 1.0
#: The test app's ``WEBSOCKET_MAX_MESSAGE_SIZE`` (``tests/app_common.py``).
MAX_MESSAGE_SIZE = 1_500_000
#: How much the worker's resident memory may stay above its level before an attack (KiB).
RSS_SLACK = 4096


@pytest.fixture(scope="module")
def server() -> Iterator[AppServer]:
    extra = ("--buffer-size", "8192", "--socket-timeout", "3")
    with AppServer("gevent", "http-socket", extra) as srv:
        yield srv


def worker_pid(server: AppServer) -> int:
    """The PID of the server's one worker."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def rss_kib(pid: int) -> int:
    """A process's resident memory (VmRSS), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def fd_count(pid: int) -> int:
    """How many file descriptors a process has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


class Probe:
    """An honest client that echoes a message every few milliseconds, in a thread."""

    def __init__(self, server: AppServer) -> None:
        self.url = f"{server.url}/echo"
        self.worst = 0.0
        self.rounds = 0
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            with connect(self.url) as ws:
                while not self._stop.is_set():
                    started = time.monotonic()
                    message = f"honest {self.rounds}"
                    ws.send(message)
                    assert ws.recv(timeout=10) == message
                    self.worst = max(self.worst, time.monotonic() - started)
                    self.rounds += 1
                    self._stop.wait(0.02)
        except BaseException as exc:  # reported by check()
            self.error = exc

    def check(self) -> None:
        """The honest client is still served, within :data:`BOUND`."""
        assert self.error is None, self.error
        rounds = self.rounds
        wait_for(lambda: self.rounds > rounds or self.error, timeout=BOUND * 5)
        assert self.error is None, self.error
        assert self.worst < BOUND, f"worst round trip {self.worst:.3f} s"

    def close(self) -> None:
        self._stop.set()
        self._thread.join(15)


@contextlib.contextmanager
def attack(server: AppServer) -> Iterator[Probe]:
    """Around an attack: the honest probe runs throughout; after, the worker's descriptors
    come back to their number before it, and its memory near its level before it."""
    pid = worker_pid(server)
    probe = Probe(server)
    try:
        wait_for(lambda: probe.rounds >= 3)
        fds, rss = fd_count(pid), rss_kib(pid)
        yield probe
        probe.check()
        wait_for(lambda: fd_count(pid) == fds)
        after = rss_kib(pid)
        print(f"rss before {rss} KiB, after {after} KiB; worst round trip {probe.worst:.3f} s")
        assert after < rss + RSS_SLACK, (rss, after)
        probe.check()
    finally:
        probe.close()
    assert server.process.poll() is None
    assert worker_pid(server) == pid  # not respawned


HEAD = (
    "GET /echo HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)


def is_open(sock: socket.socket) -> bool:
    """Whether the server has not closed ``sock`` (nothing to read, no end of stream)."""
    sock.setblocking(False)
    try:
        return sock.recv(100) != b""
    except BlockingIOError:
        return True
    except ConnectionResetError:
        return False
    finally:
        sock.setblocking(True)


def test_slow_handshakes(server: AppServer) -> None:
    with attack(server) as probe:
        slow = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(5)]
        stalled = socket.create_connection(("127.0.0.1", server.port))
        stalled.sendall(HEAD[:10].encode())
        started = time.monotonic()
        for i in range(4):  # a byte a second
            for sock in slow:
                sock.sendall(HEAD[i : i + 1].encode())
            with connect(f"{server.url}/echo") as newcomer:  # handshakes go on meanwhile
                newcomer.send("new")
                assert newcomer.recv(timeout=BOUND) == "new"
            probe.check()
            time.sleep(max(0.0, started + i + 1 - time.monotonic()))
        # uWSGI dropped the head that stalled for --socket-timeout (3 s); a byte a second
        # keeps the others (each holds one of the worker's 100 async cores).
        assert not is_open(stalled)
        assert all(is_open(sock) for sock in slow)
        for sock in [*slow, stalled]:
            sock.close()


def test_oversized_request_heads(server: AppServer) -> None:
    with attack(server):
        ok = RawClient(server.address, "/echo", {"X-Fill": "a" * 6000})  # under 8 KiB
        ok.send(frame(TEXT, b"fits"))
        assert ok.recv_data() == (TEXT, b"fits")
        ok.close()
        for size in (10_000, 1_000_000):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            with contextlib.suppress(OSError):  # reset once uWSGI closed it
                sock.sendall((HEAD + "X-Fill: " + "a" * size + "\r\n\r\n").encode())
            with contextlib.suppress(ConnectionResetError):
                assert sock.recv(100) == b""  # no answer
            sock.close()
    assert "invalid HTTP request size (max 8192)...skip" in server.output()


@pytest.mark.parametrize(
    "garbage",
    [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", b"\xff" * 64, b"\x81\x05hello"],
    ids=["http", "ff", "unmasked"],
)
def test_garbage_after_the_handshake(server: AppServer, garbage: bytes) -> None:
    with attack(server):
        raw = RawClient(server.address, "/echo")
        raw.send(garbage)
        assert raw.expect_close()[0] == 1002
        assert raw.wait_eof() < 5
        raw.close()


def test_a_frame_claiming_2_to_the_62_bytes_then_stalling(server: AppServer) -> None:
    with attack(server):
        raw = RawClient(server.address, "/echo")
        raw.send(b"\x82\xff" + (2**62).to_bytes(8, "big") + b"mask" + b"x" * 1000)
        assert raw.expect_close()[0] == 1009
        assert raw.wait_eof() < 5  # the server is done with it, though the peer stalls
        raw.close()


def test_fragments_forever(server: AppServer) -> None:
    with attack(server):
        raw = RawClient(server.address, "/echo")
        raw.send(frame(BINARY, b"x" * 60000, fin=False))
        sent = 60000
        while sent <= MAX_MESSAGE_SIZE:
            raw.send(frame(CONT, b"x" * 60000, fin=False))
            sent += 60000
        assert raw.expect_close()[0] == 1009
        raw.close()


def test_tiny_fragments_forever(server: AppServer) -> None:
    """Empty and one-byte fragments: the message costs its size, not a list of pieces."""
    pid = worker_pid(server)
    with attack(server):
        raw = RawClient(server.address, "/echo")
        raw.send(frame(TEXT, b"", fin=False))
        before = rss_kib(pid)
        empty = frame(CONT, b"", fin=False) * 10000
        for _ in range(20):  # 200,000 empty fragments
            raw.send(empty)
        one = frame(CONT, b"y", fin=False) * 10000
        for _ in range(20):  # 200,000 one-byte fragments: a 200 KB message
            raw.send(one)
        raw.send(frame(PING, b"done?"))
        assert raw.recv_frame()[:2] == (0xA, b"done?")
        grown = rss_kib(pid) - before
        print(f"rss grew by {grown} KiB over 400,000 fragments")
        assert grown < 2048
        raw.send(frame(CONT, b"!"))
        assert raw.recv_data() == (TEXT, b"y" * 200_000 + b"!")
        raw.close()


def test_ping_flood_from_a_peer_that_never_reads(server: AppServer) -> None:
    pid = worker_pid(server)
    server.http("/events", "DELETE")
    with attack(server):
        rss, fds = rss_kib(pid), fd_count(pid)
        raw = RawClient(server.address, "/keepalive-echo")  # ping 0.3 s, pong timeout 0.6 s
        raw.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.sock.settimeout(0.5)
        ping = frame(PING, b"p" * 125) * 500
        sent = 0
        peak = rss
        # The flood ends when the server stops reading (a send times out) or drops the peer.
        with contextlib.suppress(TimeoutError, OSError):
            while sent < 200 * 2**20:
                raw.sock.sendall(ping)
                sent += len(ping)
                peak = max(peak, rss_kib(pid))
        print(f"flood: {sent} bytes sent before blocking; rss {rss} -> peak {peak} KiB")
        assert sent < 64 * 2**20  # the server stopped reading: TCP flow control
        assert peak - rss < 16 * 1024  # write_limit (1 MiB) and change
        # The keepalive ping sits behind the pongs: it times out, the server drops the peer
        # although the peer keeps its end open.
        wait_for(lambda: fd_count(pid) == fds, timeout=5)
        # Its handler ended: ConnectionClosed, 1006 (no close frame reaches a peer that
        # does not read: the 1011 close frame waits behind the pongs when it goes).
        assert wait_for(lambda: server.events("keepalive-echo")) == [
            {"route": "keepalive-echo", "code": 1006}
        ]
        raw.close()
