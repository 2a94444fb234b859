"""Fan-out benchmark: one message to every connection of a room, on gevent workers.

    .venv/bin/python bench/fanout.py [--conns 1000,5000] [--sizes 64,4096] [--rounds 20]
                                     [--brokers local,redis,redis-2+cluster-2]
                                     [--json out.json]

For each broker (``local``: in-process; ``redis``: a redis-server of its own), the app
bench/fanout_app.py runs under ``uwsgi --master --workers 1 --gevent N --http-socket``
pinned to one CPU; ``redis-2`` and ``cluster-2`` run two such instances (their
connections alternate between them) sharing a redis-server, or a Redis Cluster of three
masters, and the broadcast is made on the first. This process, pinned to another CPU,
is the client (picows on uvloop):
it opens the connections (each joins the room), then for every round and message size
records ``t0`` just before it sends ``GET /broadcast`` (``websocket.broadcast`` to the
room) and the time each connection has the whole message. It reports the median, p90 and
max over the rounds of ``first - t0`` and ``last - t0`` (the JSON also has every
recipient's arrival over all the rounds as percentiles 1 to 100), the time the worker spent
delivering (its ``time.monotonic()``, the same clock), and the client's CPU time per
round. On the in-process server, two other ways to send the same message take turns
with the broadcast, so that their ratios come from the same run: ``naive``, a loop of
``ws.send``, one call per connection (each frames the message again), and ``raw``, a loop
of bare ``os.write`` of one frame to each socket (the floor: the system calls alone).
Every connection must get every message exactly once: otherwise the exit status is 1.
With Redis, it also reports each worker's Redis traffic per broadcast (pub/sub messages
its subscribers received, and the bytes on its connections to Redis, from ``ss``) and
each Redis node's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import re
import signal
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import uvloop
from echo import HOST, csv_list, free_port, log_trouble, run_pinned, usable_cpus
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import RedisCluster, RedisServer  # noqa: E402

#: Connections opened at the same time.
CONNECT_BATCH = 200
#: Seconds to wait for all connections to be in the room.
JOIN_TIMEOUT = 60.0
#: Seconds a round may take before its missing messages count as lost.
ROUND_TIMEOUT = 10.0
#: Seconds between rounds.
GAP = 0.05
#: Seconds between opening the trigger's HTTP connection and sending the request.
SETTLE = 0.005
#: Client CPU time over a round's time above which the client may be what limits "last".
BUSY_CLIENT = 0.9
#: Rounds run first and left out of the figures.
WARMUP = 2
CLOSE_TIMEOUT = 5.0
#: --gevent: the largest connection count plus this many (for the HTTP requests).
GREENLET_SPARE = 100
#: How the message is sent: the app's view of each name (see bench/fanout_app.py).
METHODS = ("broadcast", "naive", "raw")
#: Message size up to which one os.write to an idle loopback socket takes it all.
RAW_LIMIT = 65536
#: The brokers: how many uWSGI instances, and which Redis.
BROKERS = {
    "local": (1, None),
    "redis": (1, "server"),
    "redis-2": (2, "server"),
    "cluster-2": (2, "cluster"),
}
_seq = struct.Struct("!Q")


# The client.


@dataclass
class Round:
    """One message sent to every connection: what arrived, and when."""

    seq: int
    method: str  # "broadcast", "naive" or "raw"
    size: int
    expected: int
    t0: float = 0.0
    cpu0: float = 0.0
    arrivals: list[float] = field(default_factory=list)
    cpu_last: float = 0.0  # client process CPU time when the last one arrived
    done: asyncio.Event = field(default_factory=asyncio.Event)
    server: dict[str, float] = field(default_factory=dict)


class Tracker:
    """The rounds in progress and the anomalies seen by any connection."""

    def __init__(self) -> None:
        """No rounds yet."""
        self.rounds: dict[int, Round] = {}
        self.errors: list[str] = []
        self.error_count = 0
        self.duplicates = 0
        self.strays = 0
        self.close_codes: dict[int, int] = {}

    def error(self, message: str) -> None:
        """Count an anomaly; keep the first few messages."""
        self.error_count += 1
        if len(self.errors) < 20:
            self.errors.append(message)


class Receiver(WSListener):
    """A connection that only receives: notes each message's arrival in its round."""

    def __init__(self, tracker: Tracker) -> None:
        """Report to ``tracker``."""
        self.tracker = tracker
        self.transport: WSTransport | None = None
        self.seen: set[int] = set()
        self.closed_by_server = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Remember the transport."""
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Match a message to its round by its first 8 bytes; check size and uniqueness."""
        now = time.monotonic()
        tracker = self.tracker
        if frame.msg_type != WSMsgType.BINARY:
            if frame.msg_type == WSMsgType.CLOSE:
                try:
                    code = int(frame.get_close_code().value)
                except ValueError:  # a code picows does not name
                    code = -1
                if not transport.is_close_frame_sent:
                    self.closed_by_server = True
                    tracker.close_codes[code] = tracker.close_codes.get(code, 0) + 1
                    tracker.error(f"server closed a connection: {code}")
                transport.disconnect()
            elif frame.msg_type not in (WSMsgType.PING, WSMsgType.PONG):
                tracker.error(f"unexpected frame {frame.msg_type}")
            return
        if not frame.fin or frame.payload_size < _seq.size:
            tracker.error(f"fragment or short frame ({frame.payload_size} B)")
            return
        (seq,) = _seq.unpack_from(frame.get_payload_as_memoryview())
        round_ = tracker.rounds.get(seq)
        if round_ is None:
            tracker.strays += 1
            tracker.error(f"message of no round: {seq}")
            return
        if seq in self.seen:
            tracker.duplicates += 1
            tracker.error(f"duplicate of round {seq}")
            return
        self.seen.add(seq)
        if frame.payload_size != round_.size:
            tracker.error(f"round {seq}: {frame.payload_size} B, sent {round_.size}")
        round_.arrivals.append(now)
        if len(round_.arrivals) == round_.expected:
            round_.cpu_last = time.process_time()
            round_.done.set()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Note a disconnect the client did not ask for."""
        if not transport.is_close_frame_sent and not self.closed_by_server:
            self.tracker.error("a connection was lost")


async def http_get(port: int, path: str) -> bytes:
    """GET ``path`` (HTTP/1.0) and return the body; an error for any status but 200."""
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise RuntimeError(f"GET {path}: {head[:80]!r}")
    return body


class Client:
    """The receiving connections, and the rounds run over them."""

    def __init__(self, ports: list[int]) -> None:
        """Talk to the app on ``ports`` (the connections alternate; the first broadcasts)."""
        self.ports = ports
        self.port = ports[0]
        self.urls = [f"ws://{HOST}:{port}/fanout" for port in ports]
        self.tracker = Tracker()
        self.receivers: list[Receiver] = []
        self.next_seq = 0

    async def grow(self, count: int) -> float:
        """Open connections until there are ``count``, all in the room; return seconds taken."""
        start = time.monotonic()
        while len(self.receivers) < count:
            batch = min(CONNECT_BATCH, count - len(self.receivers))
            first = len(self.receivers)
            opened = await asyncio.gather(
                *(ws_connect(lambda: Receiver(self.tracker), self.url_of(first + n))
                  for n in range(batch)),
                return_exceptions=True,
            )  # fmt: skip
            for result in opened:
                if isinstance(result, BaseException):
                    raise RuntimeError(f"could not connect: {result!r}")
                listener = result[1]
                assert isinstance(listener, Receiver)
                self.receivers.append(listener)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while sum(await self.counts()) != count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"not all {count} connections joined within {JOIN_TIMEOUT} s")
            await asyncio.sleep(0.1)
        return time.monotonic() - start

    def url_of(self, number: int) -> str:
        """The URL the ``number``-th connection opens."""
        return self.urls[number % len(self.urls)]

    async def counts(self) -> list[int]:
        """The connections in the room, on each instance."""
        return [int(await http_get(port, "/count")) for port in self.ports]

    async def redis_messages(self) -> dict[int, dict[str, int]]:
        """Each instance's worker: its pid -> the pub/sub messages received, by type."""
        found = {}
        for port in self.ports:
            answer = json.loads(await http_get(port, "/redis"))
            found[int(answer["pid"])] = answer["received"]
        return found

    async def round(self, method: str, size: int) -> Round:
        """Send one message to every connection through ``method``; wait for all of it."""
        seq = self.next_seq
        self.next_seq += 1
        round_ = Round(seq, method, size, len(self.receivers))
        self.tracker.rounds[seq] = round_
        reader, writer = await asyncio.open_connection(HOST, self.port)
        try:
            await asyncio.sleep(SETTLE)  # the worker accepts it and waits for the request
            request = f"GET /{method}?size={size}&seq={seq} HTTP/1.0\r\nHost: {HOST}\r\n\r\n"
            round_.cpu0 = time.process_time()
            round_.t0 = time.monotonic()
            writer.write(request.encode())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(round_.done.wait(), ROUND_TIMEOUT)
            answer = await asyncio.wait_for(reader.read(), ROUND_TIMEOUT)
        finally:
            writer.close()
        head, _, body = answer.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.0 200"):
            raise RuntimeError(f"GET /{method}: {head[:80]!r}")
        view = json.loads(body)
        round_.server = {"view_start": view["start"], "view_end": view["end"]}
        return round_

    async def server_timings(self, rounds: list[Round]) -> None:
        """Add the workers' delivery start (the first's) and end (the last's) to each of
        ``rounds``."""
        timings = [json.loads(await http_get(port, "/timings")) for port in self.ports]
        for round_ in rounds:
            found = [worker[str(round_.seq)] for worker in timings if str(round_.seq) in worker]
            if len(found) == len(timings):
                round_.server["deliver_start"] = min(start for start, _ in found)
                round_.server["deliver_end"] = max(end for _, end in found)

    async def close(self) -> None:
        """Close handshake on every connection; wait (bounded) for the server to hang up."""
        transports = [r.transport for r in self.receivers if r.transport is not None]
        for transport in transports:
            if not transport.is_disconnected:
                transport.send_close()
        waits = (t.wait_disconnected() for t in transports)  # raise on protocol errors
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), CLOSE_TIMEOUT)
        for transport in transports:
            transport.disconnect(graceful=False)


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank ``q`` percentile (0 < q <= 1) of ``values``."""
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


def summarize(rounds: list[Round]) -> dict[str, Any]:
    """Figures of the rounds of one cell, in milliseconds (CPU share as a fraction)."""
    complete = [r for r in rounds if len(r.arrivals) == r.expected]
    cell: dict[str, Any] = {"rounds": len(rounds), "complete_rounds": len(complete)}
    if not complete:
        return cell
    series = {
        "first": [(min(r.arrivals) - r.t0) * 1e3 for r in complete],
        "last": [(max(r.arrivals) - r.t0) * 1e3 for r in complete],
    }
    for name, values in series.items():
        cell[name] = {
            "p50": statistics.median(values),
            "p90": percentile(values, 0.9),
            "max": max(values),
        }
    cell["per_round"] = series
    arrivals = [(t - r.t0) * 1e3 for r in complete for t in r.arrivals]
    cell["arrival_percentiles"] = [percentile(arrivals, q / 100) for q in range(1, 101)]
    timed = [r for r in complete if "deliver_end" in r.server]
    if timed:
        cell["server_start"] = statistics.median(
            (r.server["deliver_start"] - r.t0) * 1e3 for r in timed
        )
        cell["server_done"] = statistics.median(
            (r.server["deliver_end"] - r.t0) * 1e3 for r in timed
        )
        loop = statistics.median(
            (r.server["deliver_end"] - r.server["deliver_start"]) * 1e3 for r in timed
        )
        cell["server_loop"] = loop
        cell["us_per_recipient"] = loop * 1e3 / complete[0].expected
    cell["client_cpu_share"] = statistics.median(
        (r.cpu_last - r.cpu0) / (max(r.arrivals) - r.t0) for r in complete
    )
    return cell


@dataclass
class Setup:
    """A broker's servers, as the client sees them."""

    broker: str
    ports: list[int]  # the uWSGI instances
    methods: list[str]
    redis_ports: list[int]  # the Redis nodes
    client: Client = field(init=False)

    def __post_init__(self) -> None:
        """Its client."""
        self.client = Client(self.ports)


