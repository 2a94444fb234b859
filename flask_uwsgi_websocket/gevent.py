"""The gevent flavour: ``uwsgi --gevent N``, or ``app.run(gevent=N)``.

Each request runs in its own greenlet, and so does its handler. The
connection's socket is watched by the gevent hub itself (libev watchers that
call the connection's callbacks), so an idle connection costs no wake-up but
its keepalive, and a message wakes the waiting greenlet with one switch. Any
greenlet may send to any connection. When the connection is gone while its
handler is blocked elsewhere (a sleep, a queue), :class:`ConnectionClosed` is
raised in the handler's greenlet, which ends it.

A callback handler (``WebSocketHandler``) holds no greenlet while its connection is
idle: once ``on_open`` has returned, the connection moves to a duplicate of its
socket and its request ends (uWSGI closes its own descriptor and frees the core for
the next request), so a worker holds more connections than ``--gevent N``. The hub's
watchers drive it from then on: when a message comes, one of the worker's reused
greenlets (:class:`Runners`) calls ``on_message`` for each waiting message in order,
and goes back to the pool when none is left; at the end, one calls ``on_close`` and
runs the request's teardown. Where uWSGI reads the socket again after the request
(``--http11-socket``), the handler holds its request for the connection's life instead
(see :class:`DetachedClient`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import gevent
import greenlet
from flask import has_request_context, request
from gevent import get_hub
from werkzeug.datastructures import EnvironHeaders

from . import callbacks, uwsgi_api
from .client import BlockingClient
from .core.reactor import Reactor, Timer, call_threadsafe
from .exceptions import ConnectionClosed
from .flask.extension import WebSocketExtension
from .flask.middleware import WebSocketMiddleware
from .flask.serving import ErrorHandlers, outcome_sync
from .flask.views import DETACHED, Detached
from .metrics import worker_metrics
from .runtimes import SOCKET, socket_fd
from .shutdown import RECYCLE_CHECK, connections

if TYPE_CHECKING:
    from flask import Flask

    from .core.framing import Message
    from .core.handshake import Handshake
    from .core.options import Options

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
        # The greenlets parked in _wait, each until it is switched to. No gevent Waiter: a
        # wait costs one list entry, and every caller of _wait asks again what it waits
        # for, so a wake that finds no change is harmless.
        self._waiting: list[greenlet.greenlet] = []
        self._handler: Any = None
        self._handler_waiting = 0  # the handler is blocked in this connection's methods
        super().__init__(*args, **kwargs)

    def _make_reactor(self, fd: int) -> Reactor:
        return GeventReactor(fd)

    def _wait(self, timeout: float | None) -> None:
        current = greenlet.getcurrent()
        mine = current is self._handler
        self._handler_waiting += mine
        self._waiting.append(current)
        timer = None
        if timeout is not None:
            timer = self._hub.loop.timer(max(timeout, 0.0))
            timer.start(current.switch)
        try:
            self._hub.switch()
        finally:
            self._handler_waiting -= mine
            if timer is not None:
                timer.close()
            if current in self._waiting:  # woken by the timer, or thrown into
                self._waiting.remove(current)

    _wait_message = _wait

    def _wake_waiters(self) -> None:
        waiting = self._waiting
        if waiting:
            if greenlet.getcurrent() is self._hub:  # _switch_waiting, inline
                self._waiting = []
                for parked in waiting:
                    parked.switch()
            else:
                self._hub.loop.run_callback(self._switch_waiting)
        # A handler waiting in this connection's methods was just woken and sees the close
        # itself; asked first, as the connection's state costs two Python calls.
        if (
            self._handler is not None
            and not self._handler_waiting
            and not self.connection.connected
        ):
            self._hub.loop.run_callback(self._stop_handler)

    _wake = _wake_waiters

    def _switch_waiting(self) -> None:
        """From the hub: resume the greenlets parked in :meth:`_wait` (there, as one woken
        another way has left the list by then)."""
        waiting, self._waiting = self._waiting, []
        for parked in waiting:
            parked.switch()

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


class Runners:
    """The greenlets (children of the hub) that run detached connections' callbacks,
    reused: a new greenlet costs about 9 us (an mmap and a munmap of 16 KiB for Python's
    frame stack, and their page faults), more than a message's ``on_message``.

    A runner takes a job, runs it, then parks in :attr:`idle` holding neither the job nor
    its context, until the next; beyond :attr:`IDLE_MAX` parked runners, one that is done
    ends instead, so an idle worker holds few. A job that raises ends its runner (the
    exception goes to the hub, which logs it); so does one thrown out of (``gevent.kill``).
    """

    IDLE_MAX = 32

    def __init__(self, hub: Any) -> None:
        self._hub = hub
        self.idle: list[greenlet.greenlet] = []

    def run(self, context: Any, function: Callable[..., None], args: tuple[Any, ...]) -> None:
        """From the hub: call ``function(*args)`` in ``context`` in a runner, now."""
        runner = None
        while self.idle and (runner is None or runner.dead):  # thrown into while parked
            runner = self.idle.pop()
        if runner is None or runner.dead:
            runner = greenlet.greenlet(self._serve, self._hub)
        runner.gr_context = context
        runner.switch(function, args)

    def _serve(self, function: Callable[..., None] | None, args: tuple[Any, ...]) -> None:
        me = greenlet.getcurrent()
        while function is not None:
            function(*args)
            function = None
            args = ()
            me.gr_context = None
            if len(self.idle) >= self.IDLE_MAX:
                return
            self.idle.append(me)
            function, args = self._hub.switch()


_runners: dict[Any, Runners] = {}


def runners_of(hub: Any) -> Runners:
    """The runners of ``hub``: a worker's (one hub per thread; not ``threading.local``,
    which gevent's monkey-patching makes one per greenlet)."""
    runners = _runners.get(hub)
    if runners is None:
        runners = _runners[hub] = Runners(hub)
    return runners


