"""Soak test: every flavour at once, with the Redis broker, under churn for a given time.

    .venv/bin/python bench/soak.py [--duration 3600] [--flavours plain,gevent,asyncio]
                                   [--members 40] [--wave 15] [--recycle-every 300]
                                   [--warmup 600] [--rss-growth 5] [--malloc tuned]
                                   [--json soak.json]
    .venv/bin/python bench/soak.py --summary soak.json

One redis-server, and bench/soak_app.py under one uWSGI instance per flavour (plain with
``--threads``, gevent with ``--gevent``, asyncio with ``--asyncio --greenlet``), each
``--master --processes 2 --http-socket`` with a ``--stats`` server, all three on the same
Redis channel, so that a broadcast made in one instance reaches the members of its room in
all three. This process is the client of all three at the same time (``websockets`` on
asyncio). For each flavour it runs waves, one after the other, each ``--wave`` seconds long:

- ``--members`` connections open (staggered), each joins one or two of the rooms shared by
  every flavour, then, until the wave ends, sends messages of random sizes (0 to 512 KiB)
  and types (text with multi-byte UTF-8, binary), each echoed and checked byte for byte and
  in order; broadcasts to one of its rooms (text or binary, up to 16 KiB, carrying its
  sender, its number and a padding derived from both, so a recipient checks it byte for
  byte); pings (the server pings too, every 5 s). At the end of the wave each waits for its
  echoes and the broadcasts it is owed, then closes: normally (1000) or with a TCP reset.
- abrupt peers: connections reset (``SO_LINGER`` 0) after a few messages; connections
  half-closed (``shutdown(SHUT_WR)``), which the server must close; a silent peer, whose TCP
  connection stays up but which never reads nor answers a ping (what a half-open peer looks
  like to the server), which the server must close with 1011; a client process with three
  connections and unread data, killed with SIGKILL.
- a slow reader: a connection to ``/soak-slow`` (``max_send_buffer`` 64 KiB) that stops
  reading, and one to ``/soak-big`` (16 MiB), in a room of their own; the second floods
  the room (400 broadcasts of 16 KiB, more than the kernel's socket buffers usually hold):
  the slow one must be closed with 1013 after an in-order prefix of them, or, when the
  buffers on the way took the whole flood (counted, with ``ss``'s view of the connection
  in the notes), have all of them in order; the other must get all of them, in order.
- now and then (``--recycle-every``, the flavours in turn) worker 2 of an instance is
  recycled: SIGHUP, as uWSGI's master sends it in a graceful or chain reload. Its clients
  get 1001 and reconnect (and join their rooms again). Worker 1 is never recycled.
- in the second half of the warm-up (``--warmup``, default the first sixth of the run)
  every connection goes to worker 1 (one that lands on worker 2 is closed and opened
  again): first 64 at once, one per thread of the plain flavour, each echoing a few
  messages; then whole waves. A worker's RSS is a high-water mark of what it has served at
  once, so the warm-up must include the most the run will put on worker 1 (all of a wave,
  while worker 2 is being recycled), or the first time that happens would look like
  growth.
- the workers run with glibc's allocator set as README.rst advises (``--malloc tuned``:
  ``GLIBC_TUNABLES`` with two arenas, a fixed 128 KiB mmap threshold and no per-thread
  cache); ``--malloc default`` leaves glibc's defaults, under which the plain flavour's 64
  threads keep growing their arenas, and ``--malloc tuned-with-tcache`` keeps the
  per-thread caches, which fill slowly (up to about 240 KiB a thread).

Checks (a failure names itself in the output, and the exit status is 1):

- no message lost or corrupted. An echo must come back identical and in order; one still
  on its way when the server closed the connection (1001, 1013) is counted, not lost. A
  broadcast is owed to every member that had joined its room (the join answered) when the
  sender sent it, and counts as lost if the member never got it although the sender had its
  acknowledgement (the broadcast made) at least ``GRACE`` seconds before the member ended
  (its closing wait began, or the server closed it); each sender's broadcasts must arrive
  once each, in order, to members of the room only.
- each connection closes as its kind should (1000, 1001 when recycled, 1013 for the slow
  reader, 1011 for the silent one; the server must close the half-closed and silent ones).
- after each wave, once its connections are gone, each worker's open file descriptors
  (but its eventfds: the plain flavour's handler threads keep one each) are back to their
  baseline and no socket of the instance's port is in CLOSE_WAIT (waiting at most
  ``SETTLE`` seconds). A worker's baseline is its count at its second idle moment,
  once it has been through a whole wave (a worker opens some sockets lazily: to Redis, for
  its threads); a wave kept from it by the warm-up does not count.
- worker 1's resident memory (VmRSS) once glibc has given back its free pages (the app's
  ``trim`` command: the memory in use) at its last idle moment is less than ``--rss-growth``
  (5%) above what it was at the end of the warm-up: the highest of its idle moments during
  the warm-up, the working set it reached. The slope of its idle RSS after the warm-up
  (least squares) is reported too, and so is a census of worker 1 at each idle moment
  (the app's ``census`` command: Python's allocated blocks and tracked objects, glibc's
  ``mallinfo2()``), which tells a leak of Python objects from the allocator's caches;
  ``--tracemalloc`` also prints the source lines whose allocations grew most.
- no worker respawn but those the soak caused, from the stats servers; no traceback in the
  uWSGI logs.

It prints a line per minute and, with ``--json``, writes the figures (rewritten each
minute): the settings, a sample every ``--sample`` seconds per flavour (counters, each
worker's pid, RSS and fds, CLOSE_WAIT), the idle checks after each wave, the RSS check and
the failures. bench/soak_chart.py draws RSS and fds over time from that file.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import itertools
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
FLAVOURS = ("plain", "gevent", "asyncio")
#: uWSGI options of each flavour: room for every connection of a wave in one worker.
ENGINE_ARGS = {
    "plain": ["--threads", "64"],
    "gevent": ["--gevent", "200"],
    "asyncio": ["--asyncio", "200", "--greenlet"],
}
WORKERS = 2
#: Connections worker 1 holds at once in the warm-up's peak: every thread of the plain
#: flavour, more than a wave ever puts on one worker (see ``peak``).
PEAK = 64
#: glibc's allocator settings README.rst advises (``--malloc tuned``): two arenas, buffers
#: from 128 KiB up mapped and unmapped on their own, no per-thread cache of freed chunks.
TUNED_MALLOC = (
    "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=131072:glibc.malloc.tcache_count=0"
)
MALLOC_SETTINGS = {
    "tuned": TUNED_MALLOC,
    # Each thread keeps a cache of freed chunks (tcache), which fills slowly: with many
    # threads, it looks like growth.
    "tuned-with-tcache": "glibc.malloc.arena_max=2:glibc.malloc.mmap_threshold=131072",
    "default": "",
}
#: The worker the soak recycles (worker 1 never is: its RSS is the one checked).
RECYCLED = 2
ROOMS = [f"room-{n}" for n in range(6)]
#: Seconds between a broadcast's acknowledgement and a member's end after which a
#: member still open must have it.
GRACE = 2.0
#: Seconds a member waits at the end of its wave for its echoes, acks and broadcasts.
DRAIN = 30.0
#: Seconds the workers get, after a wave, to be back to their fds and no CLOSE_WAIT.
SETTLE = 30.0
#: The slow reader's flood: broadcasts, and bytes of each.
FLOOD, FLOOD_SIZE = 400, 16384
#: Characters of the text messages: ASCII and 2, 3 and 4-byte UTF-8.
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789 é€𝄞ß中"
#: How long a connection may take to open (a busy machine).
OPEN_TIMEOUT = 30.0
CLOSE_WAIT = "08"  # the state's number in /proc/net/tcp

#: A client process for the "killed" peers: N connections with data they never read,
#: "ready" on stdout, then it waits to be killed.
KILLED_CLIENT = r"""
import base64, os, socket, struct, sys, time
port, count = int(sys.argv[1]), int(sys.argv[2])
held = []
for _ in range(count):
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(("GET /soak HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    payload, mask = os.urandom(1000), os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall((bytes([0x82, 0x80 | 126]) + struct.pack("!H", 1000) + mask + masked) * 3)
    held.append(sock)
print("ready", flush=True)
time.sleep(3600)
"""


def padding(key: str, seq: int, size: int) -> str:
    """``size`` characters derived from a broadcast's sender and number."""
    block = hashlib.sha256(f"{key}:{seq}".encode()).hexdigest()
    return (block * (size // len(block) + 1))[:size]


def broadcast_text(key: str, seq: int, size: int) -> str:
    return f"B{key}:{seq}:{size}:" + padding(key, seq, size)


def flood_text(tag: str, index: int) -> str:
    return f"F{tag}:{index}:" + "x" * FLOOD_SIZE


def random_size() -> int:
    """Mostly small messages, some up to 64 KiB, a few up to 512 KiB."""
    roll = random.random()
    if roll < 0.6:
        return random.randint(0, 200)
    if roll < 0.9:
        return random.randint(200, 8192)
    if roll < 0.99:
        return random.randint(8192, 65536)
    return random.randint(65536, 524288)


def echo_message() -> str | bytes:
    """A random message for the echo, marked ``E``."""
    size = random_size()
    if random.random() < 0.5:
        return b"E" + random.randbytes(size)
    return "E" + "".join(random.choices(ALPHABET, k=size))


@dataclass
class Broadcast:
    """A broadcast a member asked for."""

    key: str
    seq: int
    room: str
    binary: bool
    made_at: float
    acked_at: float | None = None


#: Seconds after which a broadcast is forgotten (one arriving later is a failure).
FORGET = 300.0


class Soak:
    """The servers' addresses, the shared state of the clients, the failures."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.flavours: tuple[str, ...] = tuple(args.flavours.split(","))
        self.started = time.monotonic()
        self.counts = {flavour: Counter[str]() for flavour in self.flavours}
        self.failures: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        #: The joined members of each room (every flavour's).
        self.rooms: dict[str, set[Conn]] = {room: set() for room in ROOMS}
        self.broadcasts: dict[tuple[str, int], Broadcast] = {}
        self.ports: dict[str, int] = {}
        self.stats_ports: dict[str, int] = {}
        self.masters: dict[str, Any] = {}
        #: Worker pids the soak recycled, and how many times, per flavour.
        self.recycled: dict[str, list[int]] = {flavour: [] for flavour in self.flavours}
        self.recycles = Counter[str]()
        #: Each worker process's fds at its second idle moment (see idle_check).
        self.baseline_fds: dict[int, int] = {}
        self.baseline_targets: dict[int, Counter[str]] = {}
        self.idle_seen: Counter[int] = Counter()
        self.samples: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in self.flavours}
        self.idle: dict[str, list[dict[str, Any]]] = {flavour: [] for flavour in self.flavours}
        self.keys = itertools.count()
        #: The worker pid each flavour's connections must land on now (see ``waves``).
        self.pinned: dict[str, int | None] = {}
        #: The flavours whose tracemalloc baseline was taken after the warm-up.
        self.census_baselined: set[str] = set()
        self.notes: list[str] = []
        self.stopping = False

    def now(self) -> float:
        """Seconds since the start."""
        return time.monotonic() - self.started

    def fail(self, name: str, detail: str) -> None:
        """Count a failure of kind ``name``; keep the first details of each."""
        self.failures[name] += 1
        examples = self.examples.setdefault(name, [])
        if len(examples) < 5:
            examples.append(f"{self.now():.1f} s: {detail}")
        if self.failures[name] == 1:
            print(f"FAILURE {name}: {detail}", flush=True)


class Conn:
    """One client connection to ``/soak`` (``/soak-slow``, ``/soak-big``) and what it checks."""

    def __init__(self, soak: Soak, flavour: str, ws: ClientConnection, hello: dict[str, Any]):
        self.soak = soak
        self.flavour = flavour
        self.counts = soak.counts[flavour]
        self.ws = ws
        self.pid: int = hello["pid"]
        self.key = f"{flavour[0]}{next(soak.keys)}"
        self.pending: deque[str | bytes] = deque()
        self.wanted: set[str] = set()  # rooms asked for
        self.joined: set[str] = set()  # rooms whose join was answered
        self.owed: dict[tuple[str, int], Broadcast] = {}
        self.last_seq: dict[str, int] = {}
        self.next_seq = 0
        self.unacked: set[int] = set()
        self.flood_next: dict[str, int] = {}
        self.changed = asyncio.Event()
        self.closed_at: float | None = None
        self.close_code: int | None = None
        self.reader: asyncio.Task[None] | None = None
        self.alive = True

    def start_reading(self) -> None:
        self.reader = asyncio.create_task(self.read())

    async def read(self) -> None:
        try:
            async for message in self.ws:
                self.receive(message)
                self.changed.set()
        except ConnectionClosed:
            pass
        except Exception as exc:
            self.soak.fail("client error", f"{self.flavour} reader: {exc!r}")
            self.ws.transport.abort()
        finally:
            self.closed_at = self.soak.now()
            self.close_code = self.ws.close_code
            self.changed.set()

    def receive(self, message: str | bytes) -> None:
        """Check one message from the server."""
        kind = message[:1] if isinstance(message, str) else message[:1].decode("latin-1")
        if kind == "E":
            self.counts["echo_checked"] += 1
            if not self.pending:
                self.soak.fail("echo unexpected", f"{self.flavour}: {message[:40]!r}")
            elif self.pending.popleft() != message:
                self.soak.fail("echo corrupted", f"{self.flavour}: {len(message)} bytes")
            else:
                self.counts["echo_bytes"] += len(message)
        elif kind == "B":
            self.receive_broadcast(message)
        elif kind == "F":
            text = message if isinstance(message, str) else message.decode("latin-1")
            tag, index, _ = text[1:].split(":", 2)
            expected = self.flood_next.get(tag, 0)
            self.flood_next[tag] = int(index) + 1
            self.counts["flood_received"] += 1
            if int(index) != expected or text != flood_text(tag, int(index)):
                self.soak.fail("flood out of order or corrupted", f"{tag}: {index} for {expected}")
        elif kind == "J" and isinstance(message, str):
            room = message[1:]
            self.joined.add(room)
            if self.alive:
                self.soak.rooms.setdefault(room, set()).add(self)
        elif kind == "A" and isinstance(message, str):
            ack = message[1:]
            if ack.isdigit():
                broadcast = self.soak.broadcasts.get((self.key, int(ack)))
                self.unacked.discard(int(ack))
                if broadcast is not None:
                    broadcast.acked_at = self.soak.now()
                self.counts["broadcast_acked"] += 1
            else:
                self.counts["flood_acked"] += 1
        else:
            self.soak.fail("unexpected message", f"{self.flavour}: {message[:40]!r}")

    def receive_broadcast(self, message: str | bytes) -> None:
        text = message if isinstance(message, str) else message.decode("latin-1")
        try:
            key, seq_text, size, _ = text[1:].split(":", 3)
            seq = int(seq_text)
            intact = text == broadcast_text(key, seq, int(size))
        except ValueError:
            self.soak.fail("broadcast corrupted", f"{self.flavour}: {text[:40]!r}")
            return
        broadcast = self.soak.broadcasts.get((key, seq))
        if broadcast is None:
            self.soak.fail("broadcast unknown or late", f"{self.flavour}: {key}:{seq}")
            return
        if not intact or isinstance(message, bytes) != broadcast.binary:
            self.soak.fail("broadcast corrupted", f"{self.flavour}: {key}:{seq}")
        if broadcast.room not in self.wanted:
            self.soak.fail("broadcast to a non-member", f"{key}:{seq} to {broadcast.room}")
        if seq <= self.last_seq.get(key, -1):
            self.soak.fail(
                "broadcast duplicated or out of order",
                f"{self.flavour}: {key}:{seq} after {self.last_seq[key]}",
            )
        self.last_seq[key] = max(seq, self.last_seq.get(key, -1))
        if self.owed.pop((key, seq), None) is not None:
            self.counts["broadcast_delivered"] += 1
        else:
            self.counts["broadcast_extra"] += 1  # joined while it was on its way

    async def until(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate()`` or the connection is closed; whether it became true."""
        deadline = time.monotonic() + timeout
        while not predicate():
            if self.closed_at is not None:
                return bool(predicate())
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return True

    async def command(self, **command: Any) -> None:
        await self.ws.send("!" + json.dumps(command))

    async def join(self, room: str) -> bool:
        self.wanted.add(room)
        await self.command(join=room)
        return await self.until(lambda: room in self.joined, OPEN_TIMEOUT)

    async def echo(self) -> None:
        """Send one to three messages; wait for their echoes."""
        for _ in range(random.randint(1, 3)):
            message = echo_message()
            self.pending.append(message)
            await self.ws.send(message)
            self.counts["echo_sent"] += 1
        if not await self.until(lambda: not self.pending, DRAIN) and self.closed_at is None:
            lost = len(self.pending)
            self.soak.fail("echo lost", f"{self.flavour}: {lost} not back in {DRAIN} s")
            self.pending.clear()

    async def broadcast(self) -> None:
        """Broadcast to one of its rooms; owed to every member of it now."""
        if not self.joined:
            return
        room = random.choice(sorted(self.joined))
        seq, self.next_seq = self.next_seq, self.next_seq + 1
        size = random.randint(1, 16384) if random.random() < 0.1 else random.randint(1, 2048)
        binary = random.random() < 0.3
        broadcast = Broadcast(self.key, seq, room, binary, self.soak.now())
        self.soak.broadcasts[(self.key, seq)] = broadcast
        for member in self.soak.rooms[room]:
            member.owed[(self.key, seq)] = broadcast
            self.counts["broadcast_owed"] += 1
        self.unacked.add(seq)
        text = broadcast_text(self.key, seq, size)
        await self.command(broadcast=text, room=room, binary=binary, seq=seq)
        self.counts["broadcast_sent"] += 1

    async def drain(self) -> float:
        """At the end of its wave: wait for its echoes and acks, then for the broadcasts
        acknowledged ``GRACE`` s before now; return now (the time it ends)."""
        if not await self.until(lambda: not self.pending and not self.unacked, DRAIN):
            if self.closed_at is None:
                self.soak.fail(
                    "ack or echo missing",
                    f"{self.flavour}: {len(self.unacked)} acks, {len(self.pending)} echoes",
                )
        ending = self.soak.now()
        cutoff = ending - GRACE

        def owed_done() -> bool:
            return not any(
                b.acked_at is not None and b.acked_at <= cutoff for b in self.owed.values()
            )

        await self.until(owed_done, DRAIN)
        return ending

    async def ping(self) -> None:
        pong = await self.ws.ping()
        self.counts["ping_sent"] += 1
        try:
            await asyncio.wait_for(pong, DRAIN)
            self.counts["ping_answered"] += 1
        except asyncio.TimeoutError:
            if self.closed_at is None:
                self.soak.fail("pong missing", f"{self.flavour}: none in {DRAIN} s")
        except ConnectionClosed:
            pass

    def leave(self) -> None:
        """No longer a member of any room (for the broadcasts made from now on)."""
        self.alive = False
        for room in self.joined:
            members = self.soak.rooms.get(room, set())
            members.discard(self)
            if not members and room not in ROOMS:
                self.soak.rooms.pop(room, None)

    def settle(self, ended: float, checked: bool = True) -> None:
        """Count what is owed to it: lost when acknowledged ``GRACE`` s before ``ended``."""
        self.leave()
        for (key, seq), broadcast in self.owed.items():
            if not checked:
                self.counts["broadcast_owed_to_killed"] += 1
            elif broadcast.acked_at is None:
                self.counts["broadcast_unacknowledged"] += 1
            elif broadcast.acked_at <= ended - GRACE:
                self.counts["broadcast_lost"] += 1
                self.soak.fail(
                    "broadcast lost",
                    f"{key}:{seq} to {broadcast.room}, acked at {broadcast.acked_at:.1f} s, "
                    f"not at {self.flavour} {self.key} (pid {self.pid}) by {ended:.1f} s "
                    f"(closed: {self.close_code})",
                )
            else:
                self.counts["broadcast_in_flight_at_end"] += 1
        self.owed.clear()
        if self.pending and checked:
            self.counts["echo_in_flight_at_close"] += len(self.pending)

    async def reset(self) -> None:
        """Close with a TCP reset (``SO_LINGER`` 0)."""
        sock = self.ws.transport.get_extra_info("socket")
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.ws.transport.abort()
        if self.reader is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.reader), 10)


async def open_conn(
    soak: Soak,
    flavour: str,
    path: str = "/soak",
    rcvbuf: int | None = None,
    pin: int | None = None,
    **options: Any,
) -> Conn:
    """A new connection; retried while the worker that took it is going away (1001), and
    while it must be served by worker process ``pin`` (default: the one the flavour is
    pinned to, see ``waves``) and another one took it. ``rcvbuf``: a fixed receive buffer
    (no autotuning: the kernel would take megabytes)."""
    options.setdefault("compression", None)
    pinned = pin if pin is not None else soak.pinned.get(flavour)
    errors = 0
    while errors < 20:
        sock = None
        if rcvbuf is not None:
            sock = socket.create_connection((HOST, soak.ports[flavour]))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        try:
            ws = await connect(
                f"ws://{HOST}:{soak.ports[flavour]}{path}",
                open_timeout=OPEN_TIMEOUT, max_size=2**21, sock=sock, **options,
            )  # fmt: skip
        except (OSError, InvalidHandshake, asyncio.TimeoutError) as exc:
            if sock is not None:
                sock.close()
            if isinstance(exc, InvalidStatus) or soak.stopping:
                raise
            soak.counts[flavour]["open_retried"] += 1
            errors += 1
            await asyncio.sleep(0.5)
            continue
        try:
            hello = json.loads(await asyncio.wait_for(ws.recv(), OPEN_TIMEOUT))
        except (ConnectionClosed, asyncio.TimeoutError):
            soak.counts[flavour][f"closed_{ws.close_code}_at_open"] += 1
            ws.transport.abort()
            errors += 1
            await asyncio.sleep(0.2)
            continue
        if pinned is not None and hello["pid"] != pinned:
            soak.counts[flavour]["pinned_elsewhere"] += 1
            with contextlib.suppress(ConnectionClosed):
                await ws.close()
            continue
        soak.counts[flavour]["opened"] += 1
        return Conn(soak, flavour, ws, hello)
    raise RuntimeError(f"{flavour}: could not open a connection in 20 attempts")


async def member(soak: Soak, flavour: str, until: float) -> None:
    """A member of one or two rooms until ``until``; reconnects after a 1001."""
    rooms = random.sample(ROOMS, random.randint(1, 2))
    counts = soak.counts[flavour]
    while True:
        compression = "deflate" if random.random() < 0.5 else None
        conn = await open_conn(soak, flavour, compression=compression)
        conn.start_reading()
        ending: float | None = None
        try:
            for room in rooms:
                if not await conn.join(room) and conn.closed_at is None:
                    soak.fail("join unanswered", f"{flavour}: {room}")
            while soak.now() < until and conn.closed_at is None:
                roll = random.random()
                if roll < 0.75:
                    await conn.echo()
                elif roll < 0.92:
                    await conn.broadcast()
                else:
                    await conn.ping()
                await asyncio.sleep(random.uniform(0.2, 0.8))
            if conn.closed_at is None:
                ending = await conn.drain()
        except ConnectionClosed:
            pass
        if conn.closed_at is None and ending is not None:
            conn.settle(ending)
            if random.random() < 0.2:
                await conn.reset()
                counts["closed_by_reset"] += 1
            else:
                with contextlib.suppress(ConnectionClosed):
                    await conn.ws.close()
                if conn.reader is not None:
                    await conn.reader
                if conn.close_code == 1001:  # its worker was recycled meanwhile
                    counts["closed_1001_recycled"] += 1
                elif conn.close_code == 1000:
                    counts["closed_normally"] += 1
                else:
                    soak.fail("close not 1000", f"{flavour}: {conn.close_code}")
            return
        # Closed by the server.
        if conn.reader is not None:
            await conn.reader
        assert conn.closed_at is not None
        conn.settle(conn.closed_at)
        if conn.close_code == 1001:
            counts["closed_1001_recycled"] += 1
            if soak.now() < until:
                counts["reconnected"] += 1
                continue
            return
        counts[f"closed_{conn.close_code}_unexpected"] += 1
        soak.fail("unexpected close", f"{flavour}: {conn.close_code} {conn.ws.close_reason!r}")
        return


async def reset_peer(soak: Soak, flavour: str) -> None:
    """Joins a room, sends a few messages without waiting for them, resets."""
    conn = await open_conn(soak, flavour)
    conn.start_reading()
    await conn.join(random.choice(ROOMS))
    for _ in range(random.randint(0, 3)):
        message = echo_message()
        conn.pending.append(message)
        await conn.ws.send(message)
        soak.counts[flavour]["echo_sent"] += 1
    await asyncio.sleep(random.uniform(0.5, 5))
    conn.settle(soak.now(), checked=False)
    await conn.reset()
    soak.counts[flavour]["closed_by_reset"] += 1


async def half_closing_peer(soak: Soak, flavour: str) -> None:
    """One echo, then ``shutdown(SHUT_WR)``: the server must close its side."""
    conn = await open_conn(soak, flavour)
    conn.start_reading()
    await conn.echo()
    await asyncio.sleep(random.uniform(0, 3))
    conn.ws.transport.write_eof()
    if not await conn.until(lambda: False, DRAIN) and conn.closed_at is None:
        soak.fail("half-closed peer not closed", f"{flavour}: after {DRAIN} s")
        conn.ws.transport.abort()
    conn.settle(soak.now(), checked=False)
    soak.counts[flavour]["closed_half_closed"] += 1


async def silent_peer(soak: Soak, flavour: str) -> None:
    """Upgrades, then never reads nor answers: the server must send it a 1011 close frame
    (no pong) after ping interval + timeout (10 s), and end the TCP connection after its
    close timeout (10 s more)."""
    reader, writer = await asyncio.open_connection(HOST, soak.ports[flavour])
    key = "c29hay1zaWxlbnQtcGVlcg=="
    writer.write(
        f"GET /soak HTTP/1.1\r\nHost: soak\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), OPEN_TIMEOUT)
    soak.counts[flavour]["opened"] += 1
    if not head.startswith(b"HTTP/1.1 101"):
        soak.fail("silent peer refused", f"{flavour}: {head[:40]!r}")
    await asyncio.sleep(16)  # no read by this code: nothing answered
    try:
        data = await asyncio.wait_for(reader.read(), 30)
    except asyncio.TimeoutError:
        soak.fail("silent peer not closed", f"{flavour}: still open after 46 s")
        data = b""
    writer.close()
    codes = close_codes(data)
    if codes[-1:] == [1001]:
        soak.counts[flavour]["closed_1001_recycled"] += 1
    elif codes[-1:] != [1011]:
        soak.fail("silent peer not closed with 1011", f"{flavour}: close frames {codes}")
    soak.counts[flavour]["closed_silent"] += 1


def close_codes(data: bytes) -> list[int]:
    """The close codes of the close frames in ``data``, server frames one after the other."""
    codes, at = [], 0
    while at + 2 <= len(data):
        opcode, length = data[at] & 0x0F, data[at + 1] & 0x7F
        at += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, at)
            at += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, at)
            at += 8
        if opcode == 0x8 and length >= 2:
            codes.append(struct.unpack_from("!H", data, at)[0])
        at += length
    return codes


async def killed_client(soak: Soak, flavour: str, count: int = 3) -> None:
    """A process with ``count`` connections and unread data, killed (SIGKILL)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", KILLED_CLIENT, str(soak.ports[flavour]), str(count),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        ready = await asyncio.wait_for(process.stdout.readline(), 60)
        if ready.strip() != b"ready":
            soak.fail("killed client failed", f"{flavour}: {ready!r}")
        else:
            soak.counts[flavour]["opened"] += count
        await asyncio.sleep(random.uniform(0.5, 3))
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
    soak.counts[flavour]["closed_killed"] += count


async def slow_reader(soak: Soak, flavour: str, wave: int) -> None:
    """A reader that stops reading, flooded by a member of its room: 1013 for it."""
    room = f"slow-{flavour}-{wave}"
    tag = f"{flavour}{wave}"
    slow = await open_conn(soak, flavour, "/soak-slow", rcvbuf=65536, max_queue=1)
    try:
        fast = await open_conn(soak, flavour, "/soak-big")
    except BaseException:
        slow.ws.transport.abort()
        raise
    try:
        await flood(soak, flavour, slow, fast, room, tag)
    finally:
        # Either may end early (a recycled worker's 1001 fails the other's next step):
        # neither is left open. (Aborting a closed connection does nothing.)
        slow.ws.transport.abort()
        fast.ws.transport.abort()


async def flood(soak: Soak, flavour: str, slow: Conn, fast: Conn, room: str, tag: str) -> None:
    """``slow`` joins ``room`` and stops reading; ``fast`` floods the room."""
    fast.start_reading()
    slow.wanted.add(room)
    await slow.command(join=room)
    reply = await asyncio.wait_for(slow.ws.recv(), OPEN_TIMEOUT)
    if reply != "J" + room:
        soak.fail("slow reader's join", f"{flavour}: {reply!r}")
    # From now on the slow one is not read: 1 message in websockets' queue, then the
    # kernel's buffers (some MB: more than that is sent), then 1013.
    await fast.join(room)
    await fast.command(flood=FLOOD, size=FLOOD_SIZE, room=room, tag=tag)
    await fast.until(lambda: fast.flood_next.get(tag, 0) >= FLOOD, 120)
    got = fast.flood_next.get(tag, 0)
    if got < FLOOD and fast.close_code != 1001:
        soak.fail("flood lost", f"{flavour}: {got} of {FLOOD} at the fast reader")
    queues = socket_queues(slow.ws.transport.get_extra_info("sockname")[1])
    slow.start_reading()
    await slow.until(lambda: slow.flood_next.get(tag, 0) >= FLOOD, 60)
    counts = soak.counts[flavour]
    if slow.closed_at is None:
        got = slow.flood_next.get(tag, 0)
        if got < FLOOD:
            soak.fail("slow reader stalled", f"{flavour}: after 60 s, {got} of {FLOOD} read")
        else:
            # The flood fitted in the buffers on its way: nothing was over the limit.
            counts["slow_reader_absorbed_flood"] += 1
            if len(soak.notes) < 20:
                soak.notes.append(f"{flavour}: flood absorbed; at its end: {queues}")
        await slow.reset()
    elif slow.close_code == 1013:
        counts["closed_1013_slow"] += 1
    elif slow.close_code == 1001:
        counts["closed_1001_recycled"] += 1
    else:
        soak.fail("slow reader not closed with 1013", f"{flavour}: {slow.close_code}")
    counts["flood_sent"] += FLOOD
    slow.settle(soak.now(), checked=False)
    fast.settle(soak.now(), checked=False)
    with contextlib.suppress(ConnectionClosed):
        await fast.ws.close()
    if fast.reader is not None:
        await fast.reader
    counts["closed_normally"] += 1


# The servers.


def stats(soak: Soak, flavour: str) -> list[dict[str, Any]]:
    """The workers, from the instance's stats server."""
    with socket.create_connection((HOST, soak.stats_ports[flavour]), timeout=10) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    workers: list[dict[str, Any]] = json.loads(data)["workers"]
    return workers


def proc_figures(pid: int) -> tuple[int, int]:
    """A process's VmRSS (KiB) and open file descriptors but its eventfds (the plain
    flavour's handler threads each keep one once they have waited in ``receive``: at most
    one per thread); ``(0, 0)`` if it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            rss = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
        targets = fd_targets(pid)
        return rss, sum(targets.values()) - targets["anon_inode:[eventfd]"]
    except (OSError, StopIteration):
        return 0, 0


def fd_targets(pid: int) -> Counter[str]:
    """What a process's file descriptors are (``socket:[inode]`` as ``socket``, ``pipe``
    alike; ``anon_inode:[eventfd]`` as it is)."""
    found: Counter[str] = Counter()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                numbered = target.startswith(("socket:[", "pipe:["))
                found[target.split(":[")[0] if numbered else target] += 1
    return found


def socket_queues(port: int) -> str:
    """``ss``'s line for the TCP connections of local or peer port ``port``."""
    done = subprocess.run(
        ["ss", "-tnoi", f"sport = :{port} or dport = :{port}"], capture_output=True, text=True
    )
    return " | ".join(" ".join(line.split()) for line in done.stdout.splitlines()[1:])


