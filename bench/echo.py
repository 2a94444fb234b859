"""Echo benchmark: uWSGI's native WebSocket loop against the project's examples and peers.

    .venv/bin/python bench/echo.py [--duration 5] [--sizes 64,16384] [--conns 1,50]
                                   [--modes http,http-socket,http-socket-ws] [--json out.json]
                                   [--servers native,gevent,asyncio,picows,websockets,flask-sock]
                                   [--deflate]

For every uWSGI mode, each server (``native``: bench/native_echo.py, ``gevent``:
examples/echo_gevent.py, ``gevent-callbacks``: bench/callbacks_echo.py, ``asyncio``:
examples/echo_asyncio.py, ``plain``: examples/echo.py on ``--threads 64``, a thread per
connection) is started under ``--master`` with one worker, pinned to one CPU;
bench/client.py, pinned to another CPU, measures round trips per second for every message
size and connection count. The peers (bench/peer_echo.py: ``picows`` on uvloop,
``websockets``' asyncio server, ``flask-sock`` on gunicorn's gevent worker, one worker)
speak HTTP themselves: they run in the ``http-socket`` mode only, pinned the same way. The
machine is shared and noisy: every round starts all the servers, measures each cell's
servers one after the other (the order turning by one every round), and stops them; the
table gives the median of each server's ``--rounds`` runs and the ratios of the medians.
``--deflate`` measures with bench/deflate_client.py (JSON-like text, permessage-deflate)
instead: for the servers that compress (gevent, asyncio, websockets).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
HOST = "127.0.0.1"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 5.0
STOP_ATTEMPTS = 3

MODES: dict[str, list[str]] = {
    # The router relays in --http-buffer-size chunks; at its default (one page) Nagle's
    # algorithm holds every chunk after the first: 16 KiB echoes take ~90 ms (README).
    "http": ["--http", "{addr}", "--http-websockets", "--http-buffer-size", "65536"],
    "http-socket": ["--http-socket", "{addr}"],
    "http-socket-ws": ["--http-socket", "{addr}", "--http-websockets"],
}


@dataclass(frozen=True)
class Server:
    """A WSGI app to serve, the WebSocket path it echoes on, and its loop engine; or, for
    a peer, the command that serves (``{python}``, ``{host}`` and ``{port}`` filled in)."""

    name: str
    app_args: list[str]
    path: str
    engine: tuple[str, ...] = ("--gevent", "100")
    command: tuple[str, ...] = ()


SERVERS = [
    Server("native", ["--wsgi-file", str(BENCH / "native_echo.py")], "/"),
    Server(
        "gevent",
        ["--wsgi-file", str(ROOT / "examples" / "echo_gevent.py"), "--callable", "app"],
        "/echo",
    ),
    Server(
        "gevent-callbacks",
        ["--wsgi-file", str(BENCH / "callbacks_echo.py"), "--callable", "app"],
        "/echo",
    ),
    Server(
        "asyncio",
        ["--wsgi-file", str(ROOT / "examples" / "echo_asyncio.py"), "--callable", "app"],
        "/echo",
        ("--asyncio", "100", "--greenlet"),
    ),
    # A connection holds a uWSGI thread: up to 50 connections, and the bench's HTTP probe.
    Server(
        "plain",
        ["--wsgi-file", str(ROOT / "examples" / "echo.py"), "--callable", "app"],
        "/echo",
        ("--threads", "64"),
    ),
    Server(
        "picows", [], "/echo", command=("{python}", "peer_echo.py", "picows", "{host}", "{port}")
    ),
    Server(
        "websockets",
        [],
        "/echo",
        command=("{python}", "peer_echo.py", "websockets", "{host}", "{port}"),
    ),
    Server(
        "flask-sock",
        [],
        "/echo",
        command=tuple(
            "{python} -m gunicorn --worker-class gevent --workers 1 --bind {host}:{port}"
            " peer_echo:flask_sock_app".split()
        ),
    ),
]
#: The uWSGI mode the peers, which speak HTTP themselves, are compared in.
PEER_MODE = "http-socket"


def free_port() -> int:
    """Return a loopback port that is free right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def http_probe(port: int) -> bool:
    """Whether a worker answers a plain GET on ``port`` (not just a listening router)."""
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {HOST}\r\n\r\n".encode())
            answer = b""
            for _ in range(64):  # read to EOF, so that closing does not reset the connection
                chunk = sock.recv(4096)
                if not chunk:
                    break
                answer += chunk
            return answer.startswith(b"HTTP/1.")
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGINT the uWSGI master (SIGTERM would reload it) and wait; return SIGINTs needed.

    A SIGINT is now and then lost (no "SIGINT/SIGTERM received" in the log), so it is
    repeated a few times; the last resort is SIGKILL to uWSGI's own process group.
    """
    for attempt in range(1, STOP_ATTEMPTS + 1):
        if proc.poll() is not None:
            return attempt - 1
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_TIMEOUT)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)  # its own session: only uWSGI's processes
        proc.wait(STOP_TIMEOUT)
    return STOP_ATTEMPTS + 1


@contextlib.contextmanager
def uwsgi(
    server: Server, mode: str, cpu: int | None, log: Path, extra: list[str], notes: list[str]
) -> Iterator[int]:
    """Run ``server`` under uWSGI in ``mode`` (a peer: its own command); yield its port
    once it answers."""
    port = free_port()
    if server.command:
        values = {"python": sys.executable, "host": HOST, "port": str(port)}
        peer = [arg.format(**values) for arg in server.command]
        with run_pinned(peer, port, cpu, log, notes, server.name, cwd=BENCH) as port:
            yield port
        return
    mode_args = [a.format(addr=f"{HOST}:{port}") for a in MODES[mode]]
    cmd = [
        str(Path(sys.prefix) / "bin" / "uwsgi"),
        "--master", "--workers", "1", *server.engine,
        "--virtualenv", sys.prefix, "--pythonpath", str(ROOT), "--chdir", str(ROOT),
        "--need-app", "--disable-logging",
        *mode_args, *server.app_args, *extra,
    ]  # fmt: skip
    with run_pinned(cmd, port, cpu, log, notes, f"{server.name}, {mode}") as port:
        yield port


def start_all(
    stack: contextlib.ExitStack,
    servers: list[Server],
    mode: str,
    cpu: int | None,
    logs: dict[str, Path],
    extra: list[str],
    notes: list[str],
) -> dict[str, str]:
    """Start ``servers`` in ``mode`` on ``stack`` (stopped when it closes); the echo URL of
    each that came up, by name. One that did not is noted and left out."""
    urls: dict[str, str] = {}
    for server in servers:
        try:
            port = stack.enter_context(uwsgi(server, mode, cpu, logs[server.name], extra, notes))
        except RuntimeError as exc:
            notes.append(str(exc))
            print(exc)
            continue
        urls[server.name] = f"ws://{HOST}:{port}{server.path}"
    return urls


def usable_cpus(server_cpu: int, client_cpu: int) -> tuple[int | None, int | None]:
    """The two CPUs to pin server and client to, or ``(None, None)`` when they cannot be."""
    cpus = sorted(os.sched_getaffinity(0))
    if not {server_cpu, client_cpu} <= set(cpus) or server_cpu == client_cpu:
        print(f"warning: CPUs {server_cpu}/{client_cpu} not usable (have {cpus}); not pinning")
        return None, None
    return server_cpu, client_cpu


@contextlib.contextmanager
def run_pinned(
    cmd: list[str],
    port: int,
    cpu: int | None,
    log: Path,
    notes: list[str],
    what: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Iterator[int]:
    """Run uWSGI's ``cmd`` on CPU ``cpu``, logging to ``log``; yield ``port`` once it
    answers HTTP; stop it (SIGINT, in its own session) on the way out."""
    pin = (lambda: os.sched_setaffinity(0, {cpu})) if cpu is not None else None
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, preexec_fn=pin, start_new_session=True,
            env=env, cwd=cwd,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_probe(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uWSGI did not come up ({what}); see {log}")
            time.sleep(0.1)
        yield port
    finally:
        if (sigints := stop(proc)) > 1:
            notes.append(f"{log.name}: uWSGI needed {sigints} SIGINTs to stop (>3: SIGKILL)")


def measure(
    url: str, conns: int, size: int, duration: float, cpu: int | None, client: str = "client.py"
) -> dict[str, Any]:
    """Run bench/``client`` once and return its JSON (or the failure)."""
    cmd = [sys.executable, str(BENCH / client), url, "--conns", str(conns)]
    cmd += ["--size", str(size), "--duration", str(duration)]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    try:
        done = subprocess.run(cmd, capture_output=True, timeout=duration + 60, check=False)
    except subprocess.TimeoutExpired:
        return {"errors": ["client timed out"]}
    try:
        result: dict[str, Any] = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        result = {"errors": [f"client failed: {done.stderr.decode()[-500:]}"]}
    return result


def log_trouble(log: Path, limit: int = 10) -> list[str]:
    """Return the lines of a uWSGI log that look like errors."""
    words = ("error", "traceback", "exception", "unable", "invalid", "reset", "broken", "signal ")
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if any(w in line.lower() for w in words)][:limit]


def csv_list(kind: type, text: str) -> list[Any]:
    """``"1,50"`` -> ``[1, 50]``."""
    return [kind(item) for item in text.split(",") if item]


#: The ratios the table shows, numerator/denominator, where both were measured.
RATIOS = [
    ("plain", "native"),
    ("gevent", "native"), ("asyncio", "native"), ("asyncio", "gevent"), ("picows", "native"),
    ("websockets", "native"), ("flask-sock", "native"), ("gevent", "flask-sock"),
    ("gevent", "websockets"), ("asyncio", "websockets"),
]  # fmt: skip


def table(results: list[dict[str, Any]]) -> str:
    """Format the results as a text table, with the ratios of :data:`RATIOS`."""
    names = [s.name for s in SERVERS if any(r.get(s.name) for r in results)]
    ratios = [(a, b) for a, b in RATIOS if a in names and b in names]
    width = [max(14, len(n) + 6) for n in names]
    rows = [
        "mode            size   conns"
        + "".join(f"{n + ' rt/s':>{w}}" for n, w in zip(names, width, strict=True))
        + "".join(f" {a + '/' + b:>15}" for a, b in ratios)
    ]
    for r in results:
        cells = "".join(
            f"{r[n]:{w},.0f}" if r.get(n) else f"{'-':>{w}}"
            for n, w in zip(names, width, strict=True)
        )
        for a, b in ratios:
            x, y = r.get(a), r.get(b)
            label = len(a) + len(b) + 1
            cells += f" {x / y:>{max(15, label)}.2f}" if x and y else f" {'-':>{max(15, label)}}"
        rows.append(f"{r['mode']:<14} {r['size']:>5} {r['conns']:>7}{cells}")
    return "\n".join(rows)


def main() -> int:
    """Run every selected mode x server x size x connection count; print and save."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds measured per run")
    parser.add_argument(
        "--rounds", type=int, default=3, help="rounds (each cell's servers in turn); medians"
    )
    parser.add_argument("--sizes", default="64,16384", help="message sizes in bytes")
    parser.add_argument("--conns", default="1,50", help="connection counts")
    parser.add_argument("--modes", default=",".join(MODES), help=f"of {', '.join(MODES)}")
    parser.add_argument(
        "--servers",
        default="native,gevent,asyncio",
        help=f"of {', '.join(s.name for s in SERVERS)} (the peers in {PEER_MODE} mode only)",
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--extra", default="", help='more uWSGI options, e.g. "-b 8192"')
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument(
        "--deflate", action="store_true", help="compressed JSON-like text (deflate_client.py)"
    )
    args = parser.parse_args()
    client = "deflate_client.py" if args.deflate else "client.py"
    modes: list[str] = csv_list(str, args.modes)
    sizes: list[int] = csv_list(int, args.sizes)
    conn_counts: list[int] = csv_list(int, args.conns)
    extra = shlex.split(args.extra)
    servers = [s for s in SERVERS if s.name in csv_list(str, args.servers)]
    if unknown := set(modes) - set(MODES):
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    server_cpu, client_cpu = usable_cpus(args.server_cpu, args.client_cpu)

    cells: dict[tuple[str, int, int], dict[str, Any]] = {}
    notes: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="echo-bench-"))
    try:
        for mode in modes:
            in_mode = [s for s in servers if mode == PEER_MODE or not s.command]
            for round_ in range(args.rounds if in_mode else 0):
                # Every server of the round stays up (idle, pinned to the same CPU) while
                # the others are measured, so that a cell's servers are measured back to
                # back: the machine's slow spells, which can last minutes, then fall on all
                # of a cell's servers alike. The order turns by one server every round.
                turn = round_ % len(in_mode)
                order = in_mode[turn:] + in_mode[:turn]
                logs = {s.name: logdir / f"{mode}-{s.name}-{round_}.log" for s in order}
                with contextlib.ExitStack() as stack:
                    urls = start_all(stack, order, mode, server_cpu, logs, extra, notes)
                    up = [s for s in order if s.name in urls]
                    for size in sizes:
                        for n in conn_counts:
                            cell = cells.setdefault((mode, size, n), {})
                            for server in up:
                                got = measure(
                                    urls[server.name], n, size, args.duration, client_cpu, client
                                )
                                runs = cell.setdefault(f"{server.name}_runs", [])
                                runs.append(got.get("rt_per_s") or 0.0)
                                cell[server.name] = statistics.median(runs)
                                rate = got.get("rt_per_s")
                                shown = f"{rate:,.0f} rt/s" if rate else f"FAILED {got['errors']}"
                                print(f"{mode:<14} {server.name:<6} {size:>5} B x {n:>3}: {shown}")
                                if got.get("errors") or got.get("stalled_conns"):
                                    notes.append(f"{mode} {server.name} {size} B x {n}: {got}")
                for log in logs.values():
                    if trouble := log_trouble(log):
                        notes.append(f"{log.name}: " + " | ".join(trouble))
    except KeyboardInterrupt:
        notes.append("interrupted: the results are incomplete")
    results = [{"mode": m, "size": s, "conns": n, **c} for (m, s, n), c in cells.items()]
    print()
    print(table(results))
    for note in notes:
        print("note:", note)
    print(f"uWSGI logs: {logdir}")
    if args.json:
        meta = {"duration": args.duration, "extra_uwsgi_args": extra, "client": client}
        meta |= {"server_cpu": server_cpu, "client_cpu": client_cpu}
        report = {"meta": meta, "results": results, "notes": notes}
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    complete = all(
        r.get(s.name) for r in results for s in servers if r["mode"] == PEER_MODE or not s.command
    )
    return 0 if complete and not any(n.startswith("interrupted") for n in notes) else 1


if __name__ == "__main__":
    sys.exit(main())
