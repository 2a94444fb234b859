"""The fan-out benchmark's app, gevent flavour (see bench/fanout.py).

    uwsgi --master --workers 1 --gevent 5100 --http-socket 127.0.0.1:5000 --listen 4096 \
          --enable-threads --wsgi-file bench/fanout_app.py --callable app

A client of ``/fanout`` joins the room ``fanout`` and then only waits for messages.
``GET /broadcast?size=S&seq=N`` makes one broadcast to the room: ``S`` bytes, binary,
the first 8 of them ``N`` (big-endian); ``GET /naive?...`` sends the same message to
every client of ``/fanout`` with ``ws.send``, one call each, for comparison.
Both answer ``{"start": t, "end": t}``, their ``time.monotonic()`` around the call
(``CLOCK_MONOTONIC``, the clock the client's ``time.monotonic()`` reads too).
``GET /timings`` gives, per sequence number, the monotonic times at which this worker
began and finished delivering it (writing the frame to every recipient's socket or
queueing it there); ``GET /count`` the connections in the room; ``GET /redis`` this
worker's pid and the pub/sub messages its Redis subscribers have received, by type,
counted where redis-py parses them. The broker comes from ``FLASK_WEBSOCKET_BROKER_URL``
(in-process if unset).
"""

from __future__ import annotations

import json
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import redis.client
from flask import Flask, request

from flask_uwsgi_websocket import ConnectionClosed, GeventWebSocket
from flask_uwsgi_websocket.broadcast.message import Broadcast
from flask_uwsgi_websocket.core.framing import frame_header

ROOM = "fanout"
_seq = struct.Struct("!Q")

app = Flask(__name__)
app.config.from_prefixed_env()
websocket = GeventWebSocket(app)

#: The open connections of /fanout, for the naive loop.
members: set[Any] = set()
#: sequence number -> (start, end) of its delivery in this worker (monotonic seconds).
timings: dict[int, tuple[float, float]] = {}


def _timed_delivery(deliver: Callable[[Broadcast], None]) -> Callable[[Broadcast], None]:
    """Wrap ``Rooms._deliver_now`` to note when each broadcast's delivery begins and ends."""

    def timed(broadcast: Broadcast) -> None:
        start = time.monotonic()
        deliver(broadcast)
        end = time.monotonic()
        if len(broadcast.payload) >= _seq.size:
            timings[_seq.unpack_from(broadcast.payload)[0]] = (start, end)

    return timed


# Instrumentation only: delivery happens where it would anyway (in the hub), one call later.
_rooms: Any = websocket.broker(app).rooms
_rooms._deliver_now = _timed_delivery(_rooms._deliver_now)

#: Pub/sub messages this process's Redis subscribers received, by type.
received: Counter[str] = Counter()
_handle_message = redis.client.PubSub.handle_message


def _counted(self: redis.client.PubSub, response: Any, *args: Any, **kwargs: Any) -> Any:
    """``PubSub.handle_message``, counting each message by its type first."""
    if isinstance(response, list) and response and isinstance(response[0], bytes):
        received[response[0].decode()] += 1
    return _handle_message(self, response, *args, **kwargs)


redis.client.PubSub.handle_message = _counted  # type: ignore[method-assign]


@websocket.route("/fanout")
def fanout(ws: Any) -> None:
    """Join the room, then wait for messages until the client leaves."""
    ws.join(ROOM)
    members.add(ws)
    try:
        for _ in ws:
            pass
    finally:
        members.discard(ws)


def _payload() -> tuple[int, bytes]:
    size = int(request.args["size"])
    seq = int(request.args["seq"])
    return seq, _seq.pack(seq) + bytes(max(size - _seq.size, 0))


@app.route("/broadcast")
def broadcast() -> str:
    """One ``websocket.broadcast`` to the room."""
    _, payload = _payload()
    start = time.monotonic()
    websocket.broadcast(payload, room=ROOM)
    return json.dumps({"start": start, "end": time.monotonic()})


@app.route("/naive")
def naive() -> str:
    """The same message to every member, one ``ws.send`` each (framed once per member)."""
    seq, payload = _payload()
    start = time.monotonic()
    for ws in list(members):
        try:
            ws.send(payload)
        except ConnectionClosed:
            pass
    end = time.monotonic()
    timings[seq] = (start, end)
    return json.dumps({"start": start, "end": end})


@app.route("/timings")
def get_timings() -> str:
    """Every delivery's ``[start, end]``, by sequence number."""
    return json.dumps({str(seq): list(times) for seq, times in timings.items()})


@app.route("/count")
def count() -> str:
    """How many connections of this worker are in the room."""
    return str(websocket.broker(app).rooms.count(ROOM))


@app.route("/redis")
def redis_messages() -> str:
    """This worker's pid and the pub/sub messages it received, by type."""
    return json.dumps({"pid": os.getpid(), "received": received})


@app.route("/raw")
def raw() -> str:
    """The floor: the frame written to every member's socket with ``os.write``, nothing else.

    It bypasses the connections' output buffers, so it is only right for idle connections
    whose buffers are empty (as in the benchmark: one message at a time, small ones).
    """
    seq, payload = _payload()
    frame = frame_header(0x2, len(payload)) + payload
    start = time.monotonic()
    for ws in list(members):
        os.write(ws.fd, frame)
    end = time.monotonic()
    timings[seq] = (start, end)
    return json.dumps({"start": start, "end": end})
