"""Connection rate: connections per second that open, echo one message and close, while
0, 1,000, 3,000 and 10,000 other connections are held open, idle.

    .venv/bin/python bench/rate.py [--held 0,1000,3000,10000] [--duration 5] [--rounds 3]
                                   [--servers native,gevent,websockets] [--json out.json]

Servers, each alone on one CPU, one process (one uWSGI worker), ``--http-socket``:

- ``native``: bench/native_echo.py, uWSGI's own WebSocket loop, under ``--gevent N``;
- ``gevent``: examples/echo_gevent.py, this package's gevent flavour, ``--gevent N``;
- ``websockets``: bench/websockets_echo.py, the ``websockets`` library's asyncio server.

The client is this process, on the other CPU, on uvloop. For each round and server, a
fresh server; then, for each count of held connections in increasing order, it opens
more idle connections (picows, 200 at a time, each echoing one message) up to that
count, and then runs ``--concurrency`` loops of: open a connection, echo one 64-byte
message, close it (the client sends the close frame and waits for the server's, and
for the server to end the TCP connection). Those connections are made by hand, a
protocol of a few lines, so that the client has CPU to spare: picows cost it about
530 us per cycle, which capped the rate below what uWSGI's loop serves. After
``--warmup`` seconds, the loops' completed cycles are
counted for ``--duration`` seconds, and the server's CPU time over them (all its
processes, from ``/proc``). Every cycle and every held connection must echo (the held
ones once more at the end): failures are counted by what happened, and the exit
status is 1 if there were any. Medians over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import statistics
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvloop
from echo import HOST, csv_list, free_port, log_trouble, run_pinned, usable_cpus
from picows import WSCloseCode, WSError, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PAYLOAD = os.urandom(64)
TIMEOUT = 30.0  # seconds for any one step of a connection
BATCH = 200  # idle connections opened at a time
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Server:
    """A server to start: its name, the WebSocket path it echoes on, how to start it."""

    name: str
    path: str

    def command(self, port: int, cores: int, gc_app: bool = False) -> list[str]:
        """The command that serves on ``port``, with room for ``cores`` connections
        (``gc_app``: the gevent echo of bench/gc_app.py, which counts the collections)."""
        if self.name == "websockets":
            return [sys.executable, str(BENCH / "websockets_echo.py"), "--port", str(port)]
        gevent_app = BENCH / "gc_app.py" if gc_app else ROOT / "examples" / "echo_gevent.py"
        app = {
            "native": ["--wsgi-file", str(BENCH / "native_echo.py")],
            "gevent": ["--wsgi-file", str(gevent_app), "--callable", "app"],
        }[self.name]
        return [
            str(Path(sys.prefix) / "bin" / "uwsgi"),
            "--master", "--workers", "1", "--gevent", str(cores),
            "--http-socket", f"{HOST}:{port}", "--listen", "4096",
            "--virtualenv", sys.prefix, "--pythonpath", str(ROOT), "--chdir", str(ROOT),
            "--need-app", "--disable-logging", *app,
        ]  # fmt: skip


SERVERS = [Server("native", "/"), Server("gevent", "/echo"), Server("websockets", "/")]


class Echoer(WSListener):
    """A client connection: the echo of the one message it sends, and how it ended."""

    def __init__(self) -> None:
        self.echoed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """The echo, or the server's close frame."""
        if frame.msg_type == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:  # the server closed first
                self._fail(f"closed {frame.get_close_code()}")
                transport.send_close(frame.get_close_code())
            transport.disconnect()
        elif frame.msg_type == WSMsgType.BINARY and frame.fin:
            if frame.payload_size == len(PAYLOAD):
                if not self.echoed.done():
                    self.echoed.set_result(None)
            else:
                self._fail("wrong echo")

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """The TCP connection is gone."""
        self._fail("dropped")

    def _fail(self, what: str) -> None:
        if not self.echoed.done():
            self.echoed.set_exception(ConnectionError(what))

    async def echo(self, transport: WSTransport) -> None:
        """Send the message and wait for its echo."""
        if self.echoed.done():
            self.echoed = asyncio.get_running_loop().create_future()
        transport.send(WSMsgType.BINARY, PAYLOAD)
        await asyncio.wait_for(asyncio.shield(self.echoed), TIMEOUT)


