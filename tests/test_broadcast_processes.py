"""Broadcasts from processes that serve no connection: a script and a ``flask`` command,
run as subprocesses, reach the members of a room on two uWSGI instances sharing a real
redis-server, in order, mixed with broadcasts to every connection; an unreachable or
silent Redis is logged with what was dropped, and the process still exits within its
bound."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from redis import Redis

from flask_uwsgi_websocket.broadcast.brokers import EXIT_TIMEOUT

from .helpers import ROOT, Member, RedisServer, RoomsServer, child_env, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

CHANNEL = "tests-processes"
FLASK = str(Path(sys.executable).parent / "flask")
#: Seconds a process that broadcasts may take to start and exit, its flush at exit aside.
SLACK = 30.0


class Instances:
    """Two uWSGI instances of two workers sharing one Redis, and members of ``/rooms``
    on both: four in the room ``r``, and one outside it, on each instance."""

    def __init__(self, redis: RedisServer) -> None:
        self.redis = redis
        args = ("--processes", "2")
        self.servers = [
            RoomsServer("gevent", redis.url, CHANNEL, args),
            RoomsServer("plain", redis.url, CHANNEL, args),
        ]
        self.members: list[Member] = []
        self.outsiders: list[Member] = []
        for server in self.servers:
            server.wait_ready()
            for _ in range(4):
                member = Member(server)
                member.join("r")
                self.members.append(member)
            self.outsiders.append(Member(server))
        subscribers = Redis.from_url(redis.url).pubsub_numsub
        wait_for(lambda: subscribers(CHANNEL) == [(CHANNEL.encode(), 4)], timeout=30)

    def close(self) -> None:
        for member in self.members + self.outsiders:
            member.close()
        for server in self.servers:
            server.close()

    def check(self, prefix: str, count: int, every: int) -> None:
        """Every member got ``prefix-0`` ... in order, then ``prefix-end``; the members
        outside the room each ``every``-th of them (sent to every connection), and the end.
        The room's and the app's broadcasts go through two channels: the order across
        them is Redis's."""
        everyone = [f"{prefix}-{n}" for n in range(count) if (n + 1) % every == 0]
        expected = [f"{prefix}-{n}" for n in range(count)] + [f"{prefix}-end"]
        for member in self.members:
            assert [member.recv(timeout=30) for _ in expected] == expected, member.pid
        for outsider in self.outsiders:
            got = [outsider.recv(timeout=30) for _ in range(len(everyone) + 1)]
            assert got == [*everyone, f"{prefix}-end"], outsider.pid


@pytest.fixture(scope="module")
def redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture(scope="module")
def instances(redis: RedisServer) -> Iterator[Instances]:
    made = Instances(redis)
    yield made
    logs = [server.output() for server in made.servers]
    made.close()
    for log in logs:
        assert "unreachable" not in log and "dropped" not in log, log


def run(args: list[str], broker: str, timeout: float = EXIT_TIMEOUT + SLACK) -> tuple[str, float]:
    """Run ``args`` in the checkout with the broker ``broker``; its output and duration."""
    env = child_env(FLASK_WEBSOCKET_BROKER_URL=broker, FLASK_WEBSOCKET_BROKER_CHANNEL=CHANNEL)
    env.pop("TEST_FLAVOUR", None)
    started = time.monotonic()
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    took = time.monotonic() - started
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output, took


def test_a_script_broadcasts_and_flushes(instances: Instances) -> None:
    output, _ = run([sys.executable, "-m", "tests.flood", "r", "200", "script", "3", "30"],
                    instances.redis.url)  # fmt: skip
    assert "flushed: True" in output
    instances.check("script", 200, every=3)
    assert "dropped" not in output and "warning" not in output.lower(), output


def test_a_flask_command_broadcasts_and_exits(instances: Instances) -> None:
    """No explicit flush: the broadcasts still queued are published as it exits."""
    output, _ = run([FLASK, "--app", "tests.app_rooms:app", "flood", "r", "200",
                     "--prefix", "cli", "--every", "7"], instances.redis.url)  # fmt: skip
    instances.check("cli", 200, every=7)
    assert "dropped" not in output and "warning" not in output.lower(), output


def test_a_process_that_broadcasts_does_not_subscribe(instances: Instances) -> None:
    """Redis counts one subscriber of the channel per worker: the four of the two
    instances, and none for the processes that only broadcast."""
    script = (
        "import redis, sys; from tests.app_rooms import websocket; "
        "websocket.broadcast('x', room='nobody'); websocket.flush(30); "
        f"print(redis.Redis.from_url(sys.argv[1]).pubsub_numsub({CHANNEL!r}))"
    )
    output, _ = run([sys.executable, "-c", script, instances.redis.url], instances.redis.url)
    assert f"[(b'{CHANNEL}', 4)]" in output, output