async def run_client(
    setups: list[Setup], conn_counts: list[int], sizes: list[int], rounds: int,
    results: list[dict[str, Any]], notes: list[str], failures: list[str],
) -> None:  # fmt: skip
    """Every connection count, size and method on the servers of ``setups``, whose rounds
    take turns; append results, and every message lost, duplicated or unexpected, and
    every closed connection, to ``failures``."""
    try:
        for count in sorted(conn_counts):
            done: dict[tuple[str, str, int], list[Round]] = {}
            for setup in setups:
                took = await setup.client.grow(count)
                print(f"{setup.broker}: {count} connections in the room ({took:.1f} s)")
            for size in sizes:
                before = [await Traffic.now(setup.client, setup.redis_ports) for setup in setups]
                for index in range(WARMUP + rounds):
                    for setup in setups:  # the brokers and methods take turns: same conditions
                        for method in setup.methods:
                            round_ = await setup.client.round(method, size)
                            if index >= WARMUP:
                                done.setdefault((setup.broker, method, size), []).append(round_)
                            if len(round_.arrivals) != round_.expected:
                                failures.append(
                                    f"{setup.broker} {method} {count} x {size} B round "
                                    f"{round_.seq}: {len(round_.arrivals)} of "
                                    f"{round_.expected} arrived"
                                )
                            await asyncio.sleep(GAP)
                for setup, then in zip(setups, before, strict=True):
                    if setup.redis_ports:
                        after = await Traffic.now(setup.client, setup.redis_ports)
                        traffic = after.minus(then, WARMUP + rounds)
                        traffic |= {"broker": setup.broker, "conns": count, "size": size}
                        traffic["members"] = await setup.client.counts()
                        results.append(traffic)
            await asyncio.sleep(0.5)  # late duplicates would arrive by now
            for setup in setups:
                await setup.client.server_timings(
                    [r for key, rs in done.items() if key[0] == setup.broker for r in rs]
                )
            for (broker, method, size), cell_rounds in done.items():
                cell: dict[str, Any] = {"kind": "fanout", "broker": broker, "method": method}
                cell |= {"conns": count, "size": size}
                cell |= summarize(cell_rounds)
                results.append(cell)
                last = cell.get("last", {}).get("p50")
                shown = f"last p50 {last:.2f} ms" if last is not None else "INCOMPLETE"
                print(f"  {broker:<9} {method:<9} {size:>5} B: {shown}", flush=True)
                if (share := cell.get("client_cpu_share", 0.0)) > BUSY_CLIENT:
                    notes.append(
                        f"{broker} {method} {count} x {size} B: the client was busy {share:.0%} "
                        f"of the round, so 'last' is partly the client's time"
                    )
    finally:
        for setup in setups:
            broker, tracker = setup.broker, setup.client.tracker
            if tracker.duplicates or tracker.strays:
                failures.append(
                    f"{broker}: {tracker.duplicates} duplicates, {tracker.strays} strays"
                )
            if tracker.close_codes:
                failures.append(
                    f"{broker}: connections closed by the server: {tracker.close_codes}"
                )
            failures.extend(f"{broker}: {error}" for error in tracker.errors)
            if tracker.error_count > len(tracker.errors):
                failures.append(f"{broker}: {tracker.error_count} anomalies in all")
            await setup.client.close()


