"""Callback handlers of the gevent flavour under uWSGI, for ``test_detached.py``: what their
callbacks and the Flask lifecycle saw goes to ``GET /events``."""

from __future__ import annotations

import os
from typing import Any

import gevent
import greenlet
from flask import Flask, g, jsonify, request
from gevent import get_hub

from flask_uwsgi_websocket import GeventWebSocket, WebSocketHandler
from flask_uwsgi_websocket.gevent import runners_of

app = Flask(__name__)
websocket = GeventWebSocket(app)
events: list[Any] = []


@app.before_request
def before() -> None:
    g.path = request.path


@app.teardown_request
def teardown(error: BaseException | None) -> None:
    if request.path != "/events":
        events.append(["teardown", request.path, repr(error) if error else None])


@app.route("/events")
def recorded() -> Any:
    return jsonify(events)


@websocket.route("/echo/<name>", ping_interval=None)
class Echo(WebSocketHandler):
    """Echoes; ``"close <code>"`` closes with that code, ``"sleep <s> <m>"`` sleeps in
    on_message then answers ``m`` (messages must keep their order), ``"join <room>"``
    joins, ``"tell <room> <m>"`` broadcasts ``m`` to the room, ``"boom"`` raises, ``"exit"``
    raises ``GreenletExit``,
    ``"runner"`` answers its greenlet's id, how many runners are parked and whether they
    all hold no context,
    ``"where"`` answers the request's path, ``g``, the worker's pid, whether on_message
    runs in on_open's greenlet (the request's: not detached), the request's ``Upgrade``
    header and the environ's path."""

    def on_open(self, ws: Any, name: str) -> None:
        self.name = name
        self.opened_in = greenlet.getcurrent()
        ws.send(f"hello {name}")

    def on_message(self, ws: Any, message: str | bytes) -> None:
        words = message.split() if isinstance(message, str) else []
        if words[:1] == ["close"]:
            ws.close(int(words[1]))
        elif words[:1] == ["sleep"]:
            gevent.sleep(float(words[1]))
            ws.send(words[2])
        elif words[:1] == ["join"]:
            ws.join(words[1])
            ws.send(f"joined {words[1]}")
        elif words[:1] == ["tell"]:
            websocket.broadcast(words[2], room=words[1])
        elif words[:1] == ["boom"]:
            raise RuntimeError("boom")
        elif words[:1] == ["exit"]:
            raise greenlet.GreenletExit  # as when something kills the runner
        elif words[:1] == ["runner"]:
            idle = runners_of(get_hub()).idle
            bare = all(runner.gr_context is None for runner in idle)
            ws.send(f"{id(greenlet.getcurrent())} {len(idle)} {bare}")
        elif words[:1] == ["where"]:
            held = greenlet.getcurrent() is self.opened_in
            upgrade, path = request.headers["Upgrade"], ws.environ["PATH_INFO"]
            ws.send(f"{request.path} {g.path} {os.getpid()} {held} {upgrade} {path}")
        else:
            ws.send(message)

    def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
        events.append(["close", self.name, code, reason, request.path])


@websocket.route("/quiet", ping_interval=0.5, ping_timeout=0.5)
class Quiet(WebSocketHandler):
    """Only its keepalive: a client that answers no ping is closed."""

    def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
        events.append(["close", "quiet", code, reason, request.path])


@websocket.route("/slow-open")
class SlowOpen(WebSocketHandler):
    """``on_open`` sleeps, so that messages come meanwhile; then echoes."""

    def on_open(self, ws: Any) -> None:
        gevent.sleep(0.3)

    def on_message(self, ws: Any, message: str | bytes) -> None:
        ws.send(message)


@websocket.route("/bad-open")
class BadOpen(WebSocketHandler):
    """``on_open`` raises: the connection ends before it could detach."""

    def on_open(self, ws: Any) -> None:
        raise ValueError("no")

    def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
        events.append(["close", "bad-open", code, reason, request.path])


@websocket.route("/small", max_send_buffer=65536)
class Small(WebSocketHandler):
    """A member of room ``flood`` that may hold 64 KiB waiting to be sent."""

    def on_open(self, ws: Any) -> None:
        ws.join("flood")
        ws.send("joined")

    def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
        events.append(["close", "small", code, reason, request.path])
