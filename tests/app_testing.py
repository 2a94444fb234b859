"""The apps of ``test_testing.py``: one per flavour, made by :func:`make_app`, served by the
in-process test client (``websocket.test_client()``), without uWSGI.

The routes are the same in every flavour: ``def`` handlers for the plain and gevent
flavours, ``async def`` ones for asyncio. Handlers and Flask hooks record what they see
in the app's event list, :func:`events`; the lifecycle hooks record only requests with
a ``?tag=`` argument.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from flask import (
    Flask,
    abort,
    g,
    request,
    request_finished,
    request_started,
    session,
    url_for,
)

from flask_uwsgi_websocket import ConnectionClosed
from flask_uwsgi_websocket.flask.extension import WebSocketExtension

if TYPE_CHECKING:
    from flask_uwsgi_websocket import AsyncioWebSocket

FLAVOURS = ("plain", "gevent", "asyncio")
#: The subprotocols of ``/options``, the server's preference first.
SUBPROTOCOLS = ["v2", "v1"]
#: The one origin ``/origin`` allows besides the request's own host.
TRUSTED = "https://trusted.example"


def events(app: Flask) -> list[dict[str, Any]]:
    """What the app's hooks and handlers recorded, in order."""
    recorded: list[dict[str, Any]] = app.extensions["testing_events"]
    return recorded


def make_app(flavour: str) -> tuple[Flask, WebSocketExtension]:
    """A new app with its extension of ``flavour`` (``plain``, ``gevent``, ``asyncio``)."""
    app = Flask(f"tests.app_testing.{flavour}")
    app.config["SECRET_KEY"] = "test only"
    app.config["TESTING"] = True
    app.extensions["testing_events"] = []
    if flavour == "plain":
        from flask_uwsgi_websocket import WebSocket

        websocket: WebSocketExtension = WebSocket(app)
        _sync_routes(app, websocket)
    elif flavour == "gevent":
        from flask_uwsgi_websocket import GeventWebSocket

        websocket = GeventWebSocket(app)
        _sync_routes(app, websocket)
    elif flavour == "asyncio":
        from flask_uwsgi_websocket import AsyncioWebSocket

        asyncio_websocket = AsyncioWebSocket(app)
        _async_routes(app, asyncio_websocket)
        websocket = asyncio_websocket
    else:
        raise ValueError(f"unknown flavour {flavour!r}")
    _http(app)
    return app, websocket


def _http(app: Flask) -> None:
    """The HTTP side every flavour shares: views, hooks, signals."""
    record = events(app).append

    def life(event: str, **details: Any) -> None:
        tag = request.args.get("tag")
        if tag is not None:
            record({"tag": tag, "event": event, **details})

    @app.route("/login/<name>")
    def login(name: str) -> str:
        session["user"] = name
        return f"hello {name}"

    @app.route("/page")
    def page() -> str:
        return "an HTTP view only"

    @app.before_request
    def before_request() -> Any:
        life("before_request", endpoint=request.endpoint)
        deny = request.args.get("deny")
        if deny == "abort":
            abort(403)
        if deny == "response":
            return "log in first", 401, {"X-Reason": "no token"}
        if deny == "crash":
            raise RuntimeError("before_request crashed")
        return None

    @app.url_value_preprocessor
    def pop_lang(endpoint: str | None, values: dict[str, Any] | None) -> None:
        if values and "lang" in values:
            g.lang = values.pop("lang")
            life("url_value_preprocessor", lang=g.lang)

    @app.after_request
    def after_request(response: Any) -> Any:
        life("after_request", status=response.status_code)
        return response

    @app.teardown_request
    def teardown_request(error: BaseException | None) -> None:
        life("teardown_request")

    def on_started(sender: Flask, **extra: Any) -> None:
        life("request_started")

    def on_finished(sender: Flask, response: Any, **extra: Any) -> None:
        life("request_finished", status=response.status_code)

    # weak=False: the receivers are closures that nothing else keeps.
    request_started.connect(on_started, app, weak=False)
    request_finished.connect(on_finished, app, weak=False)


def _report(ws: Any, **values: Any) -> str:
    """What a handler sees of its request, as JSON."""
    return json.dumps(
        {
            "view_args": request.view_args,
            "args": request.args.to_dict(flat=False),
            "token": request.headers.get("X-Token"),
            "user_agent": request.headers.get("User-Agent"),
            "path": ws.environ["PATH_INFO"],
            **values,
        }
    )


