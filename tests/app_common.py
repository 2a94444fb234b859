"""What the test apps of every flavour share: the Flask app, its HTTP views, the event log,
and the Flask-integration routes.

:func:`make_flask_app` makes a new app with all of it; ``app`` is the one ``tests/app.py``
and ``tests/app_asyncio.py`` serve under uWSGI, and ``tests/app_inprocess.py`` makes one
per test for the in-process test client. Each app has its own event list
(:func:`app_events`). uWSGI runs one worker process in the tests, so one list holds every
connection's events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import (
    Blueprint,
    Flask,
    abort,
    copy_current_request_context,
    current_app,
    g,
    got_request_exception,
    has_app_context,
    has_request_context,
    request,
    request_finished,
    request_started,
    session,
    url_for,
)
from flask.globals import app_ctx
from flask_login import LoginManager, UserMixin, current_user, login_user
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import Mapped, mapped_column

from flask_uwsgi_websocket import WebSocketBlueprint

if TYPE_CHECKING:
    from flask_uwsgi_websocket import AsyncioWebSocket, AsyncioWebSocketClient, WebSocketClient
    from flask_uwsgi_websocket.flask.extension import WebSocketExtension

#: Where an app keeps its event list, in ``app.extensions``.
EVENTS = "tests.events"

#: Per-route compression settings of the ``/deflate-tuned`` routes.
TUNED_DEFLATE = {
    "server_max_window_bits": 10,
    "client_max_window_bits": 9,
    "server_no_context_takeover": True,
}


def pick_last(offered: list[str]) -> str | None:
    """A subprotocol selector: the client's last offer, none when it offers ``none``."""
    return None if "none" in offered else offered[-1]


def pick_unoffered(offered: list[str]) -> str | None:
    """A faulty subprotocol selector: it answers what the client did not offer."""
    return "never-offered"


def app_events(app: Flask) -> list[dict[str, Any]]:
    """What ``app``'s hooks and handlers recorded, in order (``GET /events``)."""
    recorded: list[dict[str, Any]] = app.extensions[EVENTS]
    return recorded


def record(**event: Any) -> None:
    """Keep ``event`` in the current app's event list (``app``'s outside an app context)."""
    (app_events(current_app) if has_app_context() else events).append(event)


# The request lifecycle: requests with ?tag=T record their hooks and signals as
# {"route": "life", "tag": T, "event": ...}.


def current_tag() -> str | None:
    """The request's ``tag`` argument (``g.tag`` once the request context is gone)."""
    if has_request_context():
        return request.args.get("tag")
    return g.get("tag")


def life(event: str, **details: Any) -> None:
    tag = current_tag()
    if tag is not None:
        record(route="life", tag=tag, event=event, **details)


def on_started(sender: Flask, **extra: Any) -> None:
    life("request_started")


def on_finished(sender: Flask, response: Any, **extra: Any) -> None:
    life("request_finished", status=response.status_code)


def on_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
    life("got_request_exception", error=repr(exception))


# Flask-Login: /login/NAME logs NAME in (the session cookie); handlers see current_user.

login_manager = LoginManager()  # one for every app: init_app per app


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@login_manager.user_loader
def load_user(user_id: str) -> User:
    return User(user_id)


# Flask-SQLAlchemy: a handler uses db.session; teardown_appcontext removes it. One
# extension for every app (init_app per app): each app has its own engine and in-memory
# database; the scoped session's registry (keyed by app context) is shared.

db = SQLAlchemy()


class Item(db.Model):  # type: ignore[name-defined, misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


