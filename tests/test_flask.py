"""WebSocket routes behave like the Flask routes around them, in every flavour.

Contexts (request, session, g, current_app, url_for, in spawned threads, greenlets and
tasks), the request lifecycle (before_request refusals, teardown once, signals), Flask-Login
and Flask-SQLAlchemy, the Origin policy, blueprints, error handlers: with the in-process test
client (``websocket.test_client()``) on a new app of each flavour per test
(``tests/app_inprocess.py``), as uWSGI adds nothing to them. Debug mode, which is about
uWSGI's log and environment, runs ``tests/app.py`` under real uWSGI.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import logging
import urllib.error
import uuid
from typing import Any

import pytest
from flask import Blueprint, Flask, url_for
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect
from werkzeug.routing import WebsocketMismatch

from flask_uwsgi_websocket import (
    GeventWebSocket,
    Options,
    WebSocket,
    WebSocketBlueprint,
)
from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.testing import TestClient, TestConnection

from . import app_inprocess
from .app_common import app_events, db_scope_ids
from .helpers import SOON, AppServer, closed, refused, wait_for

#: What conftest's ``made`` fixture builds, in each flavour.
make_app = app_inprocess.make_app

pytestmark = pytest.mark.timeout(60)

#: The host of the test client's requests.
HOST = "localhost"


def life_events(app: Flask, tag: str) -> list[dict[str, Any]]:
    """The lifecycle events of requests tagged ``tag``; the last is ``teardown_appcontext``
    (the test client's connection has ended, so teardown has run)."""
    found = [e for e in app_events(app) if e.get("route") == "life" and e["tag"] == tag]
    assert found and found[-1]["event"] == "teardown_appcontext", found
    return found


def names(events: list[dict[str, Any]]) -> list[str]:
    return [e["event"] for e in events]


def receive_json(ws: TestConnection) -> Any:
    message = ws.receive(timeout=SOON)
    assert isinstance(message, str), message
    return json.loads(message)


def new_tag() -> str:
    return uuid.uuid4().hex[:12]


# Contexts.


def test_handler_sees_request_g_app_and_url_for(app: Flask, websocket: WebSocketExtension) -> None:
    tag = new_tag()
    client = websocket.test_client()  # a Cookie header given is sent as given
    path = f"/en/context/7?q=query&tag={tag}"
    headers = {"X-Test": "header value", "Cookie": "flavour=vanilla"}
    with client.connect(path, headers=headers) as ws:
        seen = receive_json(ws)
    assert seen == {
        "number": 7,
        "view_args": {"number": 7},  # after the url_value_preprocessor popped lang
        "lang": "en",
        "q": "query",
        "header": "header value",
        "cookie": "vanilla",
        "endpoint": "context",
        "rule": "/<lang>/context/<int:number>",
        "app": app.name,
        "url": f"ws://{HOST}/fr/context/8?q=x",  # WebSocket URLs are absolute
        "external": f"ws://{HOST}/fr/context/7",
        "http_view": f"http://{HOST}/echo",
        "tag": tag,
    }


def test_spawned_thread_greenlet_or_task_sees_the_request(client: TestClient) -> None:
    with client.connect("/spawned?q=spawned") as ws:
        assert receive_json(ws) == {"q": "spawned", "url": f"ws://{HOST}/spawned"}
        ws.send("done")


def test_flask_login_current_user_and_session(app: Flask, websocket: WebSocketExtension) -> None:
    flask_client = app.test_client()
    response = flask_client.get("/login/ada")
    assert response.get_data(as_text=True) == "logged in"
    logged_in = {"authenticated": True, "id": "ada", "color": "blue"}
    # The Flask client's cookies, shared...
    with websocket.test_client(flask_client=flask_client).connect("/whoami") as ws:
        assert receive_json(ws) == logged_in
    # ...or the session cookie sent by hand, as a browser would.
    cookie = response.headers["Set-Cookie"].split(";", 1)[0]
    with websocket.test_client(flask_client=flask_client).connect(
        "/whoami", headers={"Cookie": cookie}
    ) as ws:
        assert receive_json(ws) == logged_in
    with websocket.test_client().connect("/whoami") as ws:
        assert receive_json(ws) == {"authenticated": False, "id": None, "color": None}


def test_flask_sqlalchemy_session_is_removed_when_the_connection_ends(
    app: Flask, client: TestClient
) -> None:
    tag = new_tag()
    with client.connect(f"/db/{tag}?tag={tag}") as ws:
        seen = receive_json(ws)
        assert seen["count"] == 1 and seen["registered"]
    life_events(app, tag)  # teardown_appcontext ran
    assert seen["scope"] not in app.test_client().get("/db-scopes").get_json()
    assert seen["scope"] not in db_scope_ids()


# The request lifecycle.


@pytest.mark.parametrize("how", ["return", "raise", "wait", "handled"])
def test_teardown_runs_once_however_the_connection_ends(
    app: Flask, client: TestClient, how: str
) -> None:
    tag = new_tag()
    with client.connect(f"/life/{how}?tag={tag}") as ws:
        assert ws.receive(timeout=SOON) == "hi"
        if how == "handled":
            assert ws.receive(timeout=SOON) == "handled KeyError('missing')"
        if how == "wait":
            ws.close()  # the peer closes
        else:
            error = closed(ws)
    events = life_events(app, tag)
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
    reported = "RuntimeError('life boom')" if how == "raise" else None
    assert events[-2]["error"] == events[-1]["error"] == reported
    if how == "raise":
        assert events[4]["error"] == "RuntimeError('life boom')"
    if how == "wait":
        assert ws.close_code == 1000
    else:
        code = {"return": 1000, "raise": 1011, "handled": 4001}[how]
        assert error.code == ws.close_code == code
        if how == "handled":
            assert error.reason == ws.close_reason == "lookup failed"


@pytest.mark.parametrize(
    ("deny", "status", "body"), [("abort", 401, "Unauthorized"), ("response", 403, "login first")]
)
def test_before_request_refuses_the_upgrade(
    app: Flask, client: TestClient, deny: str, status: int, body: str
) -> None:
    tag = new_tag()
    response = refused(client, f"/life/return?deny={deny}&tag={tag}")
    assert response.status_code == status
    assert body in response.get_data(as_text=True)
    assert "Upgrade" not in response.headers
    events = life_events(app, tag)
    assert names(events) == [
        "request_started",
        "before_request",
        "request_finished",
        "teardown_request",
        "teardown_appcontext",
    ]


def test_handler_error_is_logged_with_its_route(
    app: Flask, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with client.connect("/life/raise") as ws:
        assert ws.receive(timeout=SOON) == "hi"
        assert closed(ws).code == 1011
    errors = [r for r in caplog.records if r.name == app.logger.name]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    message = errors[0].getMessage()
    assert message == "Exception in WebSocket handler lifecycle (route /life/<how>) for /life/raise"
    assert errors[0].exc_info is not None
    assert repr(errors[0].exc_info[1]) == "RuntimeError('life boom')"
    assert "Traceback (most recent call last)" in caplog.text
    assert 'raise RuntimeError("life boom")' in caplog.text


def test_handled_error_is_not_logged(
    app: Flask, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)  # what a server's log shows
    with client.connect("/life/handled") as ws:
        assert ws.receive(timeout=SOON) == "hi"
        assert ws.receive(timeout=SOON) == "handled KeyError('missing')"
        error = closed(ws)
        assert (error.code, error.reason) == (4001, "lookup failed")
    assert not [r for r in caplog.records if r.name == app.logger.name]
    assert "missing" not in caplog.text


# The Origin policy.


def test_origin_policy(client: TestClient) -> None:
    for origin in (None, f"http://{HOST}", f"https://{HOST}", "https://trusted.example"):
        headers = {"Origin": origin} if origin is not None else None
        with client.connect("/echo", headers=headers) as ws:
            ws.send("in")
            assert ws.receive(timeout=SOON) == "in"
    for origin in ("https://evil.example", "null", f"http://{HOST}.evil.example"):
        response = refused(client, "/echo", headers={"Origin": origin})
        assert response.status_code == 403
        assert response.get_data(as_text=True).count("\n") == 1
        assert "not allowed" in response.get_data(as_text=True)
    # Per route: "*" lets anyone in, [] only the same host (not the config's list).
    with client.connect("/origin-any", headers={"Origin": "https://evil.example"}) as ws:
        assert ws.receive(timeout=SOON) == "welcome"
    response = refused(client, "/origin-strict", headers={"Origin": "https://trusted.example"})
    assert response.status_code == 403
    with client.connect("/origin-strict", headers={"Origin": f"http://{HOST}"}) as ws:
        assert ws.receive(timeout=SOON) == "welcome"


# Blueprints.


def test_blueprint_routes_nested_and_through_the_extension(app: Flask, client: TestClient) -> None:
    tag = new_tag()
    with client.connect(f"/parent/chat/room/lobby?tag={tag}") as ws:
        assert receive_json(ws) == {
            "name": "lobby",
            "endpoint": "parent.chat.room",
            "blueprint": "parent.chat",
            "self": f"ws://{HOST}/parent/chat/room/lobby",
            "page": "/parent/page",
        }
    events = life_events(app, tag)
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
    with client.connect("/direct/room/side") as ws:
        seen = receive_json(ws)
        assert (seen["endpoint"], seen["self"]) == (
            "direct.room",
            f"ws://{HOST}/direct/room/side",
        )
    assert app.test_client().get("/parent/page").get_data(as_text=True) == "parent page"
    response = refused(client, "/parent/chat/room/vip?chat_deny=1")
    assert (response.status_code, response.get_data()) == (403, b"not in this room")


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
    client: TestClient,
) -> None:
    """0.6.1's way: ``@bp.route`` on a Flask ``Blueprint``, ``websocket.register_blueprint(bp)``."""
    with client.connect("/old/say/hi") as ws:
        ws.send("there")
        assert ws.receive(timeout=SOON) == "hi: there"
        ws.send("x" * 17)  # the route's max_message_size is 16
        assert closed(ws).code == 1009


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


# Plain HTTP.


def test_plain_http_to_a_websocket_url(app: Flask) -> None:
    flask_client = app.test_client()
    response = flask_client.get("/info")
    assert response.status_code == 426 and response.headers["Upgrade"] == "websocket"
    assert response.get_data().startswith(b"this URL is a WebSocket endpoint")
    echo = flask_client.get("/echo")  # the HTTP view beside the WebSocket /echo
    assert echo.get_data(as_text=True) == "HTTP view at the same URL"


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


# Debug mode: uWSGI's log and the debug environment, under real uWSGI.


def log_of_a_failing_handler(server: AppServer) -> str:
    """Open ``/life/raise``, whose handler says "hi" then raises; return the server's log."""
    with connect(f"{server.url}/life/raise") as ws:
        assert ws.recv() == "hi"
        with pytest.raises(ClientClosed):
            ws.recv()
    log: str = wait_for(lambda: "life boom" in server.output() and server.output())
    return log


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
