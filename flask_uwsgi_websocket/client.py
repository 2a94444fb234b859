"""The client object a handler receives, and the plain (processes/threads) flavour's I/O.

In the plain flavour the handler runs in the request's thread. One daemon
thread per worker process runs an asyncio event loop that watches every
connection of that process: it answers pings, keeps connections alive and
queues messages while handlers do other work. A lock per connection makes
``send`` and ``close`` safe from any thread.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from websockets.frames import Opcode

from .connection import Connection, Message, Reactor, Timer, logger, sharedarea_read
from .exceptions import ConnectionClosed

if TYPE_CHECKING:
    from flask import Flask

    from .extension import WebSocket

__all__ = ["WebSocketClient"]

_DEFAULT: Any = object()


class WebSocketClient(Connection):
    """A WebSocket connection, as a handler sees it (plain flavour).

    ``receive`` returns ``str`` for a text message and ``bytes`` for a binary
    one; ``send`` sends ``str`` as text and bytes-like objects as binary.
    ``send`` and ``close`` may be called from any thread.
    """

    def _prepare(self) -> None:
        self._lock = threading.RLock()
        self._condition = threading.Condition(self._lock)

    # The plain flavour's waiting.

    def _make_reactor(self) -> Reactor:
        return ThreadReactor(self.fd, IOThread.current())

    def _wait(self, timeout: float | None) -> None:
        self._condition.wait(timeout)

    def _wake(self) -> None:
        self._condition.notify_all()

    # Public API.

    def receive(self, timeout: float | None = _DEFAULT) -> Message | None:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Returns ``None`` when ``timeout`` seconds pass first (default: the
        ``receive_timeout`` option, which waits forever). Raises
        :class:`ConnectionClosed` once the connection is closed and every
        message received before has been returned.
        """
        if timeout is _DEFAULT:
            timeout = self.options.receive_timeout
        with self._lock:
            deadline = None
            while True:
                message = self._pop_message()
                if message is not None:
                    return message
                if timeout is None:
                    self._wait(None)
                    continue
                now = time.monotonic()
                if deadline is None:
                    deadline = now + timeout
                if now >= deadline:
                    return None
                self._wait(deadline - now)

    recv = receive

    def send(self, message: Message | bytearray | memoryview, binary: bool = False) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame.

        Waits while more than ``write_limit`` bytes are waiting to be sent.
        Raises :class:`ConnectionClosed` once the closing handshake has begun.
        ``binary=True`` (0.6.1) sends a ``str`` as binary, encoded in UTF-8.
        """
        if binary:
            self.send_binary(message)
            return
        with self._lock:
            self._send(message)
            while self._backlogged():
                self._wait(None)

    def send_binary(self, data: Message | bytearray | memoryview) -> None:
        """Send ``data`` as a binary frame; a ``str`` is encoded in UTF-8."""
        if isinstance(data, str):
            data = data.encode()
        with self._lock:
            self._send_frame(Opcode.BINARY, data)
            while self._backlogged():
                self._wait(None)

    def join(self, room: str) -> None:
        """Join ``room``: :meth:`WebSocket.broadcast` to it reaches this connection.

        The connection leaves every room when its handler ends.
        """
        self._rooms().join(self, room)

    def leave(self, room: str) -> None:
        """Leave ``room``; nothing happens if the connection is not in it."""
        self._rooms().leave(self, room)

    def send_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as text, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        self.send(sharedarea_read(id, pos).decode())

    def send_binary_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as binary, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        self.send_binary(sharedarea_read(id, pos))

    def ping(self, data: bytes | str = b"") -> None:
        """Send a ping; the peer's pong is taken care of."""
        with self._lock:
            self._ping(data)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` and wait for the peer's answer.

        Waits ``close_timeout`` seconds at most. Does nothing once closing.
        """
        with self._lock:
            self._close(code, reason)

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the connection closes."""
        while True:
            try:
                message = self.receive(timeout=None)
            except ConnectionClosed:
                return
            assert message is not None
            yield message

    # Serving: called by the middleware once the handshake is done.

    def _serve(
        self, handler: Callable[..., Any], kwargs: dict[str, Any], websocket: WebSocket, app: Flask
    ) -> Exception | None:
        """Run ``handler``, then close: 1000 when it returns, 1011 (or the error handler's
        choice) when it raises. Returns the exception no error handler took."""
        self.start()
        error: Exception | None = None
        try:
            code, reason = 1000, ""
            try:
                self._enter_handler()
                handler(self, **kwargs)
            except ConnectionClosed as exc:
                logger.debug("WebSocket %s: handler ended on %s", self.id, exc)
            except Exception as exc:
                code, reason, error = 1011, "", exc
                on_error = websocket.error_handler_for(exc)
                if on_error is not None:
                    try:
                        code, reason = self._close_args(on_error(self, exc))
                        error = None
                    except ConnectionClosed:
                        error = None
                    except Exception as again:
                        error = again
                if error is not None:
                    self._report_failure(app, handler, error)
            finally:
                self._leave_handler()
            with self._lock:
                self._close(code, reason)
        finally:
            self._release()
        return error

    def _enter_handler(self) -> None:
        """The handler is about to run in the current thread or greenlet."""

    def _leave_handler(self) -> None:
        """The handler has ended."""


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
        self.thread.start()

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

    def close(self) -> None:
        """Stop watching the socket before uWSGI closes it (and may reuse its number)."""
        loop = self.io.loop

        def stop() -> None:
            loop.remove_reader(self.fd)
            loop.remove_writer(self.fd)

        self.io.call_and_wait(stop)
