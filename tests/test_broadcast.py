"""Broadcast and rooms, with real uWSGI and a real redis-server, in every flavour.

The app is ``tests/app_rooms.py``. Whether a message did *not* reach a client is
checked without sleeping: the same sender then broadcasts a marker to everyone,
and per-sender order says the marker is the next thing that client gets.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
from redis import Redis
from websockets.frames import Opcode

from flask_uwsgi_websocket.broadcast.message import Broadcast

from .helpers import (
    CLOSE,
    TEXT,
    Member,
    RawClient,
    RedisServer,
    RoomsServer,
    frame,
    free_port,
    wait_for,
)

FLAVOURS = ("plain", "gevent", "asyncio")


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(
    scope="module",
    params=[(flavour, broker) for broker in ("local", "redis") for flavour in FLAVOURS],
    ids=[f"{flavour}-{broker}" for broker in ("local", "redis") for flavour in FLAVOURS],
)
def server(request: pytest.FixtureRequest, redis: RedisServer) -> Iterator[RoomsServer]:
    flavour, broker = request.param
    url = redis.url if broker == "redis" else None
    with RoomsServer(flavour, url, channel=f"tests-{flavour}") as srv:
        yield srv


@pytest.fixture
def members(server: RoomsServer) -> Iterator[list[Member]]:
    """Three members of ``/rooms``; closed after the test."""
    made = [Member(server) for _ in range(3)]
    yield made
    for member in made:
        member.close()


def test_join_and_leave(members: list[Member]) -> None:
    a = members[0]
    assert a.rooms_after(join="one") == ["one"]
    assert a.rooms_after(join="two") == ["one", "two"]
    assert a.rooms_after(join="one") == ["one", "two"]
    assert a.rooms_after(leave="one") == ["two"]
    assert a.rooms_after(leave="never-joined") == ["two"]
    assert a.rooms_after(leave="two") == []


def test_broadcast_reaches_the_room_only(server: RoomsServer, members: list[Member]) -> None:
    a, b, c = members
    a.join("r1")
    b.join("r1")
    c.join("r2")
    a.command(broadcast="to r1", room="r1")
    assert a.recv() == "to r1"
    assert b.recv() == "to r1"
    a.command(broadcast="marker")  # no room: every connection of the app
    assert c.recv() == "marker"  # so "to r1" did not reach c
    assert a.recv() == b.recv() == "marker"


def test_exclude_the_sender_and_by_id(server: RoomsServer, members: list[Member]) -> None:
    a, b, c = members
    for member in members:
        member.join("ex")
    a.command(broadcast="not to a", room="ex", exclude_self=True)
    assert b.recv() == c.recv() == "not to a"
    server.http("/broadcast", message="not to b or c", room="ex", exclude=[b.id, c.id])
    server.http("/broadcast", message="marker", room="ex")
    assert a.recv() == "not to b or c"
    assert a.recv() == b.recv() == c.recv() == "marker"


def test_a_broadcast_right_after_join_reaches_the_member(members: list[Member]) -> None:
    """Joined and broadcast in one command: with Redis, the room is new to the worker,
    and the broadcast reaches the member only if ``join`` waited for its subscription."""
    a = members[0]
    for n in range(20):
        a.command(join=f"fresh-{n}", broadcast=f"first-{n}", room=f"fresh-{n}")
        assert a.recv() == f"first-{n}"


def test_text_stays_text_and_binary_binary(members: list[Member]) -> None:
    a, b, _ = members
    a.join("types")
    b.join("types")
    a.command(broadcast="é text", room="types")
    a.command(broadcast="bytes", room="types", binary=True)
    for member in (a, b):
        assert member.recv() == "é text"
        assert member.recv() == b"bytes"


def test_broadcast_from_an_http_view_and_a_thread(
    server: RoomsServer, members: list[Member]
) -> None:
    a, b, c = members
    a.join("news")
    b.join("news")
    server.http("/broadcast", message="from a view", room="news")
    server.http("/broadcast-thread", message="from a thread", room="news", binary=1)
    server.http("/broadcast-thread", message="to everyone")
    for member in (a, b):
        assert member.recv() == "from a view"
        assert member.recv() == b"from a thread"
        assert member.recv() == "to everyone"
    assert c.recv() == "to everyone"


def test_a_compressed_and_an_uncompressed_client_get_the_same(server: RoomsServer) -> None:
    deflate = Member(server)  # websockets offers permessage-deflate
    plain = Member(server, compression=None)
    try:
        assert deflate.ws.response is not None
        assert "permessage-deflate" in deflate.ws.response.headers["Sec-WebSocket-Extensions"]
        deflate.join("z")
        plain.join("z")
        big = "x" * 100_000
        deflate.command(broadcast=big, room="z")
        assert deflate.recv() == plain.recv() == big
        deflate.command(echo="compressed reply still works")
        assert json.loads(deflate.recv())["echo"] == "compressed reply still works"
    finally:
        deflate.close()
        plain.close()


def test_per_sender_order_with_two_senders_at_once(
    server: RoomsServer, members: list[Member]
) -> None:
    a, b, c = members
    a.join("order")
    b.join("order")
    c.join("order")
    a.command(flood=300, prefix="a", room="order")  # in a's handler, while
    server.http("/flood", count=300, prefix="h", room="order")  # an HTTP view does the same
    for member in members:
        got: dict[str, list[int]] = {"a": [], "h": []}
        for _ in range(600):
            prefix, number = member.recv().split("-")
            got[prefix].append(int(number))
        assert got == {"a": list(range(300)), "h": list(range(300))}


def test_connections_leave_their_rooms_when_they_end(server: RoomsServer) -> None:
    leaving = [Member(server) for _ in range(2)]
    for member in leaving:
        member.join("bye")
    assert server.http("/count", room="bye") == "2"
    leaving[0].close()
    wait_for(lambda: server.http("/count", room="bye") == "1", timeout=15)
    leaving[1].ws.close(1001)
    wait_for(lambda: server.http("/count", room="bye") == "0", timeout=15)
    server.http("/broadcast", message="nobody", room="bye")  # an empty room is fine


def test_a_slow_consumer_is_closed_with_1013(server: RoomsServer) -> None:
    """A client that stops reading is closed when over ``max_send_buffer`` (64 KiB on
    ``/rooms-small``), the worker's memory stays flat, and the broadcasts still reach
    another client (on ``/rooms-big``, whose bound fits a whole chunk of the flood)."""
    chunks, count, size = 10, 40, 65536  # 26 MB: more than the socket buffers hold
    slow = slow_member(server, "flood")
    fast = Member(server, "/rooms-big", max_size=None)
    fast.join("flood")
    before = json.loads(server.http("/memory"))
    for _ in range(chunks):  # the fast client keeps up: only the slow one lags
        server.http("/flood", count=count, size=size, room="flood")
        for _ in range(count):
            assert fast.recv() == bytes(size)
    after = json.loads(server.http("/memory"))
    assert after["VmHWM"] - before["VmHWM"] < 16 * 1024, (before, after)
    received, code, reason = read_until_close(slow)
    assert (code, reason) == (1013, "slow consumer: over 65536 bytes waiting to be sent")
    assert 0 < received < chunks * count
    fast.command(echo="still served")
    assert json.loads(fast.recv())["echo"] == "still served"
    fast.close()


def slow_member(server: RoomsServer, room: str) -> RawClient:
    """A member of ``room`` on ``/rooms-small`` that reads nothing until told."""
    slow = RawClient(server.address, "/rooms-small")
    slow.recv_data()  # hello
    slow.send(frame(TEXT, json.dumps({"join": room}).encode()))
    slow.recv_data()  # the rooms reply
    return slow


def read_until_close(client: RawClient) -> tuple[int, int, str]:
    """How many messages came before the close frame, its code and reason."""
    received = 0
    while True:
        opcode, payload = client.recv_data()
        if opcode == CLOSE:
            client.close()
            return received, int.from_bytes(payload[:2], "big"), payload[2:].decode()
        received += 1


# Redis: several processes, several instances, outages.


def test_two_instances_of_two_workers_lose_nothing(redis: RedisServer) -> None:
    """10,000 broadcasts from the four workers of two uWSGI instances sharing Redis reach
    every member on every worker, each sender's in order."""
    channel = "tests-two-instances"
    args = ("--processes", "2")
    with RoomsServer("gevent", redis.url, channel, args) as one, \
            RoomsServer("gevent", redis.url, channel, args) as two:  # fmt: skip
        by_worker: dict[int, list[Member]] = {}
        extra: list[Member] = []
        # Three members on each of the four workers; the kernel picks the worker that
        # accepts, and on a busy machine one may be picked rarely.
        for _ in range(200):
            if len(by_worker) == 4 and all(len(ms) == 3 for ms in by_worker.values()):
                break
            for instance in (one, two):
                member = Member(instance)
                on_worker = by_worker.setdefault(member.pid, [])
                (on_worker if len(on_worker) < 3 else extra).append(member)
        for member in extra:
            member.close()
        assert len(by_worker) == 4 and all(len(ms) == 3 for ms in by_worker.values()), {
            pid: len(ms) for pid, ms in by_worker.items()
        }
        everyone = [member for ms in by_worker.values() for member in ms]
        for member in everyone:
            member.join("all")
        senders = [ms[0] for ms in by_worker.values()]
        for number, sender in enumerate(senders):
            sender.command(flood=2500, prefix=f"s{number}", room="all")
        expected = {f"s{number}": list(range(2500)) for number in range(4)}
        for member in everyone:
            got: dict[str, list[int]] = {prefix: [] for prefix in expected}
            for _ in range(10_000):
                prefix, number = member.recv(timeout=30).split("-")
                got[prefix].append(int(number))
            assert got == expected, member.pid
        for member in everyone:
            member.close()
        for instance in (one, two):
            assert "unreachable" not in instance.output()