def close_wait(port: int) -> int:
    """Sockets of local port ``port`` in CLOSE_WAIT."""
    found = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                if fields[3] == CLOSE_WAIT and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    found += 1
    return found


def sample(soak: Soak, flavour: str) -> dict[str, Any]:
    """The workers' figures now."""
    workers = []
    for worker in stats(soak, flavour):
        rss, fds = proc_figures(worker["pid"])
        workers.append({
            "id": worker["id"], "pid": worker["pid"], "rss_kib": rss, "fds": fds,
            "respawns": worker["respawn_count"] - 1,
        })  # fmt: skip
    return {
        "t": round(soak.now(), 1),
        "workers": workers,
        "close_wait": close_wait(soak.ports[flavour]),
    }


def check_respawns(soak: Soak, flavour: str, now: dict[str, Any]) -> None:
    respawns = sum(worker["respawns"] for worker in now["workers"])
    if respawns > soak.recycles[flavour]:
        soak.fail(
            "unexpected respawn",
            f"{flavour}: {respawns} respawns, {soak.recycles[flavour]} recycles by the soak",
        )
        soak.recycles[flavour] = respawns  # report each once


async def trimmed_rss(soak: Soak, flavour: str, now: dict[str, Any]) -> None:
    """Worker 1's RSS once glibc has given back the free pages it keeps (the app's
    ``trim`` command, over a connection to worker 1), as ``rss_trimmed_kib``: the memory
    in use. ``rss_kib`` is the RSS as it was, the allocator's high-water mark."""
    worker = next(w for w in now["workers"] if w["id"] == 1)
    conn = await open_conn(soak, flavour, pin=worker["pid"])
    try:
        await conn.command(trim=True)
        if await asyncio.wait_for(conn.ws.recv(), OPEN_TIMEOUT) != "T":
            soak.fail("soak error", f"{flavour}: the trim command not answered")
        worker["rss_trimmed_kib"] = proc_figures(worker["pid"])[0]
        soak.counts[flavour]["trims"] += 1
        baseline = now["t"] > soak.args.warmup and flavour not in soak.census_baselined
        await conn.command(census=True, baseline=baseline)
        reply = await asyncio.wait_for(conn.ws.recv(), OPEN_TIMEOUT)
        if not isinstance(reply, str) or not reply.startswith("C"):
            soak.fail("soak error", f"{flavour}: the census command not answered")
        else:
            figures = json.loads(reply[1:])
            if baseline:
                soak.census_baselined.add(flavour)
            worker["py_blocks"], worker["py_objects"] = figures["blocks"], figures["objects"]
            worker["malloc_used_kib"] = figures["malloc_used"] // 1024
            worker["malloc_free_kib"] = figures["malloc_free"] // 1024
            if "traced" in figures:
                worker["py_traced_kib"] = figures["traced"] // 1024
            if figures.get("top") and flavour in soak.census_baselined:
                worker["py_top"] = figures["top"]
                print(f"{flavour} worker 1, tracemalloc since the warm-up:", flush=True)
                print("\n".join("  " + line for line in figures["top"]), flush=True)
        await conn.ws.close()
    finally:
        conn.ws.transport.abort()


