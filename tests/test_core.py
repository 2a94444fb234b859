"""The protocol core, without uWSGI: a :class:`Connection` over one end of a socket pair.

The test plays the client on the other end with raw frames and parses what the server
writes with a client-side ``websockets`` :class:`~websockets.protocol.Protocol`. A small
``select`` loop, driven explicitly by each test, stands in for a flavour's reactor.
"""

from __future__ import annotations

import array
import base64
import contextlib
import os
import select
import socket
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ClientPerMessageDeflateFactory
from websockets.frames import Close, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.protocol import CLIENT, Protocol

from flask_uwsgi_websocket.core import connection as connection_module
from flask_uwsgi_websocket.core.compression import DEFAULTS
from flask_uwsgi_websocket.core.connection import LINGER, STREAM_BUFFER, Connection, deliver
from flask_uwsgi_websocket.core.framing import build_frame
from flask_uwsgi_websocket.core.handshake import Handshake, negotiate
from flask_uwsgi_websocket.core.options import Options
from flask_uwsgi_websocket.exceptions import ConnectionClosed, WebSocketError

from .helpers import BINARY, CLOSE, CONT, PING, PONG, TEXT, close_payload, frame

T = TypeVar("T")

RSV1, RSV2 = 4, 2  # frame()'s rsv: the three RSV bits as a number
STEP = 0.005  # the longest the loop sleeps between two looks at a condition


# The reactor.


class LoopTimer:
    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class LoopReactor:
    """A ``select`` loop over one descriptor that runs only while a test drives it."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reader: Callable[[], None] | None = None
        self.writer: Callable[[], None] | None = None
        self.timers: list[LoopTimer] = []
        self.soon: deque[Callable[[], None]] = deque()
        self.closed = False
        #: Called on every turn of the loop (the test's client reads there).
        self.tick: Callable[[], Any] = lambda: None

    # The Reactor protocol.

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        assert not self.closed
        self.reader = callback

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        assert not self.closed
        self.writer = callback

    def call_later(self, delay: float, callback: Callable[[], None]) -> LoopTimer:
        assert not self.closed
        timer = LoopTimer(time.monotonic() + delay, callback)
        self.timers.append(timer)
        return timer

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def close(self) -> None:
        self.closed = True
        self.reader = self.writer = None
        for timer in self.timers:
            timer.cancel()
        self.timers = []

    # What tests look at and how they drive it.

    @property
    def reading(self) -> bool:
        return self.reader is not None

    @property
    def writing(self) -> bool:
        return self.writer is not None

    @property
    def pending_timers(self) -> list[LoopTimer]:
        return [timer for timer in self.timers if not timer.cancelled]

    def run_once(self, timeout: float = 0.0) -> None:
        """Wait for the socket or a timer at most ``timeout`` s and run what is ready."""
        while self.soon:
            self.soon.popleft()()
        pending = self.pending_timers
        if pending:
            first = min(timer.when for timer in pending)
            timeout = max(0.0, min(timeout, first - time.monotonic()))
        rlist = [self.fd] if self.reader is not None else []
        wlist = [self.fd] if self.writer is not None else []
        if rlist or wlist:
            readable, writable, _ = select.select(rlist, wlist, [], timeout)
            if readable and self.reader is not None:
                self.reader()
            if writable and self.writer is not None:
                self.writer()
        elif timeout:
            time.sleep(timeout)
        now = time.monotonic()
        due = sorted((t for t in self.timers if t.when <= now), key=lambda t: t.when)
        self.timers = [t for t in self.timers if t.when > now and not t.cancelled]
        for timer in due:
            if not timer.cancelled:
                timer.cancelled = True  # fired: cancel() is now a no-op
                timer.callback()

    def run_until(self, predicate: Callable[[], T], timeout: float = 1.0) -> T:
        """Run the loop until ``predicate()`` is true; return it. AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            self.tick()
            result = predicate()
            if result:
                return result
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"condition not met within {timeout} s")
            self.run_once(min(remaining, STEP))

    def run_for(self, seconds: float) -> None:
        """Run the loop for ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            self.tick()
            self.run_once(min(remaining, STEP))
        self.tick()


# The client.


def message_frame(message: str | bytes, **kwargs: Any) -> bytes:
    if isinstance(message, str):
        return frame(TEXT, message.encode(), **kwargs)
    return frame(BINARY, message, **kwargs)


class Peer:
    """The client end of the pair: writes raw bytes, parses the server's frames."""

    def __init__(self, sock: socket.socket, reactor: LoopReactor, extensions: list[Extension]):
        sock.setblocking(False)
        self.sock = sock
        self.reactor = reactor
        # A client protocol parses what the server sends and compresses what the client
        # sends when permessage-deflate was agreed. Its own answers are dropped: the test
        # answers pings and close frames by hand, or not.
        self.protocol = Protocol(CLIENT, max_size=None)
        self.protocol.extensions = extensions
        self.frames: list[Frame] = []
        #: Every byte received, as it came on the wire.
        self.received = bytearray()
        self.eof_at: float | None = None
        #: While set, the client does not read (its receive buffer fills up).
        self.paused = False

    @property
    def eof(self) -> bool:
        return self.eof_at is not None

    def send(self, data: bytes) -> float:
        """Write ``data`` (running the loop when the socket is full); return the time."""
        view = memoryview(data)
        while view:
            try:
                view = view[self.sock.send(view) :]
            except BlockingIOError:
                self.reactor.run_once(STEP)
        return time.monotonic()

    def send_message(self, message: str | bytes, fin: bool = True) -> None:
        """Send through the client protocol (compressed when agreed)."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode(), fin=fin)
        else:
            self.protocol.send_binary(message, fin=fin)
        self.send(b"".join(self.protocol.data_to_send()))

    def encode(self, message: str | bytes, fin: bool = True) -> bytes:
        """The frame the client protocol would send for ``message``."""
        if isinstance(message, str):
            self.protocol.send_text(message.encode(), fin=fin)
        else:
            self.protocol.send_binary(message, fin=fin)
        return b"".join(self.protocol.data_to_send())

    def pump(self) -> list[Frame]:
        """Read what the server sent; return every frame received so far."""
        while not self.paused and not self.eof:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                break
            if data:
                self.received += data
                self.protocol.receive_data(data)
            else:
                self.eof_at = time.monotonic()
                self.protocol.receive_eof()
            self.frames.extend(self.protocol.events_received())
            self.protocol.data_to_send()  # dropped, see __init__
        return self.frames

    def of(self, opcode: int) -> list[Frame]:
        self.pump()
        return [f for f in self.frames if f.opcode == opcode]

    def close_frame(self) -> Close | None:
        closes = self.of(CLOSE)
        assert len(closes) <= 1, closes
        return Close.parse(closes[0].data) if closes else None

    def data(self) -> list[str | bytes]:
        """The server's data frames as messages (it never fragments)."""
        messages: list[str | bytes] = []
        for f in self.pump():
            if f.opcode == TEXT:
                messages.append(f.data.decode())
            elif f.opcode == BINARY:
                messages.append(bytes(f.data))
        return messages


