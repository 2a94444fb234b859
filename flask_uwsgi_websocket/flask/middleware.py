"""The WSGI middleware: malformed upgrades to WebSocket routes get a clear 400 before Flask,
and Werkzeug's development server (``flask run``) serves WebSocket routes too."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from werkzeug.exceptions import HTTPException

from .. import uwsgi_api
from ..core.handshake import is_upgrade_attempt, validate
from ..exceptions import HandshakeError
from ..runtimes import SOCKET, runtime
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

    Under Werkzeug's development server, which gives the connection's socket as
    ``environ["werkzeug.socket"]``, an upgrade to a WebSocket route is served
    over that socket, the request running where its flavour runs it (see
    ``runtimes``), so ``flask run`` serves WebSockets for development.
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
            if "werkzeug.socket" in environ and SOCKET not in environ and not uwsgi_api.running():
                return self._serve_on_werkzeug(environ, start_response)
        return self.wsgi_app(environ, start_response)

    def _serve_on_werkzeug(
        self, environ: WSGIEnvironment, start_response: StartResponse
    ) -> Iterable[bytes]:
        """Serve the request in its flavour's runtime, writing the response with the
        server's ``write``; the connection is over when this returns."""
        sock = environ["werkzeug.socket"]
        environ[SOCKET] = sock

        def serve() -> None:
            write: Callable[[bytes], object] | None = None

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                nonlocal write
                write = start_response(status, headers, exc_info)
                return write

            body = self.wsgi_app(environ, start)
            try:
                for chunk in body:
                    assert write is not None
                    write(chunk)  # the first, b"", sends the 101
            finally:
                close = getattr(body, "close", None)
                if close is not None:
                    close()

        try:
            runtime(self.websocket.engine).run(serve)
        finally:
            sock.setblocking(True)  # as the server left it: the connection made it non-blocking
        return []

    def _is_websocket_route(self, environ: WSGIEnvironment) -> bool:
        urls = self.app.url_map.bind_to_environ(environ)
        urls.websocket = True  # match WebSocket rules even when Upgrade is missing: 400 then
        try:
            rule, _ = urls.match(method="GET", return_rule=True)
        except HTTPException:
            return False
        return hasattr(rule, "websocket_options")
