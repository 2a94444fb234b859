"""WebSocket routes as Flask views, so they live the Flask request lifecycle.

A WebSocket route is a rule of ``app.url_map`` made with ``websocket=True``
(Werkzeug matches it for upgrade requests only, and ``url_for`` builds a
``ws://`` or ``wss://`` URL for it) whose view is a :class:`WebSocketView`.
Flask dispatches an upgrade request to it as to any view: the request context
is pushed, ``request_started`` is sent, URL value preprocessors and
``before_request`` functions run (app and blueprints; a response or ``abort()``
there is sent as is, and no upgrade happens). The view then checks the
``Origin``, negotiates the handshake and returns ``101 Switching Protocols``,
which goes through ``after_request`` and ``request_finished`` like any
response. Its body runs the handler: the request context stays pushed until
the connection ends, and only then do the ``teardown_request`` and
``teardown_appcontext`` functions run, once.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from flask import Response, current_app, request
from flask.globals import request_ctx
from werkzeug.routing import Map, Rule

from .. import uwsgi_api
from ..core.handshake import Handshake, check_origin, negotiate
from ..core.options import Options
from ..exceptions import HandshakeError
from ..runtimes import SOCKET
from ..shutdown import connections

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment
    from flask import Flask

__all__ = ["DETACHED", "Detached", "Server", "WebSocketView", "add_websocket_rule", "split_options"]

OPTION_NAMES = Options.names() | {"timeout"}
logger = logging.getLogger("flask_uwsgi_websocket")
#: Why an upgrade through uWSGI's ``--http`` router without ``--http-websockets`` is refused.
ROUTER_WITHOUT_WEBSOCKETS = (
    "uWSGI's --http router runs without --http-websockets, so it would relay no WebSocket"
    " frame: start uWSGI with --http-websockets"
)

#: Why an upgrade on a socket where the worker runs TLS is refused. 501 (Not Implemented),
#: not 500: nothing failed, the server lacks the feature for this socket, and a retry
#: cannot succeed. Sent before the 101, which would be followed by frames written in
#: clear under uWSGI's TLS layer, which the client cannot read.
TLS_IN_WORKER = (
    "WebSockets cannot run through uWSGI's own TLS (--https-socket, --ssl-socket,"
    " --suwsgi-socket): end TLS at nginx, or at uWSGI's --https router with --http-websockets"
)
#: A 503 for want of a resource: the client may try again in a second.
RETRY_AFTER = ("Retry-After", "1")
_tls_refusal_logged: list[bool] = []  # once per process: the first refusal is logged


class Detached:
    """The type of :data:`DETACHED`."""


#: What ``Server.serve`` returns when the connection outlives its request (see ``gevent``).
DETACHED = Detached()


class Server(Protocol):
    """The extension, as the views see it."""

    @property
    def engine(self) -> str | None:
        """The uWSGI loop engine of the extension's flavour (``None``: threads)."""

    def app_options(self, app: Flask) -> Options:
        """The options of ``app``'s WebSocket routes, before the route's own."""

    def serve(
        self,
        app: Flask,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        environ: dict[str, Any],
        options: Options,
        handshake: Handshake,
        end: Callable[[BaseException | None], None],
    ) -> Exception | Detached | None:
        """Run ``handler`` on the upgraded connection; the exception left unhandled. Or
        return :data:`DETACHED`: the connection goes on without the request, and ``end``
        is called (with the exception left) once it has ended."""

    def cannot_serve(self, environ: dict[str, Any]) -> str | None:
        """Why the worker cannot take this connection now (a 503), or ``None``."""