class DepthLock:
    """A lock stand-in that tells whether it is held, to check when ``wake`` is called."""

    def __init__(self) -> None:
        self.depth = 0

    def __enter__(self) -> None:
        self.depth += 1

    def __exit__(self, *exc: object) -> None:
        self.depth -= 1


class Harness:
    def __init__(
        self,
        options: Options,
        handshake: Handshake | None = None,
        extensions: list[Extension] | None = None,
        locked: bool = True,
    ) -> None:
        self.server, self.client = socket.socketpair()
        self.reactor = LoopReactor(self.server.fileno())
        self.lock = DepthLock()
        self.wakes = 0
        self.connection = Connection(
            self.server.fileno(),
            options,
            self.reactor,
            handshake,
            # Unlocked: as in the gevent and asyncio flavours, where nothing else runs
            # between the connection's callbacks.
            lock=self.lock if locked else None,
            wake=self._wake,
        )
        self.peer = Peer(self.client, self.reactor, extensions or [])
        self.reactor.tick = self.peer.pump
        self._released = False
        self.connection.start()

    def _wake(self) -> None:
        if self.connection.lock is self.lock:
            assert self.lock.depth > 0, "wake() is called with the lock held"
        self.wakes += 1

    def run_until(self, predicate: Callable[[], T], timeout: float = 1.0) -> T:
        return self.reactor.run_until(predicate, timeout)

    def next_message(self) -> str | bytes | None:
        with self.connection.lock:
            return self.connection.next_message()

    def messages(self) -> list[str | bytes]:
        """Every message received and queued now (none once closed and drained)."""
        found = []
        with contextlib.suppress(ConnectionClosed):
            while (message := self.next_message()) is not None:
                found.append(message)
        return found

    def receive(self, count: int, timeout: float = 1.0) -> list[str | bytes]:
        """Run until ``count`` messages came; return them."""
        found: list[str | bytes] = []

        def enough() -> bool:
            found.extend(self.messages())
            return len(found) >= count

        self.run_until(enough, timeout)
        assert len(found) == count, found
        return found

    def closed_error(self) -> ConnectionClosed:
        with pytest.raises(ConnectionClosed) as info:
            self.next_message()
        return info.value

    def finish(self) -> None:
        """Close the client's end once the server is done: the connection ends."""
        self.run_until(lambda: self.peer.eof)
        self.client.shutdown(socket.SHUT_WR)
        self.run_until(lambda: self.connection.closed)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.connection.release()

    def close(self) -> None:
        self.release()
        self.server.close()
        self.client.close()


def options(**changes: Any) -> Options:
    defaults: dict[str, Any] = {"compression": None, "ping_interval": None, "close_timeout": 1.0}
    return Options(**{**defaults, **changes})


def deflate(**settings: Any) -> tuple[Handshake, list[Extension]]:
    """An opening handshake that agrees permessage-deflate (the default settings, changed
    by ``settings``), and the client's extension."""
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=True)
    environ = {
        "REQUEST_METHOD": "GET",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
        "HTTP_SEC_WEBSOCKET_KEY": base64.b64encode(os.urandom(16)).decode(),
        "HTTP_SEC_WEBSOCKET_EXTENSIONS": build_extension(
            [(factory.name, factory.get_request_params())]
        ),
    }
    handshake = negotiate(environ, Options(compression={**DEFAULTS, **settings}))
    [(_, params)] = parse_extension(dict(handshake.headers)["Sec-WebSocket-Extensions"])
    assert handshake.extensions
    return handshake, [factory.process_response_params(params, [])]


@pytest.fixture
def make() -> Iterator[Callable[..., Harness]]:
    made: list[Harness] = []

    def make(compressed: bool = False, locked: bool = True, **changes: Any) -> Harness:
        if compressed:
            handshake, extensions = deflate()
            harness = Harness(options(**changes), handshake, extensions, locked)
        else:
            harness = Harness(options(**changes), locked=locked)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()


def spy_protocol(connection: Connection) -> list[int]:
    """Record the sizes of what the connection feeds to its ``websockets`` protocol."""
    fed: list[int] = []
    receive_data = connection.protocol.receive_data

    def spy(data: bytes | bytearray) -> None:
        fed.append(len(data))
        receive_data(data)

    connection.protocol.receive_data = spy  # type: ignore[method-assign]
    return fed


# 1. The fast path and the slow path agree.

MESSAGES: list[str | bytes] = [
    "hello",
    b"\x00\x01\xfe\xff",
    "",
    b"",
    "h\u00e9llo w\u00f6rld \u20ac \U0001f600 " * 3,
    bytes(range(256)),
    "x" * 300,
]


def fast_stream(peer: Peer) -> bytes:
    return b"".join(message_frame(m) for m in MESSAGES)


