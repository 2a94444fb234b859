"""Worker memory per connection, with and without permessage-deflate.

    .venv/bin/python bench/memory.py [--connections 500]

Starts ``examples/echo_gevent.py`` under uWSGI (one worker), opens the connections with
the ``websockets`` client, echoes one 4 KiB text message on each (so that both zlib
streams are in use) and reads the worker's resident memory (``VmRSS``) before and
after. Each client setting gets a fresh server. Prints KiB per connection, and how
many connections did not echo (refused, closed or dropped: each is counted by what
happened); the exit status is 1 if any did not.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import resource
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.helpers import FLAVOUR_ARGS, UwsgiServer

#: Client settings: name -> ``connect`` keyword arguments.
CLIENTS: dict[str, dict[str, Any]] = {
    "no compression": {"compression": None},
    "deflate, client keeps 2**15 window": {
        "extensions": [ClientPerMessageDeflateFactory(client_max_window_bits=None)],
        "compression": None,
    },
    "deflate, websockets default offer": {},  # offers client_max_window_bits
}


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def worker_pid(master: int) -> int:
    """The one worker of a master started with ``--http-socket`` (no router process)."""
    (child,) = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return int(child)


def failure(stage: str, exc: BaseException) -> str:
    """What went wrong, as counted: the stage, and the HTTP status or close code."""
    if isinstance(exc, InvalidStatus):
        return f"{stage}: HTTP {exc.response.status_code}"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else 1006
        return f"{stage}: closed {code}"
    return f"{stage}: {type(exc).__name__}"


async def measure(
    url: str, pid: int, count: int, kwargs: dict[str, Any]
) -> tuple[float, Counter[str]]:
    """KiB of worker memory per connection, and the connections that did not echo."""
    message = os.urandom(2048).hex()
    async with connect(url, **kwargs) as probe:  # warm the worker up
        await probe.send(message)
        await probe.recv()
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    failed: Counter[str] = Counter()
    clients = []
    for _ in range(count):
        try:
            clients.append(await connect(url, max_size=None, open_timeout=30, **kwargs))
        except Exception as exc:
            failed[failure("open", exc)] += 1
    for ws in clients:
        with contextlib.suppress(ConnectionClosed):
            await ws.send(message)
    for ws in clients:
        try:
            if await asyncio.wait_for(ws.recv(), 30) != message:
                failed["echo: wrong message"] += 1
        except Exception as exc:
            failed[failure("echo", exc)] += 1
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    await asyncio.gather(*(ws.close() for ws in clients))
    return (after - before) / count, failed


def main() -> None:
    """Measure every client setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    # One descriptor per connection, here and in the worker (uWSGI inherits the limit).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard != resource.RLIM_INFINITY and hard < args.connections + 400:
        parser.error(f"the open-file limit ({hard}) is too low for {args.connections} connections")
    failures = 0
    for name, kwargs in CLIENTS.items():
        server = UwsgiServer(
            ["--wsgi-file", "examples/echo_gevent.py", "--callable", "app",
             *FLAVOUR_ARGS["gevent"][:1], str(args.connections + 10)],
            mode="http-socket",
        )  # fmt: skip
        try:
            server.wait_ready()
            pid = worker_pid(server.pid)
            per, failed = asyncio.run(measure(f"{server.url}/echo", pid, args.connections, kwargs))
            missing = sum(failed.values())
            failures += missing
            print(
                f"{name:40s} {per:6.1f} KiB per connection, "
                f"{args.connections - missing} of {args.connections} echoed"
                + "".join(f"; {kind}: {n}" for kind, n in sorted(failed.items()))
            )
        finally:
            server.close()
    if failures:
        print(f"FAILED: {failures} connection(s) did not echo")
        sys.exit(1)


if __name__ == "__main__":
    main()