class Traffic:
    """Redis traffic so far: per worker, the pub/sub messages its subscribers received;
    per worker and Redis node, the bytes on the worker's connections to the node (from
    ``ss``: what this benchmark itself asks of Redis is left out)."""

    def __init__(
        self, messages: dict[int, dict[str, int]], wire: dict[tuple[int, int], tuple[int, int]]
    ) -> None:
        self.messages = messages
        self.wire = wire

    @classmethod
    async def now(cls, client: Client, redis_ports: list[int]) -> Traffic:
        """The figures now (none without Redis)."""
        if not redis_ports:
            return cls({}, {})
        messages = await client.redis_messages()
        return cls(messages, socket_bytes(set(messages), set(redis_ports)))

    def minus(self, before: Traffic, rounds: int) -> dict[str, Any]:
        """The traffic from ``before`` to this, per round (``rounds`` of them)."""

        def count(received: dict[str, int], broadcasts: bool) -> int:
            return sum(n for kind, n in received.items() if kind.endswith("message") == broadcasts)

        def delta(key: tuple[int, int]) -> tuple[float, float]:
            (rx, tx), (rx0, tx0) = self.wire[key], before.wire.get(key, (0, 0))
            return (rx - rx0) / rounds, (tx - tx0) / rounds

        workers = []
        for number, (pid, received) in enumerate(self.messages.items()):
            then = before.messages.get(pid, {})
            links = [delta(key) for key in self.wire if key[0] == pid]
            workers.append({
                "pid": pid,
                "instance": number + 1,
                "messages": (count(received, True) - count(then, True)) / rounds,
                "other": (count(received, False) - count(then, False)) / rounds,
                "bytes_in": sum(rx for rx, _ in links),
                "bytes_out": sum(tx for _, tx in links),
            })  # fmt: skip
        nodes = []
        for port in sorted({port for _, port in self.wire}):
            links = [delta(key) for key in self.wire if key[1] == port]
            nodes.append({
                "port": port,
                "bytes_in": sum(tx for _, tx in links),  # what the workers sent it
                "bytes_out": sum(rx for rx, _ in links),
            })  # fmt: skip
        return {"kind": "traffic", "rounds": rounds, "workers": workers, "nodes": nodes}


