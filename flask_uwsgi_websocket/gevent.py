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

import signal
import threading
from collections.abc import Callable
from typing import Any, ClassVar

import gevent
import greenlet
from gevent import get_hub
from gevent.hub import Waiter

from . import uwsgi_api
from .client import BlockingClient
from .core.reactor import Reactor, Timer, call_threadsafe
from .flask.extension import WebSocketExtension
from .flask.middleware import WebSocketMiddleware
from .shutdown import RECYCLE_CHECK, connections

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
        self._thread = threading.get_ident()  # the hub's

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

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the hub, from any thread: now if this is the hub's."""
        call_threadsafe(self._thread, self.loop.run_callback_threadsafe, callback)

    def close(self) -> None:
        """Stop and free both watchers."""
        self._read.close()
        self._write.close()


class GeventWebSocketClient(BlockingClient):
    """A WebSocket connection in the gevent flavour; the same API as the plain
    :class:`~flask_uwsgi_websocket.WebSocketClient`. Greenlets switch only where they
    wait, so the connection needs no lock."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._hub = get_hub()
        self._waiters: list[Waiter[Any]] = []
        self._handler: Any = None
        self._handler_waiting = 0  # the handler is blocked in this connection's methods
        super().__init__(*args, **kwargs)

    def _make_reactor(self, fd: int) -> Reactor:
        return GeventReactor(fd)

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
        # A handler waiting in this connection's methods was just woken and sees the close
        # itself; asked first, as the connection's state costs two Python calls.
        if (
            self._handler is not None
            and not self._handler_waiting
            and not self.connection.connected
        ):
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
        handler.throw(self.connection.closed_error())

    def _enter_handler(self) -> None:
        self._handler = greenlet.getcurrent()

    def _leave_handler(self) -> None:
        self._handler = None


def watch_worker_end() -> None:
    """In each uWSGI worker: close the connections with 1001 when uWSGI ends it.

    uWSGI's gevent loop handles the signals on the hub: SIGHUP stops accepting and
    waits for the requests to end, checking each second; SIGINT and SIGTERM end the
    loop at once, and the worker's main greenlet then calls ``uwsgi.atexit`` with the
    hub still running. So: ``uwsgi.atexit`` for those, and for SIGHUP a handler of our
    own beside uWSGI's (libev calls both), added by the first connection: a signal
    watcher made before uWSGI's loop runs leaves uWSGI's graceful reload blind to the
    running requests. Where the worker may recycle itself (``--max-requests``...), a
    greenlet looks each second.
    """
    uwsgi_api.at_exit(_shut_down)
    connections.when_first_opened(_watch_sighup)


def _watch_sighup() -> None:
    gevent.signal_handler(signal.SIGHUP, _shut_down)
    if uwsgi_api.watches_recycling():
        gevent.spawn(_watch_recycling)


def _watch_recycling() -> None:
    while not uwsgi_api.recycling():
        gevent.sleep(RECYCLE_CHECK)
    _shut_down()


def _shut_down() -> None:
    connections.shut_down(gevent.sleep)


class GeventWebSocketMiddleware(WebSocketMiddleware):
    """The middleware of the gevent flavour (0.6.1 name): :class:`WebSocketMiddleware`."""


class GeventWebSocket(WebSocketExtension):
    """The Flask extension, gevent flavour: run with ``app.run(gevent=100)``."""

    client_class = GeventWebSocketClient
    middleware_class = GeventWebSocketMiddleware
    run_defaults: ClassVar[dict[str, Any]] = {"gevent": 100}
    engine: ClassVar[str | None] = "gevent"
    plugins: ClassVar[tuple[str, ...]] = ("gevent",)
    watch_worker_end = staticmethod(watch_worker_end)