async def idle_check(soak: Soak, flavour: str, wave: int) -> None:
    """After a wave: wait until fds and CLOSE_WAIT are back to their baseline; record."""
    deadline = time.monotonic() + SETTLE
    baseline = soak.baseline_fds
    while True:
        now = sample(soak, flavour)
        over = [w for w in now["workers"] if w["fds"] > baseline.get(w["pid"], 1 << 30)]
        if (not over and not now["close_wait"]) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    now["wave"] = wave
    try:
        await trimmed_rss(soak, flavour, now)
    except (OSError, InvalidHandshake, RuntimeError, ConnectionClosed) as exc:
        soak.fail("soak error", f"trimming {flavour}: {exc!r}")
    pinned = soak.pinned.get(flavour)
    for worker in now["workers"]:
        pid = worker["pid"]
        if pinned in (None, pid):  # a wave kept from it is no idle moment of its own
            soak.idle_seen[pid] += 1
            if soak.idle_seen[pid] == 2:  # it has been through a wave
                baseline[pid] = worker["fds"]
                soak.baseline_targets[pid] = fd_targets(pid)
        worker["baseline_fds"] = baseline.get(pid)
    soak.idle[flavour].append(now)
    for worker in over:
        soak.fail(
            "fds not back to baseline",
            f"{flavour} worker {worker['id']} (pid {worker['pid']}) after wave {wave}: "
            f"{worker['fds']} > {soak.baseline_fds[worker['pid']]}: more "
            f"{dict(fd_targets(worker['pid']) - soak.baseline_targets[worker['pid']])}",
        )
    if now["close_wait"]:
        soak.fail("CLOSE_WAIT after a wave", f"{flavour} after wave {wave}: {now['close_wait']}")


