"""What only the gevent flavour promises: greenlet-friendly waiting and killing."""

from __future__ import annotations

import contextlib
import time

from websockets.sync.client import connect

from .helpers import AppServer, wait_for


def test_handler_blocked_elsewhere_is_stopped_when_the_peer_goes(gevent_server: AppServer) -> None:
    gevent_server.http("/events", "DELETE")
    with connect(f"{gevent_server.url}/blocked") as ws:
        assert ws.recv() == "sleeping"
    started = time.monotonic()
    event = wait_for(lambda: gevent_server.events("blocked"))[0]
    assert event == {"route": "blocked", "outcome": "ConnectionClosed", "code": 1000}
    assert time.monotonic() - started < 5  # not the 30 s sleep


def test_idle_connections_cause_no_wakeups(gevent_server: AppServer) -> None:
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(connect(f"{gevent_server.url}/echo", ping_interval=None))
            for _ in range(20)
        ]
        for ws in sockets:
            ws.send("hi")
            assert ws.recv() == "hi"
        # Two reads back to back: what an HTTP request itself costs in loop iterations.
        a = int(gevent_server.http("/loop-iterations"))
        b = int(gevent_server.http("/loop-iterations"))
        time.sleep(2)
        c = int(gevent_server.http("/loop-iterations"))
    per_request = b - a
    assert c - b <= per_request + 2, (per_request, c - b)


def test_no_spurious_messages_while_idle(gevent_server: AppServer) -> None:
    with connect(f"{gevent_server.url}/echo") as ws:
        time.sleep(1.5)
        ws.send("only one")
        assert ws.recv(timeout=5) == "only one"
        try:
            extra = ws.recv(timeout=0.5)
        except TimeoutError:
            extra = None
        assert extra is None
