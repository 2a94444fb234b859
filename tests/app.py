"""The app the tests serve with real uWSGI, plain and gevent flavours: a route per behaviour.

``TEST_FLAVOUR`` (``plain`` or ``gevent``) picks the extension; ``app_asyncio.py`` has
the same routes for the asyncio flavour. Handlers record what they see with
:func:`~tests.app_common.record`; tests read it back from ``GET /events``.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any

from flask import request

from flask_uwsgi_websocket import ConnectionClosed, WebSocket, WebSocketClient

from .app_common import TUNED_DEFLATE, add_flask_routes, app, pick_last, pick_unoffered, record

FLAVOUR = os.environ.get("TEST_FLAVOUR", "plain")

websocket: WebSocket
if FLAVOUR == "gevent":
    import gevent

    from flask_uwsgi_websocket import GeventWebSocket

    websocket = GeventWebSocket(app)
    sleep = gevent.sleep

    def spawn(function: Any, *args: Any) -> None:
        gevent.spawn(function, *args)

else:
    websocket = WebSocket(app)
    sleep = time.sleep

    def spawn(function: Any, *args: Any) -> None:
        threading.Thread(target=function, args=args, daemon=True).start()


clients: dict[str, WebSocketClient] = {}


@websocket.route("/echo")
def echo(ws: WebSocketClient) -> None:
    # The 0.6.1 README's loop, verbatim: it ends when receive() raises ConnectionClosed.
    while True:
        msg = ws.receive()
        ws.send(msg)


@websocket.route("/iterate")
def iterate(ws: WebSocketClient) -> None:
    for message in ws:
        ws.send(message)
    record(route="iterate", code=ws.close_code, reason=ws.close_reason)


@websocket.route("/vars/<int:number>/<name>")
def url_variables(ws: WebSocketClient, number: int, name: str) -> None:
    ws.send(json.dumps({"number": number, "name": name, "type": type(number).__name__}))


@websocket.route("/info")
def info(ws: WebSocketClient) -> None:
    ws.send(
        json.dumps(
            {
                "id": ws.id,
                "path": ws.environ["PATH_INFO"],
                "query": request.args.get("q"),
                "connected": ws.connected,
                "subprotocol": ws.subprotocol,
                "class": type(ws).__name__,
            }
        )
    )


@websocket.route("/close/<int:code>")
def close(ws: WebSocketClient, code: int) -> None:
    ws.close(code, "server says bye")
    record(route="close", connected=ws.connected, code=ws.close_code)
    try:
        ws.send("too late")
    except ConnectionClosed as exc:
        record(route="close", send_after_close=exc.code)


@websocket.route("/peer-close")
def peer_close(ws: WebSocketClient) -> None:
    try:
        while True:
            ws.receive()
    except ConnectionClosed as exc:
        record(route="peer-close", code=exc.code, reason=exc.reason, ok=exc.ok,
               close_code=ws.close_code, close_reason=ws.close_reason,
               connected=ws.connected)  # fmt: skip
        raise


@websocket.route("/return")
def returns(ws: WebSocketClient) -> None:
    ws.send("bye")


@websocket.route("/raise")
def raises(ws: WebSocketClient) -> None:
    ws.send("about to fail")
    raise RuntimeError("boom from the handler")


@websocket.route("/stream-echo", max_message_size=2**28)
@websocket.route("/stream-echo-deflate", max_message_size=2**28, compression="deflate")
def stream_echo(ws: WebSocketClient) -> None:
    """Each message back as it streams in, piece by piece: bounded memory at any size."""
    while True:
        ws.send(ws.receive_streaming())


@websocket.route("/small", max_message_size=1024)
@websocket.route("/uncompressed", compression=None)
@websocket.route("/deflate-tuned", compression=TUNED_DEFLATE)
def small(ws: WebSocketClient) -> None:
    for message in ws:
        ws.send(message)


@websocket.route("/subprotocol", subprotocols=["chat.v2", "chat.v1"])
@websocket.route("/subprotocol-pick", subprotocols=pick_last)
@websocket.route("/subprotocol-bad", subprotocols=pick_unoffered)
def subprotocol(ws: WebSocketClient) -> None:
    ws.send(json.dumps(ws.subprotocol))


@websocket.route("/keepalive-busy", ping_interval=0.3, ping_timeout=0.6)
def keepalive_busy(ws: WebSocketClient) -> None:
    """Busy elsewhere for 2.5 s, never receiving; then says so."""
    sleep(2.5)
    ws.send("still here")
    record(route="keepalive-busy", connected=ws.connected)


@websocket.route("/keepalive-echo", ping_interval=0.3, ping_timeout=0.6)
def keepalive_echo(ws: WebSocketClient) -> None:
    try:
        for message in ws:
            ws.send(message)
    finally:
        record(route="keepalive-echo", code=ws.close_code)


@websocket.route("/receive-then-busy")
def receive_then_busy(ws: WebSocketClient) -> None:
    """Echoes one message, then is busy (never receiving) until the file the query names
    exists, 30 s at most, then echoes the two messages that came meanwhile. (The plain
    flavour's handler read the socket itself in receive: the I/O thread must have it back.)"""
    ws.send(ws.receive())
    until = time.monotonic() + 30
    while not os.path.exists(request.args["flag"]) and time.monotonic() < until:
        sleep(0.05)
    ws.send(f"{ws.receive()} {ws.receive()}")


@websocket.route("/push")
def push(ws: WebSocketClient) -> None:
    """Only sends, never receives: pings must be answered all the same."""
    for i in range(30):
        ws.send(f"tick {i}")
        sleep(0.05)


@websocket.route("/ping")
def ping(ws: WebSocketClient) -> None:
    ws.ping(b"abc")
    ws.send(ws.receive())


@websocket.route("/timeout")
def receive_timeout(ws: WebSocketClient) -> None:
    started = time.monotonic()
    message = ws.receive(timeout=0.3)
    ws.send(json.dumps({"message": message, "waited": time.monotonic() - started}))
    ws.send(ws.receive())


@websocket.route("/nonblocking")
def nonblocking(ws: WebSocketClient) -> None:
    nones = 0
    while True:
        message = ws.recv_nb()
        if message is None:
            nones += 1
            sleep(0.01)
            continue
        ws.send(json.dumps({"message": message, "nones": nones > 0}))
        nones = 0


@websocket.route("/relay/<name>")
def relay(ws: WebSocketClient, name: str) -> None:
    """``to NAME text`` sends ``text`` to the client called NAME, from this thread or greenlet."""
    clients[name] = ws
    try:
        for message in ws:
            assert isinstance(message, str)
            _, target, text = message.split(" ", 2)
            clients[target].send(text)
    finally:
        clients.pop(name, None)


@websocket.route("/concurrent-send")
def concurrent_send(ws: WebSocketClient) -> None:
    """Another thread or greenlet sends 200 messages while the handler sends 200."""
    size = int(ws.receive() or 0)

    def other() -> None:
        for i in range(200):
            ws.send("o" * size + f" other {i}")

    spawn(other)
    for i in range(200):
        ws.send("h" * size + f" handler {i}")
    ws.receive()


@websocket.route("/blocked")
def blocked(ws: WebSocketClient) -> None:
    """Blocked elsewhere (a long sleep) when the peer goes away."""
    ws.send("sleeping")
    try:
        sleep(30)
        record(route="blocked", outcome="woke up")
    except ConnectionClosed as exc:
        record(route="blocked", outcome="ConnectionClosed", code=exc.code)
        raise


@websocket.route("/sharedarea")
def sharedarea(ws: WebSocketClient) -> None:
    import uwsgi

    uwsgi.sharedarea_write(0, 0, b"shared text")
    ws.send_from_sharedarea(0, 0)
    ws.send_binary_from_sharedarea(0, 7)


@websocket.route("/send-types")
def send_types(ws: WebSocketClient) -> None:
    ws.send("text")
    ws.send(b"bytes")
    ws.send(bytearray(b"bytearray"))
    ws.send(memoryview(b"memoryview"))
    ws.send_binary(b"send_binary")
    ws.send("binary=True", binary=True)
    try:
        ws.send(42)  # type: ignore[arg-type]
    except TypeError as exc:
        ws.send(f"TypeError: {exc}")


# Flask integration (see app_common): contexts, lifecycle, extensions, blueprints, errors.
add_flask_routes(app, websocket, spawn)
