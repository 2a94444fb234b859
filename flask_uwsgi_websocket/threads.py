"""The plain flavour: processes and threads (``uwsgi --threads N``, or ``app.run()``).

The handler runs in the request's thread. One daemon thread per worker process
runs an asyncio event loop that watches every connection of that process (the
:class:`IOThread`): it answers pings, keeps connections alive and queues
messages while handlers do other work. A lock per connection makes ``send`` and
``close`` safe from any thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from .client import BlockingClient
from .core.reactor import Reactor, Timer
from .flask.extension import WebSocketExtension
from .flask.middleware import WebSocketMiddleware
from .shutdown import watch_signals

__all__ = ["WebSocket", "WebSocketClient", "WebSocketMiddleware"]


class IOThread:
    """An asyncio event loop in a daemon thread: one per worker process."""

    _current: IOThread | None = None
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="websocket-io", daemon=True
        )
        try:
            self.thread.start()
        except BaseException:  # no thread to be had: give the loop's descriptors back
            self.loop.close()
            raise

    @classmethod
    def current(cls) -> IOThread:
        """This process's I/O thread, started on first use (after uWSGI forked)."""
        with cls._lock:
            io = cls._current
            if io is None or io.pid != os.getpid():
                io = cls._current = cls()
            return io

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        """Call ``function`` in the I/O thread, now if this is it."""
        if threading.get_ident() == self.thread.ident:
            function(*args)
        else:
            self.loop.call_soon_threadsafe(function, *args)

    def call_and_wait(self, function: Callable[[], Any]) -> None:
        """Call ``function`` in the I/O thread and wait until it has run."""
        if threading.get_ident() == self.thread.ident:
            function()
            return
        done = threading.Event()

        def run() -> None:
            try:
                function()
            finally:
                done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait()


class ThreadTimer:
    """A call scheduled on the I/O thread; ``cancel`` works from any thread."""

    def __init__(self, io: IOThread, delay: float, callback: Callable[[], None]) -> None:
        self._callback: Callable[[], None] | None = callback
        self._handle: asyncio.TimerHandle | None = None
        self._io = io
        io.call(self._arm, delay)

    def _arm(self, delay: float) -> None:
        if self._callback is not None:
            self._handle = self._io.loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        callback, self._callback = self._callback, None
        if callback is not None:
            callback()

    def cancel(self) -> None:
        """Do not make the call."""
        self._callback = None
        handle = self._handle
        if handle is not None:
            self._io.call(handle.cancel)


class ThreadReactor:
    """A connection's watchers on the process's :class:`IOThread`."""

    def __init__(self, fd: int, io: IOThread) -> None:
        self.fd = fd
        self.io = io

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` in the I/O thread whenever the socket is readable."""
        loop = self.io.loop
        if callback is None:
            self.io.call(loop.remove_reader, self.fd)
        else:
            self.io.call(loop.add_reader, self.fd, callback)

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` in the I/O thread whenever the socket is writable."""
        loop = self.io.loop
        if callback is None:
            self.io.call(loop.remove_writer, self.fd)
        else:
            self.io.call(loop.add_writer, self.fd, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` in the I/O thread after ``delay`` seconds."""
        return ThreadTimer(self.io, delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` now, in this thread: the connection locks its state."""
        callback()

    def close(self) -> None:
        """Stop watching the socket before uWSGI closes it (and may reuse its number)."""
        loop = self.io.loop

        def stop() -> None:
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)

        self.io.call_and_wait(stop)


class WebSocketClient(BlockingClient):
    """A WebSocket connection, as a handler sees it (plain flavour).

    ``receive`` returns ``str`` for a text message and ``bytes`` for a binary
    one; ``send`` sends ``str`` as text and bytes-like objects as binary.
    ``send`` and ``close`` may be called from any thread.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)
        super().__init__(*args, **kwargs)

    def _make_reactor(self, fd: int) -> Reactor:
        return ThreadReactor(fd, IOThread.current())

    def _make_lock(self) -> Any:
        return self._lock

    def _wait(self, timeout: float | None) -> None:
        self._condition.wait(timeout)

    def _wake(self) -> None:
        self._condition.notify_all()


class WebSocket(WebSocketExtension):
    """The Flask extension, plain flavour: handlers run in the request's thread.

    ``WebSocket(app, **options)`` or ``WebSocket(**options)`` then
    ``init_app(app)``; see :class:`~flask_uwsgi_websocket.flask.extension.WebSocketExtension`.
    """

    client_class = WebSocketClient
    run_defaults: ClassVar[dict[str, Any]] = {"enable_threads": True, "threads": 8}
    engine: ClassVar[str | None] = None
    plugins: ClassVar[tuple[str, ...]] = ()
    watch_worker_end = staticmethod(watch_signals)

    def prepare_worker(self) -> None:
        """Start this process's I/O thread (its event loop takes three descriptors)."""
        IOThread.current()
