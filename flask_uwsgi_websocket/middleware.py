"""The WSGI middleware: route matching, the handshake, and handing the socket to a client."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException

from .client import WebSocketClient
from .connection import logger
from .handshake import Handshake, HandshakeError, is_upgrade_attempt, negotiate
from .options import Options

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from .extension import WebSocket

__all__ = ["WebSocketMiddleware"]


class WebSocketMiddleware:
    """Wraps ``app.wsgi_app``: upgrade requests to WebSocket routes are served here.

    Any other request -- not an upgrade attempt, or a URL with no WebSocket
    route -- goes to the wrapped application untouched, so one URL can serve
    both an HTTP view and a WebSocket handler.
    """

    #: The client class handlers receive; each flavour sets its own.
    client_class: type[WebSocketClient] = WebSocketClient

    def __init__(
        self, wsgi_app: WSGIApplication, websocket: WebSocket, app: Flask, options: Options
    ) -> None:
        self.wsgi_app = wsgi_app
        self.websocket = websocket
        self.app = app
        #: The app's options: the extension's, then its ``WEBSOCKET_*`` config.
        self.options = options

    def __call__(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        if not is_upgrade_attempt(environ):
            return self.wsgi_app(environ, start_response)
        urls = self.websocket.url_map.bind_to_environ(environ)
        urls.websocket = True  # match WebSocket rules even when Upgrade is missing: 400 below
        try:
            rule, kwargs = urls.match(return_rule=True)
        except HTTPException:
            return self.wsgi_app(environ, start_response)
        handler = self.websocket.view_functions[rule.endpoint]
        route_options: dict[str, Any] = getattr(rule, "websocket_options", {})
        options = self.options.replace(**route_options) if route_options else self.options
        try:
            handshake = negotiate(environ, options)
        except HandshakeError as exc:
            return self._refuse(start_response, exc)
        except Exception:  # the app's subprotocol selector failed
            logger.exception("WebSocket handshake for %s failed", environ.get("PATH_INFO"))
            return self._refuse(
                start_response,
                HandshakeError("500 Internal Server Error", "the WebSocket handshake failed"),
            )
        try:
            import uwsgi
        except ImportError:
            logger.error("WebSocket routes need uWSGI: run the app with app.run() or uwsgi")
            return self._refuse(
                start_response,
                HandshakeError("500 Internal Server Error", "WebSocket routes need uWSGI"),
            )
        start_response("101 Switching Protocols", handshake.headers)
        return self._serve(uwsgi, environ, handler, dict(kwargs), options, handshake)

    def _serve(
        self,
        uwsgi: Any,
        environ: WSGIEnvironment,
        handler: Any,
        kwargs: dict[str, Any],
        options: Options,
        handshake: Handshake,
    ) -> Iterator[bytes]:
        yield b""  # uWSGI sends the 101 with the first item of the body
        client = self.client_class(uwsgi.connection_fd(), environ, options, handshake)
        with self.app.request_context(environ):
            client._serve(handler, kwargs, self.app)

    @staticmethod
    def _refuse(start_response: StartResponse, error: HandshakeError) -> list[bytes]:
        body = (error.reason + "\n").encode()
        headers = [
            ("Content-Type", "text/plain; charset=utf-8"),
            ("Content-Length", str(len(body))),
            *error.headers,
        ]
        start_response(error.status, headers)
        return [body]