def socket_bytes(pids: set[int], ports: set[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """(pid, Redis port) -> bytes received and sent so far on the TCP connections of the
    processes ``pids`` to 127.0.0.1:``ports`` (``ss -tinp``)."""
    listing = subprocess.run(
        ["ss", "-tinpH", "state", "established"], capture_output=True, text=True, check=True
    ).stdout
    totals: dict[tuple[int, int], list[int]] = {}
    owner = None
    for line in listing.splitlines():
        if not line[:1].isspace():  # a socket: Recv-Q Send-Q local peer users
            fields = line.split()
            peer = fields[3] if len(fields) > 4 else ""
            found = re.search(r"pid=(\d+)", line)
            pid = int(found.group(1)) if found else None
            port = int(peer.rpartition(":")[2]) if peer.startswith(f"{HOST}:") else None
            owner = (pid, port) if pid in pids and port in ports else None
        elif owner is not None:  # its TCP information
            total = totals.setdefault(owner, [0, 0])
            for index, name in enumerate(("bytes_received", "bytes_sent")):
                if found := re.search(rf"\b{name}:(\d+)", line):
                    total[index] += int(found.group(1))
            owner = None
    return {key: (rx, tx) for key, (rx, tx) in totals.items()}


# The servers.


def pin_all_threads(pid: int, cpu: int) -> None:
    """Pin every thread of process ``pid`` to ``cpu``."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(task.name), {cpu})


@contextlib.contextmanager
def redis_server(cpu: int | None) -> Iterator[tuple[str, list[int]]]:
    """A redis-server of its own, pinned to ``cpu``; yield its URL and port."""
    server = RedisServer()
    try:
        server.start()
        assert server.process is not None
        if cpu is not None:
            pin_all_threads(server.process.pid, cpu)
        yield server.url, [server.port]
    finally:
        server.stop()
        server.dir.cleanup()


@contextlib.contextmanager
def redis_cluster(cpu: int | None) -> Iterator[tuple[str, list[int]]]:
    """A Redis Cluster of three masters (no replica), pinned to ``cpu``; yield its URL and
    the nodes' ports."""
    cluster = RedisCluster(masters=3, replicas=0)
    with cluster:
        for node in cluster.nodes:
            assert node.process is not None
            if cpu is not None:
                pin_all_threads(node.process.pid, cpu)
        yield cluster.url, [node.port for node in cluster.nodes]


@contextlib.contextmanager
def uwsgi(
    broker_url: str | None, greenlets: int, cpu: int | None, log: Path, notes: list[str]
) -> Iterator[int]:
    """Run bench/fanout_app.py under uWSGI with one gevent worker; yield its port."""
    port = free_port()
    cmd = [
        str(Path(sys.prefix) / "bin" / "uwsgi"),
        "--master", "--workers", "1", "--gevent", str(greenlets),
        "--http-socket", f"{HOST}:{port}", "--listen", "4096",
        "--virtualenv", sys.prefix, "--pythonpath", str(ROOT), "--chdir", str(ROOT),
        "--need-app", "--disable-logging",
        "--wsgi-file", str(BENCH / "fanout_app.py"), "--callable", "app",
    ]  # fmt: skip
    env = dict(os.environ)
    env.pop("FLASK_WEBSOCKET_BROKER_URL", None)
    if broker_url is not None:
        env["FLASK_WEBSOCKET_BROKER_URL"] = broker_url
    with run_pinned(cmd, port, cpu, log, notes, "fanout_app", env) as port:
        yield port


# The report.


def ms(value: float | None) -> str:
    """Milliseconds with two decimals, or a dash."""
    return "-" if value is None else f"{value:.2f}"


def table(results: list[dict[str, Any]]) -> str:
    """The results as a markdown table, then the ratios of the other methods to broadcast."""
    rows = [
        "| broker | method | conns | size | first p50 | first p90 | first max "
        "| last p50 | last p90 | last max | worker start | worker done | us/recipient "
        "| client CPU |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    traffic = [r for r in results if r.get("kind") == "traffic"]
    results = [r for r in results if r.get("kind") != "traffic"]
    for r in results:
        first, last = r.get("first", {}), r.get("last", {})
        share = r.get("client_cpu_share")
        per = r.get("us_per_recipient")
        rows.append(
            f"| {r['broker']} | {r['method']} | {r['conns']:,} | {r['size']:,} "
            f"| {ms(first.get('p50'))} | {ms(first.get('p90'))} | {ms(first.get('max'))} "
            f"| {ms(last.get('p50'))} | {ms(last.get('p90'))} | {ms(last.get('max'))} "
            f"| {ms(r.get('server_start'))} | {ms(r.get('server_done'))} "
            f"| {'-' if per is None else f'{per:.1f}'} "
            f"| {'-' if share is None else f'{share:.0%}'} |"
        )
    by_key = {(r["broker"], r["method"], r["conns"], r["size"]): r for r in results}
    ratios = []
    for (broker, method, conns, size), other in by_key.items():
        bcast = by_key.get((broker, "broadcast", conns, size))
        if method == "broadcast" or bcast is None:
            continue
        cells = []
        for a, b in (
            (other.get("last", {}).get("p50"), bcast.get("last", {}).get("p50")),
            (other.get("server_loop"), bcast.get("server_loop")),
        ):
            cells.append(f"{a / b:.2f}" if a and b else "-")
        ratios.append(f"| {method}/broadcast | {conns:,} | {size:,} | {cells[0]} | {cells[1]} |")
    for (broker, method, conns, size), cluster in by_key.items():
        pair = by_key.get(("redis-2", method, conns, size))
        if broker != "cluster-2" or pair is None:
            continue
        a, b = cluster.get("last", {}).get("p50"), pair.get("last", {}).get("p50")
        c, d = cluster.get("server_loop"), pair.get("server_loop")
        ratios.append(
            f"| cluster-2/redis-2 | {conns:,} | {size:,} "
            f"| {f'{a / b:.2f}' if a and b else '-'} | {f'{c / d:.2f}' if c and d else '-'} |"
        )
    if ratios:
        rows += [
            "",
            "| ratio | conns | size | last p50 | worker loop |",
            "|---|--:|--:|--:|--:|",
            *ratios,
        ]
    if traffic:
        rows += [
            "",
            "Redis traffic per broadcast (warm-up rounds included), per worker:",
            "",
            "| broker | conns | size | instance | members | pub/sub messages | other pub/sub "
            "| bytes in | bytes out |",
            "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        ]
        for t in traffic:
            for w in t["workers"]:
                rows.append(
                    f"| {t['broker']} | {t['conns']:,} | {t['size']:,} | {w['instance']} "
                    f"| {t['members'][w['instance'] - 1]:,} | {w['messages']:.2f} "
                    f"| {w['other']:.2f} | {w['bytes_in']:,.0f} | {w['bytes_out']:,.0f} |"
                )
        rows += [
            "",
            "and per Redis node (to and from the workers):",
            "",
            "| broker | conns | size | node | bytes in | bytes out |",
            "|---|--:|--:|--:|--:|--:|",
        ]
        for t in traffic:
            for number, n in enumerate(t["nodes"]):
                rows.append(
                    f"| {t['broker']} | {t['conns']:,} | {t['size']:,} | {number + 1} "
                    f"| {n['bytes_in']:,.0f} | {n['bytes_out']:,.0f} |"
                )
    return "\n".join(rows)


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    uwsgi_binary = Path(sys.prefix) / "bin" / "uwsgi"
    version = subprocess.run(
        [str(uwsgi_binary), "--version"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "uwsgi": version,
    }


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def main() -> int:
    """Run every broker x connection count x size; print the table, save JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", default="1000,5000", help="connection counts")
    parser.add_argument("--sizes", default="64,4096", help="message sizes in bytes (>= 8)")
    parser.add_argument("--rounds", type=int, default=20, help="measured rounds per cell")
    parser.add_argument(
        "--brokers",
        default="local,redis,redis-2+cluster-2",
        help=f"of {', '.join(BROKERS)}; those joined by + run at once, their rounds in turn",
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help="of broadcast, naive, raw (the last two on the local broker's server only)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--server-cpu", type=int, default=0, help="uWSGI and redis-server")
    parser.add_argument("--client-cpu", type=int, default=1)
    args = parser.parse_args()
    conn_counts: list[int] = csv_list(int, args.conns)
    sizes: list[int] = csv_list(int, args.sizes)
    groups: list[list[str]] = [group.split("+") for group in csv_list(str, args.brokers)]
    brokers = [broker for group in groups for broker in group]
    methods: list[str] = csv_list(str, args.methods)
    if unknown := set(methods) - set(METHODS):
        parser.error(f"unknown methods: {', '.join(sorted(unknown))}")
    if unknown := set(brokers) - set(BROKERS):
        parser.error(f"unknown brokers: {', '.join(sorted(unknown))}")
    if any(size < _seq.size for size in sizes):
        parser.error(f"a message carries its round number: at least {_seq.size} bytes")
    if "raw" in methods and max(sizes) > RAW_LIMIT:
        parser.error(f"raw writes bypass the connections' buffers: sizes up to {RAW_LIMIT}")
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    signal.signal(signal.SIGTERM, _raise_interrupt)  # clean up on kill as on Ctrl-C

    results: list[dict[str, Any]] = []
    notes: list[str] = []
    failures: list[str] = []
    greenlets = max(conn_counts) + GREENLET_SPARE
    logdir = Path(tempfile.mkdtemp(prefix="fanout-bench-"))
    try:
        for group in groups:
            logs: list[Path] = []
            try:
                with contextlib.ExitStack() as stack:
                    setups = []
                    for broker in group:
                        instances, redis_kind = BROKERS[broker]
                        url, redis_ports = None, []
                        if redis_kind == "server":
                            url, redis_ports = stack.enter_context(redis_server(server_cpu))
                        elif redis_kind == "cluster":
                            url, redis_ports = stack.enter_context(redis_cluster(server_cpu))
                        ports = []
                        for number in range(instances):
                            log = logdir / f"{broker}-{number + 1}.log"
                            logs.append(log)
                            server = uwsgi(url, greenlets, server_cpu, log, notes)
                            ports.append(stack.enter_context(server))
                        served = [m for m in methods if broker == "local" or m == "broadcast"]
                        setups.append(Setup(broker, ports, served, redis_ports))
                    uvloop.run(
                        run_client(
                            setups, conn_counts, sizes, args.rounds, results, notes, failures
                        )
                    )
            except (RuntimeError, OSError, subprocess.CalledProcessError) as exc:
                failures.append(f"{'+'.join(group)}: {exc}")
                print(f"{'+'.join(group)}: {exc}")
            for log in logs:
                if log.exists() and (trouble := log_trouble(log)):
                    notes.append(f"{log.name}: " + " | ".join(trouble))
    except KeyboardInterrupt:
        failures.append("interrupted: the results are incomplete")
    print()
    print(table(results))
    for note in notes:
        print("note:", note)
    for failure in failures:
        print("FAILED:", failure)
    print(f"uWSGI logs: {logdir}")
    if args.json:
        meta = {"rounds": args.rounds, "warmup": WARMUP, "greenlets": greenlets}
        meta |= {"server_cpu": server_cpu, "client_cpu": client_cpu, **machine()}
        report = {"meta": meta, "results": results, "notes": notes, "failures": failures}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    cells = len(conn_counts) * len(sizes)
    expected = cells * sum(
        len(methods) if broker == "local" else int("broadcast" in methods) for broker in brokers
    )
    cells_done = [r for r in results if r.get("kind") == "fanout"]
    complete = len(cells_done) == expected and all(
        r["complete_rounds"] == r["rounds"] for r in cells_done
    )
    return 0 if complete and not failures else 1


if __name__ == "__main__":
    sys.exit(main())