async def peak(soak: Soak, flavour: str) -> None:
    """``PEAK`` connections at once (on worker 1: the flavour is pinned), each echoing a
    wave's messages, then closed: every thread of the plain flavour serves."""
    held = [
        await open_conn(soak, flavour, compression="deflate" if n % 2 else None)
        for n in range(PEAK)
    ]
    soak.counts[flavour]["peak_held"] += len(held)

    async def busy(conn: Conn) -> None:
        for _ in range(3):
            await conn.echo()

    for conn in held:
        conn.start_reading()
    await asyncio.gather(*(busy(conn) for conn in held))
    for conn in held:
        with contextlib.suppress(ConnectionClosed):
            await conn.ws.close()
        if conn.reader is not None:
            await conn.reader
        if conn.close_code != 1000:
            soak.fail("close not 1000", f"{flavour} peak: {conn.close_code}")


async def waves(soak: Soak, flavour: str) -> None:
    """Waves of connections, one after the other, until the run's end.

    A worker's RSS is a high-water mark of what it has served at once, so the warm-up
    must include the most the run will put on worker 1, or the first time the kernel
    gives it more (all of a wave, while worker 2 is being recycled) would count as
    growth. In the second half of the warm-up every connection the soak opens (but the
    killed client's) goes to worker 1: first ``peak``, then whole waves.
    """
    args = soak.args
    wave = 0
    while soak.now() < args.duration:
        pinning = args.warmup / 2 <= soak.now() < args.warmup
        if pinning and soak.pinned.get(flavour) is None:
            soak.pinned[flavour] = next(w["pid"] for w in stats(soak, flavour) if w["id"] == 1)
            await peak(soak, flavour)  # its RSS is taken at the wave's idle moment
        elif not pinning:
            soak.pinned[flavour] = None
        wave += 1
        start = soak.now()
        until = start + args.wave
        tasks = [member(soak, flavour, until) for _ in range(args.members)]
        tasks += [reset_peer(soak, flavour) for _ in range(2)]
        tasks += [half_closing_peer(soak, flavour) for _ in range(2)]
        tasks += [silent_peer(soak, flavour), killed_client(soak, flavour)]
        tasks.append(slow_reader(soak, flavour, wave))

        async def staggered(task: Any, delay: float) -> None:
            await asyncio.sleep(delay)
            await task

        results = await asyncio.gather(
            *(staggered(t, random.uniform(0, 2)) for t in tasks), return_exceptions=True
        )
        for result in results:
            if isinstance(result, ConnectionClosed) and result.rcvd and result.rcvd.code == 1001:
                soak.counts[flavour]["closed_1001_recycled"] += 1  # an abrupt peer's worker
            elif isinstance(result, BaseException):
                soak.fail("client error", f"{flavour}: {result!r}")
        soak.counts[flavour]["waves"] += 1
        await idle_check(soak, flavour, wave)