def _sync_routes(app: Flask, websocket: WebSocketExtension) -> None:
    """The routes of the plain and gevent flavours."""
    record = events(app).append

    @websocket.route("/echo")
    def echo(ws: Any) -> None:
        while True:
            ws.send(ws.receive())

    @websocket.route("/iterate")
    def iterate(ws: Any) -> None:
        count = 0
        for message in ws:
            count += 1
            ws.send(message)
        record({"route": "iterate", "count": count, "code": ws.close_code})

    @websocket.route("/server-timeout")
    def server_timeout(ws: Any) -> None:
        ws.send(json.dumps(ws.receive(timeout=0.05)))
        ws.send(ws.receive(timeout=5))

    @websocket.route("/return")
    def returns(ws: Any) -> None:
        ws.send("bye")

    @websocket.route("/raise")
    def raises(ws: Any) -> None:
        ws.send("about to fail")
        raise RuntimeError("boom from the handler")

    @websocket.route("/lookup")
    def lookup(ws: Any) -> None:
        raise KeyError("missing")

    @websocket.errorhandler(LookupError)
    def lookup_failed(ws: Any, error: LookupError) -> tuple[int, str]:
        ws.send(f"handled {error!r}")
        return 4001, "lookup failed"

    @websocket.route("/peer-close")
    def peer_close(ws: Any) -> None:
        try:
            while True:
                ws.receive()
        except ConnectionClosed as exc:
            record({"route": "peer-close", "code": exc.code, "reason": exc.reason,
                    "close_code": ws.close_code, "close_reason": ws.close_reason})  # fmt: skip
            raise

    @websocket.route("/options", max_message_size=16, subprotocols=SUBPROTOCOLS)
    @websocket.route("/uncompressed", compression=None)
    @websocket.route("/origin", allowed_origins=[TRUSTED])
    def options(ws: Any) -> None:
        ws.send(json.dumps({"subprotocol": ws.subprotocol}))
        for message in ws:
            ws.send(message)

    @websocket.route("/<lang>/life")
    def lifecycle(ws: Any) -> None:
        record({"tag": request.args["tag"], "event": "handler", "lang": g.lang})
        try:
            ws.send(json.dumps({"url": url_for("lifecycle", lang="de"),
                                "external": url_for("lifecycle", lang="fr", _external=True),
                                "endpoint": request.endpoint}))  # fmt: skip
            for _ in ws:
                pass
        finally:
            record({"tag": request.args["tag"], "event": "handler_end"})

    @websocket.route("/whoami")
    def whoami(ws: Any) -> None:
        ws.send(json.dumps(session.get("user")))

    @websocket.route("/vars/<int:number>/<name>")
    def variables(ws: Any, number: int, name: str) -> None:
        ws.send(_report(ws, number=number, name=name, type=type(number).__name__))

    @websocket.route("/room/<name>")
    def room(ws: Any, name: str) -> None:
        ws.join(name)
        ws.send("joined " + ",".join(sorted(ws.rooms)))
        for _ in ws:
            pass

    @websocket.route("/chat/<name>/<nick>")
    def chat(ws: Any, name: str, nick: str) -> None:
        ws.join(name)
        ws.send("joined")
        for message in ws:
            websocket.broadcast(f"{nick}: {message}", room=name)


def _async_routes(app: Flask, websocket: AsyncioWebSocket) -> None:
    """The routes of the asyncio flavour: those of :func:`_sync_routes`, as coroutines."""
    record = events(app).append

    @websocket.route("/echo")
    async def echo(ws: Any) -> None:
        while True:
            await ws.send(await ws.receive())

    @websocket.route("/iterate")
    async def iterate(ws: Any) -> None:
        count = 0
        async for message in ws:
            count += 1
            await ws.send(message)
        record({"route": "iterate", "count": count, "code": ws.close_code})

    @websocket.route("/server-timeout")
    async def server_timeout(ws: Any) -> None:
        await ws.send(json.dumps(await ws.receive(timeout=0.05)))
        await ws.send(await ws.receive(timeout=5))

    @websocket.route("/return")
    async def returns(ws: Any) -> None:
        await ws.send("bye")

    @websocket.route("/raise")
    async def raises(ws: Any) -> None:
        await ws.send("about to fail")
        raise RuntimeError("boom from the handler")

    @websocket.route("/lookup")
    async def lookup(ws: Any) -> None:
        raise KeyError("missing")

    @websocket.errorhandler(LookupError)
    async def lookup_failed(ws: Any, error: LookupError) -> tuple[int, str]:
        await ws.send(f"handled {error!r}")
        return 4001, "lookup failed"

    @websocket.route("/peer-close")
    async def peer_close(ws: Any) -> None:
        try:
            while True:
                await ws.receive()
        except ConnectionClosed as exc:
            record({"route": "peer-close", "code": exc.code, "reason": exc.reason,
                    "close_code": ws.close_code, "close_reason": ws.close_reason})  # fmt: skip
            raise

    @websocket.route("/options", max_message_size=16, subprotocols=SUBPROTOCOLS)
    @websocket.route("/uncompressed", compression=None)
    @websocket.route("/origin", allowed_origins=[TRUSTED])
    async def options(ws: Any) -> None:
        await ws.send(json.dumps({"subprotocol": ws.subprotocol}))
        async for message in ws:
            await ws.send(message)

    @websocket.route("/<lang>/life")
    async def lifecycle(ws: Any) -> None:
        record({"tag": request.args["tag"], "event": "handler", "lang": g.lang})
        try:
            await ws.send(json.dumps({"url": url_for("lifecycle", lang="de"),
                                      "external": url_for("lifecycle", lang="fr", _external=True),
                                      "endpoint": request.endpoint}))  # fmt: skip
            async for _ in ws:
                pass
        finally:
            record({"tag": request.args["tag"], "event": "handler_end"})

    @websocket.route("/whoami")
    async def whoami(ws: Any) -> None:
        await ws.send(json.dumps(session.get("user")))

    @websocket.route("/vars/<int:number>/<name>")
    async def variables(ws: Any, number: int, name: str) -> None:
        await ws.send(_report(ws, number=number, name=name, type=type(number).__name__))

    @websocket.route("/room/<name>")
    async def room(ws: Any, name: str) -> None:
        await ws.join(name)
        await ws.send("joined " + ",".join(sorted(ws.rooms)))
        async for _ in ws:
            pass

    @websocket.route("/chat/<name>/<nick>")
    async def chat(ws: Any, name: str, nick: str) -> None:
        await ws.join(name)
        await ws.send("joined")
        async for message in ws:
            await websocket.broadcast(f"{nick}: {message}", room=name)
