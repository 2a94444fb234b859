"""A worker out of file descriptors answers every client: an echo or a 503, never silence.

Real uWSGI workers whose open-file limit is lowered (``prlimit``) once they are up,
and more clients at once than the limit lets them hold: each client gets its echo or
a ``503`` with ``Retry-After`` before any ``101``, none waits unanswered in the listen
backlog or sees its connection dropped, and the worker serves again once they leave.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from flask_uwsgi_websocket.resources import reserve

from .helpers import AppServer, wait_for

#: Connections the worker is left room for, above its descriptors and the reserve.
ROOM = 4
#: Clients at once: many more than that.
CLIENTS = 30
#: The plain flavour's handler threads (tests/helpers.py: ``--threads 8``).
THREADS = 8
#: The descriptors kept free under a small limit (16).
RESERVE = reserve(100)


def worker_pid(server: AppServer) -> int:
    """The one worker of ``server`` (``--http-socket``: no router process)."""
    children = Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def open_descriptors(pid: int) -> int:
    """How many descriptors ``pid`` has open."""
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def descriptors(pid: int) -> Counter[str]:
    """``pid``'s open descriptors: how many are eventfds, how many ``other``."""
    found: Counter[str] = Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            eventfd = fd.readlink().name == "anon_inode:[eventfd]"
        except OSError:  # closed meanwhile
            continue
        found["eventfd" if eventfd else "other"] += 1
    return found


def limit_descriptors(pid: int, limit: int) -> None:
    """Set the open-file limit of the running process ``pid``."""
    subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:"], check=True)


async def attempt(url: str, held: list[ClientConnection]) -> str:
    """Open a connection and echo one message on it: ``"echo"`` (then it stays open, in
    ``held``), ``"503"``, or what else happened."""
    try:
        ws = await asyncio.wait_for(connect(url, open_timeout=None), 20)
    except InvalidStatus as exc:
        response = exc.response
        if response.status_code == 503 and response.headers.get("Retry-After") == "1":
            return "503"
        return f"HTTP {response.status_code}"
    except Exception as exc:
        return f"open: {exc!r}"
    held.append(ws)
    try:
        await ws.send("ping")
        answer = await asyncio.wait_for(ws.recv(), 20)
    except Exception as exc:
        return f"echo: {exc!r}"
    return "echo" if answer == "ping" else f"echo: {answer!r}"


async def crowd(url: str, count: int) -> Counter[str]:
    """``count`` clients at once; what each got. They leave after."""
    held: list[ClientConnection] = []
    try:
        return Counter(await asyncio.gather(*(attempt(url, held) for _ in range(count))))
    finally:
        await asyncio.gather(*(ws.close() for ws in held))


async def first_connection(url: str, pid: int) -> int:
    """Echo once on a connection; the descriptors ``pid`` had open meanwhile, but its
    eventfds (a plain handler's thread makes its own when it first waits in receive)."""
    async with connect(url) as ws:
        await ws.send("ping")
        assert await ws.recv() == "ping"
        return descriptors(pid)["other"]


@pytest.mark.parametrize("flavour", ["plain", "gevent", "asyncio"])
def test_a_worker_out_of_descriptors_refuses_with_503(flavour: str) -> None:
    with AppServer(flavour, mode="http-socket") as server:
        pid = worker_pid(server)
        crowd_url = f"{server.url}/echo"
        # The worker's first connection starts what they share; its socket goes after.
        during = asyncio.run(first_connection(crowd_url, pid))
        wait_for(lambda: descriptors(pid)["other"] < during)
        before = descriptors(pid)
        limit_descriptors(pid, before.total() + RESERVE + ROOM)
        for _ in range(2):  # the worker serves again once the clients have left
            got = asyncio.run(crowd(crowd_url, CLIENTS))
            assert set(got) == {"echo", "503"}, got
            assert 1 <= got["echo"] <= ROOM, got
            # Back to what it had but the eventfds of the plain flavour's handler threads,
            # which keep one each once they have waited in receive.
            wait_for(lambda: descriptors(pid)["other"] <= before["other"], timeout=10)
            assert descriptors(pid)["eventfd"] <= before["eventfd"] + THREADS
        assert "refused with 503: too few file descriptors left" in server.output()


def test_the_plain_flavour_refuses_with_503_when_its_io_thread_cannot_start() -> None:
    """The I/O thread's event loop needs four descriptors, made before the first 101."""
    with AppServer("plain", mode="http-socket") as server:
        pid = worker_pid(server)
        limit_descriptors(pid, open_descriptors(pid) + 2)  # the connection's, and one
        assert asyncio.run(crowd(f"{server.url}/echo", 1)) == {"503": 1}
        assert "refused with 503: out of a resource: [Errno 24]" in server.output()
        limit_descriptors(pid, 1024)
        assert asyncio.run(crowd(f"{server.url}/echo", 1)) == {"echo": 1}