def fragmented_stream(peer: Peer) -> bytes:
    """Each message in three fragments, cut inside UTF-8 sequences; some are empty."""
    out = []
    for m in MESSAGES:
        data = m.encode() if isinstance(m, str) else m
        cuts = [data[:1], data[1 : len(data) // 2 + 1], data[len(data) // 2 + 1 :]]
        out.append(frame(TEXT if isinstance(m, str) else BINARY, cuts[0], fin=False))
        out.append(frame(CONT, cuts[1], fin=False))
        out.append(frame(CONT, cuts[2]))
    return b"".join(out)


def pings_stream(peer: Peer) -> bytes:
    """Pings before and between the fragments of every message."""
    out = []
    for i, m in enumerate(MESSAGES):
        data = m.encode() if isinstance(m, str) else m
        out.append(frame(PING, b"before %d" % i))
        out.append(frame(TEXT if isinstance(m, str) else BINARY, data[:3], fin=False))
        out.append(frame(PING, b"inside %d" % i))
        out.append(frame(CONT, data[3:]))
    return b"".join(out)


def compressed_stream(peer: Peer) -> bytes:
    frames = [peer.encode(m) for m in MESSAGES]
    assert all(f[0] & RSV1 << 4 for f in frames)  # compressed indeed
    return b"".join(frames)


def compressed_fragmented_stream(peer: Peer) -> bytes:
    out = []
    for m in MESSAGES:
        out.append(peer.encode(m[:2], fin=False))
        peer.protocol.send_continuation(m[2:].encode() if isinstance(m, str) else m[2:], True)
        out.extend(peer.protocol.data_to_send())
    return b"".join(out)


@pytest.mark.parametrize(
    ("build", "compressed", "fast"),
    [
        pytest.param(fast_stream, False, True, id="fast"),
        pytest.param(fast_stream, True, True, id="fast-in-compressed-connection"),
        pytest.param(fragmented_stream, False, False, id="fragmented"),
        pytest.param(pings_stream, False, False, id="pings-between-fragments"),
        pytest.param(compressed_stream, True, True, id="compressed"),
        pytest.param(compressed_fragmented_stream, True, False, id="compressed-fragmented"),
    ],
)
def test_fast_and_slow_paths_give_the_same_messages(
    make: Callable[..., Harness], build: Callable[[Peer], bytes], compressed: bool, fast: bool
) -> None:
    h = make(compressed=compressed)
    fed = spy_protocol(h.connection)
    h.peer.send(build(h.peer))
    received = h.receive(len(MESSAGES))
    assert received == MESSAGES
    assert [type(m) for m in received] == [type(m) for m in MESSAGES]
    assert h.messages() == []
    assert (fed == []) is fast  # the fast path never feeds the protocol
    assert h.connection.connected
    assert h.wakes > 0
    if build is pings_stream:
        pongs = h.run_until(lambda: len(h.peer.of(PONG)) == 2 * len(MESSAGES) and h.peer.of(PONG))
        expected = [b"%s %d" % (w, i) for i in range(len(MESSAGES)) for w in (b"before", b"inside")]
        assert [bytes(p.data) for p in pongs] == expected


def too_big_compressed(peer: Peer) -> bytes:
    data = peer.encode(b"\x00" * 5000)
    assert len(data) < 1000  # small on the wire, too big once inflated
    return data


def bad_utf8_compressed(peer: Peer) -> bytes:
    peer.protocol.send_text(b"ok \xff")  # send_text takes bytes as they are
    return b"".join(peer.protocol.data_to_send())


ERRORS = [
    # (name, compressed, stream, close code)
    ("bad-utf8-fast", False, lambda p: frame(TEXT, b"ok \xff\xfe"), 1007),
    ("bad-utf8-split-sequence-fast", False, lambda p: frame(TEXT, "\u20ac".encode()[:2]), 1007),
    (
        "bad-utf8-fragmented",
        False,
        lambda p: frame(TEXT, b"ok \xe2", fin=False) + frame(CONT, b"\x28\xa1"),
        1007,
    ),
    (
        "bad-utf8-incomplete-at-fin",
        False,
        lambda p: frame(TEXT, b"ok", fin=False) + frame(CONT, "\u20ac".encode()[:2]),
        1007,
    ),
    ("bad-utf8-compressed", True, bad_utf8_compressed, 1007),
    ("too-big-fast", False, lambda p: frame(BINARY, b"x" * 1001), 1009),
    ("too-big-text-fast", False, lambda p: frame(TEXT, b"x" * 70000), 1009),
    (
        "too-big-fragmented",
        False,
        lambda p: frame(BINARY, b"x" * 600, fin=False) + frame(CONT, b"x" * 600),
        1009,
    ),
    ("too-big-compressed", True, too_big_compressed, 1009),
    ("unmasked-text", False, lambda p: frame(TEXT, b"hi", mask=False), 1002),
    (
        "unmasked-continuation",
        False,
        lambda p: frame(TEXT, b"h", fin=False) + frame(CONT, b"i", mask=False),
        1002,
    ),
    ("rsv1-without-extension", False, lambda p: frame(TEXT, b"hi", rsv=RSV1), 1002),
    ("rsv2-with-deflate", True, lambda p: frame(BINARY, b"hi", rsv=RSV2), 1002),
    ("reserved-opcode", False, lambda p: frame(0x3, b"hi"), 1002),
    ("continuation-first", False, lambda p: frame(CONT, b"hi"), 1002),
    (
        "text-inside-fragmented",
        False,
        lambda p: frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
        1002,
    ),
    ("fragmented-ping", False, lambda p: frame(PING, b"p", fin=False), 1002),
    ("long-ping", False, lambda p: frame(PING, b"p" * 126), 1002),
    ("bad-close-code", False, lambda p: frame(CLOSE, close_payload(999)), 1002),
    ("surrogate-fast", False, lambda p: frame(TEXT, b"\xed\xa0\x80"), 1007),
    (
        "surrogate-fragmented",
        False,
        lambda p: frame(TEXT, b"\xed", fin=False) + frame(CONT, b"\xa0\x80"),
        1007,
    ),
    ("overlong-fast", False, lambda p: frame(TEXT, b"\xc0\xaf"), 1007),
    (
        "overlong-fragmented",
        False,
        lambda p: frame(TEXT, b"\xc0", fin=False) + frame(CONT, b"\xaf"),
        1007,
    ),
]


@pytest.mark.parametrize(
    ("compressed", "build", "code"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS]
)
def test_errors_close_alike_on_both_paths(
    make: Callable[..., Harness], compressed: bool, build: Callable[[Peer], bytes], code: int
) -> None:
    h = make(compressed=compressed, max_message_size=1000)
    before = h.peer.encode("before") if compressed else frame(TEXT, b"before")
    after = frame(TEXT, b"after")
    h.peer.send(before + build(h.peer) + after)  # one read: the batch stops at the error
    # The error is acted on once the message before it is taken (see the hold tests below).
    assert h.receive(1) == ["before"]
    close = h.run_until(h.peer.close_frame)
    assert close.code == code
    if code == 1007:
        assert close.reason.startswith("invalid UTF-8")
    assert not h.connection.connected
    assert h.messages() == []  # nothing of the bad message nor after it
    # The client answers and closes (without waiting for the server's LINGER); a failing
    # server does not read the answer (RFC 6455, 7.1.7).
    h.peer.send(frame(CLOSE, close_payload(code)))
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.connection.closed)
    assert h.closed_error().code == 1006
    assert h.reactor.pending_timers == []


# Invalid UTF-8 fails at the bad byte (RFC 6455, 8.1; Autobahn 6.4.3-4), not once its frame
# has all come: the part of a text frame that came is checked as it comes.


def test_invalid_utf8_fails_before_the_rest_of_its_frame(make: Callable[..., Harness]) -> None:
    h = make()
    whole = frame(TEXT, "\u03ba\u1f79\u03c3\u03bc\u03b5".encode() + b"\xf4\x90\x80\x80edited")
    bad = 2 + 4 + 11 + 2  # the header, the key, the valid start, \xf4 and \x90: bad
    h.peer.send(whole[: bad - 1])
    h.reactor.run_for(0.05)
    assert h.peer.close_frame() is None  # a valid start: waits for more
    h.peer.send(whole[bad - 1 : bad])
    close = h.run_until(h.peer.close_frame)
    assert (close.code, close.reason) == (
        1007,
        "invalid UTF-8: invalid continuation byte in a frame still arriving",
    )
    h.peer.send(whole[bad:])  # discarded
    h.finish()
    assert h.messages() == []
    assert h.closed_error().code == 1006


def test_invalid_utf8_fails_before_the_rest_of_a_continuation(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.peer.send(frame(TEXT, b"ok \xe2", fin=False))  # ends inside a character
    second = frame(CONT, b"\x82\xac then \xe2(bad", fin=False)
    h.peer.send(second[: 6 + 9])  # the euro sign completed, the start of the next
    h.reactor.run_for(0.05)
    assert h.peer.close_frame() is None
    h.peer.send(second[6 + 9 : 6 + 10])  # "(" cannot continue it
    assert h.run_until(h.peer.close_frame).code == 1007
    h.finish()
    assert h.messages() == []


def test_a_text_frame_in_many_reads_comes_whole(make: Callable[..., Harness]) -> None:
    """Checked and decoded as it comes, in any pieces: characters and the masking key cut
    anywhere, on the fast path (one frame) and in fragments; binary as it was."""
    h = make(max_message_size=None)
    text = "h\u00e9llo w\u00f6rld \u20ac\U0001f600 " * 300
    data = text.encode()
    cut = len(data) // 2
    expected: list[str | bytes] = []
    for wire, message in [
        (frame(TEXT, data), text),
        (frame(TEXT, data[:cut], fin=False) + frame(CONT, data[cut:]), text),
        (frame(BINARY, data), data),
    ]:
        for size in (1, 3, 7, 4096):
            for start in range(0, len(wire), size):
                h.peer.send(wire[start : start + size])
                h.reactor.run_once(0.0)
            expected.append(message)
    assert h.receive(len(expected), timeout=10.0) == expected
    assert h.connection.messages_in == len(expected)
    assert h.connection.bytes_in == sum(len(data) for _ in expected)


def test_invalid_utf8_in_a_compressed_message_fails_at_its_frame(
    make: Callable[..., Harness],
) -> None:
    """A compressed frame is inflated whole (by the permessage-deflate extension), so its
    UTF-8 is checked when it has all come: a bad fragment fails before the message ends."""
    h = make(compressed=True)
    client = h.peer.protocol
    client.send_text(b"valid start ", fin=False)
    client.send_continuation(b"then \xff", fin=False)
    h.peer.send(b"".join(client.data_to_send()))
    assert h.run_until(h.peer.close_frame).code == 1007
    assert h.messages() == []


# A frame that fails the connection waits for the messages before it to be taken: what
# the handler sends in answer goes out before the close frame (Autobahn 3.2-3.4, 4.1.3-5,
# 4.2.3-5, 5.15: an echo, then the failure).


@pytest.mark.parametrize(
    ("bad", "code"),
    [
        (frame(TEXT, b"rsv", rsv=RSV2), 1002),
        (frame(0x5, b"reserved opcode"), 1002),
        (frame(CONT, b"nothing to continue"), 1002),
        (frame(TEXT, b"\xff"), 1007),
        (frame(TEXT, b"\xe2", fin=False) + frame(CONT, b"(x"), 1007),
        (frame(TEXT, b"ab\xffcdefgh")[:9], 1007),  # not all in
        (frame(BINARY, b"x" * 2000), 1009),
    ],
    ids=["rsv", "opcode", "continuation", "utf8", "utf8-fragment", "utf8-partial", "too-big"],
)
def test_a_bad_frame_waits_for_the_messages_before_it(
    make: Callable[..., Harness], bad: bytes, code: int
) -> None:
    h = make(max_message_size=1000)
    h.peer.send(frame(TEXT, b"first") + frame(BINARY, b"second") + bad + frame(PING, b"after"))
    h.reactor.run_for(0.05)
    assert h.peer.frames == [] and h.connection.connected
    assert h.next_message() == "first"
    with h.lock:
        h.connection.send("echo: first")
    h.reactor.run_for(0.05)
    assert h.peer.close_frame() is None  # "second" is not taken yet
    assert h.next_message() == b"second"
    with h.lock:
        h.connection.send(b"echo: second")
    assert h.next_message() is None  # the handler waits: the bad frame is acted on
    h.run_until(h.peer.close_frame)
    assert [(f.opcode, bytes(f.data)[:2]) for f in h.peer.frames] == [
        (Opcode.TEXT, b"ec"),
        (Opcode.BINARY, b"ec"),
        (Opcode.CLOSE, code.to_bytes(2, "big")),  # no pong: nothing after the bad frame
    ]
    h.finish()
    assert h.closed_error().code == 1006


def test_a_held_bad_frame_is_read_when_the_handler_closes(make: Callable[..., Harness]) -> None:
    h = make()
    h.peer.send(frame(TEXT, b"unread") + frame(0x5, b"reserved opcode"))
    h.reactor.run_for(0.05)
    with h.lock:
        h.connection.begin_close(1000, "bye")
    assert h.run_until(h.peer.close_frame).code == 1000
    h.run_until(lambda: h.peer.eof)  # failed while closing: no second close frame
    assert len(h.peer.of(CLOSE)) == 1


def test_a_ping_after_an_unread_message_is_answered(make: Callable[..., Harness]) -> None:
    """Only a frame that may fail the connection waits: a ping is answered at once."""
    h = make()
    h.peer.send(frame(TEXT, b"unread") + frame(PING, b"now"))
    pong = h.run_until(lambda: h.peer.of(PONG))
    assert bytes(pong[0].data) == b"now"
    assert h.messages() == ["unread"]


def test_error_in_a_later_read_keeps_earlier_messages(make: Callable[..., Harness]) -> None:
    h = make(max_message_size=1000)
    h.peer.send(frame(TEXT, b"one") + frame(BINARY, b"two"))
    assert h.receive(2) == ["one", b"two"]
    h.peer.send(frame(TEXT, b"\xc3"))
    assert h.run_until(h.peer.close_frame).code == 1007
    h.finish()
    assert h.closed_error().code == 1006


# 2. Split reads.


def split_stream() -> tuple[bytes, list[str | bytes]]:
    messages: list[str | bytes] = []
    out = []
    # 7-bit, 16-bit and 64-bit lengths around their limits; odd chunks cut characters.
    for size, kinds in (
        (125, (str, bytes)),
        (126, (str, bytes)),
        (65535, (str,)),
        (65536, (bytes,)),
    ):
        for kind in kinds:
            m: str | bytes
            if kind is str:
                m = "\u00e9" * (size // 2) + "a" * (size % 2)
                assert len(m.encode()) == size
            else:
                m = bytes(i % 251 for i in range(size))
            out.append(message_frame(m))
            messages.append(m)
    # The slow path, split too: a ping between fragments with 7, 16 and 64-bit lengths.
    fragments = [b"a" * 100, b"b" * 300, b"c" * 65536]
    out.append(frame(BINARY, fragments[0], fin=False))
    out.append(frame(PING, b"split"))
    out.append(frame(CONT, fragments[1], fin=False))
    out.append(frame(CONT, fragments[2]))
    messages.append(b"".join(fragments))
    out.append(frame(TEXT, b"the end"))
    messages.append("the end")
    return b"".join(out), messages


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, None], ids=lambda c: f"chunk-{c or 'whole'}")
def test_split_reads_give_the_same_messages(
    make: Callable[..., Harness], chunk: int | None
) -> None:
    stream, expected = split_stream()
    h = make(max_message_size=None, max_queue=100)
    received: list[str | bytes] = []
    if chunk is None:
        h.peer.send(stream)
    else:
        for pos in range(0, len(stream), chunk):
            h.peer.sock.send(stream[pos : pos + chunk])
            h.reactor.run_once(0.0)  # one read per chunk
            assert h.reactor.reading
    received += h.receive(len(expected), timeout=2.0)
    assert [len(m) for m in received] == [len(m) for m in expected]
    assert received == expected
    pong = h.run_until(lambda: h.peer.of(PONG))
    assert [bytes(p.data) for p in pong] == [b"split"]
    assert h.connection.connected


# 3. Backpressure.


def fill(h: Harness, size: int = 1000) -> int:
    """Send messages until the connection is backlogged; return how many."""
    h.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.peer.paused = True
    sent = 0
    with h.connection.lock:
        while not h.connection.backlogged:
            h.connection.send(b"x" * size)
            sent += 1
            assert sent < 10000, "the socket never filled up"
    return sent


def test_backpressure_at_write_limit(make: Callable[..., Harness]) -> None:
    h = make(write_limit=4096)
    sent = fill(h)
    assert h.connection.buffered > 4096
    assert h.reactor.writing
    # The connection stops reading at the next event: here, a message comes.
    h.peer.send(frame(TEXT, b"first"))
    h.run_until(lambda: not h.reactor.reading)
    assert h.messages() == ["first"]
    h.peer.send(frame(TEXT, b"second"))
    h.reactor.run_for(0.05)
    assert h.messages() == []  # left in the socket
    assert not h.reactor.reading
    assert h.connection.backlogged
    # The client reads: the output drains, reading resumes.
    wakes = h.wakes
    h.peer.paused = False
    h.run_until(lambda: h.connection.buffered == 0)
    assert not h.connection.backlogged
    assert not h.reactor.writing
    assert h.reactor.reading
    assert h.wakes > wakes
    assert h.receive(1) == ["second"]
    data = h.run_until(lambda: len(h.peer.data()) == sent and h.peer.data())
    assert data == [b"x" * 1000] * sent


def test_backpressure_while_closing_does_not_stop_reading(make: Callable[..., Harness]) -> None:
    h = make(write_limit=4096)
    sent = fill(h)
    with h.lock:
        h.connection.begin_close(1000, "")
    assert not h.connection.backlogged  # not OPEN: senders get ConnectionClosed instead
    assert h.reactor.reading  # the close answer must be read
    h.peer.send(frame(CLOSE, close_payload(1000)))
    h.run_until(lambda: h.connection.close_code == 1000)
    h.reactor.run_for(0.02)
    assert not h.peer.eof  # the half-close waits for the output to be flushed
    h.peer.paused = False
    h.finish()
    assert h.peer.close_frame() == Close(1000, "")
    assert [f.opcode for f in h.peer.frames] == [Opcode.BINARY] * sent + [Opcode.CLOSE]


def test_max_queue_pauses_reading(make: Callable[..., Harness]) -> None:
    h = make(max_queue=2)
    h.peer.send(frame(TEXT, b"1"))
    h.run_until(lambda: h.wakes)
    assert h.reactor.reading  # one queued, below max_queue
    h.peer.send(frame(TEXT, b"2"))
    h.run_until(lambda: not h.reactor.reading)
    h.peer.send(frame(TEXT, b"3"))
    h.reactor.run_for(0.05)
    assert not h.reactor.reading
    assert h.next_message() == "1"
    assert h.reactor.reading  # taking a message resumes reading
    h.run_until(lambda: not h.reactor.reading)  # "3" came: two queued again
    assert h.messages() == ["2", "3"]
    assert h.reactor.reading


def test_poll_message_reads_without_the_reactor(make: Callable[..., Harness]) -> None:
    h = make()
    assert h.connection.poll_message() is None
    h.peer.send(frame(BINARY, b"polled"))
    assert h.connection.poll_message() == b"polled"
    assert h.connection.poll_message() is None


# 4. Keepalive.


def answer_pings(h: Harness) -> list[Frame]:
    """Make the client answer every ping not answered yet."""
    answered: list[Frame] = []

    def tick() -> list[Frame]:
        frames = h.peer.pump()
        for ping in [f for f in frames if f.opcode == PING][len(answered) :]:
            h.peer.send(frame(PONG, bytes(ping.data)))
            answered.append(ping)
        return frames

    h.reactor.tick = tick
    return answered


def test_keepalive_pong_keeps_the_connection_open(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05, ping_timeout=0.1)
    answered = answer_pings(h)
    h.reactor.run_for(0.35)
    assert len(answered) >= 3
    assert len({bytes(p.data) for p in answered}) == len(answered)  # a new payload each time
    assert h.connection.connected
    assert h.peer.close_frame() is None


def test_keepalive_without_pong_fails_with_1011(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05, ping_timeout=0.1)
    start = time.monotonic()
    ping = h.run_until(lambda: h.peer.of(PING))[0]
    assert len(ping.data) == 4
    h.run_until(lambda: h.connection.closed)
    elapsed = time.monotonic() - start
    assert 0.05 + 0.1 - 0.01 <= elapsed < 0.6
    assert h.peer.close_frame() == Close(1011, "keepalive ping timeout")
    assert h.closed_error().code == 1006
    assert not h.reactor.reading
    assert h.reactor.pending_timers == []


def test_keepalive_waits_while_the_server_does_not_read(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05, ping_timeout=0.1, max_queue=1)
    answered = answer_pings(h)
    h.peer.send(frame(TEXT, b"queued"))
    h.run_until(lambda: not h.reactor.reading)  # max_queue: the pongs stay in the socket
    h.run_until(lambda: answered)
    h.reactor.run_for(0.25)  # over two ping timeouts
    assert h.connection.connected  # not the peer's fault
    assert h.next_message() == "queued"
    h.reactor.run_for(0.15)
    assert h.connection.connected
    assert h.peer.close_frame() is None


def test_keepalive_fails_a_peer_that_does_not_read(make: Callable[..., Harness]) -> None:
    # A ping flood from a peer that never reads: the pongs pass write_limit, reading stops
    # (memory stays bounded), and the keepalive ping waits behind them: the peer's fault.
    h = make(ping_interval=0.05, ping_timeout=0.1, write_limit=4096)
    h.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.peer.paused = True
    h.peer.send(frame(PING, b"p" * 125) * 300)
    h.run_until(lambda: not h.reactor.reading)
    assert h.connection.buffered > 4096
    start = time.monotonic()
    h.run_until(lambda: h.connection.closed)
    assert time.monotonic() - start < 0.6
    assert h.closed_error().code == 1006  # the peer never read the 1011 close frame
    assert h.reactor.pending_timers == []


def test_a_pong_in_the_socket_counts_when_the_timer_runs_first(
    make: Callable[..., Harness],
) -> None:
    """A busy worker's loop may run the pong timer before the read that has the pong."""
    h = make(ping_interval=0.05, ping_timeout=0.1)
    ping = h.run_until(lambda: h.peer.of(PING))[0]
    h.peer.send(frame(PONG, bytes(ping.data)))  # in the socket, not read yet
    for timer in h.reactor.pending_timers:  # the loop runs its timers first
        timer.cancelled = True
        timer.callback()
    assert h.connection.connected
    assert h.peer.close_frame() is None


def test_keepalive_wrong_pong_payload_does_not_count(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05, ping_timeout=0.1)
    h.run_until(lambda: h.peer.of(PING))
    h.peer.send(frame(PONG, b"nope"))
    h.run_until(lambda: h.connection.closed)
    assert h.peer.close_frame() == Close(1011, "keepalive ping timeout")


def test_no_keepalive_without_ping_interval(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=None)
    assert h.reactor.pending_timers == []
    h.reactor.run_for(0.05)
    assert h.peer.frames == []


def test_ping_is_sent_and_the_client_ping_answered(make: Callable[..., Harness]) -> None:
    h = make()
    with h.lock:
        h.connection.ping("hé")
    assert bytes(h.run_until(lambda: h.peer.of(PING))[0].data) == "hé".encode()
    h.peer.send(frame(PING, b"from client"))
    assert bytes(h.run_until(lambda: h.peer.of(PONG))[0].data) == b"from client"
    h.peer.send(frame(PONG, "hé".encode()))
    h.reactor.run_for(0.02)
    assert h.connection.connected


def test_a_pong_answers_its_ping_and_every_earlier_one(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=None)
    with h.lock:
        first, second, third = (h.connection.ping(data) for data in (b"1", None, b"3"))
        assert h.connection.ping(b"1") is first  # the same data: one pong answers both
    assert len(second.data) == 4 and h.connection.latency == 0.0
    h.run_until(lambda: len(h.peer.of(PING)) == 4)
    h.peer.send(frame(PONG, second.data))
    h.run_until(lambda: second.latency is not None)
    assert first.latency is not None and third.latency is None
    assert h.connection.latency == second.latency
    h.peer.send(frame(PONG, b"unknown"))  # a pong nobody asked for is ignored
    h.peer.send(frame(PONG, b"3"))
    h.run_until(lambda: third.latency is not None)
    with h.lock:
        h.connection.ping(b"1")  # answered: its payload is free again


def test_the_keepalive_measures_latency(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05, ping_timeout=0.5)
    answer_pings(h)
    h.run_until(lambda: h.connection.latency > 0)
    assert h.connection.latency < 0.5


# Streaming.


def take_fragment(h: Harness) -> tuple[str | bytes, bool]:
    def got() -> tuple[str | bytes, bool] | None:
        with h.lock:
            return h.connection.next_fragment()

    return h.run_until(got)


def test_streaming_gives_pieces_as_frames_arrive_and_characters_whole(
    make: Callable[..., Harness],
) -> None:
    h = make()
    h.connection.streaming = True
    h.peer.send(frame(TEXT, b"h\xc3", fin=False))  # "é" split between two frames
    assert take_fragment(h) == ("h", False)
    h.peer.send(frame(CONT, b"\xa9llo", fin=False))
    assert take_fragment(h) == ("éllo", False)
    h.peer.send(frame(CONT, b"!") + frame(TEXT, b"whole"))
    assert take_fragment(h) == ("!", True)
    assert take_fragment(h) == ("whole", True)  # a message that came whole, whole


def test_streaming_reads_a_part_at_a_time(make: Callable[..., Harness]) -> None:
    h = make(max_message_size=None)
    h.connection.streaming = True
    size = 16000
    frames = [frame(BINARY, b"a" * size, fin=False)]
    frames += [frame(CONT, bytes([98 + i]) * size, fin=False) for i in range(8)]
    frames.append(frame(CONT, b"", fin=True))
    h.peer.send(b"".join(frames))  # 144 kB, all in the socket at once (it holds more)
    h.run_until(lambda: not h.reactor.reading)
    received: list[bytes] = []
    final = False
    while not final:
        piece, final = take_fragment(h)
        assert isinstance(piece, bytes)
        assert len(piece) <= STREAM_BUFFER + size  # never the whole message at once
        received.append(piece)
    assert b"".join(received) == b"a" * size + b"".join(bytes([98 + i]) * size for i in range(8))
    assert len(received) >= 3


@pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])
def test_fragments_are_sent_and_broadcasts_wait_for_the_last(
    make: Callable[..., Harness], locked: bool
) -> None:
    h = make(compression=None, locked=locked)
    with h.lock:
        h.connection.send_fragment(TEXT, b"a", fin=False)
        assert h.connection.fragmenting
        with pytest.raises(WebSocketError, match="fragmented message"):
            h.connection.send("not now")
    broadcast(h, Opcode.TEXT, b"broadcast")
    with h.lock:
        h.connection.send_fragment(CONT, b"b", fin=True)
    frames = h.run_until(lambda: len(h.peer.pump()) == 3 and h.peer.frames)
    assert [(f.opcode, bytes(f.data), f.fin) for f in frames] == [
        (Opcode.TEXT, b"a", False), (Opcode.CONT, b"b", True), (Opcode.TEXT, b"broadcast", True),
    ]  # fmt: skip


