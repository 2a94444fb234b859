"""Test WebSocket handlers like Flask views, without uWSGI: the in-process test client.

.. code-block:: python

    def test_echo():
        client = websocket.test_client()
        with client.connect("/echo") as ws:
            ws.send("hi")
            assert ws.receive(timeout=1) == "hi"

The upgrade request goes through Flask's own test client (cookies, sessions,
``before_request``, Origin policy, everything Flask does), and the connection
crosses a real socket pair, served by the same connection core as in
production; only the socket comes from here instead of from uWSGI. The
handler runs the way its flavour runs it: in a thread of its own (plain), in a
greenlet on a gevent hub in a thread of its own (gevent), or as a task on an
asyncio loop in a thread of its own (asyncio). The test's side stays
synchronous, and nothing in the test process is monkey-patched.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import queue
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from websockets.client import ClientProtocol
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, OPEN
from websockets.typing import Subprotocol
from websockets.uri import parse_uri

from .core.framing import Message
from .exceptions import ConnectionClosed, WebSocketError
from .runtimes import SOCKET, runtime

if TYPE_CHECKING:
    from flask import Flask
    from flask.testing import FlaskClient
    from werkzeug.test import TestResponse

__all__ = ["TestClient", "TestConnection", "UpgradeRefused"]

#: Seconds ``connect()`` waits for the app to answer the upgrade, and the context
#: manager's exit for the server's side of a closed connection to end.
WAIT = 10.0


class UpgradeRefused(WebSocketError):
    """The app answered the upgrade request without switching protocols.

    ``response`` is the Flask test response (``status_code``, ``headers``,
    ``get_data()``): a ``before_request`` refusal, 403 from the Origin policy,
    400 or 426 for a malformed request, the HTTP view of a URL without a
    WebSocket route...
    """

    def __init__(self, response: TestResponse) -> None:
        super().__init__(f"the app refused the upgrade: {response.status}")
        self.response = response


class TestClient:
    """Opens WebSocket connections to one app, in process; see :meth:`connect`.

    Made by the extension's ``test_client(app=None, flask_client=None)``;
    ``flask_client`` (default: a new ``app.test_client()``) carries the cookies,
    so a test that logs in over HTTP with it connects as that user.
    """

    __test__ = False  # not a test class, whatever pytest's naming rules say

    def __init__(self, engine: str | None, app: Flask, flask_client: FlaskClient | None = None):
        self.app = app
        self.flask_client = flask_client if flask_client is not None else app.test_client()
        self._runtime = runtime(engine)

    def connect(
        self,
        path: str,
        headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
        subprotocols: Sequence[str] | None = None,
        compression: str | None = "deflate",
    ) -> TestConnection:
        """Open a WebSocket connection to ``path`` (with its query string).

        ``headers`` are added to the upgrade request, in place of the client's own
        of the same names (``{"Sec-WebSocket-Version": "8"}`` makes a malformed
        upgrade; a ``Cookie`` header replaces the Flask client's cookies); ``subprotocols``
        are offered
        (``ws.subprotocol`` is the one agreed); permessage-deflate is offered
        unless ``compression`` is ``None``. Raises :class:`UpgradeRefused` when the
        app answers anything but ``101``. Use it as a context manager: the
        connection is closed at the end, and the server's side has ended.
        """
        extensions = [ClientPerMessageDeflateFactory()] if compression == "deflate" else None
        protocol = ClientProtocol(
            parse_uri("ws://localhost" + path),
            subprotocols=[Subprotocol(name) for name in subprotocols] if subprotocols else None,
            extensions=extensions,
            max_size=None,
        )
        request = protocol.connect()
        given = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
        replaced = {name.lower() for name, _ in given} | {"host"}
        upgrade = [(k, v) for k, v in request.headers.raw_items() if k.lower() not in replaced]
        upgrade += given
        # A Cookie header given is sent as given: Werkzeug's client would put its own jar's.
        opener = self.flask_client
        if "cookie" in replaced:
            opener = self.app.test_client(use_cookies=False)
        mine, theirs = socket.socketpair()
        request_ended = threading.Event()
        answer: queue.Queue[tuple[str, Any]] = queue.Queue()

        def serve() -> None:
            try:
                response = opener.open(
                    path, headers=upgrade, environ_overrides={SOCKET: theirs}, buffered=False
                )
            except BaseException as exc:  # connect() raises it, as Flask's test client would
                answer.put(("error", exc))
                request_ended.set()
                theirs.close()
                if not isinstance(exc, Exception):
                    raise
                return
            try:
                if response.status_code != 101:
                    response.make_sequence()
                    answer.put(("refused", response))
                    return
                answer.put(("accepted", response))
                for _ in response.response:  # runs the connection, as uWSGI would
                    pass
            finally:
                response.close()
                theirs.close()
                request_ended.set()

        self._runtime.spawn(serve)
        try:
            kind, result = answer.get(timeout=WAIT)
        except queue.Empty:
            mine.close()
            raise TimeoutError(f"the app did not answer the upgrade within {WAIT} s") from None
        if kind == "error":
            mine.close()
            raise result
        if kind == "refused":
            mine.close()
            raise UpgradeRefused(result)
        head = "".join(f"{k}: {v}\r\n" for k, v in result.headers.items())
        protocol.receive_data(f"HTTP/1.1 101 Switching Protocols\r\n{head}\r\n".encode())
        protocol.events_received()
        if protocol.state is not OPEN:
            mine.close()
            raise WebSocketError(
                f"the 101 does not complete the handshake: {protocol.handshake_exc}"
            )
        return TestConnection(mine, protocol, result.headers, request_ended)


class TestConnection:
    """The client's end of a test connection: the same methods as a handler's client.

    ``receive``, ``send``, ``close`` block the test (never for long: a timeout
    bounds each wait) while the handler runs on its own. The server's keepalive
    pings are answered whenever the test reads: a test that reads nothing for
    ``ping_interval + ping_timeout`` seconds (45 by default) sees the server close.
    """

    __test__ = False

    def __init__(
        self,
        sock: socket.socket,
        protocol: ClientProtocol,
        response_headers: Any,
        request_ended: threading.Event,
    ) -> None:
        self._sock = sock
        self._protocol = protocol
        self._request_ended = request_ended
        self._messages: deque[Message] = deque()
        self._parts: list[bytes] = []
        self._text = False
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        #: The headers of the ``101 Switching Protocols`` response.
        self.response_headers = response_headers
        #: The subprotocol agreed, or ``None``.
        self.subprotocol: str | None = protocol.subprotocol

    # State.

    @property
    def connected(self) -> bool:
        """Whether the closing handshake has not begun."""
        return self._protocol.state is OPEN

    @property
    def close_code(self) -> int | None:
        """The code of the server's close frame; 1006 if it closed without one; ``None``
        while open."""
        received = self._protocol.close_rcvd
        if received is not None:
            return received.code
        return 1006 if self._protocol.state is CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the server's close frame; ``""`` if none came; ``None`` while open."""
        received = self._protocol.close_rcvd
        if received is not None:
            return received.reason
        return "" if self._protocol.state is CLOSED else None

    # Messages.

    def send(self, message: Message | bytearray | memoryview) -> None:
        """Send ``message``: ``str`` as a text frame, bytes-like as a binary frame."""
        if self._protocol.state is not OPEN:
            raise self._closed()
        if isinstance(message, str):
            self._protocol.send_text(message.encode())
        elif isinstance(message, (bytes, bytearray, memoryview)):
            self._protocol.send_binary(bytes(message))
        else:
            raise TypeError(f"a message is str or bytes-like, not {type(message).__name__}")
        self._flush()

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message (``str`` or ``bytes``); ``None`` when ``timeout`` seconds pass
        first (``None``: wait as long as it takes); raises :class:`ConnectionClosed`
        (``.code``, ``.reason``: the server's) once the connection is closed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._messages:
            if self._protocol.close_rcvd is not None or self._protocol.state is CLOSED:
                raise self._closed()
            remaining = None if deadline is None else deadline - time.monotonic()
            if not self._read(remaining):  # once the time is up, only what has arrived
                return None
        return self._messages.popleft()

    recv = receive

    def send_json(self, obj: Any) -> None:
        """Send ``obj`` as JSON in a text message."""
        self.send(json.dumps(obj))

    def receive_json(self, timeout: float | None = None) -> Any:
        """The next message decoded from JSON; ``None`` when ``timeout`` passes first."""
        message = self.receive(timeout)
        return None if message is None else json.loads(message)

    def ping(self, data: bytes = b"") -> None:
        """Send a ping; the server's pong is read with the messages."""
        self._protocol.send_ping(data)
        self._flush()

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` and ``reason``; wait for the server's answer and for the
        server's side of the connection to end (at most ``WAIT`` seconds each)."""
        if self._protocol.state is OPEN:
            self._protocol.send_close(code, reason)
            self._flush()
        deadline = time.monotonic() + WAIT
        while self._protocol.state is not CLOSED:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not self._read(remaining):
                break
        self._request_ended.wait(max(deadline - time.monotonic(), 0.0))
        self._sock.close()

    def __iter__(self) -> Iterator[Message]:
        """The messages, until the server closes the connection (``receive`` without a
        timeout: as long as it takes)."""
        while True:
            try:
                message = self.receive()
            except ConnectionClosed:
                return
            assert message is not None
            yield message

    def __enter__(self) -> TestConnection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # The socket.

    def _closed(self) -> ConnectionClosed:
        return ConnectionClosed(self.close_code or 1006, self.close_reason or "")

    def _read(self, timeout: float | None) -> bool:
        """Read once from the socket and act on it; ``False`` when ``timeout`` passed
        (``0`` or less: when nothing has arrived)."""
        self._sock.settimeout(timeout if timeout is None or timeout > 0 else 0.0)
        try:
            data = self._sock.recv(65536)
        except (TimeoutError, BlockingIOError):
            return False
        except OSError:
            data = b""
        if data:
            self._protocol.receive_data(data)
        else:
            self._protocol.receive_eof()
        for event in self._protocol.events_received():
            if isinstance(event, Frame):
                self._on_frame(event)
        self._flush()
        return True

    def _on_frame(self, frame: Frame) -> None:
        if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
            self._text = frame.opcode is Opcode.TEXT
            self._parts = []
        elif frame.opcode is not Opcode.CONT:
            return  # pings are answered by the protocol; pongs and closes need nothing here
        self._parts.append(bytes(frame.data))
        if frame.fin:
            data = b"".join(self._parts)
            self._parts = []
            self._messages.append(data.decode() if self._text else data)

    def _flush(self) -> None:
        for data in self._protocol.data_to_send():
            with contextlib.suppress(OSError):  # the server is gone: reading tells
                if data:
                    self._sock.sendall(data)
                else:
                    self._sock.shutdown(socket.SHUT_WR)
