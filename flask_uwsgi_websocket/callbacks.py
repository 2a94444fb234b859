"""Callback handlers: a class whose methods the connection's events call, as a route.

::

    @websocket.route("/chat/<room>")
    class Chat(WebSocketHandler):
        def on_open(self, ws, room):
            ws.join(room)

        def on_message(self, ws, message):
            websocket.broadcast(message, room=next(iter(ws.rooms)))

        def on_close(self, ws, code, reason):
            ...

One instance per connection, made with no arguments. ``on_open(ws, **url_variables)``
first; ``on_message(ws, message)`` for each message, in order, the next one only once
the previous call has returned; ``on_close(ws, code, reason)`` last, once, whatever
ended the connection: ``code`` and ``reason`` are the peer's close frame's (1006 when
it sent none), ``None`` while the connection is still open (a callback raised, or
returned after ``ws.close()`` began). A callback that raises ends the connection as a
handler that raises does (1011, or the app's WebSocket error handler). The methods run
like a handler function, in the request's context and lifecycle; in the asyncio flavour
each may be ``async def`` or not. In the gevent flavour under uWSGI the connection outlives
its request once ``on_open`` has returned, and an idle one holds no greenlet (see
``gevent.DetachedClient``).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["WebSocketHandler", "blocking", "check", "coroutine", "instance"]

CALLBACKS = ("on_open", "on_message", "on_close")


class WebSocketHandler:
    """The base of a callback handler: each method does nothing until overridden."""

    def on_open(self, ws: Any, **url_variables: Any) -> Any:
        """The connection is open; ``url_variables`` are the route's."""

    def on_message(self, ws: Any, message: str | bytes) -> Any:
        """A message came: ``str`` (text) or ``bytes`` (binary)."""

    def on_close(self, ws: Any, code: int | None, reason: str | None) -> Any:
        """The connection has ended (see the module's docstring for ``code``)."""


def _method(handler: object, name: str) -> Callable[..., Any] | None:
    method = getattr(handler, name, None)
    return method if callable(method) else None


def instance(cls: type) -> tuple[Callable[..., Any] | None, ...]:
    """A new instance's ``on_open``, ``on_message`` and ``on_close`` (``None``: absent)."""
    callbacks = cls()
    return tuple(_method(callbacks, name) for name in CALLBACKS)


def check(cls: type, asynchronous: bool) -> None:
    """Refuse a class without callbacks, or with ``async def`` ones outside asyncio."""
    names = [name for name in CALLBACKS if _method(cls, name) is not None]
    if not names:
        raise TypeError(f"{cls.__name__} has none of {', '.join(CALLBACKS)}: not a handler")
    if not asynchronous:
        for name in names:
            if inspect.iscoroutinefunction(getattr(cls, name)):
                raise TypeError(
                    f"{cls.__name__}.{name} is a coroutine function: use AsyncioWebSocket "
                    f"for async callbacks, or write it with def"
                )


@functools.cache
def blocking(cls: type) -> Callable[..., None]:
    """``cls`` as a handler function of the plain and gevent flavours."""

    def handler(ws: Any, **url_variables: Any) -> None:
        on_open, on_message, on_close = instance(cls)
        try:
            if on_open is not None:
                on_open(ws, **url_variables)
            for message in ws:
                if on_message is not None:
                    on_message(ws, message)
        finally:
            if on_close is not None:
                on_close(ws, ws.close_code, ws.close_reason)

    return _named(handler, cls)


@functools.cache
def coroutine(cls: type) -> Callable[..., Coroutine[Any, Any, None]]:
    """``cls`` as a handler coroutine function of the asyncio flavour."""

    async def handler(ws: Any, **url_variables: Any) -> None:
        on_open, on_message, on_close = instance(cls)
        try:
            if on_open is not None:
                await _done(on_open(ws, **url_variables))
            async for message in ws:
                if on_message is not None:
                    await _done(on_message(ws, message))
        finally:
            if on_close is not None:
                await _done(on_close(ws, ws.close_code, ws.close_reason))

    return _named(handler, cls)


async def _done(result: Any) -> None:
    if inspect.isawaitable(result):
        await result


_Function = TypeVar("_Function", bound=Callable[..., Any])


def _named(function: _Function, cls: type) -> _Function:
    function.__name__ = function.__qualname__ = cls.__name__
    function.__doc__ = cls.__doc__
    return function