def test_more_broadcasts_held_than_writev_takes_all_go_out(make: Callable[..., Harness]) -> None:
    h = make(compression=None)
    count = 2 * os.sysconf("SC_IOV_MAX")  # one writev of them would fail with EINVAL
    with h.lock:
        h.connection.send_fragment(TEXT, b"a", fin=False)
    for i in range(count):
        broadcast(h, Opcode.TEXT, str(i).encode())
    with h.lock:
        h.connection.send_fragment(CONT, b"b", fin=True)
    frames = h.run_until(lambda: len(h.peer.pump()) == count + 2 and h.peer.frames)
    assert [bytes(f.data) for f in frames[2:]] == [str(i).encode() for i in range(count)]
    assert h.connection.connected


# 5. The closing handshake.


def test_client_initiated_close(make: Callable[..., Harness]) -> None:
    h = make()
    h.peer.send(frame(TEXT, b"last") + frame(CLOSE, close_payload(1000, "done")))
    assert h.run_until(h.peer.close_frame) == Close(1000, "done")  # echoed
    assert h.connection.close_code == 1000
    assert h.connection.close_reason == "done"
    assert not h.connection.connected
    assert not h.connection.closed
    h.run_until(lambda: h.peer.eof)  # the server half-closes right after its answer
    with h.lock, pytest.raises(ConnectionClosed):
        h.connection.send("too late")
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.connection.closed)
    assert h.messages() == ["last"]  # still delivered after the close
    error = h.closed_error()
    assert (error.code, error.reason, error.ok) == (1000, "done", True)
    assert h.reactor.pending_timers == []
    assert not h.reactor.reading and not h.reactor.writing


