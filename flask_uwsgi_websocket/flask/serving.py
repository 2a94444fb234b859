"""What the end of a handler means for its connection, in every flavour.

A handler that returns closes its connection with 1000; one that ends on
:class:`ConnectionClosed` (the peer left) ends quietly; one cancelled (asyncio)
closes with 1001; one that raises goes to the app's WebSocket error handler for
that exception, which picks the close code, or else closes with 1011 and is
logged to ``app.logger`` with Flask's ``got_request_exception`` signal, as Flask
does for a view.

:func:`outcome` is that routine, once, as a generator: it yields the awaitable an
``async def`` error handler returns. :func:`outcome_sync` and :func:`outcome_async`
are its two faces, for the blocking flavours and for asyncio.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any, Protocol

from flask import Flask, got_request_exception, has_request_context, request

from ..exceptions import ConnectionClosed

__all__ = ["ErrorHandlers", "close_args", "outcome", "outcome_async", "outcome_sync"]

logger = logging.getLogger("flask_uwsgi_websocket")

#: The close code and reason, and the exception left to report (``None``: none).
Outcome = tuple[int, str, Exception | None]


class ErrorHandlers(Protocol):
    """Where the WebSocket error handlers are registered: the extension."""

    def error_handler_for(self, error: BaseException) -> Callable[..., Any] | None:
        """The error handler for ``error``, or ``None``."""


def close_args(result: Any) -> tuple[int, str]:
    """The close code and reason an error handler returned: a code, a pair, or ``None``."""
    if result is None:
        return 1011, ""
    if isinstance(result, int):
        return result, ""
    code, reason = result
    return int(code), str(reason)


def outcome(
    handlers: ErrorHandlers,
    app: Flask,
    handler: Callable[..., Any],
    ws: Any,
    error: BaseException | None,
) -> Generator[Awaitable[Any], Any, Outcome]:
    """How ``handler``, which ended with ``error`` (``None``: it returned), closes ``ws``.

    Yields what an ``async def`` error handler returned, to be awaited (its result
    is sent back, or its exception thrown in). Returns the close code and reason,
    and the exception no error handler took, which has been reported.
    """
    if error is None:
        return 1000, "", None
    if isinstance(error, ConnectionClosed):
        logger.debug("WebSocket %s: handler ended on %s", ws.id, error)
        return 1000, "", None
    if isinstance(error, asyncio.CancelledError):
        # Cancelled because the connection is gone, or by a shutdown.
        logger.debug("WebSocket %s: handler cancelled", ws.id)
        return 1001, "", None
    assert isinstance(error, Exception)
    code, reason = 1011, ""
    failure: Exception | None = error
    on_error = handlers.error_handler_for(error)
    if on_error is not None:
        try:
            result = on_error(ws, error)
            if inspect.isawaitable(result):
                result = yield result
            code, reason = close_args(result)
            failure = None
        except ConnectionClosed:
            failure = None
        except Exception as again:
            failure = again
    if failure is not None:
        report_failure(app, handler, failure, ws.environ)
    return code, reason, failure


def outcome_sync(
    handlers: ErrorHandlers,
    app: Flask,
    handler: Callable[..., Any],
    ws: Any,
    error: Exception | None,
) -> Outcome:
    """:func:`outcome` where nothing can be awaited: an ``async def`` error handler fails."""
    steps = outcome(handlers, app, handler, ws, error)
    try:
        awaitable = next(steps)
        if inspect.iscoroutine(awaitable):
            awaitable.close()  # never awaited, on purpose
        steps.throw(TypeError("an async error handler needs AsyncioWebSocket"))
    except StopIteration as done:
        result: Outcome = done.value
        return result
    raise RuntimeError("outcome() went on after an error")  # pragma: no cover


async def outcome_async(
    handlers: ErrorHandlers,
    app: Flask,
    handler: Callable[..., Any],
    ws: Any,
    error: BaseException | None,
) -> Outcome:
    """:func:`outcome` in a coroutine, awaiting an ``async def`` error handler."""
    steps = outcome(handlers, app, handler, ws, error)
    try:
        awaitable = next(steps)
        while True:
            try:
                result = await awaitable
            except Exception as exc:
                awaitable = steps.throw(exc)
            else:
                awaitable = steps.send(result)
    except StopIteration as done:
        final: Outcome = done.value
        return final


def report_failure(
    app: Flask, handler: Callable[..., Any], error: Exception, environ: dict[str, Any]
) -> None:
    """Log an unhandled exception of a handler to ``app.logger``, with its route, in full,
    and send Flask's ``got_request_exception`` signal, as Flask does for a view."""
    rule = request.url_rule if has_request_context() else None
    app.logger.error(
        "Exception in WebSocket handler %s (route %s) for %s",
        getattr(handler, "__name__", handler),
        rule.rule if rule is not None else "?",
        environ.get("PATH_INFO"),
        exc_info=error,
    )
    got_request_exception.send(app, exception=error)
