"""The gevent flavour: ``uwsgi --gevent N``, or ``app.run(gevent=N)``.

Each request runs in its own greenlet, and so does its handler. The
connection's socket is watched by the gevent hub itself (libev watchers that
call the connection's callbacks), so an idle connection costs no wake-up but
its keepalive, and a message wakes the waiting greenlet with one switch. Any
greenlet may send to any connection. When the connection is gone while its
handler is blocked elsewhere (a sleep, a queue), :class:`ConnectionClosed` is
raised in the handler's greenlet, which ends it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import greenlet
from gevent import get_hub
from gevent.hub import Waiter

from .client import WebSocketClient
from .connection import Reactor, Timer, in_this_thread
from .exceptions import ConnectionClosed
from .extension import WebSocket
from .middleware import WebSocketMiddleware

if TYPE_CHECKING:
    pass

__all__ = ["GeventWebSocket", "GeventWebSocketClient", "GeventWebSocketMiddleware"]


class GeventTimer:
    """A one-shot libev timer."""

    def __init__(self, loop: Any, delay: float, callback: Callable[[], None]) -> None:
        self._watcher = loop.timer(delay)
        self._watcher.start(self._fire, callback)

    def _fire(self, callback: Callable[[], None]) -> None:
        self._watcher.close()
        callback()

    def cancel(self) -> None:
        """Do not make the call."""
        self._watcher.close()


class GeventReactor:
    """A connection's libev watchers on the gevent hub."""

    def __init__(self, fd: int) -> None:
        self.loop = get_hub().loop
        self._read = self.loop.io(fd, 1)
        self._write = self.loop.io(fd, 2)

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the hub whenever the socket is readable."""
        if callback is None:
            self._read.stop()
        else:
            self._read.start(callback)

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the hub whenever the socket is writable."""
        if callback is None:
            self._write.stop()
        else:
            self._write.start(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` from the hub after ``delay`` seconds."""
        return GeventTimer(self.loop, delay, callback)

    def close(self) -> None:
        """Stop and free both watchers."""
        self._read.close()
        self._write.close()


class GeventWebSocketClient(WebSocketClient):
    """A WebSocket connection in the gevent flavour; the same API as :class:`WebSocketClient`."""

    def _prepare(self) -> None:
        self._hub = get_hub()
        self._waiters: list[Waiter[Any]] = []
        self._handler: Any = None
        self._handler_waiting = 0  # the handler is blocked in this connection's methods
        # Greenlets switch only where they wait: no lock is needed.
        self._lock = self._condition = _NO_LOCK

    def _make_reactor(self) -> Reactor:
        return GeventReactor(self.fd)

    def _make_caller(self) -> Callable[[Callable[[], None]], None]:
        return in_this_thread(self._hub.loop.run_callback_threadsafe)

    def _wait(self, timeout: float | None) -> None:
        waiter: Waiter[Any] = Waiter(self._hub)
        self._waiters.append(waiter)
        mine = greenlet.getcurrent() is self._handler
        self._handler_waiting += mine
        timer = None
        if timeout is not None:
            timer = self._hub.loop.timer(max(timeout, 0.0))
            timer.start(waiter.switch, None)
        try:
            waiter.get()
        finally:
            self._handler_waiting -= mine
            if timer is not None:
                timer.close()
                if waiter in self._waiters:  # woken by the timer
                    self._waiters.remove(waiter)

    def _wake(self) -> None:
        waiters = self._waiters
        if waiters:
            self._waiters = []
            if greenlet.getcurrent() is self._hub:
                for waiter in waiters:
                    waiter.switch(None)
            else:
                for waiter in waiters:
                    self._hub.loop.run_callback(waiter.switch, None)
        if self._handler is not None and not self.connected:
            self._hub.loop.run_callback(self._stop_handler)

    def _stop_handler(self) -> None:
        handler = self._handler
        if (
            handler is None
            or handler.dead
            or handler is greenlet.getcurrent()
            or self._handler_waiting
        ):
            return
        # Blocked outside this connection: end it where it waits.
        self._handler = None
        handler.throw(ConnectionClosed(self.close_code or 1006, self.close_reason or ""))

    def _enter_handler(self) -> None:
        self._handler = greenlet.getcurrent()

    def _leave_handler(self) -> None:
        self._handler = None


class _NoLock:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


_NO_LOCK: Any = _NoLock()


class GeventWebSocketMiddleware(WebSocketMiddleware):
    """Serves WebSocket routes with :class:`GeventWebSocketClient`."""

    client_class = GeventWebSocketClient


class GeventWebSocket(WebSocket):
    """The Flask extension, gevent flavour: run with ``app.run(gevent=100)``."""

    middleware_class = GeventWebSocketMiddleware
    run_defaults = {"gevent": 100}
    engine = "gevent"
    plugins = ("gevent",)