def test_close_between_fragments_is_answered(make: Callable[..., Harness]) -> None:
    h = make()
    h.peer.send(frame(TEXT, b"unfin", fin=False) + frame(CLOSE, close_payload(1001)))
    assert h.run_until(h.peer.close_frame) == Close(1001, "")
    h.finish()
    assert h.messages() == []
    assert h.closed_error().code == 1001


def test_server_initiated_close(make: Callable[..., Harness]) -> None:
    h = make()
    with h.lock:
        h.connection.begin_close(1001, "bye")
        h.connection.begin_close(1000, "again")  # nothing once closing
    assert h.run_until(h.peer.close_frame) == Close(1001, "bye")
    assert not h.connection.connected
    assert h.connection.close_code is None
    h.peer.send(frame(CLOSE, close_payload(1001, "ok")))
    h.run_until(lambda: h.peer.eof)
    assert h.connection.close_code == 1001
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.connection.closed)
    assert h.closed_error().reason == "ok"
    assert h.reactor.pending_timers == []


def test_server_close_without_answer_times_out(make: Callable[..., Harness]) -> None:
    h = make(close_timeout=0.2)
    start = time.monotonic()
    with h.lock:
        h.connection.begin_close(1001, "bye")
    assert h.run_until(h.peer.close_frame) == Close(1001, "bye")
    h.run_until(lambda: h.connection.closed)
    assert 0.2 - 0.01 <= time.monotonic() - start < 0.6
    assert h.connection.close_code == 1006
    assert h.connection.close_reason == ""
    assert h.closed_error().code == 1006
    assert h.reactor.pending_timers == []
    assert not h.reactor.reading