class WebSocketView:
    """The Flask view function of a WebSocket route: it answers the upgrade request.

    ``handler`` is the user's function, ``handler(ws, **url_variables)``.
    """

    #: Flask adds no ``OPTIONS`` method to the rule.
    provide_automatic_options = False

    def __init__(self, handler: Callable[..., Any]) -> None:
        self.handler = handler
        self.__name__ = getattr(handler, "__name__", "websocket_handler")
        self.__doc__ = handler.__doc__

    def __call__(self, **kwargs: Any) -> Response:
        """Answer the upgrade: an HTTP refusal, or 101 whose body serves the connection."""
        app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        websocket: Server | None = app.extensions.get("uwsgi_websocket")
        if websocket is None:
            raise RuntimeError(
                "a WebSocket route in an app without the extension: call init_app(app)"
            )
        return accept(websocket, app, self.handler, kwargs)


def accept(
    websocket: Server, app: Flask, handler: Callable[..., Any], kwargs: dict[str, Any]
) -> Response:
    """Check the origin, negotiate, and answer 101 with a body that runs ``handler``."""
    options = websocket.app_options(app)
    route_options: dict[str, Any] = getattr(request.url_rule, "websocket_options", {})
    if route_options:
        options = options.replace(**route_options)
    environ: WSGIEnvironment = request.environ
    try:
        check_origin(environ, options.allowed_origins)
        handshake = negotiate(environ, options)
    except HandshakeError as exc:
        return refusal(app, exc)
    except Exception:  # the app's subprotocol selector failed
        logger.exception("WebSocket handshake for %s failed", request.path)
        return refusal(
            app, HandshakeError("500 Internal Server Error", "the WebSocket handshake failed")
        )
    if uwsgi_api.tls_in_worker():
        if not _tls_refusal_logged:
            _tls_refusal_logged.append(True)
            logger.error(
                "WebSocket upgrade refused with 501 (as will be the next ones in this worker,"
                " unlogged): %s (README.rst, Deployment)",
                TLS_IN_WORKER,
            )
        return refusal(app, HandshakeError("501 Not Implemented", TLS_IN_WORKER))
    if not uwsgi_api.router_relays_websockets(environ):
        return refusal(app, HandshakeError("500 Internal Server Error", ROUTER_WITHOUT_WEBSOCKETS))
    if SOCKET not in environ and not uwsgi_api.running():
        logger.error("WebSocket routes need uWSGI: run the app with app.run() or uwsgi")
        return refusal(
            app, HandshakeError("500 Internal Server Error", "WebSocket routes need uWSGI")
        )

    busy = websocket.cannot_serve(environ)
    if busy is not None:
        return refusal(app, HandshakeError("503 Service Unavailable", busy, [RETRY_AFTER]))

    # Keep the request context for the connection: pushed once more here, popped when
    # the connection ends, so Flask's own pop when the view returns runs no teardown.
    ctx = request_ctx._get_current_object()  # type: ignore[attr-defined]
    body = _serve(
        ctx, request.view_args, websocket, app, handler, kwargs, environ, options, handshake
    )
    next(body)
    response = _switching_protocols(app.response_class)(
        body, status="101 Switching Protocols", headers=handshake.headers
    )
    del response.headers["Content-Type"]
    return response


def _serve(
    ctx: Any,
    view_args: dict[str, Any] | None,
    websocket: Server,
    app: Flask,
    handler: Callable[..., Any],
    kwargs: dict[str, Any],
    environ: dict[str, Any],
    options: Options,
    handshake: Handshake,
) -> Iterator[bytes]:
    """The body of the 101: it serves the connection in the request context ``ctx``.

    A generator of its own rather than a closure in :func:`accept`: the closure's cells
    were ten more objects per open connection for the garbage collector to visit at
    every full collection (see bench/README.md, Connection rate).
    """
    ctx.push()
    ctx.request.view_args = view_args  # push() matched the URL again
    try:
        yield b""  # primed by accept, so that closing the body unwinds this
        yield b""  # uWSGI sends the 101 with the first item of the body
    except BaseException:
        ctx.pop(None)
        raise
    # A worker told to go waits for the teardown too, not only for the handler.
    connections.request_started()
    result: Exception | Detached | None = None
    try:
        result = websocket.serve(
            app, handler, kwargs, environ, options, handshake, functools.partial(_end, ctx)
        )
    finally:
        if not isinstance(result, Detached):
            _end(ctx, result)


