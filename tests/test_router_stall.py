"""A ``--http`` router connection that relays nothing any more (issue: once seen under
load): the worker's keepalive ends it within ``ping_interval + ping_timeout``.

The stall is made by stopping the router process (SIGSTOP, then SIGCONT): the worker's
socket stays open, but no pong can come back through it.
"""

from __future__ import annotations

import os
import re
import signal
import time

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from .helpers import AppServer, wait_for

pytestmark = pytest.mark.timeout(60)

PING_INTERVAL, PING_TIMEOUT = 0.3, 0.6  # the /keepalive-echo route's


@pytest.mark.parametrize("flavour", ["plain", "gevent", "asyncio"])
def test_keepalive_ends_a_connection_the_router_no_longer_relays(flavour: str) -> None:
    with AppServer(flavour, mode="http") as server:
        router = int(re.search(r"spawned uWSGI http 1 \(pid: (\d+)\)", server.output())[1])  # type: ignore[index]
        with connect(f"{server.url}/keepalive-echo", open_timeout=10) as ws:
            ws.send("before")
            assert ws.recv(timeout=10) == "before"
            os.kill(router, signal.SIGSTOP)
            stopped = time.monotonic()
            try:
                wait_for(lambda: "GET /keepalive-echo =>" in server.output(), timeout=10)
                ended = time.monotonic() - stopped
            finally:
                os.kill(router, signal.SIGCONT)
            with pytest.raises(ConnectionClosed):
                while True:
                    ws.recv(timeout=10)
        # uWSGI logs the request as it ends; a little slack for a loaded machine.
        assert ended < PING_INTERVAL + PING_TIMEOUT + 2.0, f"ended {ended:.2f} s after the stall"
        events = wait_for(lambda: server.events("keepalive-echo"))
        assert events[0]["code"] == 1006  # no close frame could come back
