"""Testing an app's WebSocket handlers: the example of README.rst's "Testing" chapter.

    .venv/bin/python -m pytest examples/test_echo_gevent.py

The package's pytest plugin gives two fixtures that use the ``app`` fixture below:
``websocket_client`` (in process, no uWSGI) and ``websocket_live_server`` (the app
under real uWSGI on a free port, with ``@pytest.mark.uwsgi(...)``'s options).
"""

import pytest
from echo_gevent import app as echo_app
from flask import Flask
from websockets.sync.client import connect

from flask_uwsgi_websocket import ConnectionClosed


@pytest.fixture
def app() -> Flask:
    return echo_app


def test_echo(websocket_client):  # type: ignore[no-untyped-def]
    with websocket_client.connect("/echo") as ws:
        ws.send("hello")
        assert ws.receive(timeout=5) == "hello"
        ws.send(b"\x00\xff")
        assert ws.receive(timeout=5) == b"\x00\xff"
    assert ws.close_code == 1000


def test_the_handler_ends_when_the_client_leaves(websocket_client):  # type: ignore[no-untyped-def]
    ws = websocket_client.connect("/echo")
    ws.close(4000, "bye")
    with pytest.raises(ConnectionClosed) as closed:
        ws.receive(timeout=5)
    assert closed.value.code == 4000  # the server echoes the client's code in its close frame


@pytest.mark.uwsgi(gevent=10)
def test_echo_under_uwsgi(websocket_live_server):  # type: ignore[no-untyped-def]
    with connect(f"{websocket_live_server.url}/echo") as ws:
        ws.send("hello")
        assert ws.recv(timeout=5) == "hello"