def test_a_worker_subscribes_to_the_rooms_of_its_members(redis: RedisServer) -> None:
    """One subscription per room a worker has members in, gone with its last member;
    a room left and joined again at once is subscribed all the same."""
    channel = "tests-subscriptions"
    client = Redis.from_url(redis.url)

    def subscribers(*rooms: str) -> list[int]:
        return [n for _, n in client.pubsub_numsub(*(f"{channel}:room:{r}" for r in rooms))]

    with RoomsServer("gevent", redis.url, channel, ("--processes", "1")) as server:
        a, b = Member(server), Member(server)
        a.join("x", "y")
        b.join("x")
        assert subscribers("x", "y", "never") == [1, 1, 0]
        assert client.pubsub_numsub(channel) == [(channel.encode(), 1)]
        assert len(client.pubsub_channels(f"{channel}:wake:*")) == 1
        a.rooms_after(leave="y")
        wait_for(lambda: subscribers("y") == [0])
        a.close()
        wait_for(lambda: server.http("/count", room="x") == "1", timeout=15)
        assert subscribers("x") == [1]  # b is still in it
        for n in range(10):  # left and joined again before the worker's subscriber acts
            b.command(leave="x")
            b.command(join="x", broadcast=f"again-{n}", room="x")
            assert json.loads(b.recv())["rooms"] == []
            assert b.recv() == f"again-{n}"
        b.rooms_after(leave="x")
        wait_for(lambda: subscribers("x") == [0])
        b.close()
        assert "unreachable" not in server.output()