def test_eof_without_close_frame_is_1006(make: Callable[..., Harness]) -> None:
    h = make()
    h.peer.send(frame(TEXT, b"a"))
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.connection.closed)
    assert h.messages() == ["a"]
    assert h.closed_error().code == 1006
    assert h.peer.close_frame() is None


def test_data_after_a_failed_write_is_not_read(
    make: Callable[..., Harness], caplog: pytest.LogCaptureFixture
) -> None:
    h = make()
    h.client.send(frame(TEXT, b"a"))
    h.client.close()
    with h.connection.lock:
        h.connection.send_frame(TEXT, b"b")  # EPIPE: the connection is lost
    # A read callback the reactor had already picked before the write failed.
    h.connection.on_readable()
    assert h.connection.closed
    assert h.closed_error().code == 1006
    assert "failed" not in caplog.text


# 6. Linger.


@pytest.mark.parametrize("how", ["too-big-header", "fail-called"])
def test_linger_waits_for_a_quiet_peer(make: Callable[..., Harness], how: str) -> None:
    h = make(max_message_size=1000, close_timeout=3.0)
    if how == "too-big-header":
        # The header is refused at once; the client goes on sending the payload.
        h.peer.send(b"\x82\xfe" + (50000).to_bytes(2, "big") + b"mask" + b"y" * 200)
        more = b"y" * 200
    else:
        with h.lock:
            h.connection.fail(1009, "too big")
        more = frame(BINARY, b"y" * 200)  # well-formed frames, discarded all the same
    assert h.run_until(h.peer.close_frame).code == 1009
    close_seen = time.monotonic()
    last_send = close_seen
    while last_send - close_seen < 3 * LINGER:
        h.reactor.run_for(LINGER / 3)
        assert not h.peer.eof, "half-closed while the client was sending"
        last_send = h.peer.send(more)
    assert not h.connection.closed
    h.run_until(lambda: h.peer.eof)
    assert h.peer.eof_at is not None
    quiet = h.peer.eof_at - last_send
    assert LINGER <= quiet < LINGER + 0.3
    assert [f.opcode for f in h.peer.frames] == [Opcode.CLOSE]  # the close frame, then EOF
    h.client.shutdown(socket.SHUT_WR)
    h.run_until(lambda: h.connection.closed)
    assert h.reactor.pending_timers == []