MASK = os.urandom(4)
#: The client's frames, masked once: the message, and a close frame with 1000.
MESSAGE_FRAME = (
    bytes([0x82, 0x80 | len(PAYLOAD)])
    + MASK
    + bytes(b ^ MASK[i % 4] for i, b in enumerate(PAYLOAD))
)
CLOSE_FRAME = bytes([0x88, 0x82]) + MASK + bytes(b ^ MASK[i] for i, b in enumerate(b"\x03\xe8"))


class Cycle(asyncio.Protocol):
    """One connection of the loops, by hand (a WebSocket library here would cost the
    client more CPU than the servers spend): the upgrade request, then the message once
    the 101 is in, then the close frame once its echo is; done when the server has
    answered the close and ended the TCP connection."""

    def __init__(self, request: bytes) -> None:
        self.request = request
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport
        self.buffer = b""
        self.state = "101"  # what it waits for: "101", "echo", "close", "end"

    def itself(self) -> Cycle:
        """The protocol factory that makes this one."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the upgrade request."""
        self.transport = transport
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """Move on as the 101, the echo and the close frame come."""
        assert self.transport is not None
        buffer = self.buffer = self.buffer + data
        if self.state == "101":
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            status = buffer[: buffer.find(b"\r\n")].decode(errors="replace")
            if not status.startswith("HTTP/1.1 101"):
                self._fail(f"HTTP {status[9:12]}")
                self.transport.close()
                return
            buffer = self.buffer = buffer[end + 4 :]
            self.state = "echo"
            self.transport.write(MESSAGE_FRAME)
        while len(buffer) >= 2:  # the server's frames: unmasked, short
            length = buffer[1] & 0x7F
            if len(buffer) < 2 + length:
                return
            opcode, payload = buffer[0] & 0x0F, buffer[2 : 2 + length]
            buffer = self.buffer = buffer[2 + length :]
            if opcode == 0x8:
                if self.state != "close":
                    code = int.from_bytes(payload[:2], "big") if payload else 1005
                    self._fail(f"closed {code}")
                self.state = "end"
            elif opcode == 0x2 and self.state == "echo" and payload == PAYLOAD:
                self.state = "close"
                self.transport.write(CLOSE_FRAME)
            elif opcode != 0x9:  # a ping waits: the close comes next
                self._fail("unexpected frame")

    def connection_lost(self, exc: Exception | None) -> None:
        """Done if the close handshake was; dropped otherwise."""
        if self.state == "end":
            if not self.done.done():
                self.done.set_result(None)
        else:
            self._fail("dropped")

    def _fail(self, what: str) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(what))


def failure(stage: str, exc: BaseException) -> str:
    """What went wrong, as counted."""
    if isinstance(exc, WSError):
        return f"{stage}: {str(exc).splitlines()[0][:60]}"
    if isinstance(exc, ConnectionError) and exc.args:
        return f"{stage}: {exc.args[0]}"
    return f"{stage}: {type(exc).__name__}"


async def open_echoing(url: str) -> tuple[WSTransport, Echoer]:
    """A connection that has echoed one message."""
    transport, listener = await asyncio.wait_for(ws_connect(Echoer, url), TIMEOUT)
    assert isinstance(listener, Echoer)
    try:
        await listener.echo(transport)
    except BaseException:
        transport.disconnect(graceful=False)
        raise
    return transport, listener


async def close(transport: WSTransport) -> None:
    """Close handshake; wait until the server has ended the TCP connection."""
    if not transport.is_disconnected:
        transport.send_close(WSCloseCode.OK)
    try:
        await asyncio.wait_for(transport.wait_disconnected(), TIMEOUT)
    except TimeoutError:
        transport.disconnect(graceful=False)
        raise


