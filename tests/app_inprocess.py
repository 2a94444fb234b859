"""The Flask-integration app of ``tests/app.py`` and ``tests/app_asyncio.py``, made in the
test process for the in-process test client (``websocket.test_client()``), without uWSGI.

:func:`make_app` makes a new app of one flavour: the HTTP side, hooks, Flask-Login and
Flask-SQLAlchemy of :func:`~tests.app_common.make_flask_app`, the Flask-integration
routes of :func:`~tests.app_common.add_flask_routes` (or their coroutines), and ``/echo``
and ``/info``. Nothing here reads the environment, so one process holds apps of every
flavour; what they record is in :func:`~tests.app_common.app_events`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable

from flask import Flask

from flask_uwsgi_websocket import (
    AsyncioWebSocket,
    AsyncioWebSocketClient,
    GeventWebSocket,
    WebSocket,
    WebSocketClient,
)
from flask_uwsgi_websocket.flask.extension import WebSocketExtension

from .app_common import add_async_flask_routes, add_flask_routes, make_flask_app

FLAVOURS = ("plain", "gevent", "asyncio")


def spawn_thread(function: Callable[[], None]) -> None:
    threading.Thread(target=function, daemon=True).start()


def spawn_greenlet(function: Callable[[], None]) -> None:
    import gevent

    gevent.spawn(function)


def make_app(flavour: str) -> tuple[Flask, WebSocketExtension]:
    """A new app with its extension of ``flavour`` (``plain``, ``gevent``, ``asyncio``)."""
    app = make_flask_app(f"tests.app_inprocess.{flavour}")
    if flavour == "asyncio":
        asyncio_websocket = AsyncioWebSocket(app)
        _async_routes(asyncio_websocket)
        add_async_flask_routes(app, asyncio_websocket)
        return app, asyncio_websocket
    websocket: WebSocketExtension
    if flavour == "plain":
        websocket = WebSocket(app)
        spawn = spawn_thread
    elif flavour == "gevent":
        websocket = GeventWebSocket(app)
        spawn = spawn_greenlet
    else:
        raise ValueError(f"unknown flavour {flavour!r}")
    _sync_routes(websocket)
    add_flask_routes(app, websocket, spawn)
    return app, websocket


def _sync_routes(websocket: WebSocketExtension) -> None:
    @websocket.route("/echo")
    def echo(ws: WebSocketClient) -> None:
        for message in ws:
            ws.send(message)

    @websocket.route("/info")
    def info(ws: WebSocketClient) -> None:
        ws.send(json.dumps({"id": ws.id, "class": type(ws).__name__}))


def _async_routes(websocket: AsyncioWebSocket) -> None:
    @websocket.route("/echo")
    async def echo(ws: AsyncioWebSocketClient) -> None:
        async for message in ws:
            await ws.send(message)

    @websocket.route("/info")
    async def info(ws: AsyncioWebSocketClient) -> None:
        await ws.send(json.dumps({"id": ws.id, "class": type(ws).__name__}))