def make_flask_app(name: str) -> Flask:
    """A new Flask app named ``name``: config, HTTP views, lifecycle hooks and signals,
    Flask-Login and Flask-SQLAlchemy; no WebSocket extension yet."""
    app = Flask(name)
    app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] = 1_500_000  # read by init_app (see tests)
    app.config["WEBSOCKET_SUBPROTOCOLS"] = ["echo.v1"]  # every route's, unless the route says
    app.config["WEBSOCKET_ALLOWED_ORIGINS"] = ["https://trusted.example"]  # besides the host
    app.config["SECRET_KEY"] = "test only"
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"  # in memory: one connection (StaticPool)
    app.extensions[EVENTS] = []

    @app.route("/events")
    def get_events() -> Any:
        return app.response_class(json.dumps(app_events(app)), mimetype="application/json")

    @app.route("/events", methods=["DELETE"])
    def clear_events() -> str:
        app_events(app).clear()
        return ""

    @app.route("/loop-iterations")
    def loop_iterations() -> str:
        """The gevent hub's loop iteration count (how often it woke up)."""
        import gevent

        return str(gevent.get_hub().loop.iteration)

    @app.route("/memory")
    def memory() -> Any:
        """The worker's peak and current resident memory, in KiB (Linux)."""
        with open("/proc/self/status") as status:
            fields = dict(line.split(":", 1) for line in status)
        return {name: int(fields[name].split()[0]) for name in ("VmHWM", "VmRSS")}

    @app.route("/echo")
    def echo_http() -> str:
        return "HTTP view at the same URL"

    @app.route("/http-error")
    def http_error() -> str:
        raise RuntimeError("an HTTP view failed")

    @app.before_request
    def before_request() -> Any:
        g.tag = request.args.get("tag")
        life("before_request", endpoint=request.endpoint)
        if request.args.get("deny") == "abort":
            abort(401)
        if request.args.get("deny") == "response":
            return "login first", 403
        return None

    @app.url_value_preprocessor
    def pop_lang(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "lang" in values:
            g.lang = values.pop("lang")
            life("url_value_preprocessor", lang=g.lang)

    @app.teardown_request
    def teardown_request(error: BaseException | None) -> None:
        life("teardown_request", error=repr(error) if error is not None else None)

    @app.teardown_appcontext
    def teardown_appcontext(error: BaseException | None) -> None:
        life("teardown_appcontext", error=repr(error) if error is not None else None)

    request_started.connect(on_started, app)
    request_finished.connect(on_finished, app)
    got_request_exception.connect(on_exception, app)

    login_manager.init_app(app)

    @app.route("/login/<name>")
    def login(name: str) -> str:
        login_user(User(name))
        session["color"] = "blue"
        return "logged in"

    # After teardown_appcontext above: Flask runs the later one (removing the session) first.
    db.init_app(app)
    with app.app_context():
        db.create_all()

    @app.route("/db-scopes")
    def db_scopes() -> Any:
        """The app contexts that still have a Flask-SQLAlchemy session."""
        return app.response_class(json.dumps(db_scope_ids()), mimetype="application/json")

    return app


def db_scope_ids() -> list[int]:
    """The app contexts (of any app) that still have a Flask-SQLAlchemy session."""
    return list(db.session.registry.registry)


app = make_flask_app("tests.app")
events = app_events(app)


# What handlers report of Flask's contexts and extensions.


def context_report(number: int) -> str:
    """What a handler sees of Flask's contexts (``/<lang>/context/<number>``)."""
    return json.dumps(
        {
            "number": number,
            "view_args": request.view_args,
            "lang": g.get("lang"),
            "q": request.args.get("q"),
            "header": request.headers.get("X-Test"),
            "cookie": request.cookies.get("flavour"),
            "endpoint": request.endpoint,
            "rule": request.url_rule.rule if request.url_rule else None,
            "app": current_app.name,
            "url": url_for("context", lang="fr", number=number + 1, q="x"),
            "external": url_for("context", lang="fr", number=number, _external=True),
            "http_view": url_for("echo_http", _external=True),
            "tag": g.get("tag"),
        }
    )


def whoami_report() -> str:
    return json.dumps(
        {
            "authenticated": current_user.is_authenticated,
            "id": current_user.get_id(),
            "color": session.get("color"),
        }
    )


def db_report(name: str) -> str:
    db.session.add(Item(name=name))
    db.session.commit()
    return json.dumps(
        {
            "count": db.session.query(Item).filter_by(name=name).count(),
            "scope": id(app_ctx._get_current_object()),  # Flask-SQLAlchemy's session scope
            "registered": db.session.registry.has(),
        }
    )


# Blueprints: "chat", a WebSocketBlueprint, nested in "parent", a Flask blueprint.


def blueprints(room: Callable[..., Any]) -> tuple[Blueprint, WebSocketBlueprint]:
    """``parent`` (HTTP view ``/parent/page``) with ``chat`` (WebSocket ``/chat/room/<name>``)."""
    parent = Blueprint("parent", __name__, url_prefix="/parent")
    chat = WebSocketBlueprint("chat", __name__, url_prefix="/chat")

    @parent.before_request
    def parent_before() -> None:
        life("parent_before_request", blueprints=list(request.blueprints))

    @parent.route("/page")
    def page() -> str:
        return "parent page"

    @chat.url_value_preprocessor
    def chat_values(endpoint: str | None, values: dict[str, Any] | None) -> None:
        life("chat_url_value_preprocessor", values=values)

    @chat.before_request
    def chat_before() -> Any:
        life("chat_before_request", blueprints=list(request.blueprints))
        if request.args.get("chat_deny"):
            return "not in this room", 403
        return None

    @chat.teardown_request
    def chat_teardown(error: BaseException | None) -> None:
        life("chat_teardown_request")

    chat.route("/room/<name>")(room)
    parent.register_blueprint(chat)
    return parent, chat


def room_report(name: str) -> str:
    return json.dumps(
        {
            "name": name,
            "endpoint": request.endpoint,
            "blueprint": request.blueprint,
            "self": url_for(".room", name=name, _external=True),
            "page": url_for("parent.page"),
        }
    )


# The Flask-integration routes (tests/test_flask.py): contexts, lifecycle, extensions,
# blueprints, errors; ``def`` handlers for the plain and gevent flavours, ``async def``
# ones for asyncio.


def add_flask_routes(
    app: Flask, websocket: WebSocketExtension, spawn: Callable[[Callable[[], None]], None]
) -> None:
    """The Flask-integration routes of the plain and gevent flavours; ``spawn(function)``
    runs ``function`` in a thread or greenlet of its own."""

    @websocket.route("/<lang>/context/<int:number>")
    def context(ws: WebSocketClient, number: int) -> None:
        ws.send(context_report(number))

    @websocket.route("/life/<how>")
    def lifecycle(ws: WebSocketClient, how: str) -> None:
        life("handler", how=how)
        ws.send("hi")
        if how == "raise":
            raise RuntimeError("life boom")
        if how == "handled":
            raise KeyError("missing")
        if how == "wait":
            for _ in ws:
                pass

    @websocket.errorhandler(LookupError)
    def lookup_failed(ws: WebSocketClient, error: LookupError) -> tuple[int, str]:
        ws.send(f"handled {error!r}")
        return 4001, "lookup failed"

    @websocket.route("/spawned")
    def spawned(ws: WebSocketClient) -> None:
        """A thread or greenlet with a copy of the request context sends what it sees."""

        @copy_current_request_context
        def other() -> None:
            ws.send(json.dumps({"q": request.args.get("q"), "url": url_for("spawned")}))

        spawn(other)
        ws.receive()

    @websocket.route("/whoami")
    def whoami(ws: WebSocketClient) -> None:
        ws.send(whoami_report())

    @websocket.route("/db/<name>")
    def database(ws: WebSocketClient, name: str) -> None:
        ws.send(db_report(name))

    @websocket.route("/origin-any", allowed_origins="*")
    @websocket.route("/origin-strict", allowed_origins=[])
    def origin(ws: WebSocketClient) -> None:
        ws.send("welcome")

    def room(ws: WebSocketClient, name: str) -> None:
        ws.send(room_report(name))

    parent, chat = blueprints(room)
    app.register_blueprint(parent)
    websocket.register_blueprint(chat, url_prefix="/direct", name="direct")

    # 0.6.1's blueprints: a plain Flask Blueprint of handlers, registered through the extension.
    legacy = Blueprint("legacy", __name__)

    @legacy.route("/say/<word>", max_message_size=16)
    def legacy_say(ws: WebSocketClient, word: str) -> None:
        for message in ws:
            ws.send(f"{word}: {message}")

    websocket.register_blueprint(legacy, url_prefix="/old")


def add_async_flask_routes(app: Flask, websocket: AsyncioWebSocket) -> None:
    """The Flask-integration routes of the asyncio flavour: those of
    :func:`add_flask_routes`, as coroutines."""
    import asyncio

    @websocket.route("/<lang>/context/<int:number>")
    async def context(ws: AsyncioWebSocketClient, number: int) -> None:
        await ws.send(context_report(number))

    @websocket.route("/life/<how>")
    async def lifecycle(ws: AsyncioWebSocketClient, how: str) -> None:
        life("handler", how=how)
        await ws.send("hi")
        if how == "raise":
            raise RuntimeError("life boom")
        if how == "handled":
            raise KeyError("missing")
        if how == "wait":
            async for _ in ws:
                pass

    @websocket.errorhandler(LookupError)
    async def lookup_failed(ws: AsyncioWebSocketClient, error: LookupError) -> tuple[int, str]:
        await ws.send(f"handled {error!r}")
        return 4001, "lookup failed"

    @websocket.route("/spawned")
    async def spawned(ws: AsyncioWebSocketClient) -> None:
        """A task the handler starts runs in a copy of its context: the request context."""

        async def other() -> None:
            await ws.send(json.dumps({"q": request.args.get("q"), "url": url_for("spawned")}))

        await asyncio.get_event_loop().create_task(other())
        await ws.receive()

    @websocket.route("/whoami")
    async def whoami(ws: AsyncioWebSocketClient) -> None:
        await ws.send(whoami_report())

    @websocket.route("/db/<name>")
    async def database(ws: AsyncioWebSocketClient, name: str) -> None:
        await ws.send(db_report(name))

    @websocket.route("/origin-any", allowed_origins="*")
    @websocket.route("/origin-strict", allowed_origins=[])
    async def origin(ws: AsyncioWebSocketClient) -> None:
        await ws.send("welcome")

    async def room(ws: AsyncioWebSocketClient, name: str) -> None:
        await ws.send(room_report(name))

    parent, chat = blueprints(room)
    app.register_blueprint(parent)
    websocket.register_blueprint(chat, url_prefix="/direct", name="direct")

    # 0.6.1's blueprints: a plain Flask Blueprint of handlers, registered through the extension.
    legacy = Blueprint("legacy", __name__)

    @legacy.route("/say/<word>", max_message_size=16)
    async def legacy_say(ws: AsyncioWebSocketClient, word: str) -> None:
        async for message in ws:
            await ws.send(f"{word}: {message}")

    websocket.register_blueprint(legacy, url_prefix="/old")
