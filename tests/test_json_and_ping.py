"""``send_json``/``receive_json``, ``ping()`` to wait on, and ``latency``, in every flavour,
with the in-process test client (the flavours' own clients over a socket pair)."""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from flask import Flask

from flask_uwsgi_websocket import AsyncioWebSocket, ConnectionClosed, GeventWebSocket, WebSocket
from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.testing import TestClient

from .helpers import SOON

pytestmark = pytest.mark.timeout(60)

DAY = datetime.date(2026, 12, 1)


def make_app(flavour: str) -> tuple[Flask, WebSocketExtension]:
    """``/json`` answers each JSON message with what it got and a date (which only Flask's
    JSON provider writes); ``/ping`` pings, waits for the pong and reports the latencies."""
    app = Flask(f"tests.test_json_and_ping.{flavour}")
    if flavour == "asyncio":
        aws = AsyncioWebSocket(app)

        @aws.route("/json")
        async def json_echo_async(ws: Any) -> None:
            while True:
                got = await ws.receive_json()
                await ws.send_json({"got": got, "day": DAY})

        @aws.route("/ping")
        async def ping_async(ws: Any) -> None:
            pong = await ws.ping(b"abc")
            latency = await asyncio.wait_for(pong, SOON)
            await ws.send_json({"latency": latency, "ws": ws.latency, "none": None})
            await ws.receive()

        return app, aws
    ws_ext: WebSocketExtension = GeventWebSocket(app) if flavour == "gevent" else WebSocket(app)

    @ws_ext.route("/json")
    def json_echo(ws: Any) -> None:
        while True:
            got = ws.receive_json()
            ws.send_json({"got": got, "day": DAY})

    @ws_ext.route("/ping")
    def ping(ws: Any) -> None:
        pong = ws.ping(b"abc")
        answered = pong.wait(SOON)
        ws.send_json({"latency": pong.latency, "ws": ws.latency, "none": answered and None})
        ws.receive()

    return app, ws_ext


def test_json_both_ways(client: TestClient) -> None:
    with client.connect("/json") as ws:
        ws.send_json({"a": [1, "é"]})
        assert ws.receive_json(timeout=SOON) == {
            "got": {"a": [1, "é"]},
            "day": "Tue, 01 Dec 2026 00:00:00 GMT",
        }
        ws.send(b'{"binary": true}')  # JSON in a binary message is read too
        assert ws.receive_json(timeout=SOON)["got"] == {"binary": True}
        ws.send("not json")
        with pytest.raises(ConnectionClosed) as closed:
            ws.receive(timeout=SOON)
    assert closed.value.code == 1011  # the handler's ValueError


def test_ping_returns_what_to_wait_on_and_latency(client: TestClient) -> None:
    with client.connect("/ping") as ws:
        report = ws.receive_json(timeout=SOON)  # reading answers the ping
    assert 0 < report["latency"] < SOON
    assert report["ws"] == report["latency"]
    assert report["none"] is None
