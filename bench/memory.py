"""Server memory per connection, side by side: uWSGI's own loop, this package, the peers.

    .venv/bin/python bench/memory.py [--connections 1000] [--servers native,gevent,...]
                                     [--settings none,deflate,deflate-default] [--json out.json]
                                     [--cores N]

Each server of bench/echo.py (``native``: uWSGI's own loop, bench/native_echo.py;
``gevent`` and ``asyncio``: the examples; ``gevent-callbacks``: a callback handler of the
gevent flavour, bench/callbacks_echo.py, whose connections outlive their requests;
``websockets``: its asyncio server; ``flask-sock``: gunicorn's gevent worker; all in
bench/peer_echo.py) is started fresh for each client setting, uWSGI ones with one worker,
``--http-socket`` and as many cores (``--gevent N``, ``--asyncio N``) as connections plus
10. The ``websockets`` client opens the connections one after the other, echoes one
message on each (``--size`` characters of text, default 64) and the serving process's
resident memory (``VmRSS`` of the worker: the master's or gunicorn's one child, or the
peer's process itself) is read before and after; the growth divided by the count is the
figure. Every connection must echo its message: the ones that did not are counted by what
happened (refused, closed or dropped) and the exit status is 1 if there were any. The
client settings ``deflate`` (client keeps a 2**15 window) and ``deflate-default``
(websockets' default offer) apply to the servers that can agree on permessage-deflate
(``gevent``, ``asyncio``, ``websockets``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shlex
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from echo import BENCH, HOST, ROOT, SERVERS, Server, free_port, http_probe, log_trouble, stop

#: Client settings: name -> ``connect`` keyword arguments.
SETTINGS: dict[str, dict[str, Any]] = {
    "none": {"compression": None},
    "deflate": {
        "extensions": [ClientPerMessageDeflateFactory(client_max_window_bits=None)],
        "compression": None,
    },
    "deflate-default": {},  # offers client_max_window_bits
}
#: The servers that agree on permessage-deflate (the others would measure "none" again).
DEFLATE_SERVERS = {"gevent", "asyncio", "websockets"}
MEMORY_SERVERS = ["native", "gevent", "gevent-callbacks", "asyncio", "websockets", "flask-sock"]
STARTUP_TIMEOUT = 30.0
GIVE_UP = 5


def rss_kib(pid: int) -> int:
    """The resident memory of process ``pid``, KiB."""
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def serving_pid(pid: int) -> int:
    """The process that serves: the one child of a uWSGI or gunicorn master, else itself."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    if len(children) > 1:
        raise RuntimeError(f"process {pid} has {len(children)} children, expected one")
    return int(children[0]) if children else pid


def failure(stage: str, exc: BaseException) -> str:
    """What went wrong, as counted: the stage, and the HTTP status or close code."""
    if isinstance(exc, InvalidStatus):
        return f"{stage}: HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        return f"{stage}: closed {code}"
    return f"{stage}: {type(exc).__name__}"


@dataclass
class Row:
    """One server under one client setting: the figures of one run."""

    server: str
    setting: str
    connections: int
    kib_per_connection: float = 0.0
    echoed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    open_seconds: float = 0.0


async def measure(url: str, pid: int, row: Row, kwargs: dict[str, Any], size: int) -> None:
    """Open ``row.connections`` connections, echo once on each, fill ``row`` in."""
    message = os.urandom(size // 2 + 1).hex()[:size]
    expected = message.encode()  # uWSGI's loop echoes every message as binary
    async with connect(url, **kwargs) as probe:  # warm the server up
        await probe.send(message)
        await probe.recv()
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    failed: Counter[str] = Counter()
    clients = []
    start = time.monotonic()
    in_a_row = 0  # failed opens: a server that stopped accepting would take 30 s each
    for n in range(row.connections):
        try:
            clients.append(await connect(url, max_size=None, open_timeout=30, **kwargs))
            in_a_row = 0
        except Exception as exc:
            failed[failure("open", exc)] += 1
            in_a_row += 1
            if in_a_row == GIVE_UP:
                failed[f"open: not tried after {GIVE_UP} failures in a row"] += (
                    row.connections - n - 1
                )
                break
    row.open_seconds = round(time.monotonic() - start, 2)
    for ws in clients:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)
    for ws in clients:
        try:
            echo = await asyncio.wait_for(ws.recv(), 30)
            if echo not in (message, expected):
                failed["echo: wrong message"] += 1
        except Exception as exc:
            failed[failure("echo", exc)] += 1
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)
    row.kib_per_connection = round((after - before) / row.connections, 2)
    row.failures = dict(sorted(failed.items()))
    row.echoed = row.connections - sum(failed.values())


