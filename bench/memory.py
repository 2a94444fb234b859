"""Worker memory per connection, with and without permessage-deflate.

    .venv/bin/python bench/memory.py [--connections 500]

Starts ``examples/echo_gevent.py`` under uWSGI (one worker), opens the connections with
the ``websockets`` client, echoes one 4 KiB text message on each (so that both zlib
streams are in use) and reads the worker's resident memory (``VmRSS``) before and
after. Each client setting gets a fresh server. Prints KiB per connection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.client import connect
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


async def measure(url: str, pid: int, count: int, kwargs: dict[str, Any]) -> float:
    message = os.urandom(2048).hex()
    async with connect(url, **kwargs) as probe:  # warm the worker up
        await probe.send(message)
        await probe.recv()
    await asyncio.sleep(0.5)
    before = rss_kib(pid)
    clients = [await connect(url, max_size=None, **kwargs) for _ in range(count)]
    for ws in clients:
        await ws.send(message)
    for ws in clients:
        assert await ws.recv() == message
    await asyncio.sleep(0.5)
    after = rss_kib(pid)
    for ws in clients:
        await ws.close()
    return (after - before) / count


def main() -> None:
    """Measure every client setting and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=500)
    args = parser.parse_args()
    for name, kwargs in CLIENTS.items():
        server = UwsgiServer(
            ["--wsgi-file", "examples/echo_gevent.py", "--callable", "app",
             *FLAVOUR_ARGS["gevent"][:1], str(args.connections + 10)],
            mode="http-socket",
        )  # fmt: skip
        try:
            server.wait_ready()
            pid = worker_pid(server.pid)
            per = asyncio.run(measure(f"{server.url}/echo", pid, args.connections, kwargs))
            print(f"{name:40s} {per:6.1f} KiB per connection")
        finally:
            server.close()


if __name__ == "__main__":
    main()
