"""The client object a handler receives: what every flavour shares, and the blocking API.

A client wraps one :class:`~.core.connection.Connection` (its ``connection``)
and adds what a handler sees: the request's environ, rooms, uWSGI's shared
area, and waiting. Flavours differ only in how they wait: :class:`BlockingClient`
is the API of the plain and gevent flavours (``threads``, ``gevent``), whose
handlers block; the asyncio flavour's client has the same methods as
coroutines. The one piece of waiting logic with more than a line to it,
receiving with a deadline, is :func:`receiving`, a generator of how long to
wait that both faces drive; so is joining a room (:func:`joining`).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, Callable, Generator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from flask import json
from websockets.frames import Opcode

from . import uwsgi_api
from .core.connection import Connection, Ping
from .core.framing import BINARY, TEXT, Message, data_of
from .exceptions import ConnectionClosed
from .flask.serving import ErrorHandlers, outcome_sync
from .metrics import worker_metrics
from .shutdown import connections

if TYPE_CHECKING:
    from flask import Flask

    from .broadcast.registry import Rooms, Subscribing
    from .core.handshake import Handshake
    from .core.options import Options
    from .core.reactor import Reactor

__all__ = ["BlockingClient", "Client", "Fragmenter", "Pong", "fragments", "joining", "receiving"]

#: ``receive()``'s timeout when none is given: the ``receive_timeout`` option.
DEFAULT: Any = object()


def receiving(connection: Connection, timeout: float) -> Generator[float, None, Message | None]:
    """Receive a message within ``timeout`` seconds.

    Yields how long to wait for the connection's next event; returns the message,
    or ``None`` when the time is up. Raises :class:`ConnectionClosed` once the
    connection is closed and drained. (Without a timeout, the faces wait in a loop
    of their own: the hot path of an echo, where a generator would cost.)
    """
    deadline = time.monotonic() + timeout
    while True:
        message = connection.next_message()
        if message is not None:
            return message
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        yield remaining


def joining(subscribing: Subscribing, connection: Connection) -> Generator[float, None, None]:
    """Wait for the subscription a join asked for: ``subscribing.timeout`` seconds at most,
    and not once the connection is closing.

    Yields how long to wait for the next wake-up (``subscribing`` wakes the connection's
    waiters when done); tells ``subscribing`` when the time ran out.
    """
    deadline = time.monotonic() + subscribing.timeout
    while not subscribing.done and connection.connected:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            subscribing.overdue()
            return
        yield remaining


#: A frame to send: ``(opcode, payload, fin)``.
FrameToSend = tuple[int, bytes, bool]


class Fragmenter:
    """The frames of a message sent as an iterable, item by item: every item a ``str``
    (text) or every item bytes-like (binary); an empty last frame ends it, and an empty
    iterable sends nothing. Both faces of ``send`` (sync and async) use it."""

    def __init__(self, message: object) -> None:
        if isinstance(message, Mapping):
            raise TypeError("a dict is not a message: send its JSON (send_json)")
        if not isinstance(message, (Iterable, AsyncIterable)):
            raise TypeError(f"a message is str or bytes-like, not {type(message).__name__}")
        self._opcode = 0

    def frame(self, item: object) -> FrameToSend:
        """The frame of the next item."""
        kind, payload = data_of(item, "a fragment")
        if self._opcode == 0:
            self._opcode = kind
            return kind, payload, False
        if kind != self._opcode:
            raise TypeError("the fragments of a message are all str or all bytes-like")
        return Opcode.CONT, payload, False

    def end(self) -> FrameToSend | None:
        """The last frame, once the items are done; ``None`` when there were none."""
        return (Opcode.CONT, b"", True) if self._opcode else None


def fragments(message: Iterable[Any]) -> Iterator[FrameToSend]:
    """The frames of ``message``, an iterable (see :class:`Fragmenter`)."""
    fragmenter = Fragmenter(message)
    for item in message:
        yield fragmenter.frame(item)
    last = fragmenter.end()
    if last is not None:
        yield last


class Client:
    """What the clients of every flavour have: identity, state, rooms.

    Subclasses set up their waiting, then call ``Client.__init__``, which makes the
    connection with :meth:`_make_reactor`, :meth:`_make_lock` and :meth:`_wake`.
    """

    def __init__(
        self,
        fd: int,
        environ: dict[str, Any],
        options: Options,
        handshake: Handshake | None = None,
        rooms: Rooms | None = None,
    ) -> None:
        #: The protocol core under this client.
        self.connection = Connection(
            fd, options, self._make_reactor(fd), handshake, self._make_lock(), self._wake
        )
        #: The socket's file descriptor.
        self.fd = fd
        #: The WSGI environ of the upgrade request.
        self.environ = environ
        #: The connection's options: the app's, then the route's.
        self.options = options
        #: A random identifier of the connection (hex).
        self.id = self.connection.id
        #: The subprotocol agreed in the handshake, or ``None``.
        self.subprotocol = self.connection.subprotocol
        #: The route's URL rule, as the metrics name it (the path until the extension sets it).
        self.route: str = environ.get("PATH_INFO", "")
        self._registry = rooms  # the app's connections in this process

    # Flavour hooks.

    def _make_reactor(self, fd: int) -> Reactor:
        raise NotImplementedError

    def _make_lock(self) -> Any:
        """The connection's lock: ``None`` where its callbacks run on the handler's thread."""
        return None

    def _wake(self) -> None:
        """Wake every caller waiting for the connection; called with its lock held, last."""
        raise NotImplementedError

    # State.

    @property
    def connected(self) -> bool:
        """Whether messages can still be sent: the closing handshake has not begun."""
        return self.connection.connected

    @property
    def closed(self) -> bool:
        """Whether the connection is over: both sides are done or it was aborted."""
        return self.connection.closed

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame; 1006 when it closed without one; else ``None``."""
        return self.connection.close_code

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame; ``""`` when none came; ``None`` while open."""
        return self.connection.close_reason

    @property
    def latency(self) -> float:
        """Seconds from the last answered ping (the keepalive's or ``ping()``'s) to its
        pong; 0 until one is answered."""
        return self.connection.latency

    @property
    def timeout(self) -> float | None:
        """The default timeout of ``receive`` (0.6.1 name)."""
        return self.options.receive_timeout

    @property
    def rooms(self) -> frozenset[str]:
        """The rooms this connection is in (see ``join``)."""
        if self._registry is None:
            return frozenset()
        return self._registry.rooms_of(self.connection)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.environ.get('PATH_INFO', '')}>"

    def recv_nb(self) -> Message | None:
        """A message already received, or ``None``; never waits."""
        return self.connection.poll_message()

    # Shared by the flavours' methods of the same names.

    def _join(self, room: str) -> Subscribing | None:
        """Enter ``room``; what to wait for before a broadcast is sure to come (then
        :meth:`_wake_soon` is called), or ``None``."""
        subscribing = self._registry_or_error().join(self.connection, room)
        if subscribing is not None:
            subscribing.then(self._wake_soon)
        return subscribing

    def _wake_soon(self) -> None:
        """Wake the callers waiting for the connection, from any thread."""
        self.connection.reactor.call_soon_threadsafe(self._wake_with_lock)

    def _wake_with_lock(self) -> None:
        with self.connection.lock:
            self._wake()

    def _leave(self, room: str) -> None:
        self._registry_or_error().leave(self.connection, room)

    def _registry_or_error(self) -> Rooms:
        if self._registry is None:
            raise RuntimeError("this connection was not made by the extension: it has no rooms")
        return self._registry

    def go_away(self, code: int, reason: str, timeout: float) -> None:
        """Close with ``code`` from any thread, giving the peer ``timeout`` seconds to
        answer: the worker is going away (see ``shutdown``). The handler ends where it
        waits."""
        connection = self.connection

        def close() -> None:
            with connection.lock:
                connection.begin_close(code, reason, timeout)
                self._wake()

        connection.reactor.call_soon_threadsafe(close)

    def start(self) -> None:
        """Start the connection and enter the app's registry, before :meth:`serve`. When a
        part fails (out of memory...), what was done is undone and the error raised."""
        try:
            self.connection.start()
            if self._registry is not None:
                self._registry.add(self.connection, self.connection.reactor.call_soon_threadsafe)
            worker_metrics.opened(self.route, self.connection)
            connections.opened(self)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        """Leave the rooms and stop watching the socket; uWSGI closes it when the request ends."""
        if self._registry is not None:
            self._registry.remove(self.connection)
        self.connection.release()
        worker_metrics.closed(self.connection)
        connections.closed(self)


class BlockingClient(Client):
    """A WebSocket connection as a handler that blocks sees it: the plain and gevent API.

    ``receive`` returns ``str`` for a text message and ``bytes`` for a binary
    one; ``send`` sends ``str`` as text and bytes-like objects as binary.
    ``send`` and ``close`` may be called from any thread or greenlet.
    """

    def _wait(self, timeout: float | None) -> None:
        """Block until :meth:`_wake` or ``timeout``; called with the lock held."""
        raise NotImplementedError

    def _wait_message(self, timeout: float | None) -> None:
        """Block until a message may have come, :meth:`_wake` or ``timeout``, in
        ``receive``: where a flavour's handler may read its own socket. With the lock held."""
        self._wait(timeout)

    def receive(self, timeout: float | None = DEFAULT) -> Message | None:
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
        with connection.lock:
            if timeout is None:  # the common case, without a generator
                while (message := connection.next_message()) is None:
                    self._wait_message(None)
                return message
            steps = receiving(connection, timeout)
            try:
                while True:
                    self._wait_message(next(steps))
            except StopIteration as done:
                result: Message | None = done.value
                return result

    recv = receive

    def receive_streaming(self) -> Iterator[Message]:
        """The next message, piece by piece as its frames arrive: ``str`` pieces for
        text (UTF-8 checked as they come), ``bytes`` for binary; a message that arrived
        whole comes as one piece. Reading waits while 64 KiB of it wait to be taken, so a
        message of any size (up to ``max_message_size``) takes bounded memory. Raises
        :class:`ConnectionClosed` if the connection closes first. Take the whole message
        before receiving another."""
        connection = self.connection
        with connection.lock:
            connection.streaming = True
        try:
            while True:
                with connection.lock:
                    while (got := connection.next_fragment()) is None:
                        self._wait_message(None)
                piece, final = got
                yield piece
                if final:
                    return
        finally:
            with connection.lock:
                connection.streaming = False
                connection.resume_reading()

    recv_streaming = receive_streaming

    def send(
        self, message: Message | bytearray | memoryview | Iterable[Message], binary: bool = False
    ) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame; an
        iterable of ``str`` (or of bytes-like) as one fragmented message, a frame per item,
        without holding it whole.

        Waits while more than ``write_limit`` bytes are waiting to be sent, and while
        another fragmented message is being sent. Raises :class:`ConnectionClosed` once the
        closing handshake has begun. ``binary=True`` (0.6.1) sends a ``str`` as binary,
        encoded in UTF-8. An iterable that raises closes the connection with 1011.
        """
        if binary:
            self.send_binary(message)  # type: ignore[arg-type]
            return
        payload: bytes | bytearray | memoryview
        if isinstance(message, str):
            opcode, payload = TEXT, message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = BINARY, message
        else:
            self._send_fragments(fragments(message))
            return
        if worker_metrics.pushing:
            worker_metrics.push_if_due()
        connection = self.connection
        with connection.lock:
            while connection.fragmenting:
                self._wait(None)
            if connection.send_frame(opcode, payload):
                while connection.backlogged:
                    self._wait(None)

    def _send_fragments(self, pieces: Iterator[FrameToSend]) -> None:
        connection = self.connection
        started = False
        try:
            for opcode, payload, fin in pieces:
                with connection.lock:
                    while not started and connection.fragmenting:
                        self._wait(None)  # another fragmented message is going out
                    connection.send_fragment(opcode, payload, fin)
                    started = True
                    while connection.backlogged:
                        self._wait(None)
        except BaseException as exc:
            if started and connection.fragmenting and not isinstance(exc, ConnectionClosed):
                with connection.lock:  # the message cannot be finished
                    connection.fail(1011, "error in a fragmented message")
                    self._wake()
            raise

    def send_binary(self, data: Message | bytearray | memoryview) -> None:
        """Send ``data`` as a binary frame; a ``str`` is encoded in UTF-8."""
        if isinstance(data, str):
            data = data.encode()
        connection = self.connection
        with connection.lock:
            while connection.fragmenting:
                self._wait(None)
            connection.send_frame(BINARY, data)
            while connection.backlogged:
                self._wait(None)

    def join(self, room: str) -> None:
        """Join ``room``: the extension's ``broadcast`` to it reaches this connection.

        A broadcast made after ``join`` has returned reaches it: with a broker between
        processes, ``join`` may wait for the room's subscription (2 s at most; not while
        the broker is down). The connection leaves every room when its handler ends.
        """
        subscribing = self._join(room)
        if subscribing is not None:
            with self.connection.lock:
                for wait in joining(subscribing, self.connection):
                    self._wait(wait)

    def leave(self, room: str) -> None:
        """Leave ``room``; nothing happens if the connection is not in it."""
        self._leave(room)

    def send_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as text, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        self.send(uwsgi_api.sharedarea_read(id, pos).decode())

    def send_binary_from_sharedarea(self, id: int, pos: int) -> None:
        """Send, as binary, uWSGI shared area ``id`` from byte ``pos`` to its end."""
        self.send_binary(uwsgi_api.sharedarea_read(id, pos))

    def ping(self, data: bytes | str | None = None) -> Pong:
        """Send a ping (``data``: its payload, 4 random bytes by default); return its
        :class:`Pong`, to wait for the peer's answer (or not)."""
        with self.connection.lock:
            return Pong(self.connection.ping(data), self._wait_until)

    def _wait_until(self, condition: Callable[[], bool], timeout: float | None) -> bool:
        """Wait until ``condition()``, ``timeout`` seconds at most; whether it holds.
        Raises :class:`ConnectionClosed` if the connection closes first."""
        connection = self.connection
        deadline = None if timeout is None else time.monotonic() + timeout
        with connection.lock:
            while not condition():
                if connection.closed:
                    raise connection.closed_error()
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._wait(remaining)
            return True

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as JSON in a text message, with the app's JSON provider."""
        self.send(json.dumps(obj))

    def receive_json(self, timeout: float | None = DEFAULT) -> Any:
        """The next message, decoded from JSON (text or binary); ``None`` when ``timeout``
        seconds pass first, as :meth:`receive`. Raises ``ValueError`` for invalid JSON."""
        message = self.receive(timeout)
        return None if message is None else json.loads(message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason`` and wait for the peer's answer.

        Waits ``close_timeout`` seconds at most. Does nothing once closing.
        """
        connection = self.connection
        with connection.lock:
            connection.begin_close(code, reason)
            while not connection.closed:
                self._wait(None)

    def __iter__(self) -> Iterator[Message]:
        """Iterate over messages until the connection closes."""
        while True:
            try:
                message = self.receive(timeout=None)
            except ConnectionClosed:
                return
            assert message is not None
            yield message

    # Serving.

    def serve(
        self,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        websocket: ErrorHandlers,
        app: Flask,
    ) -> Exception | None:
        """Run ``handler(self, **kwargs)`` in this thread or greenlet, then close: 1000 when
        it returns, 1011 (or the error handler's choice) when it raises.

        Called by the extension once the connection has started; returns the exception
        that no error handler took.
        """
        try:
            error: Exception | None = None
            self._enter_handler()
            try:
                handler(self, **kwargs)
            except Exception as exc:
                error = exc
            finally:
                self._leave_handler()
            code, reason, failure = outcome_sync(websocket, app, handler, self, error)
            self.close(code, reason)
        finally:
            self._release()
        return failure

    def _enter_handler(self) -> None:
        """The handler is about to run in the current thread or greenlet."""

    def _leave_handler(self) -> None:
        """The handler has ended."""


class Pong:
    """The answer to a ping of the plain or gevent flavour, as ``ws.ping()`` returns it."""

    def __init__(self, ping: Ping, wait: Callable[[Callable[[], bool], float | None], bool]):
        self._ping = ping
        self._wait = wait  # the client's: wait until a condition holds

    @property
    def latency(self) -> float | None:
        """Seconds from the ping to its pong; ``None`` until the pong comes."""
        return self._ping.latency

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the pong, ``timeout`` seconds at most (``None``: no limit); ``True``
        when it came. Raises :class:`ConnectionClosed` if the connection closes first."""
        return self._wait(lambda: self._ping.latency is not None, timeout)
