"""Callback handlers (``callbacks.py``): a class whose methods the connection's events call,
in every flavour, with the in-process test client."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask, g, request
from websockets.sync.client import connect

from flask_uwsgi_websocket import (
    AsyncioWebSocket,
    GeventWebSocket,
    WebSocket,
    WebSocketBlueprint,
    WebSocketHandler,
)
from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.testing import TestClient

from .helpers import ROOT, SOON, UwsgiServer, closed, wait_for

pytestmark = pytest.mark.timeout(60)


def make_app(flavour: str) -> tuple[Flask, WebSocketExtension]:
    """``/counter/<name>`` counts the messages of each connection; what its callbacks saw
    goes to ``app.config["EVENTS"]``. ``/bp/boom`` (a blueprint's) raises on a message."""
    app = Flask(f"tests.test_callbacks.{flavour}")
    events: list[Any] = []
    app.config["EVENTS"] = events

    @app.before_request
    def before() -> None:
        g.seen = request.path

    if flavour == "asyncio":
        websocket: WebSocketExtension = AsyncioWebSocket(app)

        @websocket.route("/counter/<name>")
        class Counter(WebSocketHandler):
            async def on_open(self, ws: Any, name: str) -> None:
                self.name, self.count = name, 0
                await ws.send(f"hello {name} ({g.seen})")

            async def on_message(self, ws: Any, message: str | bytes) -> None:
                self.count += 1
                await ws.send(f"{self.count}: {message!r}")

            def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
                events.append(("close", self.name, self.count, code, reason))

    else:
        websocket = GeventWebSocket(app) if flavour == "gevent" else WebSocket(app)

        @websocket.route("/counter/<name>")
        class Counter(WebSocketHandler):  # type: ignore[no-redef]
            def on_open(self, ws: Any, name: str) -> None:
                self.name, self.count = name, 0
                ws.send(f"hello {name} ({g.seen})")

            def on_message(self, ws: Any, message: str | bytes) -> None:
                self.count += 1
                ws.send(f"{self.count}: {message!r}")

            def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
                events.append(("close", self.name, self.count, code, reason))

    blueprint = WebSocketBlueprint("bp", __name__, url_prefix="/bp")

    @blueprint.route("/boom")
    class Boom:  # no base class needed: the methods are what counts
        def on_message(self, ws: Any, message: Any) -> None:
            raise RuntimeError("boom")

        def on_close(self, ws: Any, code: int | None, reason: str | None) -> None:
            events.append(("boom closed", code))

    app.register_blueprint(blueprint)
    return app, websocket


def test_callbacks_in_order_with_url_variables_and_the_request(
    app: Flask, client: TestClient
) -> None:
    with client.connect("/counter/ann") as ws:
        assert ws.receive(timeout=SOON) == "hello ann (/counter/ann)"
        ws.send("a")
        ws.send(b"b")
        assert ws.receive(timeout=SOON) == "1: 'a'"
        assert ws.receive(timeout=SOON) == "2: b'b'"
        ws.close(4000, "bye")
    assert app.config["EVENTS"] == [("close", "ann", 2, 4000, "bye")]


def test_one_instance_per_connection(app: Flask, client: TestClient) -> None:
    with client.connect("/counter/a") as first, client.connect("/counter/b") as second:
        for ws in (first, second):
            ws.receive(timeout=SOON)
        first.send("x")
        assert first.receive(timeout=SOON) == "1: 'x'"
        second.send("y")
        assert second.receive(timeout=SOON) == "1: 'y'"
    assert sorted(app.config["EVENTS"]) == [
        ("close", "a", 1, 1000, ""),
        ("close", "b", 1, 1000, ""),
    ]


def test_a_callback_that_raises_closes_with_1011_and_on_close_runs(
    app: Flask, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with client.connect("/bp/boom") as ws:
        ws.send("go")
        assert closed(ws).code == 1011
    assert app.config["EVENTS"] == [("boom closed", None)]
    assert "RuntimeError: boom" in caplog.text


def test_classes_without_callbacks_or_with_async_ones_outside_asyncio_are_refused() -> None:
    app = Flask(__name__)
    websocket = WebSocket(app)
    with pytest.raises(TypeError, match="none of on_open, on_message, on_close"):

        @websocket.route("/nothing")
        class Nothing:
            pass

    with pytest.raises(TypeError, match="on_message is a coroutine function"):

        @websocket.route("/async")
        class Async(WebSocketHandler):
            async def on_message(self, ws: Any, message: Any) -> None:
                pass


def test_the_example_under_uwsgi() -> None:
    """``examples/callbacks.py`` as its docstring runs it, behind the ``--http`` router."""
    example = ["--wsgi-file", str(ROOT / "examples" / "callbacks.py"), "--callable", "app"]
    with UwsgiServer([*example, "--gevent", "100"]) as server:
        with connect(f"{server.url}/count/ann", open_timeout=10) as ws:
            assert ws.recv(timeout=SOON) == "hello ann"
            ws.send("a")
            ws.send("b")
            assert [ws.recv(timeout=SOON) for _ in range(2)] == ["1: a", "2: b"]
        wait_for(lambda: "ann sent 2 message(s), closed with 1000" in server.output())
