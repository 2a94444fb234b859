"""The WSGI middleware: malformed upgrades to WebSocket routes get a clear 400 before Flask."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from werkzeug.exceptions import HTTPException

from ..core.handshake import is_upgrade_attempt, validate
from ..exceptions import HandshakeError
from .views import Server, refusal

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from flask import Flask

    from ..core.options import Options

__all__ = ["WebSocketMiddleware"]


class WebSocketMiddleware:
    """Wraps ``app.wsgi_app``; WebSocket routes are served by Flask itself (see ``views``).

    Werkzeug matches a WebSocket rule only for a well-formed upgrade request:
    an upgrade attempt that is malformed (no ``Connection: Upgrade``, a wrong
    ``Sec-WebSocket-Version``, a bad key, not a GET) would get a generic 400,
    or the HTTP view at the same URL. Here such an attempt at a WebSocket
    route gets 400 (426 for the version) with a one-line reason instead. Every
    other request goes to the wrapped application untouched.
    """

    def __init__(self, wsgi_app: WSGIApplication, websocket: Server, app: Flask) -> None:
        self.wsgi_app = wsgi_app
        self.websocket = websocket
        self.app = app

    @property
    def options(self) -> Options:
        """The app's options: the extension's, then its ``WEBSOCKET_*`` config."""
        return self.websocket.app_options(self.app)

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        if is_upgrade_attempt(environ) and self._is_websocket_route(environ):
            try:
                validate(environ)
            except HandshakeError as exc:
                return refusal(self.app, exc)(environ, start_response)
            environ["HTTP_UPGRADE"] = "websocket"  # as Werkzeug's matching expects it
        return self.wsgi_app(environ, start_response)

    def _is_websocket_route(self, environ: WSGIEnvironment) -> bool:
        urls = self.app.url_map.bind_to_environ(environ)
        urls.websocket = True  # match WebSocket rules even when Upgrade is missing: 400 then
        try:
            rule, _ = urls.match(method="GET", return_rule=True)
        except HTTPException:
            return False
        return hasattr(rule, "websocket_options")
