"""The app of the broadcast tests, in the flavour ``TEST_FLAVOUR`` names.

A client of ``/rooms`` gets ``{"id", "pid"}`` first, then sends JSON commands:
``{"join": room}``, ``{"leave": room}`` (answered with ``{"rooms": [...]}``),
``{"broadcast": message, "room": r, "binary": b, "exclude_self": b}`` and
``{"flood": count, "prefix": p, "room": r}`` (``p-0``, ``p-1``...; not answered),
``{"echo": x}`` (answered ``{"echo": x}``). Every answer has the key
``"reply"``; anything else a client receives is a broadcast. HTTP views broadcast
from a request (``/broadcast``), from a thread of their own (``/broadcast-thread``),
and many at once (``/flood``); so does the command ``flask --app tests.app_rooms flood``
and the script ``tests/flood.py``, from processes that serve no connection, and under
uWSGI a mule (``/mule``, with ``--mule``) and the spooler (``/spool``, with
``--spooler``). The broker is in-process unless ``FLASK_WEBSOCKET_BROKER_URL`` is set.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any

import click
from flask import Flask, request

try:
    import uwsgi
except ImportError:  # a script, a flask command
    uwsgi = None

FLAVOUR = os.environ.get("TEST_FLAVOUR", "plain")

app = Flask(__name__)
app.config.from_prefixed_env()

if FLAVOUR == "asyncio":
    from flask_uwsgi_websocket import AsyncioWebSocket

    websocket: Any = AsyncioWebSocket(app)
elif FLAVOUR == "gevent":
    from flask_uwsgi_websocket import GeventWebSocket

    websocket = GeventWebSocket(app)
else:
    from flask_uwsgi_websocket import WebSocket

    websocket = WebSocket(app)


def hello(ws: Any) -> str:
    return json.dumps({"reply": "hello", "id": ws.id, "pid": os.getpid()})


def command_reply(ws: Any, command: dict[str, Any]) -> tuple[str | None, list[Any]]:
    """What to answer, and the broadcasts to make: ``(message, room, exclude)`` each."""
    if "broadcast" in command:
        message = command["broadcast"]
        if command.get("binary"):
            message = message.encode()
        exclude = ws if command.get("exclude_self") else None
        return None, [(message, command.get("room"), exclude)]
    if "flood" in command:
        room, prefix = command.get("room"), command["prefix"]
        return None, [(f"{prefix}-{n}", room, None) for n in range(command["flood"])]
    if "echo" in command:
        return json.dumps({"reply": "echo", "echo": command["echo"]}), []
    return json.dumps({"reply": "rooms", "rooms": sorted(ws.rooms)}), []


if FLAVOUR == "asyncio":

    @websocket.route("/rooms")
    @websocket.route("/rooms-small", max_send_buffer=65536)
    @websocket.route("/rooms-big", max_send_buffer=2**26)
    async def rooms(ws: Any) -> None:
        await ws.send(hello(ws))
        async for message in ws:
            command = json.loads(message)
            if "join" in command:
                await ws.join(command["join"])
            if "leave" in command:
                await ws.leave(command["leave"])
            reply, broadcasts = command_reply(ws, command)
            for broadcast in broadcasts:
                await websocket.broadcast(*broadcast)
            if reply is not None:
                await ws.send(reply)

else:

    @websocket.route("/rooms")
    @websocket.route("/rooms-small", max_send_buffer=65536)
    @websocket.route("/rooms-big", max_send_buffer=2**26)
    def rooms(ws: Any) -> None:
        ws.send(hello(ws))
        for message in ws:
            command = json.loads(message)
            if "join" in command:
                ws.join(command["join"])
            if "leave" in command:
                ws.leave(command["leave"])
            reply, broadcasts = command_reply(ws, command)
            for broadcast in broadcasts:
                websocket.broadcast(*broadcast)
            if reply is not None:
                ws.send(reply)


def broadcast_args() -> tuple[Any, str | None, Any]:
    message: Any = request.args.get("message", "")
    if request.args.get("binary"):
        message = message.encode()
    return message, request.args.get("room"), request.args.getlist("exclude") or None


@app.route("/broadcast", methods=["GET", "POST"])
def broadcast() -> str:
    websocket.broadcast(*broadcast_args())
    return "sent"


@app.route("/broadcast-thread")
def broadcast_thread() -> str:
    """Broadcast from a thread with no app context (background code)."""
    args = broadcast_args()
    thread = threading.Thread(target=websocket.broadcast, args=args)
    thread.start()
    thread.join()
    return "sent"


@app.route("/flood")
def flood() -> str:
    """``count`` broadcasts of ``size`` bytes (binary) or ``prefix-<n>`` (text) to ``room``."""
    count = int(request.args["count"])
    size = int(request.args.get("size", 0))
    room = request.args.get("room")
    prefix = request.args.get("prefix", "m")
    for n in range(count):
        websocket.broadcast(bytes(size) if size else f"{prefix}-{n}", room)
    return "sent"


def flood_messages(room: str | None, count: int, prefix: str, every: int) -> None:
    """``prefix-0`` ... to ``room``, then ``prefix-end`` to every connection of the app;
    with ``every``, each ``every``-th of them goes to every connection instead."""
    for n in range(count):
        to_everyone = every and (n + 1) % every == 0
        websocket.broadcast(f"{prefix}-{n}", None if to_everyone else room)
    websocket.broadcast(f"{prefix}-end")


@app.cli.command("flood")
@click.argument("room")
@click.argument("count", type=int)
@click.option("--prefix", default="cli")
@click.option("--every", type=int, default=0, help="each n-th to every connection")
def flood_command(room: str, count: int, prefix: str, every: int) -> None:
    """Broadcast COUNT messages to ROOM (flushed as the command exits)."""
    flood_messages(room, count, prefix, every)


@app.route("/mule")
def to_a_mule() -> str:
    """Have mule 1 broadcast ``message`` to ``room``."""
    message, room, _ = broadcast_args()
    uwsgi.mule_msg(json.dumps([message, room]).encode(), 1)
    return "sent"


@app.route("/spool")
def to_the_spooler() -> str:
    """Have the spooler broadcast ``message`` to ``room``."""
    message, room, _ = broadcast_args()
    uwsgi.spool({b"broadcast": json.dumps([message, room]).encode()})
    return "sent"


def from_a_mule(data: bytes) -> None:
    websocket.broadcast(*json.loads(data))


def from_the_spooler(job: dict[bytes, bytes]) -> int:
    websocket.broadcast(*json.loads(job[b"broadcast"]))
    return int(uwsgi.SPOOL_OK)


if uwsgi is not None:
    uwsgi.mule_msg_hook = from_a_mule
    uwsgi.spooler = from_the_spooler


@app.route("/count")
def count() -> str:
    """Connections of this worker in ``room`` (all without one)."""
    return str(websocket.broker().rooms.count(request.args.get("room")))


@app.route("/memory")
def memory() -> Any:
    """The worker's peak and current resident memory, in KiB (Linux)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmHWM", "VmRSS")}