async def recycler(soak: Soak) -> None:
    """Every ``--recycle-every`` seconds, the flavours in turn: SIGHUP to worker 2."""
    every = soak.args.recycle_every
    for n in itertools.count():
        at = every * (n + 1) / len(soak.flavours)
        if at > soak.args.duration - 10:
            return
        await asyncio.sleep(max(0.0, at - soak.now()))
        flavour = soak.flavours[n % len(soak.flavours)]
        try:
            pid = next(w["pid"] for w in stats(soak, flavour) if w["id"] == RECYCLED)
            soak.recycled[flavour].append(pid)
            soak.recycles[flavour] += 1
            soak.counts[flavour]["recycles"] += 1
            print(
                f"[{soak.now():6.0f} s] {flavour}: recycling worker {RECYCLED} (pid {pid})",
                flush=True,
            )
            os.kill(pid, signal.SIGHUP)
        except (OSError, ValueError, KeyError, StopIteration) as exc:
            soak.fail("soak error", f"recycling {flavour}: {exc!r}")


async def sampler(soak: Soak) -> None:
    """A sample of every flavour every ``--sample`` s; a progress line and the JSON every
    minute."""
    last_report = 0.0
    while not soak.stopping:
        for flavour in soak.flavours:
            try:
                now = sample(soak, flavour)
            except (OSError, ValueError, KeyError) as exc:  # the stats server did not answer
                soak.fail("soak error", f"sampling {flavour}: {exc!r}")
                continue
            now["counts"] = dict(soak.counts[flavour])
            soak.samples[flavour].append(now)
            check_respawns(soak, flavour, now)
            if soak.masters[flavour].process.poll() is not None:
                soak.fail("uWSGI exited", f"{flavour}: {soak.masters[flavour].process.returncode}")
        forget = soak.now() - FORGET
        for key in [k for k, b in soak.broadcasts.items() if b.made_at < forget]:
            del soak.broadcasts[key]
        if soak.now() - last_report >= 60:
            last_report = soak.now()
            progress(soak)
            write_json(soak)
        await asyncio.sleep(soak.args.sample)


