"""WebSocket routes behave like the Flask routes around them, against real uWSGI in every flavour.

Contexts (request, session, g, current_app, url_for, in spawned threads, greenlets and
tasks), the request lifecycle (before_request refusals, teardown once, signals), Flask-Login
and Flask-SQLAlchemy, the Origin policy, blueprints, error handlers, debug mode.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from flask import Blueprint, Flask, url_for
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from werkzeug.routing import WebsocketMismatch

from flask_uwsgi_websocket import GeventWebSocket, Options, WebSocket, WebSocketBlueprint

from .helpers import AppServer, wait_for


def life_events(server: AppServer, tag: str, count: int | None = None) -> list[dict[str, Any]]:
    """The lifecycle events of requests tagged ``tag``; waits for ``teardown_appcontext``."""

    def done() -> list[dict[str, Any]]:
        found = [e for e in server.events("life") if e["tag"] == tag]
        finished = [e for e in found if e["event"] == "teardown_appcontext"]
        return found if finished else []

    found = wait_for(done)
    return found


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def refused(url: str, **kwargs: Any) -> Any:
    with pytest.raises(InvalidStatus) as info:
        with connect(url, **kwargs):
            pass
    return info.value.response


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


# Contexts.


def test_handler_sees_request_g_app_and_url_for(server: AppServer) -> None:
    tag = new_tag()
    url = f"{server.url}/en/context/7?q=query&tag={tag}"
    headers = {"X-Test": "header value", "Cookie": "flavour=vanilla"}
    with connect(url, additional_headers=headers) as ws:
        seen = json.loads(ws.recv())
    assert seen == {
        "number": 7,
        "view_args": {"number": 7},  # after the url_value_preprocessor popped lang
        "lang": "en",
        "q": "query",
        "header": "header value",
        "cookie": "vanilla",
        "endpoint": "context",
        "rule": "/<lang>/context/<int:number>",
        "app": "tests.app",
        "url": f"ws://{server.address}/fr/context/8?q=x",  # WebSocket URLs are absolute
        "external": f"ws://{server.address}/fr/context/7",
        "http_view": f"http://{server.address}/echo",
        "tag": tag,
    }


def test_spawned_thread_greenlet_or_task_sees_the_request(server: AppServer) -> None:
    with connect(f"{server.url}/spawned?q=spawned") as ws:
        url = f"ws://{server.address}/spawned"
        assert json.loads(ws.recv()) == {"q": "spawned", "url": url}
        ws.send("done")


def login_cookie(server: AppServer, name: str) -> str:
    with urllib.request.urlopen(f"http://{server.address}/login/{name}", timeout=10) as response:
        cookie = response.headers["Set-Cookie"]
    return str(cookie.split(";", 1)[0])


def test_flask_login_current_user_and_session(server: AppServer) -> None:
    cookie = login_cookie(server, "ada")
    with connect(f"{server.url}/whoami", additional_headers={"Cookie": cookie}) as ws:
        assert json.loads(ws.recv()) == {"authenticated": True, "id": "ada", "color": "blue"}
    with connect(f"{server.url}/whoami") as ws:
        assert json.loads(ws.recv()) == {"authenticated": False, "id": None, "color": None}


def test_flask_sqlalchemy_session_is_removed_when_the_connection_ends(server: AppServer) -> None:
    tag = new_tag()
    with connect(f"{server.url}/db/{tag}?tag={tag}") as ws:
        seen = json.loads(ws.recv())
        assert seen["count"] == 1 and seen["registered"]
    life_events(server, tag)  # teardown_appcontext ran
    assert seen["scope"] not in server.http("/db-scopes")


# The request lifecycle.


@pytest.mark.parametrize("how", ["return", "raise", "wait", "handled"])
def test_teardown_runs_once_however_the_connection_ends(server: AppServer, how: str) -> None:
    tag = new_tag()
    with connect(f"{server.url}/life/{how}?tag={tag}") as ws:
        assert ws.recv() == "hi"
        if how == "handled":
            assert ws.recv() == "handled KeyError('missing')"
        if how == "wait":
            ws.close()  # the peer closes
        else:
            with pytest.raises(ClientClosed) as info:
                ws.recv()
    events = life_events(server, tag)
    expected = [
        "request_started",
        "before_request",
        "request_finished",  # with the 101
        "handler",
        "teardown_request",
        "teardown_appcontext",
    ]
    if how == "raise":
        expected.insert(4, "got_request_exception")
    assert names(events) == expected
    assert events[2]["status"] == 101
    error = "RuntimeError('life boom')" if how == "raise" else None
    assert events[-2]["error"] == events[-1]["error"] == error
    if how != "wait":
        code = {"return": 1000, "raise": 1011, "handled": 4001}[how]
        assert info.value.rcvd is not None and info.value.rcvd.code == code
        if how == "handled":
            assert info.value.rcvd.reason == "lookup failed"


@pytest.mark.parametrize(
    ("deny", "status", "body"), [("abort", 401, "Unauthorized"), ("response", 403, "login first")]
)
def test_before_request_refuses_the_upgrade(
    server: AppServer, deny: str, status: int, body: str
) -> None:
    tag = new_tag()
    response = refused(f"{server.url}/life/return?deny={deny}&tag={tag}")
    assert response.status_code == status
    assert body in response.body.decode()
    assert "Upgrade" not in response.headers
    events = life_events(server, tag)
    assert names(events) == [
        "request_started",
        "before_request",
        "request_finished",
        "teardown_request",
        "teardown_appcontext",
    ]


def log_of_a_failing_handler(server: AppServer) -> str:
    """Open ``/life/raise``, whose handler says "hi" then raises; return the server's log."""
    with connect(f"{server.url}/life/raise") as ws:
        assert ws.recv() == "hi"
        with pytest.raises(ClientClosed):
            ws.recv()
    log: str = wait_for(lambda: "life boom" in server.output() and server.output())
    return log


