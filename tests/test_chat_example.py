"""``examples/chat.py`` served by real uWSGI: one worker with the in-process broker, and two
uWSGI instances of two workers each sharing a real redis-server, where its ``flask
announce`` command speaks in a room; also run as a script."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from .helpers import ROOT, RedisServer, ServerProcess, UwsgiServer, child_env, free_port

pytestmark = pytest.mark.timeout(180)

CHAT = ROOT / "examples" / "chat.py"
WARNING = "the WebSocket broker is in-process"


@pytest.fixture(autouse=True)
def no_broker_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The servers see no broker setting of the caller's environment."""
    monkeypatch.delenv("WEBSOCKET_BROKER_URL", raising=False)
    monkeypatch.delenv("FLASK_WEBSOCKET_BROKER_URL", raising=False)


def chat_server(
    processes: int = 1, env: dict[str, str] | None = None, extra: tuple[str, ...] = ()
) -> UwsgiServer:
    """The example as the README deploys it: ``--wsgi-file examples/chat.py --callable app``."""
    args = ["--wsgi-file", str(CHAT), "--callable", "app", "--gevent", "100"]
    return UwsgiServer([*args, "--processes", str(processes), *extra], env=env)


def get(url: str) -> tuple[str, str]:
    """The final URL (redirects followed) and the body of an HTTP GET."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.url, response.read().decode()


def check_page(address: str) -> str:
    """``/`` leads to ``/lobby``, whose page opens the WebSocket at ``/ws/lobby`` of the host
    it came from (the page makes the path a URL: tests/test_chat_browser.py runs it)."""
    url, page = get(f"http://{address}/")
    assert url == f"http://{address}/lobby"
    assert 'const path = "/ws/lobby";' in page
    assert "<title>lobby - chat</title>" in page
    # Self-contained: no script, style sheet or image from elsewhere; text inserted as text.
    assert re.findall(r"""\b(?:src|href)\s*=\s*["']?([^"' >]*)""", page) == ["data:,"]
    assert "<script src" not in page and "@import" not in page
    assert "innerHTML" not in page and ".textContent = " in page
    # The room comes from the URL: escaped in the page, quoted in the WebSocket URL.
    _, page = get(f"http://{address}/%3Cb%3Ex")
    assert "<title>&lt;b&gt;x - chat</title>" in page and "<b>x" not in page
    assert 'const path = "/ws/%3Cb%3Ex";' in page
    with pytest.raises(urllib.error.HTTPError) as info:
        get(f"http://{address}/{'x' * 41}")  # a room name is at most 40 characters
    assert info.value.code == 404
    return f"ws://{address}/ws/lobby"


class Chatter:
    """A ``websockets`` client in a room, keeping what it receives."""

    def __init__(self, stack: contextlib.ExitStack, address: str, room: str, name: str) -> None:
        self.name, self.room = name, room
        url = f"ws://{address}/ws/{room}?name={quote(name)}"
        self.ws: ClientConnection = stack.enter_context(connect(url, open_timeout=10))
        self.got: list[dict[str, Any]] = []
        self._unread: list[dict[str, Any]] = []

    def say(self, text: str, name: str | None = None) -> None:
        self.ws.send(json.dumps({"name": name or self.name, "text": text}))

    def receive(self, timeout: float) -> bool:
        try:
            message = json.loads(self.ws.recv(timeout=timeout))
        except TimeoutError:
            return False
        assert set(message) == {"event", "name", "text", "time"}, message
        sent = datetime.fromisoformat(message["time"])
        assert abs(datetime.now(timezone.utc) - sent) < timedelta(seconds=60)
        self.got.append(message)
        self._unread.append(message)
        return True

    def expect(self, event: str, name: str, text: str, timeout: float = 10.0) -> None:
        """Wait for that message (others received meanwhile are kept for later)."""
        deadline = time.monotonic() + timeout
        while True:
            for message in self._unread:
                if (message["event"], message["name"], message["text"]) == (event, name, text):
                    self._unread.remove(message)
                    return
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{self.name} got no {event} {name!r} {text!r}: {self.got}")
            self.receive(left)

    def drain(self, quiet: float = 0.5) -> None:
        """Receive until nothing comes for ``quiet`` seconds."""
        while self.receive(quiet):
            pass


def converse(lobby: list[str], kitchen: str, own_join_first: bool = True) -> None:
    """Alice, Bob and Carol chat in the lobby (at ``lobby[0]``, ``[1]``, ``[0]``), Dave in the
    kitchen at ``kitchen``: joins, messages and leaves reach the room and only the room;
    each client gets its own "joined", first unless ``own_join_first`` is false (between
    instances, a join broadcast before a client connected may still be on its way).
    """
    with contextlib.ExitStack() as stack:
        clients: list[Chatter] = []

        def enter(address: str, room: str, name: str) -> Chatter:
            client = Chatter(stack, address, room, name)
            client.expect("join", name, "joined")
            if own_join_first:
                assert client.got[0]["name"] == name, client.got
            for other in clients:
                if other.room == room:
                    other.expect("join", name, "joined")
            clients.append(client)
            return client

        alice = enter(lobby[0], "lobby", "alice")
        bob = enter(lobby[1], "lobby", "bob")
        dave = enter(kitchen, "kitchen", "dave")
        carol = enter(lobby[0], "lobby", "carol")
        in_lobby = [alice, bob, carol]

        bob.say("hello <b>lobby</b> & all")
        for client in in_lobby:
            client.expect("message", "bob", "hello <b>lobby</b> & all")
        dave.say("hello kitchen")
        dave.expect("message", "dave", "hello kitchen")

        # Input is cleaned: one line, name at most 32 characters, text at most 500.
        carol.say("a\tb\n " + "y" * 600, name="  car\nol  " + "x" * 40)
        carol_renamed = "car ol " + "x" * 25
        for client in in_lobby:
            client.expect("message", carol_renamed, "a b " + "y" * 496)
        # Ignored: not JSON, not an object, blank text; the connection stays open.
        alice.ws.send("not json")
        alice.ws.send(b"[1, 2]")
        alice.say(" \t ")
        alice.ws.send(json.dumps({"name": ["x"], "text": "still here"}))
        for client in in_lobby:
            client.expect("message", "alice", "still here")

        # Leaves: Carol closes (under her last name), Bob's connection just drops.
        carol.ws.close()
        for client in (alice, bob):
            client.expect("leave", carol_renamed, "left")
        bob.ws.socket.shutdown(socket.SHUT_RDWR)
        alice.expect("leave", "bob", "left")

        for client in (alice, dave):
            client.drain()
        assert {m["name"] for m in alice.got} == {"alice", "bob", "carol", carol_renamed}
        assert {m["name"] for m in dave.got} == {"dave"}
        assert not [m for m in alice.got if m["text"].strip() in ("", "not json")]


def test_in_process() -> None:
    with chat_server() as server:
        assert check_page(server.address) == f"{server.url}/ws/lobby"
        converse([server.address, server.address], server.address)
        assert server.stop() == 0
        assert "Traceback" not in server.output()
        assert WARNING not in server.output()


def test_two_instances_of_two_workers_share_redis() -> None:
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer())
        # The example reads WEBSOCKET_BROKER_URL, and FLASK_WEBSOCKET_BROKER_URL as config.
        one, two = (
            stack.enter_context(chat_server(2, {name: redis.url}))
            for name in ("WEBSOCKET_BROKER_URL", "FLASK_WEBSOCKET_BROKER_URL")
        )
        for server in (one, two):
            check_page(server.address)
        converse([one.address, two.address], two.address, own_join_first=False)
        # The example's flask command speaks in a room, from a process of its own.
        listeners = [Chatter(stack, server.address, "lobby", "eve") for server in (one, two)]
        for listener in listeners:
            listener.expect("join", "eve", "joined", timeout=30)
        flask = str(Path(sys.executable).parent / "flask")
        announce = [flask, "--app", str(CHAT), "announce", "Maintenance at noon"]
        done = subprocess.run(
            announce, cwd=ROOT, env=child_env(WEBSOCKET_BROKER_URL=redis.url),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert done.returncode == 0 and not done.stderr, done.stdout + done.stderr
        for listener in listeners:
            listener.expect("message", "announcement", "Maintenance at noon")
        for server in (one, two):
            assert server.stop() == 0
            assert "Traceback" not in server.output()
            assert WARNING not in server.output()
            assert "Redis broker" not in server.output()  # neither outage nor recovery


@pytest.mark.parametrize("lazy_apps", [False, True], ids=["preloaded", "lazy_apps"])
def test_in_process_broker_with_two_workers_warns_once(lazy_apps: bool) -> None:
    loads = 2 if lazy_apps else 1  # each worker loads the app, or the master once for both
    with chat_server(2, extra=("--lazy-apps",) if lazy_apps else ()) as server:
        deadline = time.monotonic() + 15
        while (
            server.output().count("WSGI app 0 (mountpoint='') ready") < loads
            or "spawned uWSGI worker 2" not in server.output()
        ):
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
        assert server.stop() == 0
        log = server.output()
    assert log.count(WARNING) == 1, log
    assert "uWSGI runs 2 worker processes and the WebSocket broker is in-process" in log


def test_run_as_a_script() -> None:
    """``python examples/chat.py``, the README's first run: the page, and its WebSocket."""
    port = free_port()
    env = child_env(FLASK_RUN_HOST="127.0.0.1", FLASK_RUN_PORT=str(port))
    with ServerProcess([sys.executable, str(CHAT)], port, ROOT, env) as process:
        ws_url = check_page(process.address)
        with connect(f"{ws_url}?name=eve", open_timeout=10) as ws:
            message = json.loads(ws.recv(timeout=10))
            assert (message["event"], message["name"], message["text"]) == ("join", "eve", "joined")
            ws.send("x" * 4097)  # over the route's max_message_size
            with pytest.raises(ConnectionClosed) as info:
                ws.recv(timeout=10)
            assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert process.stop() == 0
        assert "goodbye to uWSGI." in process.output()
        assert "Traceback" not in process.output()
