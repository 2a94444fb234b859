"""Flask-uWSGI-WebSocket: RFC 6455 WebSockets for Flask apps served by uWSGI.

Import the extension of the flavour the app runs in::

    from flask_uwsgi_websocket import GeventWebSocket   # or WebSocket, AsyncioWebSocket

The gevent and asyncio names are imported on first use, so the plain flavour needs
neither gevent nor greenlet.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .callbacks import WebSocketHandler
from .core.options import Options
from .exceptions import ConnectionClosed, HandshakeError, WebSocketError
from .flask.blueprints import WebSocketBlueprint
from .flask.middleware import WebSocketMiddleware
from .threads import WebSocket, WebSocketClient

if TYPE_CHECKING:
    from .asyncio import AsyncioWebSocket, AsyncioWebSocketClient, AsyncioWebSocketMiddleware
    from .gevent import GeventWebSocket, GeventWebSocketClient, GeventWebSocketMiddleware

__all__ = [
    "AsyncioWebSocket",
    "AsyncioWebSocketClient",
    "AsyncioWebSocketMiddleware",
    "ConnectionClosed",
    "GeventWebSocket",
    "GeventWebSocketClient",
    "GeventWebSocketMiddleware",
    "HandshakeError",
    "Options",
    "WebSocket",
    "WebSocketBlueprint",
    "WebSocketClient",
    "WebSocketError",
    "WebSocketHandler",
    "WebSocketMiddleware",
]
__version__ = "1.0.0.dev0"

_LAZY = {
    "AsyncioWebSocket": "asyncio",
    "AsyncioWebSocketClient": "asyncio",
    "AsyncioWebSocketMiddleware": "asyncio",
    "GeventWebSocket": "gevent",
    "GeventWebSocketClient": "gevent",
    "GeventWebSocketMiddleware": "gevent",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
