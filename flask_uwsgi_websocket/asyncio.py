"""The asyncio flavour: ``uwsgi --asyncio N --greenlet``, or ``app.run(asyncio=N, greenlet=True)``.

uWSGI's asyncio engine runs an event loop in each worker's main greenlet and
each request in a greenlet of its own (an async core). After the handshake
the request's greenlet starts the handler as a task on that loop and parks
until the task is done; the connection's socket is watched with the loop's
``add_reader``, so the connection core is the one the other flavours share.
Any task of the loop may send to any connection.

On Python 3.12 and later uWSGI's engine calls ``asyncio.get_event_loop()``
from C where no loop exists yet, and every worker dies at start-up; the
extension creates each worker's loop first (``uwsgi.post_fork_hook``, or at
import under ``--lazy-apps``).
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import os
import threading
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Generator,
    Iterable,
)
from typing import TYPE_CHECKING, Any, ClassVar

import greenlet
from flask import json

from . import callbacks, uwsgi_api
from .client import DEFAULT, Client, Fragmenter, FrameToSend, joining, receiving
from .core.connection import Ping
from .core.framing import BINARY, TEXT, Message
from .core.reactor import Reactor, Timer, call_threadsafe
from .exceptions import ConnectionClosed, WebSocketError
from .flask.extension import WebSocketExtension
from .flask.middleware import WebSocketMiddleware
from .flask.serving import ErrorHandlers, outcome_async
from .metrics import worker_metrics
from .shutdown import watch_signals

if TYPE_CHECKING:
    from flask import Flask


__all__ = ["AsyncioWebSocket", "AsyncioWebSocketClient", "AsyncioWebSocketMiddleware"]


class Wakeup:
    """What a task waiting for its connection awaits: a future-like object (asyncio's
    duck typing, ``_asyncio_future_blocking``) that the next :meth:`set` completes.

    An asyncio future wakes its task through ``loop.call_soon`` (a handle, and a turn of
    the loop, in Python: the larger part of a message's cost in the loop). :meth:`set`
    called from a callback of the loop, run by the loop's greenlet ``runner`` (the
    connection's read callback above all), steps the task right there instead, as the
    gevent hub switches to a waiting greenlet; from a task (where another cannot step)
    or another greenlet (a request's, uWSGI's async core), it schedules the step as a
    future would.
    """

    __slots__ = (
        "_asyncio_future_blocking",
        "_callback",
        "_context",
        "_loop",
        "_runner",
        "_state",
    )

    _PENDING, _DONE, _CANCELLED = 0, 1, 2

    def __init__(self, loop: asyncio.AbstractEventLoop, runner: greenlet.greenlet) -> None:
        self._loop = loop  # read by the task (no get_loop(): a call less per wait)
        self._runner = runner
        self._asyncio_future_blocking = False
        self._callback: Callable[[Wakeup], Any] | None = None
        self._context: contextvars.Context | None = None
        self._state = self._PENDING

    def __await__(self) -> Generator[Wakeup, None, None]:
        if not self._state:
            self._asyncio_future_blocking = True
            yield self
        if self._state == self._CANCELLED:
            raise asyncio.CancelledError

    def add_done_callback(
        self, callback: Callable[[Wakeup], Any], *, context: contextvars.Context | None = None
    ) -> None:
        """Call ``callback(self)`` once done: the waiting task's, its only one."""
        if self._state:
            self._loop.call_soon(callback, self, context=context)
        else:
            self._callback = callback
            self._context = context

    def remove_done_callback(self, callback: Callable[[Wakeup], Any]) -> int:
        """Forget ``callback``; the number removed (``asyncio.wait_for`` given a Wakeup)."""
        if self._callback is None or self._callback != callback:
            return 0
        self._callback = None
        return 1

    def done(self) -> bool:
        """Whether it was set or cancelled."""
        return self._state != self._PENDING

    def cancelled(self) -> bool:
        """Whether it was cancelled."""
        return self._state == self._CANCELLED

    def result(self) -> None:
        """``None``; raises :class:`asyncio.CancelledError` if cancelled."""
        if self._state == self._CANCELLED:
            raise asyncio.CancelledError
        if not self._state:
            raise asyncio.InvalidStateError("not set yet")

    def exception(self) -> BaseException | None:
        """``None``; raises as :meth:`result` does."""
        self.result()
        return None

    def cancel(self, msg: Any = None) -> bool:
        """Cancel the wait: the task awaiting it gets :class:`asyncio.CancelledError`."""
        if self._state:
            return False
        self._state = self._CANCELLED
        callback, self._callback = self._callback, None
        if callback is not None:
            self._loop.call_soon(callback, self, context=self._context)
        return True

    def set(self) -> None:
        """Wake the task: step it now from a loop callback, else soon."""
        if self._state:
            return
        self._state = self._DONE
        callback, self._callback = self._callback, None
        if callback is None:
            return
        context = self._context
        if (
            context is not None
            and greenlet.getcurrent() is self._runner
            and asyncio.current_task(self._loop) is None
        ):
            context.run(callback, self)
        else:
            self._loop.call_soon(callback, self, context=context)


class AsyncioReactor:
    """A connection's watchers on the worker's asyncio loop."""

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop) -> None:
        self.fd = fd
        self.loop = loop
        self._thread = threading.get_ident()  # the loop's

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the loop whenever the socket is readable."""
        if callback is None:
            self.loop.remove_reader(self.fd)
        else:
            self.loop.add_reader(self.fd, callback)

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` from the loop whenever the socket is writable."""
        if callback is None:
            self.loop.remove_writer(self.fd)
        else:
            self.loop.add_writer(self.fd, callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` from the loop after ``delay`` seconds."""
        return self.loop.call_later(delay, callback)

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` from the loop, from any thread: now if this is the loop's."""
        call_threadsafe(self._thread, self.loop.call_soon_threadsafe, callback)

    def close(self) -> None:
        """Stop watching the socket."""
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)


