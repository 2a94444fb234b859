"""The soak test's app (see bench/soak.py), in the flavour ``SOAK_FLAVOUR`` names, with the
broker ``FLASK_WEBSOCKET_BROKER_URL`` (Redis for the soak).

A client of ``/soak`` (or ``/soak-slow``, whose ``max_send_buffer`` is 64 KiB, or
``/soak-big``, 16 MiB: room for a whole flood while the client is busy) gets
``{"id", "pid"}`` first. Then each message it sends is echoed as it is, text or binary,
except a text message starting with ``!``, a JSON command:

- ``{"join": room}``: join ``room``, answered ``J<room>``;
- ``{"broadcast": payload, "room": room, "binary": b, "seq": n}``: broadcast ``payload``
  (encoded when ``binary``) to ``room``, answered ``A<n>`` once it is made;
- ``{"flood": count, "size": size, "room": room, "tag": tag}``: ``count`` broadcasts
  ``F<tag>:<i>:`` followed by ``size`` bytes of ``x`` to ``room``, answered ``A<tag>``;
- ``{"trim": true}``: glibc's ``malloc_trim(0)`` in this worker, answered ``T``: the
  allocator gives back the free pages it keeps (in every arena), so that the RSS the soak
  reads next is the memory in use, not the allocator's high-water mark;
- ``{"census": true, "baseline": b}``: Python's own figures in this worker, answered
  ``C`` and a JSON object: ``blocks`` (``sys.getallocatedblocks()``), ``objects`` (those
  the collector tracks), ``threads``, and glibc's ``mallinfo2()`` over every arena:
  ``malloc_used`` (bytes of chunks in use, mmapped ones too) and ``malloc_free`` (free
  chunks the arenas keep); with ``SOAK_TRACEMALLOC`` set (tracemalloc on
  from the start), also ``traced`` (bytes) and, unless ``baseline`` (which takes the
  snapshot to compare with), ``top``: the 15 source lines whose allocations grew most
  since. What tells a leak of Python objects from the allocator's fragmentation.

Keepalive pings every 5 s, 5 s to answer: a silent peer is sent a 1011 close frame 10 s
after it fell silent, and the TCP connection is closed 10 s later (``close_timeout``).
"""

from __future__ import annotations

import ctypes
import gc
import json
import os
import sys
import threading
import tracemalloc
from typing import Any

from flask import Flask

FLAVOUR = os.environ.get("SOAK_FLAVOUR", "gevent")
OPTIONS: dict[str, Any] = {"ping_interval": 5, "ping_timeout": 5}
SLOW_BUFFER = 65536
BIG_BUFFER = 2**24

LIBC = ctypes.CDLL(None)  # the process's own C library: glibc on Linux
if os.environ.get("SOAK_TRACEMALLOC"):
    tracemalloc.start(4)
BASELINE: list[tracemalloc.Snapshot] = []


class MallInfo2(ctypes.Structure):
    """glibc's ``struct mallinfo2``."""

    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                     "uordblks", "fordblks", "keepcost")
    ]  # fmt: skip


LIBC.mallinfo2.restype = MallInfo2

app = Flask(__name__)
app.config.from_prefixed_env()


def answer(ws: Any, command: dict[str, Any]) -> tuple[str, list[tuple[Any, str]]]:
    """What to send back, and the broadcasts to make first: ``(message, room)`` each."""
    if "join" in command:
        return "J" + command["join"], []
    if "trim" in command:
        LIBC.malloc_trim(0)
        return "T", []
    if "census" in command:
        return "C" + json.dumps(census(command.get("baseline", False))), []
    if "broadcast" in command:
        payload = command["broadcast"]
        message = payload.encode() if command.get("binary") else payload
        return f"A{command['seq']}", [(message, command["room"])]
    tag, size = command["tag"], command["size"]
    flood = [(f"F{tag}:{i}:" + "x" * size, command["room"]) for i in range(command["flood"])]
    return f"A{tag}", flood


def census(baseline: bool) -> dict[str, Any]:
    """Python's figures in this worker (see the module's docstring)."""
    gc.collect()
    figures: dict[str, Any] = {
        "blocks": sys.getallocatedblocks(),
        "objects": len(gc.get_objects()),
        "threads": threading.active_count(),
    }
    info = LIBC.mallinfo2()
    figures["malloc_used"] = info.uordblks + info.hblkhd
    figures["malloc_free"] = info.fordblks
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        figures["traced"] = tracemalloc.get_traced_memory()[0]
        if baseline or not BASELINE:
            BASELINE[:] = [snapshot]
        else:
            top = snapshot.compare_to(BASELINE[0], "lineno")[:15]
            figures["top"] = [str(stat) for stat in top]
    return figures


def hello(ws: Any) -> str:
    return json.dumps({"id": ws.id, "pid": os.getpid()})


if FLAVOUR == "asyncio":
    from flask_uwsgi_websocket import AsyncioWebSocket

    websocket: Any = AsyncioWebSocket(app, **OPTIONS)

    @websocket.route("/soak")
    @websocket.route("/soak-slow", max_send_buffer=SLOW_BUFFER)
    @websocket.route("/soak-big", max_send_buffer=BIG_BUFFER)
    async def soak(ws: Any) -> None:
        """Echo, and run the commands."""
        await ws.send(hello(ws))
        async for message in ws:
            if isinstance(message, str) and message.startswith("!"):
                command = json.loads(message[1:])
                if "join" in command:
                    await ws.join(command["join"])
                reply, broadcasts = answer(ws, command)
                for broadcast in broadcasts:
                    await websocket.broadcast(*broadcast)
                await ws.send(reply)
            else:
                await ws.send(message)

else:
    if FLAVOUR == "gevent":
        from flask_uwsgi_websocket import GeventWebSocket

        websocket = GeventWebSocket(app, **OPTIONS)
    else:
        from flask_uwsgi_websocket import WebSocket

        websocket = WebSocket(app, **OPTIONS)

    @websocket.route("/soak")
    @websocket.route("/soak-slow", max_send_buffer=SLOW_BUFFER)
    @websocket.route("/soak-big", max_send_buffer=BIG_BUFFER)
    def soak(ws: Any) -> None:
        """Echo, and run the commands."""
        ws.send(hello(ws))
        for message in ws:
            if isinstance(message, str) and message.startswith("!"):
                command = json.loads(message[1:])
                if "join" in command:
                    ws.join(command["join"])
                reply, broadcasts = answer(ws, command)
                for broadcast in broadcasts:
                    websocket.broadcast(*broadcast)
                ws.send(reply)
            else:
                ws.send(message)
