"""Metrics (``metrics.py``): this worker's figures per route from ``websocket.metrics()``,
in every flavour, and uWSGI's metrics summed over workers in its stats server."""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from websockets.sync.client import connect

from flask_uwsgi_websocket import AsyncioWebSocket, GeventWebSocket, WebSocket
from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.live_server import free_port
from flask_uwsgi_websocket.metrics import PUSH_EVERY, UWSGI_METRICS, ini_lines, uwsgi_options
from flask_uwsgi_websocket.testing import TestClient

from .helpers import FLAVOUR_ARGS, SOON, UwsgiServer, wait_for

pytestmark = pytest.mark.timeout(60)


def make_app(flavour: str) -> tuple[Flask, WebSocketExtension]:
    """``/counted/<name>`` echoes; the figures are this process's, shared by every app."""
    app = Flask(f"tests.test_metrics.{flavour}")
    if flavour == "asyncio":
        aws = AsyncioWebSocket(app)

        @aws.route("/counted/<name>")
        async def counted_async(ws: Any, name: str) -> None:
            async for message in ws:
                await ws.send(message)

        return app, aws
    websocket: WebSocketExtension = GeventWebSocket(app) if flavour == "gevent" else WebSocket(app)

    @websocket.route("/counted/<name>")
    def counted(ws: Any, name: str) -> None:
        for message in ws:
            ws.send(message)

    return app, websocket


def route(websocket: WebSocketExtension) -> dict[str, Any]:
    figures: dict[str, Any] = websocket.metrics()["routes"].get("/counted/<name>", {})
    return figures


def change(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    changed = {}
    for key, value in after.items():
        if isinstance(value, dict):
            old = before.get(key, {})
            value = {k: v - old.get(k, 0) for k, v in value.items() if v != old.get(k, 0)}
        else:
            value -= before.get(key, 0)
        changed[key] = value
    return changed


def test_figures_per_route(websocket: WebSocketExtension, client: TestClient) -> None:
    before = route(websocket)
    with client.connect("/counted/a") as ws:
        ws.send("héllo")  # 6 bytes
        ws.send(b"\x00" * 100)
        assert ws.receive(timeout=SOON) == "héllo"
        assert ws.receive(timeout=SOON) == b"\x00" * 100
        live = change(before, route(websocket))
        assert live["open"] == 1 and live["opened"] == 1
        assert live["messages_in"] == live["messages_out"] == 2
        assert live["bytes_in"] == live["bytes_out"] == 106
        ws.close(4000)
    after = change(before, route(websocket))
    assert after == {
        "open": 0, "opened": 1, "closed": {4000: 1}, "messages_in": 2, "bytes_in": 106,
        "messages_out": 2, "bytes_out": 106, "slow_consumers": 0,
    }  # fmt: skip
    snapshot = websocket.metrics()
    assert snapshot["total"]["opened"] >= 1 and snapshot["worker"] == 0


def stats(address: tuple[str, int]) -> dict[str, Any]:
    """uWSGI's stats server's JSON."""
    with socket.create_connection(address, timeout=5) as sock:
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    found: dict[str, Any] = json.loads(data)
    return found


def test_uwsgi_metrics_summed_over_workers() -> None:
    """Two gevent workers, four clients spread over both: uWSGI's metrics add them up."""
    stats_address = ("127.0.0.1", free_port())
    declare = [arg for value in uwsgi_options() for arg in ("--metric", value)]
    extra = [
        "--processes",
        "2",
        "--enable-metrics",
        *declare,
        "--stats",
        ":".join(map(str, stats_address)),
    ]
    # Three cores per worker: a worker whose cores all hold a connection stops accepting
    # (uWSGI's gevent loop stops its watcher), so the fourth connection at the latest goes
    # to the other worker. The kernel alone may hand every connection to one of them.
    app = ["--module", "tests.app_shutdown:app", "--gevent", "3"]
    with UwsgiServer(app, extra, mode="http", env={"TEST_FLAVOUR": "gevent"}) as server:
        clients, pids = [], set()
        with contextlib.ExitStack() as stack:
            while len(pids) < 2 or len(clients) < 4:
                assert len(clients) < 6, "a worker accepted past its three cores"
                ws = stack.enter_context(connect(f"{server.url}/hold", open_timeout=10))
                clients.append(ws)
                pids.add(ws.recv(timeout=SOON))  # one message out each
            n = len(clients)

            def metric(name: str) -> int:
                value: int = stats(stats_address)["metrics"][name]["value"]
                return value

            # Pushed as connections open, then with their traffic once a second at most.
            assert metric("websocket.open") == metric("websocket.opened") == n
            for ws in clients:
                ws.send("1234")
            time.sleep(PUSH_EVERY + 0.1)
            for ws in clients:
                ws.send("5")
            # A worker pushes as its first handler takes a message after the second:
            # what its other connections read in the meantime comes with a later push.
            wait_for(lambda: metric("websocket.messages_in") >= n, timeout=SOON)
        wait_for(lambda: metric("websocket.closed.1000") == n, timeout=SOON)
        assert metric("websocket.open") == 0 and metric("websocket.closed") == n
        assert metric("websocket.messages_in") == 2 * n and metric("websocket.bytes_in") == 5 * n
        assert metric("websocket.messages_out") == n
        assert set(UWSGI_METRICS) <= set(stats(stats_address)["metrics"])


def test_the_ini_lines_declare_every_metric(tmp_path: Path) -> None:
    """``python -m flask_uwsgi_websocket metrics``, as README gives it, in a real uWSGI ini."""
    lines = subprocess.run(
        [sys.executable, "-m", "flask_uwsgi_websocket", "metrics"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert lines.splitlines() == ini_lines() and not lines.startswith("Traceback")
    ini = tmp_path / "uwsgi.ini"
    stats_address = ("127.0.0.1", free_port())
    ini.write_text(f"[uwsgi]\n{lines}\nstats = {stats_address[0]}:{stats_address[1]}\n")
    app = ["--module", "tests.app_shutdown:app", *FLAVOUR_ARGS["gevent"], "--ini", str(ini)]
    with UwsgiServer(app, mode="http-socket", env={"TEST_FLAVOUR": "gevent"}):
        assert set(UWSGI_METRICS) <= set(stats(stats_address)["metrics"])