def test_linger_with_a_quiet_peer(make: Callable[..., Harness]) -> None:
    h = make(max_message_size=10)
    start = time.monotonic()
    h.peer.send(frame(BINARY, b"z" * 11))
    assert h.run_until(h.peer.close_frame).code == 1009
    h.run_until(lambda: h.peer.eof)
    assert h.peer.eof_at is not None
    assert LINGER <= h.peer.eof_at - start < LINGER + 0.3


def test_linger_is_bounded_by_close_timeout(make: Callable[..., Harness]) -> None:
    h = make(max_message_size=10, close_timeout=0.25)
    start = time.monotonic()
    h.peer.send(b"\x82\xff" + (10**6).to_bytes(8, "big") + b"mask")
    assert h.run_until(h.peer.close_frame).code == 1009
    while not h.connection.closed:
        h.peer.send(b"y" * 100)
        h.reactor.run_for(0.02)
        assert time.monotonic() - start < 1.0
    assert 0.25 - 0.01 <= time.monotonic() - start < 0.6
    assert h.closed_error().code == 1006


# 7. deliver().


def broadcast(h: Harness, opcode: Opcode, payload: bytes) -> None:
    """Deliver ``payload`` to ``h``'s connection as a broadcast does: framed once, no lock."""
    deliver([h.connection], build_frame(opcode, payload), len(payload))


both_locks = pytest.mark.parametrize("locked", [True, False], ids=["locked", "unlocked"])


@both_locks
def test_deliver_queues_a_prebuilt_frame(make: Callable[..., Harness], locked: bool) -> None:
    h = make(locked=locked)
    broadcast(h, Opcode.TEXT, "to all \u20ac".encode())
    broadcast(h, Opcode.BINARY, b"\x00" * 70000)
    assert h.run_until(lambda: len(h.peer.data()) == 2 and h.peer.data()) == [
        "to all \u20ac",
        b"\x00" * 70000,
    ]


@both_locks
def test_deliver_more_than_max_send_buffer_when_nothing_waits(
    make: Callable[..., Harness], locked: bool
) -> None:
    h = make(max_send_buffer=10000, locked=locked)
    h.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.peer.paused = True
    broadcast(h, Opcode.BINARY, b"b" * 30000)
    assert h.connection.connected  # one message larger than the limit goes
    assert h.connection.buffered > 10000
    broadcast(h, Opcode.BINARY, b"s")  # but nothing after it
    assert not h.connection.connected
    h.peer.paused = False
    assert h.run_until(h.peer.close_frame).code == 1013
    assert h.peer.data() == [b"b" * 30000]


@both_locks
def test_deliver_to_a_slow_consumer_closes_with_1013(
    make: Callable[..., Harness], locked: bool
) -> None:
    h = make(max_send_buffer=40000, write_limit=10**6, locked=locked)
    h.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.peer.paused = True
    broadcast(h, Opcode.BINARY, b"b" * 30000)  # the socket takes a part, the rest waits
    assert h.connection.connected
    assert 0 < h.connection.buffered < 30000
    small = build_frame(Opcode.BINARY, b"s" * 100)
    assert h.connection.messages_out == 1 and h.connection.bytes_out == 30000
    delivered = 1
    while h.connection.connected:
        broadcast(h, Opcode.BINARY, b"s" * 100)
        delivered += 1
        assert delivered < 1000
    wakes = h.wakes
    assert delivered > 2
    close_size = 4 + len("slow consumer: over 40000 bytes waiting to be sent")
    assert 40000 - len(small) < h.connection.buffered - close_size <= 40000
    broadcast(h, Opcode.BINARY, b"s" * 100)  # does nothing once closing
    assert h.wakes == wakes
    # Counted: those that went out or wait, not the one that closed it nor the last.
    assert h.connection.messages_out == delivered - 1
    assert h.connection.bytes_out == 30000 + 100 * (delivered - 2)
    h.peer.paused = False
    close = h.run_until(h.peer.close_frame)
    assert close.code == 1013
    assert "slow consumer" in close.reason
    # Everything delivered before the close, then the close frame, and the last one dropped.
    assert h.peer.data() == [b"b" * 30000] + [b"s" * 100] * (delivered - 2)
    h.peer.send(frame(CLOSE, close_payload(1013)))
    h.finish()
    assert h.closed_error().code == 1013


@both_locks
def test_deliver_to_many_skips_the_excluded_and_the_closing(
    make: Callable[..., Harness], locked: bool
) -> None:
    first, excluded, closing, last = (make(locked=locked) for _ in range(4))
    with closing.lock:
        closing.connection.begin_close(1000, "bye")
    payload = b"to all"
    deliver(
        [h.connection for h in (first, excluded, closing, last)],
        build_frame(Opcode.BINARY, payload),
        len(payload),
        frozenset({excluded.connection.id}),
    )
    for h in (first, last):
        assert h.run_until(lambda h=h: h.peer.data()) == [payload]
        assert (h.connection.messages_out, h.connection.bytes_out) == (1, len(payload))
    for h in (excluded, closing):
        assert (h.connection.messages_out, h.connection.bytes_out) == (0, 0)
    assert excluded.connection.connected
    assert closing.run_until(closing.peer.close_frame).code == 1000
    assert closing.peer.data() == []
    assert excluded.peer.pump() == [] and excluded.peer.data() == []