def test_redis_refusing_connections_is_logged_with_the_count() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    output, took = run([FLASK, "--app", "tests.app_rooms:app", "flood", "r", "200"], url)
    assert re.search(r"is unreachable \(.*Connection refused", output), output
    assert "is still unreachable as the process exits: 201 broadcast(s) made in this " \
        "process were dropped" in output, output  # fmt: skip
    assert took < EXIT_TIMEOUT + SLACK


def test_a_silent_redis_holds_the_exit_for_the_bound_only() -> None:
    """A Redis that accepts the connection and never answers: the explicit flush says so
    when its time is up, and the exit waits :data:`EXIT_TIMEOUT` seconds, then logs what
    it drops."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # the kernel accepts the connection; nobody reads from it
        url = f"redis://127.0.0.1:{silent.getsockname()[1]}/0"
        output, took = run([sys.executable, "-m", "tests.flood", "r", "200", "s", "0", "1"], url)
    assert "flushed: False" in output
    assert f"201 broadcast(s) still unpublished {EXIT_TIMEOUT:.1f} s after the process began " \
        "to exit are dropped" in output, output  # fmt: skip
    assert took < 1 + EXIT_TIMEOUT + SLACK


def test_the_in_process_broker_warns_that_a_script_reaches_no_one() -> None:
    env = {k: v for k, v in child_env().items() if not k.startswith("FLASK_WEBSOCKET_")}
    done = subprocess.run(
        [sys.executable, "-m", "tests.flood", "r", "3", "s", "0", "1"], cwd=ROOT, env=env,
        capture_output=True, text=True, timeout=SLACK, check=True,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert output.count("it reaches no one") == 1, output
    assert "flushed: True" in output


def test_a_mule_and_the_spooler_broadcast_and_do_not_subscribe(
    redis: RedisServer, tmp_path: Path
) -> None:
    """uWSGI calls the fork hook in mules and the spooler too: they must not subscribe
    (they serve no connection); their broadcasts reach the workers' members."""
    channel = "tests-mule"
    args = ("--processes", "1", "--mule", "--spooler", str(tmp_path), "--enable-threads")
    with RoomsServer("gevent", redis.url, channel, args) as server:
        member = Member(server)
        member.join("r")
        server.http("/mule", message="from a mule", room="r")
        assert member.recv(timeout=30) == "from a mule"
        server.http("/spool", message="from the spooler", room="r")
        assert member.recv(timeout=30) == "from the spooler"
        numsub = Redis.from_url(redis.url).pubsub_numsub(channel)
        assert numsub == [(channel.encode(), 1)], server.output()
        member.close()


@pytest.mark.parametrize("flavour", ["plain", "gevent", "asyncio"])
def test_the_test_client_subscribes_once_it_serves(redis: RedisServer, flavour: str) -> None:
    """Outside uWSGI, a process subscribes at its first connection: the in-process test
    client, in every flavour, joins through Redis and gets a broadcast made right after."""
    from flask import Flask

    from flask_uwsgi_websocket import AsyncioWebSocket, GeventWebSocket, WebSocket

    app = Flask(f"test_client_{flavour}")
    channel = f"tests-test-client-{flavour}"
    app.config.update(WEBSOCKET_BROKER_URL=redis.url, WEBSOCKET_BROKER_CHANNEL=channel)
    if flavour == "asyncio":
        websocket: Any = AsyncioWebSocket(app)

        @websocket.route("/room/<room>")
        async def member(ws: Any, room: str) -> None:
            await ws.join(room)
            websocket.broadcast(f"right after joining {room}", room=room)
            async for _ in ws:
                pass

    else:
        websocket = (WebSocket if flavour == "plain" else GeventWebSocket)(app)

        @websocket.route("/room/<room>")
        def member(ws: Any, room: str) -> None:
            ws.join(room)
            websocket.broadcast(f"right after joining {room}", room=room)
            for _ in ws:
                pass

    subscribers = Redis.from_url(redis.url).pubsub_numsub
    assert subscribers(channel) == [(channel.encode(), 0)]
    with websocket.test_client().connect("/room/a") as ws:
        assert ws.receive(timeout=30) == "right after joining a"
        assert subscribers(channel) == [(channel.encode(), 1)]
        websocket.broadcast("from the test", room="a")
        assert ws.receive(timeout=30) == "from the test"