def command(server: Server, port: int, cores: int, extra: list[str]) -> list[str]:
    """The command line that runs ``server`` on ``port`` with ``cores`` uWSGI cores."""
    if server.command:
        values = {"python": sys.executable, "host": HOST, "port": str(port)}
        peer = [arg.format(**values) for arg in server.command]
        if "gunicorn" in peer:  # its gevent worker serves 1,000 connections by default
            peer += ["--worker-connections", str(cores)]
        return peer
    engine, _, *rest = server.engine  # ("--gevent", "100") or ("--asyncio", "100", "--greenlet")
    return [
        str(Path(sys.prefix) / "bin" / "uwsgi"),
        "--master", "--workers", "1", engine, str(cores), *rest,
        "--virtualenv", sys.prefix, "--pythonpath", str(ROOT), "--chdir", str(ROOT),
        "--need-app", "--disable-logging", "--http-socket", f"{HOST}:{port}",
        *server.app_args, *extra,
    ]  # fmt: skip


@contextlib.contextmanager
def running(cmd: list[str], port: int, log: Path, notes: list[str]) -> Iterator[int]:
    """Run ``cmd`` (its own session, output to ``log``); yield its pid once it answers."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=BENCH
        )
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not http_probe(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not come up; see {log}")
            time.sleep(0.1)
        yield proc.pid
    finally:
        if (sigints := stop(proc)) > 1:
            notes.append(f"{log.name}: the server needed {sigints} SIGINTs to stop (>3: SIGKILL)")


def table(rows: list[Row]) -> str:
    """The rows as a text table, with each figure's ratio to uWSGI's loop's."""
    native = {r.setting: r.kib_per_connection for r in rows if r.server == "native"}
    lines = [f"{'server':<16} {'setting':<16} {'conns':>6} {'KiB/conn':>9} {'x native':>9} "
             f"{'open s':>7}  echoed"]  # fmt: skip
    for r in rows:
        base = native.get(r.setting) or native.get("none")
        ratio = f"{r.kib_per_connection / base:9.2f}" if base else f"{'-':>9}"
        lines.append(
            f"{r.server:<16} {r.setting:<16} {r.connections:>6} {r.kib_per_connection:9.1f} "
            f"{ratio} {r.open_seconds:7.1f}  {r.echoed} of {r.connections}"
            + "".join(f"; {kind}: {n}" for kind, n in r.failures.items())
        )
    return "\n".join(lines)


def main() -> int:
    """Measure every server under every client setting; print the table, save the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--servers", default=",".join(MEMORY_SERVERS), help="comma-separated")
    parser.add_argument("--settings", default="none", help=f"of {', '.join(SETTINGS)}")
    parser.add_argument("--size", type=int, default=64, help="characters of the echoed message")
    parser.add_argument(
        "--cores", type=int, default=None, help="uWSGI cores (default: connections plus 10)"
    )
    parser.add_argument("--extra", default="", help='more uWSGI options, e.g. "-b 2048"')
    parser.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = parser.parse_args()
    by_name = {s.name: s for s in SERVERS}
    names = [n for n in args.servers.split(",") if n]
    settings = [s for s in args.settings.split(",") if s]
    if unknown := set(names) - set(MEMORY_SERVERS):
        parser.error(f"unknown servers: {', '.join(sorted(unknown))}")
    if unknown := set(settings) - set(SETTINGS):
        parser.error(f"unknown settings: {', '.join(sorted(unknown))}")
    # One descriptor per connection, here and in the server (which inherits the limit).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < args.connections + 400:
        parser.error(f"the open-file limit ({hard}) is too low for {args.connections} connections")
    extra = shlex.split(args.extra)
    rows: list[Row] = []
    notes: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    for setting in settings:
        for name in names:
            if setting != "none" and name not in DEFLATE_SERVERS:
                continue
            server = by_name[name]
            row = Row(name, setting, args.connections)
            port = free_port()
            log = logdir / f"{name}-{setting}.log"
            cmd = command(server, port, args.cores or args.connections + 10, extra)
            try:
                with running(cmd, port, log, notes) as pid:
                    url = f"ws://{HOST}:{port}{server.path}"
                    asyncio.run(measure(url, serving_pid(pid), row, SETTINGS[setting], args.size))
            except RuntimeError as exc:
                row.failures = {f"server: {exc}": args.connections}
            rows.append(row)
            print(table(rows).splitlines()[-1], flush=True)
            if trouble := log_trouble(log):
                notes.append(f"{log.name}: " + " | ".join(trouble))
    print()
    print(table(rows))
    for note in notes:
        print("note:", note)
    print(f"server logs: {logdir}")
    if args.json:
        args.json.write_text(json.dumps([vars(r) for r in rows], indent=2) + "\n")
    if failures := sum(r.connections - r.echoed for r in rows):
        print(f"FAILED: {failures} connection(s) did not echo")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
