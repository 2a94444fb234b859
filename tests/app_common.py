"""What the test apps of every flavour share: the Flask app, its HTTP views, the event log.

uWSGI runs one worker process in the tests, so one list holds every connection's events.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from flask import (
    Blueprint,
    Flask,
    abort,
    current_app,
    g,
    got_request_exception,
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

app = Flask("tests.app")
app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] = 1_500_000  # read by init_app (see tests)
app.config["WEBSOCKET_SUBPROTOCOLS"] = ["echo.v1"]  # every route's, unless the route says
app.config["WEBSOCKET_ALLOWED_ORIGINS"] = ["https://trusted.example"]  # besides the same host
app.config["SECRET_KEY"] = "test only"
app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"  # in memory: one connection (StaticPool)
events: list[dict[str, Any]] = []

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


def record(**event: Any) -> None:
    """Keep ``event`` for ``GET /events``."""
    events.append(event)


@app.route("/events")
def get_events() -> Any:
    return app.response_class(json.dumps(events), mimetype="application/json")


@app.route("/events", methods=["DELETE"])
def clear_events() -> str:
    events.clear()
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


def on_started(sender: Flask, **extra: Any) -> None:
    life("request_started")


def on_finished(sender: Flask, response: Any, **extra: Any) -> None:
    life("request_finished", status=response.status_code)


def on_exception(sender: Flask, exception: BaseException, **extra: Any) -> None:
    life("got_request_exception", error=repr(exception))


request_started.connect(on_started, app)
request_finished.connect(on_finished, app)
got_request_exception.connect(on_exception, app)


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


# Flask-Login: /login/NAME logs NAME in (the session cookie); handlers see current_user.

login_manager = LoginManager(app)


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


@login_manager.user_loader
def load_user(user_id: str) -> User:
    return User(user_id)


@app.route("/login/<name>")
def login(name: str) -> str:
    login_user(User(name))
    session["color"] = "blue"
    return "logged in"


def whoami_report() -> str:
    return json.dumps(
        {
            "authenticated": current_user.is_authenticated,
            "id": current_user.get_id(),
            "color": session.get("color"),
        }
    )


# Flask-SQLAlchemy: a handler uses db.session; teardown_appcontext removes it.

db = SQLAlchemy(app)


class Item(db.Model):  # type: ignore[name-defined, misc]
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


with app.app_context():
    db.create_all()


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


@app.route("/db-scopes")
def db_scopes() -> Any:
    """The app contexts that still have a Flask-SQLAlchemy session."""
    return app.response_class(
        json.dumps(list(db.session.registry.registry)), mimetype="application/json"
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