def _end(ctx: Any, error: BaseException | None) -> None:
    """The request of a connection that has ended: its teardown, once."""
    try:
        ctx.pop(error)
    finally:
        connections.request_ended()


_SWITCHING: dict[type[Response], type[Response]] = {}


def _switching_protocols(response_class: type[Response]) -> type[Response]:
    """``response_class`` sending its body after a 1xx status, which Werkzeug leaves out.

    A subclass of the app's class, so that Flask does not convert the response.
    """
    switching = _SWITCHING.get(response_class)
    if switching is None:

        class SwitchingProtocols(response_class):  # type: ignore[valid-type, misc]
            def get_app_iter(self, environ: WSGIEnvironment) -> Any:
                return self.response

        switching = _SWITCHING[response_class] = SwitchingProtocols
    return switching


def refusal(app: Flask, error: HandshakeError) -> Response:
    """A refused upgrade as a plain-text response of the app's class."""
    return app.response_class(
        error.reason + "\n", status=error.status, headers=error.headers, mimetype="text/plain"
    )


def not_an_upgrade(error: Exception) -> Response:
    """Werkzeug's ``WebsocketMismatch``: 426 for a plain HTTP request to a WebSocket-only
    URL; 400 for an upgrade request to a URL that has HTTP views only."""
    if request.environ.get("HTTP_UPGRADE", "").lower() == "websocket":
        return refusal(
            current_app,
            HandshakeError("400 Bad Request", "this URL has no WebSocket endpoint"),
        )
    return refusal(
        current_app,
        HandshakeError(
            "426 Upgrade Required",
            "this URL is a WebSocket endpoint: connect with a WebSocket client",
            [("Upgrade", "websocket"), ("Connection", "Upgrade")],
        ),
    )


def split_options(
    rule: str,
    endpoint: str | None,
    view_func: Callable[..., Any] | None,
    options: dict[str, Any],
) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """Read a route declaration: its endpoint (default: the handler's name), its
    Werkzeug ``Rule`` arguments and its connection options.

    A missing handler and unknown names raise ``TypeError`` now, when the route is
    declared.
    """
    if view_func is None:
        raise TypeError("add_url_rule() needs view_func, the handler")
    endpoint = endpoint or view_func.__name__
    connection = Options.check({k: v for k, v in options.items() if k in OPTION_NAMES})
    rule_args = {k: v for k, v in options.items() if k not in OPTION_NAMES}
    rule_args.pop("methods", None)  # the handshake is a GET; others get 400
    rule_args.pop("websocket", None)
    rule_args.pop("provide_automatic_options", None)
    try:
        Rule(rule, endpoint=endpoint, websocket=True, **rule_args)
    except TypeError:
        known = ", ".join(sorted(OPTION_NAMES - {"timeout"}))
        raise TypeError(
            f"unknown WebSocket option(s) or Rule argument(s): {', '.join(sorted(rule_args))};"
            f" WebSocket options: {known}"
        ) from None
    return endpoint, rule_args, connection


def add_websocket_rule(
    add_url_rule: Callable[..., Any],
    url_map: Map,
    rule: str,
    endpoint: str,
    view: WebSocketView,
    rule_args: dict[str, Any],
    connection_options: dict[str, Any],
) -> None:
    """Add a WebSocket rule with ``add_url_rule`` (an app's, or a blueprint setup state's).

    The rule, the last of ``url_map``, carries its connection options as
    ``rule.websocket_options``.
    """
    add_url_rule(rule, endpoint, view, websocket=True, methods=["GET"], **rule_args)
    added = list(url_map.iter_rules())[-1]
    added.websocket_options = connection_options  # type: ignore[attr-defined]