@both_locks
def test_deliver_to_a_peer_gone_ends_its_connection(
    make: Callable[..., Harness], locked: bool
) -> None:
    gone, other = make(locked=locked), make(locked=locked)
    gone.client.close()  # the write fails: EPIPE
    wakes = gone.wakes
    deliver([gone.connection, other.connection], build_frame(Opcode.TEXT, b"hi"), 2)
    assert gone.wakes > wakes  # a handler waiting for a message learns of the end
    assert not gone.connection.connected
    assert gone.connection.close_code == 1006
    assert other.run_until(other.peer.data) == ["hi"]


# 8. send().


def test_send_types(make: Callable[..., Harness]) -> None:
    h = make()
    big = bytes(range(256)) * 100  # above COPY_LIMIT: header and payload written apart
    with h.lock:
        h.connection.send("text \u20ac")
        h.connection.send(b"bytes")
        h.connection.send(bytearray(b"bytearray"))
        h.connection.send(memoryview(b"xmemoryviewx")[1:-1])
        h.connection.send(big)
        h.connection.send(bytearray(big))
        h.connection.send(memoryview(big))
        h.connection.send("\u20ac" * 10000)
        h.connection.send("")
        h.connection.send(b"")
        with pytest.raises(TypeError, match="not int"):
            h.connection.send(42)  # type: ignore[arg-type]
    expected = [
        "text \u20ac",
        *(b"bytes", b"bytearray", b"memoryview", big, big, big),
        "\u20ac" * 10000,
        "",
        b"",
    ]
    data = h.run_until(lambda: len(h.peer.data()) == len(expected) and h.peer.data())
    assert data == expected
    opcodes = [Opcode.TEXT if isinstance(m, str) else Opcode.BINARY for m in expected]
    assert [f.opcode for f in h.peer.frames] == opcodes
    assert all(not f.rsv1 for f in h.peer.frames)


def test_send_compressed(make: Callable[..., Harness]) -> None:
    h = make(compressed=True)
    with h.lock:
        h.connection.send("compress me " * 100)
        h.connection.send(bytearray(b"\x01" * 5000))
        h.connection.send(memoryview(b"abc"))
    data = h.run_until(lambda: len(h.peer.data()) == 3 and h.peer.data())
    assert data == ["compress me " * 100, b"\x01" * 5000, b"abc"]
    wire = bytes(h.peer.received)
    assert wire[0] == 0x80 | RSV1 << 4 | TEXT  # compressed on the wire, inflated by the client
    assert len(wire) < 200
    h.peer.send_message("and back")
    assert h.receive(1) == ["and back"]


def test_short_messages_are_sent_uncompressed(make: Callable[..., Harness]) -> None:
    h = make(compressed=True)
    assert h.connection.deflate is not None and h.connection.deflate.min_size == 128
    with h.lock:
        h.connection.send("x" * 127)  # not worth it: zlib would save a few bytes
        h.connection.send(b"y" * 128)
    assert h.run_until(lambda: len(h.peer.data()) == 2 and h.peer.data()) == ["x" * 127, b"y" * 128]
    wire = bytes(h.peer.received)
    assert wire[:4] == bytes((0x80 | TEXT, 126, 0, 127))  # RSV1 clear: as it is
    assert wire[4 + 127] == 0x80 | RSV1 << 4 | BINARY  # compressed


def test_send_after_close_raises(make: Callable[..., Harness]) -> None:
    h = make()
    with h.lock:
        h.connection.begin_close(1000, "")
        with pytest.raises(ConnectionClosed):
            h.connection.send("closing")
        with pytest.raises(ConnectionClosed):
            h.connection.ping(b"closing")
    h.peer.send(frame(CLOSE, close_payload(1000, "fine")))
    h.finish()
    with h.lock, pytest.raises(ConnectionClosed) as info:
        h.connection.send(b"closed")
    assert (info.value.code, info.value.reason) == (1000, "fine")


def test_send_to_a_vanished_peer(make: Callable[..., Harness]) -> None:
    h = make()
    h.reactor.tick = lambda: None  # no client any more
    h.client.close()
    with h.lock:
        h.connection.send("into the void")  # EPIPE: the connection is lost, no exception
    assert h.connection.closed
    with h.lock, pytest.raises(ConnectionClosed) as info:
        h.connection.send("again")
    assert info.value.code == 1006
    h.run_until(lambda: not h.reactor.reading)


def test_release_stops_everything(make: Callable[..., Harness]) -> None:
    h = make(ping_interval=0.05)
    assert h.reactor.reading
    assert h.reactor.pending_timers
    h.release()
    assert h.reactor.closed
    assert not h.reactor.reading
    assert h.reactor.pending_timers == []
    os.fstat(h.server.fileno())  # the descriptor itself is still the owner's


def test_a_connection_costs_no_descriptor_of_its_own(make: Callable[..., Harness]) -> None:
    before = len(os.listdir("/proc/self/fd"))
    h = make()
    assert len(os.listdir("/proc/self/fd")) == before + 2  # the socket pair, nothing more
    h.peer.send(frame(TEXT, b"hi"))
    assert h.run_until(h.next_message) == "hi"
    with h.lock:
        h.connection.begin_close(1000, "")
    h.run_until(h.peer.close_frame)
    h.release()
    assert len(os.listdir("/proc/self/fd")) == before + 2
    # A late callback leaves the descriptor alone: it is its owner's again.
    h.client.sendall(b"for the next owner")
    h.connection.on_readable()
    h.connection.on_writable()
    h.server.settimeout(1)
    assert h.server.recv(100) == b"for the next owner"


def test_a_bug_in_the_core_fails_with_1011(
    make: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    h = make()

    def broken(*args: object) -> None:
        raise RuntimeError("bug")

    monkeypatch.setattr(connection_module, "apply_mask", broken)
    h.peer.send(frame(TEXT, b"boom"))
    assert h.run_until(h.peer.close_frame) == Close(1011, "internal error")
    assert not h.connection.connected


def test_send_memoryview_of_wider_items(make: Callable[..., Harness]) -> None:
    h = make()
    view = memoryview(array.array("i", [1, 2, 3]))
    with h.lock:
        h.connection.send(view)
        h.connection.send(b"next")
    h.run_until(lambda: len(h.peer.received) >= 20)
    assert bytes(h.peer.received) == b"\x82\x0c" + view.tobytes() + b"\x82\x04next"


def test_send_does_not_keep_the_callers_buffer(make: Callable[..., Harness]) -> None:
    h = make()
    h.server.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    h.peer.paused = True
    buffer = bytearray(b"a" * 20000)
    with h.lock:
        h.connection.send(b"f" * 20000)  # fills the socket: what follows waits in the core
        h.connection.send(buffer)
        buffer[:] = b"z" * 20000  # the caller reuses its buffer once send() returned
        h.connection.send(b"next")
    h.peer.paused = False
    data = h.run_until(lambda: len(h.peer.data()) == 3 and h.peer.data())
    assert data == [b"f" * 20000, b"a" * 20000, b"next"]
