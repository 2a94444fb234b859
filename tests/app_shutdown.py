"""The app of ``test_shutdown``, in the flavour ``TEST_FLAVOUR`` names.

Each handler first sends its worker's pid. ``/hold`` then waits on its connection,
``/elsewhere`` outside it (a sleep); ``/callbacks`` is a callback handler (plain and
gevent flavours). Every request's teardown prints one line,
``teardown <path> <pid>``, to the server's log, where the test counts them.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from flask import Flask, request

from flask_uwsgi_websocket import AsyncioWebSocket, GeventWebSocket, WebSocket, WebSocketHandler
from flask_uwsgi_websocket.flask.extension import WebSocketExtension

FLAVOUR = os.environ["TEST_FLAVOUR"]
app = Flask(__name__)


@app.teardown_request
def teardown(error: BaseException | None) -> None:
    print(f"teardown {request.path} {os.getpid()}", flush=True)


@app.route("/pid")
def pid() -> str:
    return str(os.getpid())


if FLAVOUR == "asyncio":
    aws = AsyncioWebSocket(app)

    @aws.route("/hold")
    async def hold(ws: Any) -> None:
        await ws.send(str(os.getpid()))
        while True:
            await ws.receive()

    @aws.route("/elsewhere")
    async def elsewhere(ws: Any) -> None:
        await ws.send(str(os.getpid()))
        await asyncio.sleep(3600)

else:
    if FLAVOUR == "gevent":
        import gevent

        ws_ext: WebSocketExtension = GeventWebSocket(app)
        sleep = gevent.sleep
    else:
        ws_ext = WebSocket(app)
        sleep = time.sleep

    @ws_ext.route("/hold")
    def hold(ws: Any) -> None:
        ws.send(str(os.getpid()))
        while True:
            ws.receive()

    @ws_ext.route("/elsewhere")
    def elsewhere(ws: Any) -> None:
        ws.send(str(os.getpid()))
        sleep(3600)

    @ws_ext.route("/callbacks")
    class Callbacks(WebSocketHandler):
        """A callback handler: in the gevent flavour its connection outlives its request.
        ``"sleep"`` makes ``on_message`` answer ``"sleeping"`` and sleep (the worker is
        told to go meanwhile)."""

        def on_open(self, ws: Any) -> None:
            ws.send(str(os.getpid()))

        def on_message(self, ws: Any, message: Any) -> None:
            if message == "sleep":
                ws.send("sleeping")
                sleep(3600)

        def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
            print(f"on_close {code} {os.getpid()}", flush=True)