def progress(soak: Soak) -> None:
    for flavour in soak.flavours:
        last = soak.samples[flavour][-1]
        c = soak.counts[flavour]
        workers = " ".join(
            f"w{w['id']} {w['rss_kib'] / 1024:.1f} MiB {w['fds']} fds" for w in last["workers"]
        )
        print(
            f"[{soak.now():6.0f} s] {flavour:7} waves {c['waves']} conns {c['opened']} "
            f"echo {c['echo_checked']} bcast sent {c['broadcast_sent']} "
            f"delivered {c['broadcast_delivered']} lost {c['broadcast_lost']} | {workers} "
            f"| CLOSE_WAIT {last['close_wait']} | failures {sum(soak.failures.values())}",
            flush=True,
        )


#: Worker 1's figures at each idle moment that ``rss_check`` follows: its RSS, trimmed (the
#: one checked) and as it was, then the census's (reported only).
IDLE_FIGURES = (
    "rss_trimmed_kib",
    "rss_kib",
    "py_blocks",
    "py_objects",
    "py_traced_kib",
    "malloc_used_kib",
    "malloc_free_kib",
)


def rss_check(soak: Soak) -> dict[str, Any]:
    """Each of worker 1's :data:`IDLE_FIGURES` at the end of the warm-up (the highest of
    its idle moments during the warm-up: the working set it reached) and at its last idle
    moment, in the figure's unit, and the slope after the warm-up (least squares, per
    hour). The trimmed RSS (``rss_trimmed_kib``) is checked; the others are reported."""
    found: dict[str, Any] = {}
    for flavour in soak.flavours:
        found[flavour] = figures = {}
        for key in IDLE_FIGURES:
            points = [
                (idle["t"], w["pid"], w[key])
                for idle in soak.idle[flavour]
                for w in idle["workers"]
                if w["id"] == 1 and key in w
            ]
            during = [p for p in points if p[0] <= soak.args.warmup]
            after = [p for p in points if p[0] > soak.args.warmup]
            if not during or not after:
                if key.startswith("rss"):
                    soak.fail("no RSS figures", f"{flavour}: {len(points)} idle moments ({key})")
                continue
            t0, pid0, value0 = max(during, key=lambda p: p[2])
            t1, pid1, value1 = after[-1]
            growth = 100.0 * (value1 - value0) / value0
            figures[key] = {
                "pid": pid1, "warm_t": t0, "warm": value0, "end_t": t1, "end": value1,
                "growth_pct": round(growth, 2), "slope_per_hour": slope(after),
            }  # fmt: skip
            if key != "rss_trimmed_kib":
                continue
            if pid0 != pid1:
                soak.fail("worker 1 respawned", f"{flavour}: {pid0} -> {pid1}")
            if growth >= soak.args.rss_growth:
                soak.fail(
                    "RSS growth",
                    f"{flavour} worker 1: {value0} -> {value1} KiB (+{growth:.1f}%)",
                )
    return found