def tree_cpu(pid: int) -> float:
    """CPU seconds (user and system) of ``pid`` and its children, recursively."""
    total = 0.0
    with contextlib.suppress(OSError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLOCK_TICKS
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                total += tree_cpu(int(child))
    return total


@dataclass
class Held:
    """The idle connections held open, and the figures of opening them."""

    connections: list[tuple[WSTransport, Echoer]]
    failed: Counter[str]

    async def grow(self, url: str, count: int, server_pid: int) -> dict[str, float]:
        """Open more, up to ``count`` in all: how many per second, and the CPU it took."""
        start, opened = time.perf_counter(), 0
        cpu_before, own_before = tree_cpu(server_pid), time.process_time()
        while len(self.connections) + sum(self.failed.values()) < count:
            n = min(BATCH, count - len(self.connections) - sum(self.failed.values()))
            got = await asyncio.gather(*(open_echoing(url) for _ in range(n)),
                                       return_exceptions=True)  # fmt: skip
            for result in got:
                if isinstance(result, BaseException):
                    self.failed[failure("held, open", result)] += 1
                else:
                    self.connections.append(result)
                    opened += 1
        elapsed = time.perf_counter() - start
        if not opened:
            return {}
        return {
            "open_rate": opened / elapsed,
            "open_server_cpu_us": (tree_cpu(server_pid) - cpu_before) / opened * 1e6,
            "open_client_cpu_us": (time.process_time() - own_before) / opened * 1e6,
        }

    async def check_and_close(self) -> None:
        """Echo once more on each; then close them all."""
        got = await asyncio.gather(
            *(listener.echo(transport) for transport, listener in self.connections),
            return_exceptions=True,
        )
        for result in got:
            if isinstance(result, BaseException):
                self.failed[failure("held, echo at the end", result)] += 1
        await asyncio.gather(*(close(t) for t, _ in self.connections), return_exceptions=True)


async def churn(
    url: str, concurrency: int, warmup: float, duration: float, server_pid: int
) -> dict[str, Any]:
    """Run the open-echo-close loops; count the cycles done in ``duration``."""
    done = 0
    failed: Counter[str] = Counter()
    stop = False
    port = int(url.split(":")[2].split("/")[0])
    path = "/" + url.split("/", 3)[3]
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()
    loop_ = asyncio.get_running_loop()

    async def loop() -> None:
        nonlocal done
        while not stop:
            cycle = Cycle(request)
            try:
                transport, _ = await loop_.create_connection(cycle.itself, HOST, port)
            except Exception as exc:
                failed[failure("open", exc)] += 1
                continue
            try:
                await asyncio.wait_for(cycle.done, TIMEOUT)
            except Exception as exc:
                transport.abort()
                failed[failure("cycle", exc)] += 1
                continue
            done += 1

    tasks = [asyncio.create_task(loop()) for _ in range(concurrency)]
    await asyncio.sleep(warmup)
    before, cpu_before, start = done, tree_cpu(server_pid), time.perf_counter()
    own_before = time.process_time()
    await asyncio.sleep(duration)
    own = time.process_time() - own_before
    cycles, cpu, elapsed = (
        done - before,
        tree_cpu(server_pid) - cpu_before,
        time.perf_counter() - start,
    )
    stop = True
    await asyncio.gather(*tasks)
    return {
        "rate": cycles / elapsed,
        "cycles": cycles,
        "server_cpu": cpu / elapsed,  # CPUs busy
        "client_cpu": own / elapsed,
        "server_cpu_us_per_cycle": cpu / cycles * 1e6 if cycles else None,
        "failed": dict(failed),
    }


async def measure_server(
    server: Server, pid: int, port: int, held_counts: list[int], args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Every held count, in increasing order, on one running server."""
    url = f"ws://{HOST}:{port}{server.path}"
    held = Held([], Counter())
    rows = []
    try:
        for count in held_counts:
            counting = args.gc is not None and server.name == "gevent"
            before, had = (await collections(port) if counting else {}), len(held.connections)
            opening = await held.grow(url, count, pid)
            if counting and opening:
                after, opened = await collections(port), len(held.connections) - had
                for generation in ("0", "1", "2"):
                    (runs, seconds), (runs_before, seconds_before) = (
                        after[generation],
                        before[generation],
                    )
                    opening[f"gc{generation}_collections"] = runs - runs_before
                    opening[f"gc{generation}_us_per_opened"] = (
                        (seconds - seconds_before) / opened * 1e6
                    )
            got = await churn(url, args.concurrency, args.warmup, args.duration, pid)
            row = {"server": server.name, "held": count, **opening, **got}
            rows.append(row)
            shown = ", ".join(f"{k}: {v}" for k, v in got["failed"].items())
            print(
                f"{server.name:<10} held {count:>6,}: {got['rate']:7,.0f} conn/s, server "
                f"{got['server_cpu']:.0%} CPU (client {got['client_cpu']:.0%}), "
                f"{got['server_cpu_us_per_cycle'] or 0:6,.0f} us CPU per connection"
                + (
                    f"; idle ones opened at {opening['open_rate']:,.0f}/s, "
                    f"{opening['open_server_cpu_us']:,.0f} us server CPU and "
                    f"{opening['open_client_cpu_us']:,.0f} us client CPU each"
                    if opening
                    else ""
                )
                + "".join(
                    f"; gen{g} collector {opening[f'gc{g}_us_per_opened']:,.0f} us each"
                    f" ({opening[f'gc{g}_collections']:.0f} collections)"
                    for g in "012"
                    if f"gc{g}_collections" in opening
                )
                + (f"; FAILED {shown}" if shown else ""),
                flush=True,
            )
    finally:
        await held.check_and_close()
        if held.failed:
            print(f"{server.name:<10} held connections FAILED: {dict(held.failed)}")
            rows.append({"server": server.name, "held_failed": dict(held.failed)})
    return rows


async def collections(port: int) -> dict[str, list[float]]:
    """bench/gc_app.py's figures: generation -> [collections, seconds]."""

    def get() -> dict[str, list[float]]:
        with urllib.request.urlopen(f"http://{HOST}:{port}/gc", timeout=TIMEOUT) as answer:
            figures: dict[str, list[float]] = json.loads(answer.read())["collections"]
            return figures

    return await asyncio.to_thread(get)


@contextlib.contextmanager
def started(
    server: Server, cores: int, cpu: int | None, log: Path, notes: list[str], gc: str | None
) -> Iterator[tuple[int, int]]:
    """Run ``server`` pinned to ``cpu``; yield its pid and port once it answers."""
    port = free_port()
    command = server.command(port, cores, gc_app=gc is not None)
    env = {**os.environ, "BENCH_GC": gc or ""}
    with run_pinned(command, port, cpu, log, notes, server.name, env) as port:
        children = [
            int(pid) for task in Path("/proc/self/task").iterdir()
            for pid in (task / "children").read_text().split()
        ]  # fmt: skip
        assert len(children) == 1, children  # the server: this process starts nothing else
        yield children[0], port


def main() -> int:
    """Run every round x server x held count; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--held", default="0,1000,3000,10000", help="idle connections held")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--concurrency", type=int, default=16, help="open-echo-close loops")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--servers", default="native,gevent,websockets")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--gc", choices=["count", "freeze", "disable"], default=None,
        help="gevent: serve bench/gc_app.py, which counts the garbage collector's time while"
        " the idle connections are opened (freeze: gc.freeze() first; disable: no collector)",
    )  # fmt: skip
    args = parser.parse_args()
    held_counts = sorted(csv_list(int, args.held))
    servers = [s for s in SERVERS if s.name in csv_list(str, args.servers)]
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)
    if client_cpu is not None:
        os.sched_setaffinity(0, {client_cpu})
    # A descriptor per connection here and in the server, which inherits the limit.
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    need = max(held_counts) + args.concurrency + 500
    if hard != resource.RLIM_INFINITY and hard < need:
        parser.error(f"the hard open-file limit is {hard}; {need} are needed (ulimit -Hn)")
    cores = max(held_counts) + args.concurrency + 100  # uWSGI's --gevent N

    rows: list[dict[str, Any]] = []
    notes: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="rate-bench-"))
    try:
        for round_, server in ((r, s) for r in range(args.rounds) for s in servers):
            log = logdir / f"{server.name}-{round_}.log"
            try:
                with started(server, cores, server_cpu, log, notes, args.gc) as (pid, port):
                    rows += uvloop.run(measure_server(server, pid, port, held_counts, args))
            except RuntimeError as exc:
                notes.append(str(exc))
                print(exc)
            if trouble := log_trouble(log):
                notes.append(f"{log.name}: " + " | ".join(trouble))
    except KeyboardInterrupt:
        notes.append("interrupted: the results are incomplete")
    summary = summarize(rows, servers, held_counts)
    print()
    print(summary["table"])
    failures = sum(sum(r.get("failed", {}).values()) + sum(r.get("held_failed", {}).values())
                   for r in rows)  # fmt: skip
    if failures:
        notes.append(f"FAILED: {failures} connection(s) did not echo or close cleanly")
    for note in notes:
        print("note:", note)
    print(f"server logs: {logdir}")
    if args.json:
        meta = {k: getattr(args, k) for k in ("duration", "warmup", "concurrency", "rounds", "gc")}
        meta |= {"server_cpu": server_cpu, "client_cpu": client_cpu, "payload": len(PAYLOAD)}
        report = {"meta": meta, "runs": rows, "medians": summary["medians"], "notes": notes}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    complete = all(
        summary["medians"].get(s.name, {}).get(str(h)) for s in servers for h in held_counts
    )
    return (
        0
        if complete and not failures and not any(n.startswith("interrupted") for n in notes)
        else 1
    )


def summarize(
    rows: list[dict[str, Any]], servers: list[Server], held_counts: list[int]
) -> dict[str, Any]:
    """Medians per server and held count, and the table of them."""
    medians: dict[str, dict[str, dict[str, float]]] = {}
    for server in servers:
        for count in held_counts:
            runs = [r for r in rows if r["server"] == server.name and r.get("held") == count]
            if not runs:
                continue
            cell = {
                key: statistics.median(r[key] for r in runs if r.get(key) is not None)
                for key in (
                    "rate",
                    "server_cpu",
                    "server_cpu_us_per_cycle",
                    "open_rate",
                    "open_server_cpu_us",
                    "open_client_cpu_us",
                )
                if any(r.get(key) is not None for r in runs)
            }
            cell["runs"] = len(runs)
            medians.setdefault(server.name, {})[str(count)] = cell
    header = (
        "server        held   conn/s  server CPU  us CPU/conn  idle opened/s"
        "  us server CPU/opened  us client CPU/opened"
    )
    lines = [header]
    for name, cells in medians.items():
        for held, cell in cells.items():
            opened = (
                f"{cell['open_rate']:13,.0f} {cell['open_server_cpu_us']:21,.0f}"
                f" {cell['open_client_cpu_us']:21,.0f}"
                if "open_rate" in cell
                else f"{'-':>13} {'-':>21} {'-':>21}"
            )
            lines.append(
                f"{name:<10} {int(held):>7,} {cell['rate']:8,.0f} {cell['server_cpu']:10.0%}"
                f" {cell.get('server_cpu_us_per_cycle', 0):12,.0f} {opened}"
            )
    return {"medians": medians, "table": "\n".join(lines)}


if __name__ == "__main__":
    sys.exit(main())