def test_handler_error_is_logged_with_its_route(server: AppServer) -> None:
    log = log_of_a_failing_handler(server)
    assert "Exception in WebSocket handler lifecycle (route /life/<how>) for /life/raise" in log
    assert "Traceback (most recent call last)" in log


def test_handled_error_is_not_logged(server: AppServer) -> None:
    with connect(f"{server.url}/life/handled") as ws:
        assert ws.recv() == "hi"
        assert ws.recv() == "handled KeyError('missing')"
    with connect(f"{server.url}/echo") as ws:  # the log of the first connection is written
        ws.send("x")
        assert ws.recv() == "x"
    assert "missing" not in server.output()


# The Origin policy.


def test_origin_policy(server: AppServer) -> None:
    host = server.address
    for origin in (None, f"http://{host}", f"https://{host}", "https://trusted.example"):
        with connect(f"{server.url}/echo", origin=origin) as ws:  # type: ignore[arg-type]
            ws.send("in")
            assert ws.recv() == "in"
    for origin in ("https://evil.example", "null", f"http://{host}.evil.example"):
        response = refused(f"{server.url}/echo", origin=origin)  # type: ignore[arg-type]
        assert response.status_code == 403
        assert response.body.decode().count("\n") == 1
        assert "not allowed" in response.body.decode()
    # Per route: "*" lets anyone in, [] only the same host (not the config's list).
    with connect(f"{server.url}/origin-any", origin="https://evil.example") as ws:  # type: ignore[arg-type]
        assert ws.recv() == "welcome"
    response = refused(f"{server.url}/origin-strict", origin="https://trusted.example")  # type: ignore[arg-type]
    assert response.status_code == 403
    with connect(f"{server.url}/origin-strict", origin=f"http://{host}") as ws:  # type: ignore[arg-type]
        assert ws.recv() == "welcome"


# Blueprints.


def test_blueprint_routes_nested_and_through_the_extension(server: AppServer) -> None:
    tag = new_tag()
    with connect(f"{server.url}/parent/chat/room/lobby?tag={tag}") as ws:
        assert json.loads(ws.recv()) == {
            "name": "lobby",
            "endpoint": "parent.chat.room",
            "blueprint": "parent.chat",
            "self": f"ws://{server.address}/parent/chat/room/lobby",
            "page": "/parent/page",
        }
    events = life_events(server, tag)
    assert names(events) == [
        "request_started",
        "chat_url_value_preprocessor",
        "before_request",
        "parent_before_request",
        "chat_before_request",
        "request_finished",
        "chat_teardown_request",
        "teardown_request",
        "teardown_appcontext",
    ]
    assert events[1]["values"] == {"name": "lobby"}
    assert events[4]["blueprints"] == ["parent.chat", "parent"]
    with connect(f"{server.url}/direct/room/side") as ws:
        seen = json.loads(ws.recv())
        assert (seen["endpoint"], seen["self"]) == (
            "direct.room",
            f"ws://{server.address}/direct/room/side",
        )
    assert server.http("/parent/page") == "parent page"
    response = refused(f"{server.url}/parent/chat/room/vip?chat_deny=1")
    assert (response.status_code, response.body) == (403, b"not in this room")


def test_blueprint_api_without_a_server() -> None:
    websocket = GeventWebSocket()
    bp = WebSocketBlueprint("live", __name__, url_prefix="/live")

    @bp.route("/feed/<int:n>", max_message_size=10)
    def feed(ws: object, n: int) -> None: ...

    websocket.register_blueprint(bp, url_prefix="/v2")
    apps = [Flask("one"), Flask("two")]
    for app in apps:
        websocket.init_app(app)
        (rule,) = app.url_map.iter_rules("live.feed")
        assert rule.rule == "/v2/feed/<int:n>" and rule.websocket
        assert rule.websocket_options == {"max_message_size": 10}  # type: ignore[attr-defined]
    with apps[0].test_request_context(base_url="https://example.com"):
        assert url_for("live.feed", n=3) == "wss://example.com/v2/feed/3"
    with apps[1].test_request_context():
        assert url_for("live.feed", n=3, _external=True) == "ws://localhost/v2/feed/3"

    async def coroutine(ws: object) -> None: ...

    plain = WebSocket()
    app = Flask("three")
    plain.init_app(app)
    async_bp = WebSocketBlueprint("async_bp", __name__)
    async_bp.route("/a")(coroutine)
    with pytest.raises(TypeError, match="coroutine function"):
        app.register_blueprint(async_bp)