def slope(points: list[tuple[float, int, int]]) -> float | None:
    """Least-squares slope of ``(t, _, value)``, per hour."""
    if len(points) < 2:
        return None
    ts = [p[0] for p in points]
    mean_t, mean_r = sum(ts) / len(ts), sum(p[2] for p in points) / len(points)
    var = sum((t - mean_t) ** 2 for t in ts)
    cov = sum((p[0] - mean_t) * (p[2] - mean_r) for p in points)
    return round(cov / var * 3600, 1) if var else None


def result(soak: Soak, rss: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(soak.args).items()},
        "elapsed_s": round(soak.now(), 1),
        "counts": {flavour: dict(counts) for flavour, counts in soak.counts.items()},
        "rss": rss or {},
        "recycled_pids": soak.recycled,
        "failures": dict(soak.failures),
        "failure_examples": soak.examples,
        "notes": soak.notes,
        "samples": soak.samples,
        "idle": soak.idle,
    }


def write_json(soak: Soak, rss: dict[str, Any] | None = None) -> None:
    if soak.args.json:
        soak.args.json.write_text(json.dumps(result(soak, rss), indent=1) + "\n")


async def soak_run(soak: Soak) -> None:
    sampling = asyncio.create_task(sampler(soak))
    recycling = asyncio.create_task(recycler(soak))
    try:
        await asyncio.gather(*(waves(soak, flavour) for flavour in soak.flavours))
    finally:
        soak.stopping = True
        recycling.cancel()
        for outcome in await asyncio.gather(sampling, recycling, return_exceptions=True):
            if isinstance(outcome, Exception):
                soak.fail("soak error", repr(outcome))
    await asyncio.sleep(5)  # the last respawn, if any, is counted
    for flavour in soak.flavours:
        now = sample(soak, flavour)
        check_respawns(soak, flavour, now)
        respawns = sum(worker["respawns"] for worker in now["workers"])
        if respawns != soak.recycles[flavour]:
            recycles = soak.recycles[flavour]
            soak.fail("recycle without respawn", f"{flavour}: {respawns} of {recycles}")


