"""Gevent callback handlers whose connections outlive their requests (``gevent.py``,
``DetachedClient``): real uWSGI, more connections than ``--gevent`` cores, the order of
messages, close codes, the Flask lifecycle, one descriptor per connection, the ``--http``
router, and ``--http11-socket``, where the connection keeps its request.
(``test_shutdown.test_detached_connections``: the worker told to go.)"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from flask_uwsgi_websocket.gevent import Runners

from .helpers import CLOSE, PING, TEXT, RawClient, UwsgiServer, wait_for

pytestmark = pytest.mark.timeout(120)

APP = ["--module", "tests.app_detached:app"]


def serve(mode: str, cores: int) -> UwsgiServer:
    return UwsgiServer([*APP, "--gevent", str(cores)], mode=mode)


@pytest.fixture(scope="module")
def server() -> Iterator[UwsgiServer]:
    """The worker speaks HTTP (``--http-socket``), with 5 cores."""
    with serve("http-socket", 5) as started:
        yield started


def events(server: UwsgiServer) -> list[Any]:
    with urllib.request.urlopen(f"http://{server.address}/events", timeout=10) as response:
        found: list[Any] = json.load(response)
        return found


def opened(server: UwsgiServer, stack: ExitStack, name: str) -> ClientConnection:
    ws = stack.enter_context(connect(f"{server.url}/echo/{name}", open_timeout=10))
    assert ws.recv(timeout=10) == f"hello {name}"
    return ws


def descriptors(pid: str) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_ten_times_more_connections_than_cores_one_descriptor_each(server: UwsgiServer) -> None:
    with ExitStack() as stack:
        first = opened(server, stack, "fd0")
        first.send("where")
        where = ["/echo/fd0", "/echo/fd0", "False", "websocket", "/echo/fd0"]
        path, seen, pid, *rest = str(first.recv(timeout=10)).split()
        assert [path, seen, *rest] == where
        before = descriptors(pid)
        clients = [opened(server, stack, f"many{i}") for i in range(50)]
        # One socket per connection once its request has ended: its duplicate. (The
        # last request may still be ending: uWSGI closes its descriptor after on_open.)
        wait_for(lambda: descriptors(pid) - before <= 50)
        assert descriptors(pid) - before == 50
        for i, ws in enumerate(clients):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=10) for ws in clients] == [f"m{i}" for i in range(50)]
        # The request's environ and headers stay its own after 50 requests on its core.
        first.send("where")
        path, seen, _, *rest = str(first.recv(timeout=10)).split()
        assert [path, seen, *rest] == where
    wait_for(lambda: descriptors(pid) <= before - 1)
    closes = [e for e in events(server) if e[0] == "close" and e[1].startswith("many")]
    assert sorted(closes) == sorted(
        ["close", f"many{i}", 1000, "", f"/echo/many{i}"] for i in range(50)
    )


def test_messages_keep_their_order_one_on_message_at_a_time(server: UwsgiServer) -> None:
    with connect(f"{server.url}/echo/order", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "hello order"
        ws.send("sleep 0.3 a")
        ws.send("sleep 0 b")
        ws.send("c")
        assert [ws.recv(timeout=10) for _ in range(3)] == ["a", "b", "c"]


def test_callbacks_run_in_reused_greenlets_few_kept_idle(server: UwsgiServer) -> None:
    with ExitStack() as stack:
        ws = opened(server, stack, "runner")
        ws.send("runner")
        first = str(ws.recv(timeout=10)).split()
        ws.send("runner")
        assert str(ws.recv(timeout=10)).split()[0] == first[0]  # the same, parked between
        # 40 at once: 40 runners, of which IDLE_MAX stay parked, holding no context.
        clients = [opened(server, stack, f"busy{i}") for i in range(40)]
        for ws in clients:
            ws.send("sleep 0.3 done")
        assert [ws.recv(timeout=10) for ws in clients] == ["done"] * 40
        clients[0].send("runner")
        _, idle, bare = str(clients[0].recv(timeout=10)).split()
        assert (int(idle), bare) == (Runners.IDLE_MAX - 1, "True")


def test_messages_sent_during_on_open_come_after_it(server: UwsgiServer) -> None:
    with connect(f"{server.url}/slow-open", open_timeout=10) as ws:
        for text in "abc":
            ws.send(text)
        assert [ws.recv(timeout=10) for _ in range(3)] == ["a", "b", "c"]


def test_on_open_that_raises_ends_the_connection_before_it_detaches(
    server: UwsgiServer,
) -> None:
    with connect(f"{server.url}/bad-open", open_timeout=10) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    expected = [
        ["close", "bad-open", None, None, "/bad-open"],
        ["teardown", "/bad-open", "ValueError('no')"],
    ]
    wait_for(lambda: all(e in events(server) for e in expected))
    assert [e for e in events(server) if e in expected] == expected


def test_rooms_and_broadcasts(server: UwsgiServer) -> None:
    with ExitStack() as stack:
        member, other = opened(server, stack, "member"), opened(server, stack, "other")
        member.send("join lobby")
        assert member.recv(timeout=10) == "joined lobby"
        other.send("tell lobby hi")
        assert member.recv(timeout=10) == "hi"


def test_a_slow_consumer_is_closed_with_1013(server: UwsgiServer) -> None:
    slow = RawClient(server.address, "/small")
    try:
        assert slow.recv_data() == (TEXT, b"joined")
        with connect(f"{server.url}/echo/flooder", open_timeout=10) as flooder:
            assert flooder.recv(timeout=10) == "hello flooder"
            for _ in range(400):  # 26 MB: more than the socket buffers hold
                flooder.send("tell flood " + "x" * 65536)
            flooder.send("done")
            assert flooder.recv(timeout=30) == "done"
        code, reason = slow.expect_close()
        assert (code, reason) == (1013, "slow consumer: over 65536 bytes waiting to be sent")
    finally:
        slow.close()
    wait_for(lambda: ["teardown", "/small", None] in events(server))
    assert ["close", "small", 1006, "", "/small"] in events(server)


def test_close_codes_and_one_teardown_at_the_end(server: UwsgiServer) -> None:
    with connect(f"{server.url}/echo/peer", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "hello peer"
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
        assert ["teardown", "/echo/peer", None] not in events(server)
        ws.close(4001, "bye")
    with connect(f"{server.url}/echo/server", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "hello server"
        ws.send("close 4000")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    with connect(f"{server.url}/echo/boom", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "hello boom"
        ws.send("boom")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1011
    expected = [
        ["close", "peer", 4001, "bye", "/echo/peer"],
        ["teardown", "/echo/peer", None],
        ["close", "server", 4000, "", "/echo/server"],
        ["teardown", "/echo/server", None],
        ["close", "boom", None, None, "/echo/boom"],
        ["teardown", "/echo/boom", "RuntimeError('boom')"],
    ]
    wait_for(lambda: all(e in events(server) for e in expected))
    found = events(server)
    assert [e for e in found if e in expected] == expected
    assert "Exception in WebSocket handler Echo (route /echo/<name>)" in server.output()


def test_a_killed_runner_ends_its_connection(server: UwsgiServer) -> None:
    """``GreenletExit`` out of ``on_message`` (the runner killed): the connection is
    closed, ``on_close`` and the teardown run once; the worker serves on."""
    with connect(f"{server.url}/echo/killed", open_timeout=10) as ws:
        assert ws.recv(timeout=10) == "hello killed"
        ws.send("exit")
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
        assert closed.value.rcvd is not None
    expected = [["close", "killed", None, None, "/echo/killed"], ["teardown", "/echo/killed", None]]
    wait_for(lambda: all(e in events(server) for e in expected))
    assert [e for e in events(server) if e[1] == "killed" or e[1:2] == ["/echo/killed"]] == expected
    with ExitStack() as stack:
        ws = opened(server, stack, "after")
        ws.send("x")
        assert ws.recv(timeout=10) == "x"


def test_a_peer_that_answers_no_ping_is_closed(server: UwsgiServer) -> None:
    raw = RawClient(server.address, "/quiet")
    try:
        opcode, _, _ = raw.recv_frame()
        assert opcode == PING  # and no pong goes back
        opcode, payload, _ = raw.recv_frame()
        assert (opcode, payload[:2]) == (CLOSE, (1011).to_bytes(2, "big"))
    finally:
        raw.close()
    wait_for(lambda: ["close", "quiet", 1006, "", "/quiet"] in events(server))
    assert ["teardown", "/quiet", None] in events(server)


def test_through_the_router() -> None:
    with serve("http", 2) as router, ExitStack() as stack:
        clients = [opened(router, stack, f"r{i}") for i in range(10)]
        for i, ws in enumerate(clients):
            ws.send(f"m{i}")
        assert [ws.recv(timeout=10) for ws in clients] == [f"m{i}" for i in range(10)]


def test_a_socket_that_keeps_connections_alive_keeps_the_request() -> None:
    """``--http11-socket``: uWSGI reads the socket again after the request, so the
    connection keeps its request (and its core) for its life: on_message runs in it."""
    with serve("http11-socket", 2) as kept, connect(f"{kept.url}/echo/kept") as ws:
        assert ws.recv(timeout=10) == "hello kept"
        ws.send("where")
        assert str(ws.recv(timeout=10)).split()[3] == "True"
        ws.send("x")
        assert ws.recv(timeout=10) == "x"