class DetachedClient(GeventWebSocketClient):
    """The connection of a callback handler once its request has ended.

    It runs on its own duplicate of the request's socket, which it closes at the end.
    Its callbacks run in the worker's runners (:class:`Runners`) in the request's context
    (the same ``contextvars`` context, so ``request``, ``g`` and ``current_app`` are the
    request's), one at a time: a runner while messages wait, one at the end.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._callbacks: tuple[Callable[..., Any] | None, ...] = (None, None, None)
        self._context: Any = None
        # What ending needs: the class, the error handlers, the app, the request's end.
        self._ending: tuple[type, ErrorHandlers, Flask, Callable[[BaseException | None], None]]
        self._busy = True  # a greenlet runs this connection's callbacks: on_open's first
        self._checking = False
        super().__init__(*args, **kwargs)

    def open(
        self,
        cls: type,
        kwargs: dict[str, Any],
        websocket: ErrorHandlers,
        app: Flask,
        end: Callable[[BaseException | None], None],
    ) -> Exception | Detached | None:
        """Call ``on_open`` in this (the request's) greenlet, then detach: return
        :data:`DETACHED`, and call ``end`` once the connection has ended. When
        ``on_open`` raises, end the connection now and return the exception left."""
        self._callbacks = on_open, _, _ = callbacks.instance(cls)
        self._ending = cls, websocket, app, end
        try:
            if on_open is not None:
                self._enter_handler()
                try:
                    on_open(self, **kwargs)
                finally:
                    self._leave_handler()
        except Exception as exc:
            return self._end(exc)
        self._context = greenlet.getcurrent().gr_context
        self._busy = False
        self._wake()  # what came during on_open
        return DETACHED

    def _wake(self) -> None:
        self._wake_waiters()
        if not self._busy and not self._checking:
            self._checking = True
            self._hub.loop.run_callback(self._check)

    def _check(self) -> None:
        """From the hub: give a runner the connection's work when a message waits, or
        when the connection is over."""
        self._checking = False
        if self._busy:
            return  # the running greenlet takes what comes
        try:
            message = self.connection.next_message()
        except ConnectionClosed:
            self._run(self._ended)
        else:
            if message is not None:
                self._run(self._deliver, message)

    def _run(self, function: Callable[..., None], *args: Any) -> None:
        self._busy = True
        runners_of(self._hub).run(self._context, function, args)

    def _deliver(self, message: Message | None) -> None:
        """``on_message`` for each waiting message, in order; then free the runner, or
        end the connection when it is over or a callback raised."""
        on_message = self._callbacks[1]
        try:
            while message is not None:
                if on_message is not None:
                    self._enter_handler()
                    try:
                        on_message(self, message)
                    finally:
                        self._leave_handler()
                if worker_metrics.pushing:
                    worker_metrics.push_if_due()
                message = self.connection.next_message()
        except ConnectionClosed:  # the connection is over, or on_message saw it end
            self._ended()
        except Exception as exc:
            self._ended(exc)
        except BaseException:  # the runner was killed (GreenletExit): end the connection too
            self._ended()
            raise
        else:
            self._busy = False

    def _ended(self, error: Exception | None = None) -> None:
        """End the connection, then its request (its teardown)."""
        app, end = self._ending[2:]
        try:
            end(self._end(error))
        except Exception:  # a teardown function raised: no request left to fail
            app.logger.exception("WebSocket %s: the request's teardown failed", self.id)

    def _end(self, error: Exception | None) -> Exception | None:
        """``on_close``, then the close the handler's outcome calls for, and release;
        the exception left."""
        cls, websocket, app, _ = self._ending
        on_close = self._callbacks[2]
        try:
            try:
                if on_close is not None:
                    on_close(self, self.close_code, self.close_reason)
            except Exception as exc:
                error = exc
            handler = callbacks.blocking(cls)  # the name under which failures are logged
            code, reason, failure = outcome_sync(websocket, app, handler, self, error)
            self.close(code, reason)
            return failure
        except Exception as exc:  # a close that failed: logged, as in every handler's end
            app.logger.exception("WebSocket %s: ending the connection failed", self.id)
            return exc
        finally:
            self._release()
            os.close(self.fd)


def outliving(environ: dict[str, Any]) -> dict[str, Any]:
    """A copy of the request's ``environ`` that outlives the request, now the request's
    own (``request.environ``, ``request.headers``): uWSGI may empty the original, and
    reuse it for the core's next request, once the request has ended."""
    copy = dict(environ)
    if has_request_context():
        request.environ = copy
        request.headers = EnvironHeaders(copy)
    return copy


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
        """Serve the connection; a callback handler's goes on without its request where
        uWSGI allows (see the module's docstring): on a duplicate of the socket."""
        if (
            not isinstance(handler, type)
            or SOCKET in environ
            or not uwsgi_api.connections_may_outlive_requests()
        ):
            return super().serve(app, handler, kwargs, environ, options, handshake, end)
        fd = os.dup(socket_fd(environ))
        environ = outliving(environ)
        client = self.open_client(app, DetachedClient, fd, environ, options, handshake)
        if isinstance(client, Exception):
            os.close(fd)
            return client
        return client.open(handler, kwargs, self, app, end)