def interrupted(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    """Start the servers, soak them, stop them; the exit status and the figures."""
    sys.path.insert(0, str(ROOT))
    from tests.helpers import RedisServer, UwsgiServer, free_port

    soak = Soak(args)
    # SIGINT and SIGTERM stop it, servers included, also when it was started in the
    # background (where a shell has it ignore SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, interrupted)
    malloc = (
        {"GLIBC_TUNABLES": MALLOC_SETTINGS[args.malloc]} if MALLOC_SETTINGS[args.malloc] else {}
    )
    if args.tracemalloc:
        malloc["SOAK_TRACEMALLOC"] = "1"
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        for flavour in soak.flavours:
            soak.stats_ports[flavour] = free_port()
            server = UwsgiServer(
                ["--module", "bench.soak_app:app", "--processes", str(WORKERS),
                 *ENGINE_ARGS[flavour], "--stats", f"{HOST}:{soak.stats_ports[flavour]}",
                 "--disable-logging", "--worker-reload-mercy", "30"],
                mode="http-socket",
                env={"SOAK_FLAVOUR": flavour, "FLASK_WEBSOCKET_BROKER_URL": redis.url,
                     "FLASK_WEBSOCKET_BROKER_CHANNEL": "soak", **malloc},
            )  # fmt: skip
            stack.callback(server.close)
            server.wait_ready()
            soak.masters[flavour] = server
            soak.ports[flavour] = server.port
        print(f"soak: {args.duration:.0f} s, servers {soak.ports}, redis {redis.port}", flush=True)
        soak.started = time.monotonic()
        asyncio.run(soak_run(soak))
        for flavour, server in soak.masters.items():
            log = server.output()
            if (tracebacks := log.count("Traceback")) > 0:
                at = log.index("Traceback")
                excerpt = log[at : at + 3000]
                soak.fail("traceback in the uWSGI log", f"{flavour}: {tracebacks}: {excerpt}")
    rss = rss_check(soak)
    progress(soak)
    write_json(soak, rss)
    figures = result(soak, rss)
    print(summary(figures))
    for name, count in soak.failures.items():
        print(f"FAILED: {name} ({count}): {soak.examples[name][0]}")
    print("soak: " + ("FAILED" if soak.failures else "passed"), flush=True)
    return (1 if soak.failures else 0), figures


#: The rows of the summary: a label, and the counters added up for it.
SUMMARY_ROWS = [
    ("waves", ["waves"]),
    ("connections opened", ["opened"]),
    ("held at once on worker 1 in the warm-up's peak", ["peak_held"]),
    ("closed normally (1000)", ["closed_normally"]),
    ("closed with a TCP reset", ["closed_by_reset"]),
    ("half-closed, closed by the server", ["closed_half_closed"]),
    ("silent, closed by the server (1011)", ["closed_silent"]),
    ("in a killed client process", ["closed_killed"]),
    ("closed by a recycled worker (1001)", ["closed_1001_recycled"]),
    ("slow reader closed with 1013", ["closed_1013_slow"]),
    ("slow reader: flood taken by the buffers", ["slow_reader_absorbed_flood"]),
    ("reconnected after a 1001", ["reconnected"]),
    ("echoes checked", ["echo_checked"]),
    ("echoed MB checked", ["echo_bytes"]),
    ("echoes in flight at a server's close", ["echo_in_flight_at_close"]),
    ("broadcasts made (acknowledged)", ["broadcast_acked"]),
    ("broadcast deliveries checked", ["broadcast_delivered", "broadcast_extra"]),
    ("of which owed", ["broadcast_delivered"]),
    ("owed, lost", ["broadcast_lost"]),
    ("owed, in flight at the end", ["broadcast_in_flight_at_end"]),
    ("owed, never acknowledged", ["broadcast_unacknowledged"]),
    ("flood broadcasts received", ["flood_received"]),
    ("pings answered / sent", ["ping_answered"]),
    ("workers recycled (SIGHUP)", ["recycles"]),
]


def summary(figures: dict[str, Any]) -> str:
    """A Markdown table of a run's figures (``--summary`` reads them from a JSON file)."""
    flavours = list(figures["counts"])
    rows = [
        f"{figures['elapsed_s'] / 60:.0f} minutes; failures: "
        + (", ".join(f"{k} ({v})" for k, v in figures["failures"].items()) or "none"),
        "",
        "| | " + " | ".join(flavours) + " |",
        "|---|" + "--:|" * len(flavours),
    ]
    for label, keys in SUMMARY_ROWS:
        cells = []
        for flavour in flavours:
            counts = figures["counts"][flavour]
            value = sum(counts.get(key, 0) for key in keys)
            if keys == ["echo_bytes"]:
                cells.append(f"{value / 1e6:,.0f}")
            elif keys == ["ping_answered"]:
                cells.append(f"{value:,} / {counts.get('ping_sent', 0):,}")
            else:
                cells.append(f"{value:,}")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    rss = figures["rss"]
    for key, what in (
        ("py_blocks", "Python's blocks"), ("py_objects", "objects tracked"),
        ("malloc_used_kib", "malloc in use, KiB"), ("malloc_free_kib", "malloc free, KiB"),
    ):  # fmt: skip
        checks = [rss.get(flavour, {}).get(key) for flavour in flavours]
        cells = [
            f"{c['warm']:,} → {c['end']:,} ({c['growth_pct']:+.1f}%)" if c else "-" for c in checks
        ]
        rows.append(f"| worker 1 {what}: warm → end | " + " | ".join(cells) + " |")
    for key, what in (("rss_trimmed_kib", "RSS trimmed"), ("rss_kib", "RSS as it was")):
        checks = [rss.get(flavour, {}).get(key) for flavour in flavours]
        cells = [
            f"{c['warm'] / 1024:.1f} → {c['end'] / 1024:.1f} ({c['growth_pct']:+.1f}%)"
            if c
            else "-"
            for c in checks
        ]
        rows.append(f"| worker 1 {what}, MiB: warm → end | " + " | ".join(cells) + " |")
        cells = [
            f"{c['slope_per_hour'] / 1024:+.1f}" if c and c["slope_per_hour"] is not None else "-"
            for c in checks
        ]
        rows.append(
            f"| worker 1 {what}, slope after the warm-up, MiB/h | " + " | ".join(cells) + " |"
        )
    for label, pick in [
        ("fds after each wave, worker 1 (min-max)", lambda w: w["id"] == 1),
        ("fds after each wave, worker 2 (min-max)", lambda w: w["id"] == 2),
    ]:
        cells = []
        for flavour in flavours:
            fds = [w["fds"] for i in figures["idle"][flavour] for w in i["workers"] if pick(w)]
            fds = [n for n in fds if n]
            cells.append(f"{min(fds)}-{max(fds)}" if fds else "-")
        rows.append(f"| {label} | " + " | ".join(cells) + " |")
    cells = [
        str(max((i["close_wait"] for i in figures["idle"][flavour]), default=0))
        for flavour in flavours
    ]
    rows.append("| CLOSE_WAIT after a wave (max) | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds (default 3600)")
    parser.add_argument(
        "--flavours", default=",".join(FLAVOURS), help="which, comma-separated (default all)"
    )
    parser.add_argument("--members", type=int, default=40, help="per flavour and wave")
    parser.add_argument("--wave", type=float, default=15.0, help="seconds of a wave's traffic")
    parser.add_argument("--recycle-every", type=float, default=300.0, help="seconds")
    parser.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    parser.add_argument(
        "--warmup", type=float, default=None, help="seconds (default: a sixth of the run)"
    )
    parser.add_argument(
        "--rss-growth", type=float, default=5.0, help="most growth of worker 1's RSS, in %%"
    )
    parser.add_argument(
        "--malloc", choices=tuple(MALLOC_SETTINGS), default="tuned",
        help="glibc's allocator in the workers: README.rst's settings (tuned, the default), "
        "those but with glibc's per-thread caches, or glibc's defaults",
    )  # fmt: skip
    parser.add_argument(
        "--tracemalloc", action="store_true",
        help="trace Python's allocations in the workers; print the lines that grew most",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--summary", type=Path, default=None, help="only print the table of this JSON file"
    )
    args = parser.parse_args(argv)
    if not set(args.flavours.split(",")) <= set(FLAVOURS):
        parser.error(f"--flavours: some of {', '.join(FLAVOURS)}")
    if args.warmup is None:
        args.warmup = args.duration / 6
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.summary:
        print(summary(json.loads(args.summary.read_text())))
        return 0
    random.seed(args.seed)
    status, _ = run(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