def test_a_plain_blueprint_of_handlers_registered_through_the_extension(
    server: AppServer,
) -> None:
    """0.6.1's way: ``@bp.route`` on a Flask ``Blueprint``, ``websocket.register_blueprint(bp)``."""
    with connect(f"{server.url}/old/say/hi") as ws:
        ws.send("there")
        assert ws.recv() == "hi: there"
        ws.send("x" * 17)  # the route's max_message_size is 16
        with pytest.raises(ClientClosed) as info:
            ws.recv()
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_plain_blueprint_api_without_a_server() -> None:
    websocket = WebSocket()
    early, late = Blueprint("early", __name__), Blueprint("late", __name__)
    early.route("/e/<int:n>", receive_timeout=2)(lambda ws, n: None)
    late.add_url_rule("/l", "handler", lambda ws: None)
    websocket.register_blueprint(early, url_prefix="/v1")  # before init_app
    app = Flask("legacy")
    websocket.init_app(app)
    websocket.register_blueprint(late)  # after
    (rule,) = app.url_map.iter_rules("early.<lambda>")
    assert (rule.rule, rule.websocket) == ("/v1/e/<int:n>", True)
    assert rule.websocket_options == {"receive_timeout": 2}  # type: ignore[attr-defined]
    (rule,) = app.url_map.iter_rules("late.handler")
    assert rule.websocket
    assert "make_setup_state" not in vars(early)  # the blueprint is left as it was
    with app.test_request_context():
        assert url_for("late.handler", _external=True) == "ws://localhost/l"


def test_every_option_has_its_config_key() -> None:
    samples = {
        "ping_interval": 3.0, "ping_timeout": 4.0, "max_message_size": 5, "receive_timeout": 6.0,
        "max_queue": 7, "write_limit": 8, "max_send_buffer": 10, "close_timeout": 9.0,
        "compression": None,
        "subprotocols": ("a.v1",), "allowed_origins": ("https://a.example",),
    }  # fmt: skip
    assert set(samples) == Options.names()
    app = Flask("configured")
    app.config.update({f"WEBSOCKET_{name.upper()}": value for name, value in samples.items()})
    websocket = WebSocket(app, ping_interval=1.0)
    assert dataclasses.asdict(websocket.app_options(app)) == samples


def test_routes_added_after_init_app_reach_every_app() -> None:
    websocket = WebSocket(allowed_origins=["https://Example.com:443"])
    apps = [Flask("one"), Flask("two")]
    apps[1].config["WEBSOCKET_ALLOWED_ORIGINS"] = "*"
    for app in apps:
        websocket.init_app(app)
    websocket.route("/late")(lambda ws: None)
    for app in apps:
        assert [r.rule for r in app.url_map.iter_rules("<lambda>")] == ["/late"]
    assert websocket.app_options(apps[0]).allowed_origins == ("https://example.com",)
    assert websocket.app_options(apps[1]).allowed_origins == "*"
    with pytest.raises(ValueError, match="not an origin"):
        WebSocket(allowed_origins=["example.com/path"])


# Debug mode.


@pytest.mark.parametrize("flavour", ["plain", "asyncio"])
def test_debug_mode_logs_in_full_and_never_serves_the_debugger(flavour: str) -> None:
    with AppServer(flavour, extra_args=("--env", "FLASK_DEBUG=1")) as server:
        log = log_of_a_failing_handler(server)
        assert "Traceback (most recent call last)" in log
        assert 'raise RuntimeError("life boom")' in log
        # Flask re-raises in debug mode; uWSGI logs it and answers nothing, or 500.
        with pytest.raises((urllib.error.HTTPError, http.client.RemoteDisconnected)) as info:
            server.http("/http-error")
        if isinstance(info.value, urllib.error.HTTPError):
            assert info.value.code == 500
            body = info.value.read().decode().lower()
            assert "debugger" not in body and "console" not in body
        wait_for(lambda: "RuntimeError: an HTTP view failed" in server.output())
        assert "__debugger__" not in server.output()


def test_plain_http_to_a_websocket_url(server: AppServer) -> None:
    with pytest.raises(urllib.error.HTTPError) as info:
        server.http("/info")
    assert info.value.code == 426 and info.value.headers["Upgrade"] == "websocket"
    assert info.value.read().startswith(b"this URL is a WebSocket endpoint")
    assert server.http("/echo") == "HTTP view at the same URL"  # beside the WebSocket /echo


def test_the_apps_own_websocket_mismatch_handler_is_kept() -> None:
    app = Flask("own")

    @app.errorhandler(WebsocketMismatch)
    def mine(error: Exception) -> tuple[str, int]:
        return "mine", 400

    WebSocket(app).route("/ws")(lambda ws: None)
    assert app.test_client().get("/ws").data == b"mine"
    other = Flask("other")
    WebSocket(other).route("/ws")(lambda ws: None)
    assert other.test_client().get("/ws").status_code == 426