def test_redis_killed_and_restarted(redis: RedisServer) -> None:
    """The app serves its connections through the outage, logs it once, and delivery
    resumes when Redis is back."""
    outage = RedisServer()
    outage.start()
    try:
        with RoomsServer("gevent", outage.url, "tests-outage") as server:
            a, b = Member(server), Member(server)
            a.join("r")
            b.join("r")
            server.http("/broadcast", message="before", room="r")
            assert a.recv() == b.recv() == "before"
            outage.kill()
            wait_for(lambda: "unreachable" in server.output(), timeout=15)
            for n in range(20):  # while down: dropped, and nothing waits or fails
                server.http("/broadcast", message=f"lost-{n}", room="r")
            a.command(echo="served while Redis is down")
            assert json.loads(a.recv())["echo"] == "served while Redis is down"
            b.join("joined-while-down")  # does not wait for Redis
            outage.start()
            wait_for_delivery(server, a)
            server.http("/flood", count=100, prefix="after", room="r")
            for member in (a, b):
                received = [recv_no_probe(member) for _ in range(100)]
                assert received == [f"after-{n}" for n in range(100)]
            # Subscribed again with r, in the same command.
            server.http("/broadcast", message="to the new room", room="joined-while-down")
            assert recv_no_probe(b) == "to the new room"
            log = server.output()
            assert log.count("is unreachable") == 1, log
            assert log.count("is back after") == 1, log
            dropped = re.search(r"is back after [0-9.]+ s; (\d+) broadcast", log)
            assert dropped is not None and int(dropped.group(1)) >= 20, log
            a.close()
            b.close()
    finally:
        outage.stop()