class AsyncioWebSocketClient(Client):
    """A WebSocket connection in the asyncio flavour: the same API, with coroutines.

    ``receive``, ``send``, ``send_binary``, ``ping`` and ``close`` are coroutines;
    ``recv_nb`` and ``send_nb`` never wait; ``async for message in ws`` ends when
    the connection closes. ``a_recv`` and ``a_send`` are the 0.6.1 names.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._loop = asyncio.get_event_loop()
        # The greenlet that runs the loop: the request's parent (see serve).
        current = greenlet.getcurrent()
        self._runner = current.parent or current
        self._waiters: list[Wakeup] = []
        self._task: asyncio.Task[Any] | None = None
        self._task_waiting = 0
        self._pongs: list[tuple[Ping, asyncio.Future[float]]] = []  # ping() not yet answered
        super().__init__(*args, **kwargs)

    # The asyncio flavour's waiting.

    def _make_reactor(self, fd: int) -> Reactor:
        return AsyncioReactor(fd, self._loop)

    async def _wait(self, timeout: float | None) -> None:
        future, mine = self._begin_wait()
        timer = None
        if timeout is not None:
            timer = self._loop.call_later(max(timeout, 0.0), future.set)
        try:
            await future
        finally:
            if timer is not None:
                timer.cancel()
            self._end_wait(future, mine)

    def _begin_wait(self) -> tuple[Wakeup, bool]:
        """What the next wake sets, and whether the handler's task waits for it."""
        future = Wakeup(self._loop, self._runner)
        self._waiters.append(future)
        # The loop given: without it, Python 3.11 looks the running loop up with a getpid()
        # system call, one per message.
        mine = self._task is not None and asyncio.current_task(self._loop) is self._task
        self._task_waiting += mine
        return future, mine

    def _end_wait(self, future: Wakeup, mine: bool) -> None:
        """The wait for ``future`` (from :meth:`_begin_wait`) is over, however it ended."""
        self._task_waiting -= mine
        if future in self._waiters:
            self._waiters.remove(future)

    def _wake(self) -> None:
        waiters, self._waiters = self._waiters, []
        for future in waiters:
            future.set()
        if self._pongs:
            self._answer_pings()
        if self._task is not None and not self.connection.connected:
            self._loop.call_soon(self._stop_handler)

    def _answer_pings(self) -> None:
        pending = []
        for ping, pong in self._pongs:
            if pong.done():
                continue
            if ping.latency is not None:
                pong.set_result(ping.latency)
            elif self.connection.closed:
                pong.set_exception(self.connection.closed_error())
                pong.exception()  # retrieved: no warning for a pong nobody awaits
            else:
                pending.append((ping, pong))
        self._pongs = pending

    def _stop_handler(self) -> None:
        task = self._task
        if task is None or task.done() or self._task_waiting:
            return
        # Awaiting something else than this connection: end it there.
        self._task = None
        task.cancel("WebSocket connection closed")

    # Public API.

    async def receive(self, timeout: float | None = DEFAULT) -> Message | None:
        """The next message: ``str`` (text) or ``bytes`` (binary).

        Returns ``None`` when ``timeout`` seconds pass first (default: the
        ``receive_timeout`` option, which waits forever). Raises
        :class:`ConnectionClosed` once the connection is closed and every
        message received before has been returned.
        """
        if worker_metrics.pushing:
            worker_metrics.push_if_due()
        connection = self.connection
        if timeout is DEFAULT:
            timeout = self.options.receive_timeout
        if timeout is None:  # the common case, without a generator nor _wait's coroutine
            while (message := connection.next_message()) is None:
                future, mine = self._begin_wait()
                try:
                    await future
                finally:
                    self._end_wait(future, mine)
            return message
        steps = receiving(connection, timeout)
        try:
            while True:
                await self._wait(next(steps))
        except StopIteration as done:
            result: Message | None = done.value
            return result

    recv = a_recv = receive

    async def receive_streaming(self) -> AsyncIterator[Message]:
        """The next message, piece by piece as its frames arrive (``async for``); see
        :meth:`~flask_uwsgi_websocket.WebSocketClient.receive_streaming`."""
        connection = self.connection
        connection.streaming = True
        try:
            while True:
                while (got := connection.next_fragment()) is None:
                    await self._wait(None)
                piece, final = got
                yield piece
                if final:
                    return
        finally:
            connection.streaming = False
            connection.resume_reading()

    recv_streaming = receive_streaming

    def send_nb(self, message: Message | bytearray | memoryview, binary: bool = False) -> None:
        """Send ``message`` without waiting for the peer to read.

        Raises :class:`WebSocketError` when more than ``write_limit`` bytes are
        already waiting to be sent, so memory stays bounded: ``await send()``
        waits instead.
        """
        connection = self.connection
        if connection.backlogged:
            raise WebSocketError(f"send buffer full ({connection.buffered} bytes): await send()")
        if binary and isinstance(message, str):
            message = message.encode()
        connection.send(message)

    async def send(
        self,
        message: Message | bytearray | memoryview | Iterable[Message] | AsyncIterable[Message],
        binary: bool = False,
    ) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame; an
        iterable or async iterable of ``str`` (or of bytes-like) as one fragmented message,
        a frame per item, without holding it whole.

        Waits while more than ``write_limit`` bytes are waiting to be sent, and while
        another fragmented message is being sent. Raises :class:`ConnectionClosed` once
        the closing handshake has begun. ``binary=True`` sends a ``str`` as binary,
        encoded in UTF-8. An iterable that raises closes the connection with 1011.
        """
        payload: bytes | bytearray | memoryview
        if isinstance(message, str):
            opcode, payload = (BINARY if binary else TEXT), message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = BINARY, message
        else:
            await self._send_fragments(message)
            return
        if worker_metrics.pushing:
            worker_metrics.push_if_due()
        connection = self.connection
        while connection.fragmenting:
            await self._wait(None)
        if connection.send_frame(opcode, payload):
            while connection.backlogged:
                await self._wait(None)

    async def _send_fragments(self, message: Iterable[Message] | AsyncIterable[Message]) -> None:
        connection = self.connection
        fragmenter = Fragmenter(message)
        started = False

        async def send(frame: FrameToSend) -> None:
            nonlocal started
            while not started and connection.fragmenting:
                await self._wait(None)  # another fragmented message is going out
            connection.send_fragment(*frame)
            started = True
            while connection.backlogged:
                await self._wait(None)

        try:
            if isinstance(message, AsyncIterable):
                async for item in message:
                    await send(fragmenter.frame(item))
            else:
                for item in message:
                    await send(fragmenter.frame(item))
            last = fragmenter.end()
            if last is not None:
                await send(last)
        except BaseException as exc:
            if started and connection.fragmenting and not isinstance(exc, ConnectionClosed):
                connection.fail(1011, "error in a fragmented message")  # it cannot be finished
                self._wake()
            raise

    a_send = send

    async def send_binary(self, data: Message | bytearray | memoryview) -> None:
        """Send ``data`` as a binary frame; a ``str`` is encoded in UTF-8."""
        await self.send(data, binary=True)

    async def join(self, room: str) -> None:
        """Join ``room``: :meth:`AsyncioWebSocket.broadcast` to it reaches this connection.

        A broadcast made after ``join`` has returned reaches it: with a broker between
        processes, ``join`` may wait for the room's subscription (2 s at most; not while
        the broker is down). The connection leaves every room when its handler ends.
        """
        subscribing = self._join(room)
        if subscribing is not None:
            for wait in joining(subscribing, self.connection):
                await self._wait(wait)

    async def leave(self, room: str) -> None:
        """Leave ``room``; nothing happens if the connection is not in it."""
        self._leave(room)

    async def send_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as text, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        await self.send(uwsgi_api.sharedarea_read(id, pos).decode())

    async def send_binary_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as binary, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        await self.send(uwsgi_api.sharedarea_read(id, pos))

    async def ping(self, data: bytes | str | None = None) -> asyncio.Future[float]:
        """Send a ping (``data``: its payload, 4 random bytes by default); return a future
        of its latency, done when the pong comes: ``await (await ws.ping())`` waits for it.
        The future raises :class:`ConnectionClosed` if the connection closes first."""
        pong: asyncio.Future[float] = self._loop.create_future()
        self._pongs.append((self.connection.ping(data), pong))
        return pong

    async def send_json(self, obj: Any) -> None:
        """Send ``obj`` as JSON in a text message, with the app's JSON provider."""
        await self.send(json.dumps(obj))

    async def receive_json(self, timeout: float | None = DEFAULT) -> Any:
        """The next message, decoded from JSON (text or binary); ``None`` when ``timeout``
        seconds pass first, as :meth:`receive`. Raises ``ValueError`` for invalid JSON."""
        message = await self.receive(timeout)
        return None if message is None else json.loads(message)

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` and wait for the peer's answer.

        Waits ``close_timeout`` seconds at most. Does nothing once closing.
        """
        connection = self.connection
        connection.begin_close(code, reason)
        while not connection.closed:
            await self._wait(None)

    def __aiter__(self) -> AsyncioWebSocketClient:
        """Iterate over messages until the connection closes.

        The connection is its own iterator: an async generator would be two more objects
        per connection, and one more entry in the loop's set of async generators.
        """
        return self

    async def __anext__(self) -> Message:
        """The next message; :class:`StopAsyncIteration` once the connection is closed."""
        # receive(timeout=None), written out: a handler idle in ``async for`` waits here on
        # its future, without receive()'s and _wait()'s coroutines (0.5 KiB per connection).
        if worker_metrics.pushing:
            worker_metrics.push_if_due()
        connection = self.connection
        try:
            if (message := connection.next_message()) is not None:
                return message
            # _begin_wait and _end_wait, inline: two calls less per message.
            task = self._task
            mine = task is not None and asyncio.current_task(self._loop) is task
            self._task_waiting += mine
            try:
                while True:
                    future = Wakeup(self._loop, self._runner)
                    self._waiters.append(future)
                    try:
                        await future
                    finally:
                        if future in self._waiters:
                            self._waiters.remove(future)
                    if (message := connection.next_message()) is not None:
                        return message
            finally:
                self._task_waiting -= mine
        except ConnectionClosed:
            raise StopAsyncIteration from None

    # Serving: called by the extension, in the request's greenlet.

    def serve(
        self,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        websocket: ErrorHandlers,
        app: Flask,
    ) -> Exception | None:
        """Run ``handler`` as a task on the loop; park this greenlet until it is done.

        The task runs in a copy of this greenlet's context: the request context."""
        try:
            task = self._loop.create_task(self._run(handler, kwargs, websocket, app))
            self._task = task
            request_greenlet = greenlet.getcurrent()
            task.add_done_callback(lambda _: request_greenlet.switch())
            while not task.done():
                request_greenlet.parent.switch()  # the loop's greenlet
        finally:
            self._release()
        return None if task.cancelled() else task.result()

    async def _run(
        self,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        websocket: ErrorHandlers,
        app: Flask,
    ) -> Exception | None:
        error: BaseException | None = None
        try:
            await handler(self, **kwargs)
        except (Exception, asyncio.CancelledError) as exc:
            error = exc
        code, reason, failure = await outcome_async(websocket, app, handler, self, error)
        self._task = None
        await self.close(code, reason)
        return failure


class _Done:
    """An awaitable that is already done."""

    def __await__(self) -> Generator[Any, None, None]:
        return
        yield


_DONE = _Done()


_loop_prepared_in: int | None = None


def _new_worker_loop() -> None:
    """Create this worker's event loop before uWSGI's asyncio engine asks for it.

    On Python 3.12+ the engine's ``asyncio.get_event_loop()`` call from C fails
    when no loop is set ("call stack is not deep enough"), killing the worker.
    """
    global _loop_prepared_in
    if _loop_prepared_in != os.getpid():
        _loop_prepared_in = os.getpid()
        asyncio.set_event_loop(asyncio.new_event_loop())


class AsyncioWebSocketMiddleware(WebSocketMiddleware):
    """The middleware of the asyncio flavour (0.6.1 name): :class:`WebSocketMiddleware`."""


class AsyncioWebSocket(WebSocketExtension):
    """The Flask extension, asyncio flavour: ``async def`` handlers.

    Run with ``app.run(asyncio=100, greenlet=True)`` (the defaults) or
    ``uwsgi --asyncio 100 --greenlet``.
    """

    client_class = AsyncioWebSocketClient
    middleware_class = AsyncioWebSocketMiddleware
    run_defaults: ClassVar[dict[str, Any]] = {"asyncio": 100, "greenlet": True}
    engine: ClassVar[str | None] = "asyncio"
    plugins: ClassVar[tuple[str, ...]] = ("asyncio", "greenlet")
    watch_worker_end = staticmethod(watch_signals)

    def broadcast(  # type: ignore[override]
        self, message: Any, room: str | None = None, exclude: Any = None
    ) -> Awaitable[None]:
        """Send ``message`` to every connection of the app in ``room`` (``None``: all).

        As :meth:`WebSocket.broadcast`, which never waits; in this flavour it
        returns an awaitable, so a coroutine writes ``await websocket.broadcast(m)``
        and a plain function (an HTTP view, a thread) calls it without ``await``.
        """
        super().broadcast(message, room, exclude)
        return _DONE

    def check_engine(self) -> None:
        """Refuse another engine or a missing ``--greenlet``; prepare the worker's loop."""
        super().check_engine()
        if not uwsgi_api.running():
            return
        if not uwsgi_api.option("greenlet"):
            raise RuntimeError(
                "AsyncioWebSocket needs uWSGI started with --asyncio N --greenlet "
                "(the request greenlets park while their handler tasks run)"
            )
        uwsgi_api.in_each_worker(_new_worker_loop)

    def callback_handler(self, cls: type) -> Callable[..., Any]:
        """The handler coroutine function that runs the callback handler class ``cls``."""
        return callbacks.coroutine(cls)

    def check_handler(self, handler: Callable[..., Any]) -> None:
        """Refuse, when it is registered, a handler that is not a coroutine function."""
        if isinstance(handler, type):
            callbacks.check(handler, asynchronous=True)
        elif not inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"{getattr(handler, '__name__', handler)} is not a coroutine function: "
                f"AsyncioWebSocket handlers are written 'async def handler(ws): ...'"
            )
