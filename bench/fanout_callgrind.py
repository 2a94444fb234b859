"""Instructions per recipient of a broadcast above a bare ``os.write`` loop, by callgrind.

    .venv/bin/python bench/fanout_callgrind.py [--conns 2000] [--rounds 10,30]

In one process, without uWSGI: ``--conns`` connections (``Connection`` over one end of
a ``socketpair`` each, a reactor that does nothing, no lock: as in the gevent and
asyncio flavours, where the broadcast runs in the hub or the loop) join one room of a
``Rooms``. Each way of sending runs under ``valgrind --tool=callgrind`` twice, with the
two round counts of ``--rounds``; a round sends one 64-byte binary message to every
connection: ``broadcast`` through ``Rooms._deliver_now`` (what the hub runs for
``websocket.broadcast``), ``raw`` as ``bench/fanout_app.py``'s ``/raw`` does (one
prepared frame, ``os.write(ws.fd, frame)`` for each). Setup, start-up and teardown
cancel out of ``(I(more rounds) - I(fewer rounds)) / (round difference x conns)``,
the instructions per recipient of each; the figure is their difference. The machine's
load does not change instruction counts.
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


class IdleReactor:
    """A reactor that watches nothing: the sockets' buffers never fill in this driver."""

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Ignore ``callback``."""

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Ignore ``callback``."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        """A timer that never fires."""
        return self

    def cancel(self) -> None:
        """Nothing to cancel."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` now."""
        callback()

    def close(self) -> None:
        """Nothing to close."""


def run(method: str, conns: int, rounds: int) -> None:
    """Open ``conns`` connections in a room and send ``rounds`` messages by ``method``."""
    sys.path.insert(0, str(ROOT))
    from flask_uwsgi_websocket.broadcast.message import Broadcast
    from flask_uwsgi_websocket.broadcast.registry import Rooms
    from flask_uwsgi_websocket.core.connection import Connection
    from flask_uwsgi_websocket.core.framing import frame_header
    from flask_uwsgi_websocket.core.options import Options

    options = Options()
    rooms = Rooms()
    pairs = [socket.socketpair() for _ in range(conns)]
    members = []
    for ours, _theirs in pairs:
        connection = Connection(ours.fileno(), options, IdleReactor())
        rooms.add(connection, connection.reactor.call_soon_threadsafe)
        rooms.join(connection, "room")
        members.append(connection)
    payload = bytes(64)
    broadcast = Broadcast.of(payload, "room", None)
    frame = frame_header(0x2, len(payload)) + payload
    deliver = rooms.deliver
    for _ in range(rounds):
        if method == "broadcast":
            deliver(broadcast)
        else:
            for ws in list(members):
                os.write(ws.fd, frame)
    expected = rounds * len(frame)
    for connection, (_ours, theirs) in zip(members, pairs, strict=True):
        if connection.slow_consumer or connection.buffered:
            raise SystemExit(f"{method}: a connection was not written to at once")
        theirs.setblocking(False)
        got = len(theirs.recv(expected + 1))
        if got != expected:
            raise SystemExit(f"{method}: {got} bytes arrived, not {expected}")


def instructions(method: str, conns: int, rounds: int, out: Path) -> int:
    """The instructions callgrind counts for one run of :func:`run`."""
    dump = out / f"{method}-{rounds}.out"
    subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={dump}",
            sys.executable,
            __file__,
            "--run",
            method,
            "--conns",
            str(conns),
            "--rounds",
            str(rounds),
        ],
        check=True,
        capture_output=True,
    )
    match = re.search(r"^(?:summary|totals): (\d+)", dump.read_text(), re.MULTILINE)
    if match is None:
        raise RuntimeError(f"no total in {dump}")
    return int(match.group(1))


def main() -> None:
    """Parse the arguments; print the instructions per recipient of each method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conns", type=int, default=2000)
    parser.add_argument("--rounds", default="10,30", help="two round counts, fewer first")
    parser.add_argument("--run", choices=("broadcast", "raw"), help=argparse.SUPPRESS)
    parser.add_argument("--keep", type=Path, help="keep callgrind's dumps in this directory")
    args = parser.parse_args()
    if args.run:
        rounds = int(args.rounds)
        run(args.run, args.conns, rounds)
        return
    fewer, more = (int(n) for n in args.rounds.split(","))
    with tempfile.TemporaryDirectory(prefix="fanout-callgrind-") as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        per = {}
        for method in ("raw", "broadcast"):
            low = instructions(method, args.conns, fewer, out)
            high = instructions(method, args.conns, more, out)
            per[method] = (high - low) / ((more - fewer) * args.conns)
            print(f"{method}: {per[method]:,.0f} instructions per recipient", flush=True)
    print(f"broadcast above raw: {per['broadcast'] - per['raw']:,.0f} per recipient")


if __name__ == "__main__":
    main()