def test_joins_wait_little_for_a_redis_that_does_not_answer() -> None:
    """Redis stopped (SIGSTOP: connections open, no answer): the first join waits for its
    subscription 2 s at most, the next ones not at all, and the stall is logged once;
    when Redis answers again the subscriptions are made and the rooms get broadcasts."""
    silent = RedisServer()
    silent.start()
    assert silent.process is not None
    try:
        with RoomsServer("gevent", silent.url, "tests-silent") as server:
            a = Member(server)
            a.join("before")
            silent.process.send_signal(signal.SIGSTOP)
            try:
                a.join("stalled-1")  # answered within Member.recv's 10 s: join returned
                a.join("stalled-2", "stalled-3")
                wait_for(lambda: "was not confirmed within 2.0 s" in server.output())
            finally:
                silent.process.send_signal(signal.SIGCONT)
            wait_for(lambda: "subscriptions are confirmed again" in server.output(), timeout=30)
            for room in ("before", "stalled-1", "stalled-2", "stalled-3"):
                server.http("/broadcast", message=f"to {room}", room=room)
                assert a.recv(timeout=30) == f"to {room}"
            assert server.output().count("was not confirmed within") == 1
            a.close()
    finally:
        silent.stop()


def test_redis_down_at_start_up() -> None:
    """An app whose Redis is down when it starts serves connections, and delivers once
    Redis comes up."""
    port = free_port()
    late = RedisServer(port)
    with RoomsServer("asyncio", late.url, "tests-late") as server:
        try:
            a = Member(server)
            a.join("r")
            server.http("/broadcast", message="lost", room="r")
            a.command(echo="served")
            assert json.loads(a.recv())["echo"] == "served"
            wait_for(lambda: "unreachable" in server.output(), timeout=15)
            late.start()
            wait_for_delivery(server, a)
            a.command(broadcast="resumed", room="r")
            assert recv_no_probe(a) == "resumed"
            assert server.output().count("is unreachable") == 1
            a.close()
        finally:
            late.stop()


def test_in_process_broker_warns_once_with_several_workers() -> None:
    with RoomsServer("gevent", extra_args=("--processes", "3")) as server:
        wait_for(lambda: server.output().count("spawned uWSGI worker") == 3, timeout=15)
        # A worker that gets SIGINT before it has set its signal handlers dies with a
        # KeyboardInterrupt, and uWSGI's master waits for it: let them start.
        time.sleep(1)
        assert server.output().count("the WebSocket broker is in-process") == 1
    with RoomsServer("gevent", extra_args=("--processes", "1")) as server:
        server.http("/count")
        assert "the WebSocket broker is in-process" not in server.output()


# Without a server: the pure parts and the misuse errors.


def test_a_broadcast_survives_its_encoding() -> None:
    ids = frozenset({"a" * 32, "b" * 32})
    for broadcast in (
        Broadcast(Opcode.TEXT, "é".encode(), "room ü", ids),
        Broadcast(Opcode.BINARY, bytes(70000), None, frozenset()),
        Broadcast(Opcode.TEXT, b"", "", frozenset()),
    ):
        assert Broadcast.decode(broadcast.encode()) == broadcast
    for junk in (b"", b"\x01", b"\x02\x01\xff\xff\x00\x00", b"\x01\x08\xff\xff\x00\x00"):
        with pytest.raises(ValueError):
            Broadcast.decode(junk)


def test_broadcast_arguments_are_checked() -> None:
    assert Broadcast.of("t", None, None) == (Opcode.TEXT, b"t", None, frozenset())
    assert Broadcast.of(bytearray(b"b"), "r", "c" * 32).exclude == {"c" * 32}
    assert Broadcast.of(memoryview(b"b"), "r", ["c" * 32, "d" * 32]).opcode == Opcode.BINARY
    with pytest.raises(TypeError, match="str or bytes-like"):
        Broadcast.of(1, None, None)
    with pytest.raises(TypeError, match="str"):
        Broadcast.of("m", 7, None)
    with pytest.raises(TypeError, match="exclude takes connections or their ids"):
        Broadcast.of("m", None, ["short"])


