"""The Flask extension: registration, options, factory pattern and misuse errors."""

from __future__ import annotations

import pytest
from flask import Flask
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from flask_uwsgi_websocket import GeventWebSocket, Options, WebSocket, WebSocketMiddleware

from .helpers import AppServer


def test_init_app_factory_pattern_and_config() -> None:
    websocket = GeventWebSocket(ping_interval=5)

    @websocket.route("/ws/<int:n>", max_message_size=10, endpoint="numbered")
    def handler(ws: object, n: int) -> None: ...

    apps = [Flask("one"), Flask("two")]
    apps[1].config["WEBSOCKET_PING_INTERVAL"] = 7
    apps[1].config["WEBSOCKET_CLOSE_TIMEOUT"] = 1.5
    for app in apps:
        websocket.init_app(app)
    for app, interval in zip(apps, (5, 7), strict=True):
        assert app.extensions["uwsgi_websocket"] is websocket
        assert isinstance(app.wsgi_app, WebSocketMiddleware)
        assert app.wsgi_app.options.ping_interval == interval
    assert apps[1].wsgi_app.options.close_timeout == 1.5  # type: ignore[attr-defined]
    assert websocket.view_functions["numbered"] is handler
    for app in apps:  # each app has the rule, with websocket=True and the route's options
        (rule,) = app.url_map.iter_rules("numbered")
        assert rule.rule == "/ws/<int:n>" and rule.websocket
        assert rule.websocket_options == {"max_message_size": 10}  # type: ignore[attr-defined]


def test_options_defaults_and_validation() -> None:
    options = Options()
    assert (options.ping_interval, options.ping_timeout) == (25.0, 20.0)
    assert options.max_message_size == 1 << 20 and options.receive_timeout is None
    with pytest.raises(TypeError, match="unknown WebSocket option"):
        WebSocket(pinginterval=3)
    websocket = WebSocket()
    with pytest.raises(TypeError, match="unknown WebSocket option"):
        websocket.route("/x", max_msg_size=3)(lambda ws: None)
    with pytest.warns(DeprecationWarning, match="receive_timeout"):
        assert WebSocket(timeout=5).options.receive_timeout == 5  # the 0.6.1 argument


def test_compression_and_subprotocols_from_config() -> None:
    websocket = WebSocket(subprotocols=["a"])
    app = Flask("config")
    app.config["WEBSOCKET_COMPRESSION"] = None
    app.config["WEBSOCKET_SUBPROTOCOLS"] = ["b", "c"]
    websocket.init_app(app)
    options = app.wsgi_app.options  # type: ignore[attr-defined]
    assert options.compression is None and options.deflate is None
    assert options.subprotocols == ("b", "c")
    app = Flask("bad-config")
    app.config["WEBSOCKET_COMPRESSION"] = {"server_max_window_bits": 20}
    with pytest.raises(ValueError, match="server_max_window_bits"):
        websocket.init_app(app)


def test_coroutine_handlers_are_refused_when_registered() -> None:
    websocket = GeventWebSocket()

    async def handler(ws: object) -> None: ...

    with pytest.raises(TypeError, match="coroutine function"):
        websocket.route("/async")(handler)
    assert not websocket.view_functions


def test_endpoint_clash_is_refused() -> None:
    websocket = WebSocket()
    websocket.add_url_rule("/a", "same", lambda ws: None)
    with pytest.raises(AssertionError, match="already taken"):
        websocket.add_url_rule("/b", "same", lambda ws: None)
    with pytest.raises(TypeError, match="view_func"):
        websocket.add_url_rule("/c")


def test_run_without_app_is_a_clear_error() -> None:
    with pytest.raises(RuntimeError, match="needs an app"):
        WebSocket().run()


def test_config_limit_and_route_override_apply(server: AppServer) -> None:
    # tests/app.py sets WEBSOCKET_MAX_MESSAGE_SIZE = 1_500_000; /small overrides it with 1024.
    with connect(f"{server.url}/echo", max_size=None) as ws:
        ws.send(b"x" * 1_500_000)
        assert len(ws.recv()) == 1_500_000
        ws.send(b"x" * 1_500_001)
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009