def test_the_broker_comes_from_the_argument_or_the_config() -> None:
    from flask import Flask

    from flask_uwsgi_websocket import WebSocket
    from flask_uwsgi_websocket.broadcast.brokers import LocalBroker, RedisBroker

    websocket = WebSocket(Flask("default"))
    assert isinstance(websocket.broker(), LocalBroker)
    websocket = WebSocket(Flask("argument"), broker="redis://127.0.0.1:1/0")
    broker = websocket.broker()
    assert isinstance(broker, RedisBroker)
    assert (broker.url, broker.channel) == ("redis://127.0.0.1:1/0", "flask-uwsgi-websocket")
    app = Flask("config")
    app.config.update(
        WEBSOCKET_BROKER_URL="redis://:secret@127.0.0.1:2/3", WEBSOCKET_BROKER_CHANNEL="mine"
    )
    broker = WebSocket(app, broker="redis://elsewhere").broker(app)
    assert isinstance(broker, RedisBroker)
    assert (broker.url, broker.channel) == ("redis://:secret@127.0.0.1:2/3", "mine")
    assert "secret" not in repr(broker)
    app = Flask("bad")
    app.config["WEBSOCKET_BROKER_URL"] = "amqp://x"
    with pytest.raises(ValueError, match="unknown broker 'amqp://x'"):
        WebSocket(app)


def test_sentinel_and_cluster_urls() -> None:
    from flask_uwsgi_websocket.broadcast.brokers import RedisBroker
    from flask_uwsgi_websocket.broadcast.servers import Cluster, Hosts, SentinelMaster

    sentinel = SentinelMaster("redis+sentinel://u:p%40ss@h1:1,h2,[::1]:3/svc/2")
    assert sentinel.hosts == Hosts([("h1", 1), ("h2", 26379), ("::1", 3)], "u", "p@ss", "svc/2")
    assert (sentinel.service, sentinel.db) == ("svc", 2)
    assert sentinel.name == "redis+sentinel://h1:1,h2,[::1]:3/svc/2"
    cluster = Cluster("redis+cluster://:secret@10.0.0.1:7000,10.0.0.2/")
    assert cluster.hosts == Hosts([("10.0.0.1", 7000), ("10.0.0.2", 6379)], None, "secret", "")
    assert "secret" not in repr(RedisBroker("redis+cluster://:secret@h:1"))
    for url, error in (
        ("redis+sentinel://h:1", "no service name"),
        ("redis+sentinel://h:1/svc/x", "bad database number"),
        ("redis+cluster://", "no host"),
        ("redis+cluster://:pw@h:port", "bad port in 'redis\\+cluster://h:port'"),
    ):
        with pytest.raises(ValueError, match=error):
            RedisBroker(url)


def test_broadcast_needs_to_know_the_app() -> None:
    from flask import Flask

    from flask_uwsgi_websocket import WebSocket

    websocket = WebSocket()
    one, two = Flask("one"), Flask("two")
    websocket.init_app(one)
    websocket.broadcast("nobody listens")  # the only app
    websocket.init_app(two)
    with pytest.raises(RuntimeError, match="cannot tell which of its 2 apps"):
        websocket.broadcast("which app?")
    with two.app_context():
        websocket.broadcast("fine")
    with Flask("other").app_context(), pytest.raises(RuntimeError, match="does not use"):
        websocket.broadcast("not this one")


# Helpers.


def wait_for_delivery(server: RoomsServer, member: Member, timeout: float = 15.0) -> None:
    """Broadcast probes to room ``r`` until ``member`` gets one."""
    deadline = time.monotonic() + timeout
    while True:
        server.http("/broadcast", message="probe", room="r")
        try:
            assert member.recv(timeout=0.5) == "probe"
            return
        except TimeoutError:
            assert time.monotonic() < deadline, "delivery did not resume"


def recv_no_probe(member: Member) -> Any:
    """The next message that is not a probe of :func:`wait_for_delivery`."""
    while True:
        message = member.recv()
        if message != "probe":
            return message
