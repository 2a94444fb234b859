"""The RFC 6455 connection core that every flavour shares.

A :class:`Connection` owns a connected socket after the opening handshake. It is
event-driven, like an asyncio protocol: a :class:`~.reactor.Reactor` calls
:meth:`Connection.on_readable` and :meth:`Connection.on_writable` when the socket
is ready and runs its timers; the connection reads, frames, assembles messages,
answers pings, keeps the connection alive and runs the closing handshake on its
own, whatever the handler is doing. It never waits: its owner (a flavour's client)
waits in its own way and is woken by the ``wake`` callback after every event.

Framing is done by the ``websockets`` sans-I/O :class:`~websockets.protocol.Protocol`
with one exception, measured to matter (see ``bench/``): a complete, final,
masked, uncompressed text or binary frame that arrives outside a fragmented
message is unmasked here, with ``websockets``' own ``apply_mask``, instead of
through the protocol's generator-based parser, which costs about 10 µs per
frame. When permessage-deflate was agreed, such a frame with the RSV1 bit (a whole
compressed message) is likewise unmasked and inflated here, by the connection's
:class:`~.compression.Deflate`, which the protocol uses as its extension for the
frames it gets: one zlib stream each way for both. Every other frame -- control
frames, fragments, other reserved bits, bad opcodes or masking, oversized lengths --
is fed to the protocol whole, so
the protocol always sits at a frame boundary and applies every check of the
RFC; a frame whose header alone the protocol refuses (a bad opcode or
masking, a length over the limit) is fed as soon as the header is in, and
fails the connection at once. ``tests/test_core_fuzz.py`` checks that the
two ways agree. Outgoing messages are likewise serialized here (a 2 to
10 byte header), compressed by the :class:`~.compression.Deflate` if agreed;
fragments and control frames go through the protocol.

Invalid UTF-8 fails the connection (1007) at the bad byte (RFC 6455, 8.1): the
part that has come of an uncompressed text frame, or of a fragment of a text
message, is checked as it comes, with an incremental decoder, and a fast-path
frame's text is kept so that it is decoded once. A frame that fails the
connection, or may (see ``Connection._suspect``), after messages the caller has
not taken yet waits for them (reading stops): what a handler sends in answer to
them goes out before the close frame, as had each frame come in a read of its own.

Methods that say "with the lock held" are called inside ``with connection.lock:``;
the others take it themselves.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from websockets.exceptions import PayloadTooBig, ProtocolError
from websockets.frames import Frame, Opcode
from websockets.protocol import CLOSED, OPEN, SERVER, Protocol  # 16+: Protocol.current_size

from ..exceptions import ConnectionClosed, WebSocketError
from .compression import Deflate
from .framing import BINARY, SHORT_HEADERS, TEXT, Message, apply_mask, frame_header, read_header
from .options import Options

if TYPE_CHECKING:
    from .handshake import Handshake
    from .reactor import Reactor, Timer

__all__ = ["Connection", "Ping", "deliver"]

logger = logging.getLogger("flask_uwsgi_websocket")
# websockets logs every closed connection at INFO; keep only its warnings.
protocol_logger = logging.getLogger("flask_uwsgi_websocket.protocol")
protocol_logger.setLevel(logging.WARNING)

READ_SIZE = 65536
# After failing a connection, the half-close waits until the peer has sent nothing for this
# long: a peer still sending (say, the rest of a too-big message) would otherwise have the
# data in flight refused with a TCP reset -- uWSGI's --http router closes its client socket
# with unread data when the worker half-closes -- and the reset can destroy the close frame
# before the peer reads it. ``close_timeout`` still bounds the whole closing.
LINGER = 0.1
# Above this size a payload is written after its header rather than copied behind it.
COPY_LIMIT = 16384
# While a caller streams a message in (``next_fragment``), reading stops once this many
# bytes of it wait to be taken, rather than at the whole message.
STREAM_BUFFER = 65536
#: The opcodes of RFC 6455; the protocol refuses any other from a frame's first byte.
OPCODES = frozenset(int(opcode) for opcode in Opcode)
_utf8_decoder = codecs.getincrementaldecoder("utf-8")


def _nothing() -> None:
    pass


class _NoLock:
    """The lock of a connection whose callbacks run where its owner runs (gevent, asyncio):
    nothing to guard. Its two methods are a C function that ignores its arguments and
    returns ``""`` (falsy: exceptions pass), so ``with connection.lock:`` runs no Python
    frame, unlike ``contextlib.nullcontext``: three times per echoed message."""

    __slots__ = ()
    __enter__: Callable[..., str] = "".format
    __exit__: Callable[..., str] = "".format


_NO_LOCK: contextlib.AbstractContextManager[Any] = _NoLock()  # type: ignore[assignment]


def _unmask(view: bytes | bytearray, start: int, begin: int, end: int) -> bytes:
    """``view[begin:end]`` unmasked, a part of the masked payload that starts at ``start``
    (after its masking key)."""
    key = view[start - 4 : start]
    shift = (begin - start) % 4
    if shift:
        key = key[shift:] + key[:shift]
    return apply_mask(view[begin:end], key)


@contextlib.contextmanager
def _borrowed(fd: int) -> Iterator[socket.socket]:
    """``fd`` as a socket object for a moment, for the calls ``os`` lacks; the descriptor
    stays its owner's (uWSGI's): no duplicate, so a connection costs one descriptor."""
    sock = socket.socket(fileno=fd)
    try:
        yield sock
    finally:
        sock.detach()


class Ping:
    """A ping sent by :meth:`Connection.ping`, answered when its pong comes."""

    __slots__ = ("data", "latency", "sent")

    def __init__(self, data: bytes) -> None:
        #: The ping's payload, which its pong echoes.
        self.data = data
        #: When it was sent (``time.monotonic()``).
        self.sent = time.monotonic()
        #: Seconds from the ping to its pong; ``None`` until the pong comes.
        self.latency: float | None = None


class _Partial:
    """How far the UTF-8 of a text frame not all in yet was checked (see
    ``Connection._check_partial``)."""

    __slots__ = ("checked", "decoder", "head", "length", "pieces")

    def __init__(
        self, decoder: codecs.IncrementalDecoder, head: int, length: int, pieces: list[str] | None
    ) -> None:
        self.decoder = decoder
        self.head = head  # the frame's header size: where its payload starts
        self.length = length  # of the payload
        self.checked = 0  # bytes of the payload checked
        self.pieces = pieces  # the text decoded so far, for a whole frame of the fast path


class Connection:
    """One WebSocket connection over the socket ``fd``, after the opening handshake.

    ``reactor`` watches the socket and runs the timers; ``lock`` guards the state
    where the reactor's callbacks run on another thread than the owner's (a
    ``threading.RLock``; none otherwise); ``wake`` is called, with the lock held,
    after every event that may end a wait (a message, buffer space, the close).
    """

    # Slots: a worker holds thousands of these, and a dict of ~45 keys is ~1.5 KiB.
    __slots__ = (
        "_close_timer",
        "_decoder",
        "_eof_pending",
        "_eof_received",
        "_failed",
        "_fragments",
        "_held",
        "_held_size",
        "_holding",
        "_inbuf",
        "_keepalive_timer",
        "_linger_timer",
        "_linger_until",
        "_max_size",
        "_messages",
        "_out",
        "_partial",
        "_ping_payload",
        "_ping_sent",
        "_pings",
        "_pong_timer",
        "_queue_limit",
        "_reading",
        "_released",
        "_wake",
        "_writing",
        "buffered",
        "bytes_in",
        "bytes_out",
        "connected",
        "deflate",
        "fd",
        "fragmenting",
        "id",
        "latency",
        "lock",
        "messages_in",
        "messages_out",
        "options",
        "protocol",
        "reactor",
        "slow_consumer",
        "streaming",
        "subprotocol",
    )

    def __init__(
        self,
        fd: int,
        options: Options,
        reactor: Reactor,
        handshake: Handshake | None = None,
        lock: contextlib.AbstractContextManager[Any] | None = None,
        wake: Callable[[], None] = _nothing,
    ) -> None:
        #: The socket's file descriptor.
        self.fd = fd
        #: A random identifier of the connection (hex).
        self.id = uuid.uuid4().hex
        self.options = options
        self.reactor = reactor
        #: Held around every change of state; see the class docstring.
        self.lock: contextlib.AbstractContextManager[Any] = lock or _NO_LOCK
        self._wake = wake
        #: The subprotocol agreed in the handshake, or ``None``.
        self.subprotocol = handshake.subprotocol if handshake is not None else None
        self.protocol = Protocol(SERVER, max_size=options.max_message_size, logger=protocol_logger)
        #: The permessage-deflate agreed, or ``None``.
        self.deflate: Deflate | None = None
        if handshake is not None:
            self.protocol.extensions = list(handshake.extensions)
            self.deflate = next((e for e in handshake.extensions if isinstance(e, Deflate)), None)
        self._max_size = options.max_message_size
        #: Whether messages can still be sent: the closing handshake has not begun. The
        #: protocol's state is OPEN, read again after every call that may change it (they
        #: all end in _flush_protocol): an attribute, where the state is a Python property
        #: and the hot paths ask for it on every message.
        self.connected = True
        os.set_blocking(fd, False)
        with _borrowed(fd) as sock, contextlib.suppress(OSError):
            # Nagle's delays hurt small frames; not on AF_UNIX.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._inbuf = bytearray()  # the start of a frame not yet complete
        # Messages received and not yet taken (at most max_queue, and a few more from one
        # read: a list, whose pop(0) costs less than making a deque); an empty tuple while
        # there are none, as an idle connection has none waiting.
        self._messages: list[Message] | tuple[()] = ()
        self._fragments = bytearray()  # the fragments of a message being received
        self._decoder: codecs.IncrementalDecoder | None = None
        self._partial: _Partial | None = None  # the check of a text frame not all in yet
        self._holding = False  # a bad frame waits for the messages before it (_hold)
        # Reading stops while this many messages wait to be taken: max_queue, 0 while holding.
        self._queue_limit = options.max_queue
        #: Set while a caller streams a message in (see :meth:`next_fragment`).
        self.streaming = False
        #: Whether a fragmented message is being sent: other messages wait for its end.
        self.fragmenting = False
        self._held: list[bytes] = []  # broadcasts that wait for its end
        self._held_size = 0
        # Output the socket would not take yet; an empty tuple until there is some, as an
        # empty deque costs ~0.7 KiB and most connections never fill their socket's buffer.
        self._out: deque[bytes | bytearray | memoryview] | tuple[()] = ()
        #: Bytes waiting to be sent.
        self.buffered = 0
        self._eof_pending = False  # half-close once the output is flushed
        # While set, half-close once the peer has been quiet until _linger_until (LINGER).
        self._linger_timer: Timer | None = None
        self._linger_until = 0.0
        self._eof_received = False
        self._reading = False
        self._writing = False
        self._ping_payload: bytes | None = None  # the keepalive's, until its pong
        self._ping_sent = 0.0
        self._pings: dict[bytes, Ping] = {}  # the caller's, oldest first, until answered
        #: Seconds from the last answered ping (the keepalive's or a caller's) to its pong;
        #: 0 until then.
        self.latency = 0.0
        #: Data messages received and sent, and their payload bytes (uncompressed).
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        #: Whether it was closed as a slow consumer (1013, see :meth:`deliver`).
        self.slow_consumer = False
        self._keepalive_timer: Timer | None = None
        self._pong_timer: Timer | None = None
        self._close_timer: Timer | None = None
        self._failed = False
        self._released = False  # the descriptor is its owner's again: never touch it

    # Life cycle.

    def start(self) -> None:
        """Start reading and keepalive; called once, after the handshake."""
        with self.lock:
            self._update_reading()
            self._schedule_keepalive()

    @property
    def closed(self) -> bool:
        """Whether the connection is over: both sides are done or it was aborted."""
        return self.protocol.state is CLOSED

    @property
    def close_code(self) -> int | None:
        """The code of the peer's close frame; 1006 when it closed without one; else ``None``."""
        received = self.protocol.close_rcvd
        if received is not None:
            return received.code
        return 1006 if self.protocol.state is CLOSED else None

    @property
    def close_reason(self) -> str | None:
        """The reason of the peer's close frame; ``""`` when none came; ``None`` while open."""
        received = self.protocol.close_rcvd
        if received is not None:
            return received.reason
        return "" if self.protocol.state is CLOSED else None

    @property
    def backlogged(self) -> bool:
        """Whether a sender should wait: over ``write_limit`` bytes wait to be sent."""
        return self.buffered > self.options.write_limit and self.connected

    def closed_error(self) -> ConnectionClosed:
        """The :class:`ConnectionClosed` that tells the peer's close code and reason."""
        return ConnectionClosed(self.close_code or 1006, self.close_reason or "")

    def next_message(self) -> Message | None:
        """The next received message; ``None``: none yet. Raises :class:`ConnectionClosed`
        once closed and every message was taken. With the lock held."""
        messages = self._messages
        if messages:
            message = messages.pop(0)
            if not messages:
                self._messages = ()
            if not self._reading:
                self._update_reading()
            return message
        if self._holding:  # every message before the held frame was taken
            self._release()
            if self._messages:
                return self.next_message()
        if not self.connected and self.protocol.state is CLOSED:
            raise self.closed_error()
        return None

    def next_fragment(self) -> tuple[Message, bool] | None:
        """The next piece of a message, for a caller that streams it in: ``(piece,
        final)``, text as ``str``, binary as ``bytes``; ``None``: none yet. A message that
        arrived whole comes whole, final. Raises :class:`ConnectionClosed` once closed and
        every message was taken. With the lock held; set :attr:`streaming` meanwhile."""
        if not self._messages and self._holding:
            self._release()
        messages = self._messages
        if messages:
            message = messages.pop(0)
            if not messages:
                self._messages = ()
            if not self._reading:
                self._update_reading()
            return message, True
        if self._fragments and not self._failed:
            piece: Message
            if self._decoder is not None:  # whole characters; the rest of one waits
                piece, taken = codecs.utf_8_decode(self._fragments, "strict", False)
                del self._fragments[:taken]
            else:
                piece, self._fragments = bytes(self._fragments), bytearray()
            if self._inbuf:
                self._receive(b"")  # the frames held back while the part was full
            if not self._reading:
                self._update_reading()
            if piece:  # not the first bytes of a character split between frames
                return piece, False
        if self.protocol.state is CLOSED:
            raise self.closed_error()
        return None

    def resume_reading(self) -> None:
        """Read again if a wait that has ended (:attr:`streaming` cleared) stopped it.
        With the lock held."""
        if not self._reading:
            self._update_reading()

    def poll_message(self) -> Message | None:
        """A message already received or readable from the socket now, or ``None``."""
        with self.lock:
            if not self._messages and self._reading:
                self.on_readable()
            return self.next_message()

    # Reading: called by the reactor.

    def on_readable(self) -> None:
        """Read what the socket has and act on it."""
        with self.lock:
            # Once the end of the stream is taken as received (a failed write counts as
            # one), the protocol takes no more data: a read callback already on its way
            # in the reactor's loop finds nothing to do.
            if self._released or self._eof_received:
                return
            try:
                data = os.read(self.fd, READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            try:
                if self._linger_timer is not None:
                    self._linger_until = time.monotonic() + LINGER
                if data:
                    self._receive(data)
                else:
                    self._receive_eof()
            except Exception:  # a bug here must not take the worker down
                logger.exception("WebSocket connection %s failed", self.id)
                self.fail(1011, "internal error")
            # What may stop reading (see _update_reading), asked here: a message that
            # changes none of it, as an echo's, costs no call.
            if (
                self._eof_received
                or self.buffered
                or self.streaming
                or len(self._messages) >= self._queue_limit
            ):
                self._update_reading()
            self._wake()

    def _receive(self, data: bytes) -> None:
        if (
            # The shortcut for what most reads bring: one whole masked text or binary
            # frame under 126 bytes (its second byte is 0x80 + the length, so the read
            # is 6 bytes longer), the first of its message, while open and not streaming.
            # As the loop below would take it, with fewer steps; anything else, or text
            # that is not UTF-8 (held or failed), goes the loop's way.
            6 <= (n := len(data)) <= 131
            and n == data[1] - 122
            and ((b0 := data[0]) == 0x82 or b0 == 0x81)
            and not self._inbuf
            and self.connected
            and not self.streaming
            and self.protocol.current_size is None
            and (self._max_size is None or n - 6 <= self._max_size)
        ):
            payload = apply_mask(data[6:], data[2:6])
            message: Message | None = payload
            if b0 == 0x81:
                try:
                    message = payload.decode()
                except UnicodeDecodeError:
                    message = None
            if message is not None:
                if self._messages:
                    self._messages.append(message)
                else:
                    self._messages = [message]
                self.messages_in += 1
                self.bytes_in += n - 6
                return
        protocol = self.protocol
        buf = self._inbuf
        pos = 0
        streaming = self.streaming
        if buf:
            buf += data
            view: bytes | bytearray = buf
            if self._partial is not None:
                pos = self._continue_partial(buf)
                if pos < 0:
                    return  # a text frame still arriving, valid so far
        else:
            view = data
        end = len(view)
        max_size = self._max_size
        messages = self._messages
        deflate = self.deflate
        if isinstance(messages, tuple):  # none waiting; dropped again below if none came
            messages = self._messages = []
        count = size = 0  # of the messages taken on the fast path
        while end - pos >= 2:
            if streaming and len(self._fragments) >= STREAM_BUFFER:
                break  # the rest waits in _inbuf until the streaming caller takes its part
            if protocol.eof_sent and protocol.state is not OPEN:
                # Failed, or the peer's close came: the protocol discards the rest.
                # (Closing since our close frame, it still reads frames: one at a time
                # below, so that none is answered after a bad one.)
                pos = self._feed_rest(view, pos)
                break
            b1 = view[pos + 1]
            if b1 & 0x7F < 126:  # a short frame's header, inline: one call less per message
                start, length = pos + (6 if b1 & 0x80 else 2), b1 & 0x7F
            elif (header := read_header(view, pos, end)) is None:
                # The length is not all in; the first two bytes may be refused already.
                if self._refused_early(view[pos], b1, None):
                    if self._hold():
                        break
                    pos = self._feed_rest(view, pos)
                break
            else:
                start, length = header
            if max_size is not None and length > max_size:
                # The protocol refuses the header with 1009 before reading the payload.
                if self._hold():
                    break
                pos = self._feed_rest(view, pos)
                break
            stop = start + length
            if stop > end:
                # Incomplete: wait for the rest, unless the protocol refuses the frame
                # from its header alone, or it is text (opcode 1, or 0 continuing text:
                # no bit of 0x0E) and what came of it is not UTF-8; then it fails now, as
                # it would on its own (RFC 6455, 8.1: fail fast).
                if self._refused_early(view[pos], view[pos + 1], length):
                    if not self._hold():
                        pos = self._feed_rest(view, pos)
                elif start < end and not view[pos] & 0x0E and self._checks_utf8(view[pos]):
                    pos = self._check_partial(view, pos, start, end, length)
                break
            b0 = view[pos]
            masked = view[pos + 1] & 0x80
            # RSV bits clear: not compressed, so permessage-deflate, the one extension
            # ever agreed, would pass it through unchanged.
            if (b0 == 0x81 or b0 == 0x82) and masked and protocol.current_size is None:
                payload = apply_mask(view[start:stop], view[start - 4 : start])
                if b0 == 0x81:
                    try:
                        messages.append(payload.decode())
                    except UnicodeDecodeError as exc:
                        if self._hold():
                            break
                        self.fail(1007, f"invalid UTF-8: {exc.reason} at position {exc.start}")
                        pos = end
                        break
                else:
                    messages.append(payload)
                count += 1
                size += length
            elif (
                (b0 == 0xC1 or b0 == 0xC2)
                and masked
                and deflate is not None
                and protocol.current_size is None
            ):
                # A whole compressed message. A failure is not held (see _hold), as the
                # protocol would not: inflating has changed the inflater already.
                try:
                    payload = deflate.inflate(
                        apply_mask(view[start:stop], view[start - 4 : start]), True, max_size
                    )
                except PayloadTooBig as exc:
                    self.fail(1009, str(exc))
                    pos = end
                    break
                except ProtocolError as exc:
                    self.fail(1002, str(exc))
                    pos = end
                    break
                if b0 == 0xC1:
                    try:
                        messages.append(payload.decode())
                    except UnicodeDecodeError as exc:
                        self.fail(1007, f"invalid UTF-8: {exc.reason} at position {exc.start}")
                        pos = end
                        break
                else:
                    messages.append(payload)
                count += 1
                size += len(payload)
            else:
                if (
                    messages
                    and self._suspect(b0, view[pos + 1], length, view, start, stop)
                    and self._hold()
                ):
                    break
                if b0 & 0x0F == 0x8 and protocol.current_size is not None:
                    # RFC 6455 allows a close frame between fragments: the unfinished
                    # message is dropped and the close answered (websockets says 1002).
                    protocol.current_size = None
                    self._fragments = bytearray()
                protocol.receive_data(view[pos:stop])
                self._after_protocol()
            pos = stop
        self.messages_in += count
        self.bytes_in += size
        if not messages:
            self._messages = ()
        if pos == end:
            if buf:
                buf.clear()
        elif buf:
            del buf[:pos]
        else:
            self._inbuf = bytearray(view[pos:])

    def _take(self, message: Message) -> None:
        """Keep ``message`` for the caller (after those before it)."""
        messages = self._messages
        if isinstance(messages, tuple):  # not an empty list: _receive may hold that one
            messages = self._messages = []
        messages.append(message)

    def _hold(self) -> bool:
        """Whether the frame at hand, which fails the connection (or may), waits in
        ``_inbuf`` for the messages before it to be taken; if so, reading stops until
        then (see :meth:`next_message`). So what a handler sends in answer to them goes
        out before the close frame, as it would had the frames come one by one."""
        if self._messages and self.protocol.state is OPEN:
            self._holding = True
            self._queue_limit = 0
            return True
        return False

    def _suspect(
        self, b0: int, b1: int, length: int, view: bytes | bytearray, start: int, stop: int
    ) -> bool:
        """Whether the frame at ``view[:stop]``, with payload from ``start``, which the
        protocol is about to be fed (not one of the fast path), may fail the connection:
        a header it refuses, reserved bits no extension explains, a control frame
        fragmented or over 125 bytes, a fragment out of sequence, a text fragment that is
        not UTF-8. A frame wrongly suspected only waits (see :meth:`_hold`)."""
        if self._refused_early(b0, b1, length):
            return True
        opcode = b0 & 0x0F
        rsv = b0 & 0x70
        if opcode >= Opcode.CLOSE:
            return bool(rsv) or not b0 & 0x80 or length > 125
        if (opcode == Opcode.CONT) != (self.protocol.current_size is not None):
            return True
        if rsv:
            return rsv != 0x40 or opcode == Opcode.CONT or not self.protocol.extensions
        if not self._checks_utf8(b0):
            return False
        try:
            self._text_decoder(b0).decode(_unmask(view, start, start, stop), bool(b0 & 0x80))
        except UnicodeDecodeError:
            return True
        return False

    def _release(self) -> None:
        """Act on the frames held by :meth:`_hold`: the messages before them were taken,
        or the closing handshake began. With the lock held."""
        self._holding = False
        self._queue_limit = self.options.max_queue
        try:
            self._receive(b"")
        except Exception:  # a bug here must not take the worker down
            logger.exception("WebSocket connection %s failed", self.id)
            self.fail(1011, "internal error")
        self._update_reading()
        self._wake()

    def _checks_utf8(self, b0: int) -> bool:
        """Whether a frame that begins with ``b0``, not all in yet, is text whose UTF-8
        can be checked as it comes: not compressed (only inflated whole)."""
        if b0 & 0x70:
            return False
        opcode = b0 & 0x0F
        if opcode == Opcode.TEXT:
            return self.protocol.current_size is None
        return (
            opcode == Opcode.CONT
            and self.protocol.current_size is not None
            and self._decoder is not None
            and not self.protocol.extensions
        )

    def _text_decoder(self, b0: int) -> codecs.IncrementalDecoder:
        """A decoder for the text frame that begins with ``b0``: a continuation's starts
        where its message's is, which is left as it is."""
        decoder = _utf8_decoder()
        if b0 & 0x0F == Opcode.CONT:
            assert self._decoder is not None
            decoder.setstate(self._decoder.getstate())
        return decoder

    def _check_partial(
        self, view: bytes | bytearray, pos: int, start: int, end: int, length: int
    ) -> int:
        """Check the UTF-8 of the text frame at ``view[pos:end]``, of a ``length``-byte
        payload from ``start``, not all in yet. Valid so far: keep the check (``_partial``)
        for :meth:`_continue_partial`, return ``pos``; else fail with 1007 and return
        ``end`` (or hold the frame, see :meth:`_hold`, and return ``pos``)."""
        b0 = view[pos]
        pieces: list[str] | None = [] if b0 == 0x81 else None
        partial = _Partial(self._text_decoder(b0), start - pos, length, pieces)
        error = self._check_more(partial, view, start, end)
        if error is None or self._hold():
            return pos
        self.fail(1007, f"invalid UTF-8: {error.reason} in a frame still arriving")
        return end

    def _check_more(
        self, partial: _Partial, view: bytes | bytearray, start: int, end: int
    ) -> UnicodeDecodeError | None:
        """Check the payload of ``partial``'s frame, from ``start`` in ``view``, up to
        ``end``, after what was checked; keep the check if valid so far."""
        try:
            text = partial.decoder.decode(_unmask(view, start, start + partial.checked, end))
        except UnicodeDecodeError as error:
            return error
        if partial.pieces is not None:
            partial.pieces.append(text)
        partial.checked = end - start
        self._partial = partial
        return None

    def _continue_partial(self, buf: bytearray) -> int:
        """Go on with the text frame at the start of ``buf``, which :meth:`_check_partial`
        checked as far as it had come. Still arriving: check what came since; -1 if valid
        so far. All in: take it if it is a fast-path frame (its text decoded once) and
        valid, and return where it ends. 0: the caller reads the frame as if unchecked
        (a fragment for the protocol, invalid UTF-8 to refuse, or data not to read now)."""
        partial = self._partial
        assert partial is not None
        self._partial = None
        if (self.streaming and len(self._fragments) >= STREAM_BUFFER) or (
            self.protocol.state is not OPEN and self.protocol.eof_sent
        ):
            return 0  # as the frame loop does: wait, or let the protocol discard it
        start = partial.head
        stop = start + partial.length
        end = len(buf)
        if stop > end:
            return -1 if self._check_more(partial, buf, start, end) is None else 0
        if partial.pieces is None:
            return 0
        try:
            rest = _unmask(buf, start, start + partial.checked, stop)
            partial.pieces.append(partial.decoder.decode(rest, True))
        except UnicodeDecodeError:
            return 0
        self._take("".join(partial.pieces))
        self.messages_in += 1
        self.bytes_in += partial.length
        return stop

    def _feed_rest(self, view: bytes | bytearray, pos: int) -> int:
        """Feed ``view[pos:]`` to the protocol whole and act on it; return its end."""
        self.protocol.receive_data(view[pos:])
        self._after_protocol()
        return len(view)

    def _refused_early(self, b0: int, b1: int, length: int | None) -> bool:
        """Whether the protocol refuses a frame from its header, before its payload (of
        ``length`` bytes, ``None`` while unknown): an unknown opcode, no mask, or a data
        frame over what ``max_message_size`` leaves of a fragmented message."""
        if b0 & 0x0F not in OPCODES or not b1 & 0x80:
            return True
        if length is None or self._max_size is None:
            return False
        # A close frame ends a fragmented message (see _receive): it has the whole limit.
        received = 0 if b0 & 0x0F == Opcode.CLOSE else self.protocol.current_size or 0
        return length > self._max_size - received

    def _receive_eof(self) -> None:
        self._eof_received = True
        self._inbuf.clear()
        self._partial = None
        self.protocol.receive_eof()
        self._after_protocol()
        if self._linger_timer is not None:
            # The peer has finished sending: nothing more can arrive to be refused with
            # a reset, so the half-close need not wait for LINGER.
            self._linger_timer.cancel()
            self._linger_timer = None
            self._half_close()

    def _after_protocol(self) -> None:
        """Act on the protocol's events, then send what it has to send."""
        for event in self.protocol.events_received():
            assert isinstance(event, Frame)  # the handshake was done before: only frames
            self._on_frame(event)
        self._flush_protocol()
        if not self.connected:
            self._start_close_timer()

    def _on_frame(self, frame: Frame) -> None:
        opcode = frame.opcode
        if opcode is Opcode.TEXT or opcode is Opcode.BINARY or opcode is Opcode.CONT:
            if self._failed:
                return  # the rest of a batch that failed is not delivered
            data = frame.data
            if opcode is not Opcode.CONT:
                self._decoder = _utf8_decoder() if opcode is Opcode.TEXT else None
                if frame.fin:  # a whole message (a compressed one, say)
                    self.bytes_in += len(data)
                    self.messages_in += 1
                    if self._decoder is None:
                        self._take(bytes(data))
                        return
                    try:
                        self._take(str(data, "utf-8"))
                    except UnicodeDecodeError as exc:
                        self.fail(1007, f"invalid UTF-8: {exc.reason} at position {exc.start}")
                    return
                self._fragments = bytearray()
            self.bytes_in += len(data)
            self.messages_in += frame.fin
            # One buffer, not a list of pieces: a message costs its size however finely it
            # is cut (empty fragments cost nothing), so max_message_size bounds its memory.
            self._fragments += data
            if self._decoder is not None:
                try:
                    self._decoder.decode(data, frame.fin)  # checked as each fragment comes
                except UnicodeDecodeError as exc:
                    self.fail(1007, f"invalid UTF-8: {exc.reason}")
                    return
            if frame.fin:
                fragments, self._fragments = self._fragments, bytearray()
                if self._decoder is not None:
                    self._take(fragments.decode())
                else:
                    self._take(bytes(fragments))
        elif opcode is Opcode.PONG:
            data = frame.data
            if self._ping_payload is not None and data == self._ping_payload:
                self._ping_payload = None
                self.latency = time.monotonic() - self._ping_sent
                if self._pong_timer is not None:
                    self._pong_timer.cancel()
                    self._pong_timer = None
            elif data in self._pings:
                # As websockets does: a pong answers its ping and every one before it.
                now = time.monotonic()
                while self._pings:
                    payload, ping = next(iter(self._pings.items()))
                    del self._pings[payload]
                    ping.latency = now - ping.sent
                    if payload == data:
                        self.latency = ping.latency
                        break
        # PING: the protocol has queued the pong; CLOSE: it has answered it.

    # Writing.

    def _write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` after everything written before; never blocks. The one-chunk
        case of :meth:`_writev`, without its loop: every echo and broadcast comes here."""
        if self._out or self._eof_pending:
            self._queue(data)
            return
        try:
            sent = os.write(self.fd, data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._connection_lost()
            return
        if sent < len(data):
            self._queue(memoryview(data)[sent:] if sent else data)
            self._update_writing()

    def _queue(self, chunk: bytes | bytearray | memoryview) -> None:
        """Keep ``chunk`` to write when the socket takes more."""
        out = self._out
        if not out:
            out = self._out = deque()
        out.append(chunk)
        self.buffered += len(chunk)

    def _writev(self, *chunks: bytes | bytearray | memoryview) -> None:
        """Write ``chunks`` after everything written before; never blocks.

        Several chunks go out in one ``writev``: a frame written in two calls
        would reach a proxy (uWSGI's ``--http`` router) in two reads, and its
        Nagle algorithm would hold the second behind the first's ACK.
        """
        if self._out or self._eof_pending:
            for chunk in chunks:
                self._queue(chunk)
            return
        try:
            sent = os.writev(self.fd, chunks)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._connection_lost()
            return
        for chunk in chunks:
            if sent >= len(chunk):
                sent -= len(chunk)
                continue
            self._queue(memoryview(chunk)[sent:] if sent else chunk)
            sent = 0
        if self._out:
            self._update_writing()

    def on_writable(self) -> None:
        """Write buffered output until the socket is full or the buffer empty."""
        with self.lock:
            if self._released:
                return
            out = self._out
            try:
                if isinstance(out, deque):  # else nothing waits
                    while out:
                        chunk = out[0]
                        sent = os.write(self.fd, chunk)
                        self.buffered -= sent
                        if sent < len(chunk):
                            out[0] = memoryview(chunk)[sent:]
                            break
                        out.popleft()
                    else:
                        self._out = ()
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:
                self._connection_lost()
            if not self._out and self._eof_pending:
                self._shutdown()
            self._update_writing()
            self._update_reading()
            self._wake()

    def _flush_protocol(self) -> None:
        for data in self.protocol.data_to_send():
            if data:
                self._write(data)
            elif self.protocol.close_rcvd is None and not self._eof_received:
                # Failing: the peer may still be sending (see LINGER).
                self._linger_until = time.monotonic() + LINGER
                self._linger_timer = self.reactor.call_later(LINGER, self._on_linger)
            else:
                self._half_close()
        self.connected = self.protocol.state is OPEN

    def _half_close(self) -> None:
        if self._out:
            self._eof_pending = True
        else:
            self._shutdown()

    def _on_linger(self) -> None:
        with self.lock:
            remaining = self._linger_until - time.monotonic()
            if remaining > 0:
                self._linger_timer = self.reactor.call_later(remaining, self._on_linger)
                return
            self._linger_timer = None
            self._half_close()

    def _shutdown(self) -> None:
        self._eof_pending = False
        if self._released:
            return
        with contextlib.suppress(OSError):
            with _borrowed(self.fd) as sock:
                sock.shutdown(socket.SHUT_WR)

    def _connection_lost(self) -> None:
        """The socket failed: forget pending output, treat it as end of stream."""
        self._out = ()
        self.buffered = 0
        self._eof_pending = False
        if not self._eof_received:
            self._receive_eof()

    def _update_writing(self) -> None:
        want = bool(self._out) and not self._eof_received
        if want != self._writing:
            self._writing = want
            self.reactor.watch_write(self.on_writable if want else None)

    def _update_reading(self) -> None:
        # The protocol's state last: it is a Python property, and this runs on every read.
        options = self.options
        want = not self._eof_received and not (
            (
                len(self._messages) >= self._queue_limit
                or self.buffered > options.write_limit
                or (self.streaming and len(self._fragments) >= STREAM_BUFFER)
            )
            and self.connected
        )
        if want != self._reading:
            self._reading = want
            self.reactor.watch_read(self.on_readable if want else None)
        if self._eof_received and self.protocol.state is CLOSED:
            self._stop_timers()

    # Sending, closing, keepalive.

    def send_frame(self, opcode: int, payload: bytes | bytearray | memoryview) -> bool:
        """Send a text or binary frame; raises :class:`ConnectionClosed` once closing.
        With the lock held; never waits. Returns whether the sender should wait now
        (:attr:`backlogged`; told here, as asking costs a call per message)."""
        if not self.connected:
            raise self.closed_error()
        if self.fragmenting:
            raise WebSocketError("a fragmented message is being sent: wait for its end")
        if type(payload) is not bytes:
            # A copy: the caller may reuse its buffer once send() returned, and a memoryview's
            # len() counts items, not bytes.
            payload = bytes(payload)
        self.messages_out += 1
        self.bytes_out += len(payload)
        deflate = self.deflate
        if deflate is not None and len(payload) >= deflate.min_size:
            data = deflate.deflate(payload)
            if len(data) > COPY_LIMIT:
                self._writev(frame_header(0x40 | opcode, len(data)), data)
            else:
                self._write(frame_header(0x40 | opcode, len(data)) + data)
        elif (length := len(payload)) < 126:  # the echo's hot path
            self._write(SHORT_HEADERS[opcode << 7 | length] + payload)
        elif length > COPY_LIMIT:
            self._writev(frame_header(opcode, length), payload)
        else:
            self._write(frame_header(opcode, length) + payload)
        return self.buffered > self.options.write_limit

    def send_fragment(self, opcode: int, payload: bytes, fin: bool) -> None:
        """Send a fragment of a message: ``opcode`` TEXT or BINARY for the first one,
        CONT for the others, ``fin`` for the last. Raises :class:`ConnectionClosed` once
        closing. With the lock held; never waits (see :attr:`backlogged`)."""
        protocol = self.protocol
        if protocol.state is not OPEN:
            raise self.closed_error()
        self.bytes_out += len(payload)
        self.messages_out += fin
        if protocol.extensions:
            if opcode == Opcode.TEXT:
                protocol.send_text(payload, fin)
            elif opcode == Opcode.BINARY:
                protocol.send_binary(payload, fin)
            else:
                protocol.send_continuation(payload, fin)
            self._flush_protocol()
        else:
            self._writev(frame_header(opcode, len(payload), fin), payload)
        self.fragmenting = not fin
        if fin and self._held:
            held, self._held, self._held_size = self._held, [], 0
            # One buffer, not a writev of the frames: there may be more than IOV_MAX.
            self._write(b"".join(held))

    def send(self, message: Message | bytearray | memoryview) -> bool:
        """Send ``message``: ``str`` as text, bytes-like as binary. With the lock held.
        Returns whether the sender should wait now, as :meth:`send_frame`."""
        if isinstance(message, str):
            return self.send_frame(TEXT, message.encode())
        elif isinstance(message, (bytes, bytearray, memoryview)):
            return self.send_frame(BINARY, message)
        else:
            raise TypeError(f"a message is str or bytes-like, not {type(message).__name__}")

    def deliver(self, frame: bytes, size: int) -> None:
        """:func:`deliver` to this connection alone, with its lock: ``frame``, a whole frame
        of a ``size``-byte payload, is queued, or the connection closed with 1013 when output
        is already waiting and ``frame`` would take it over ``max_send_buffer``. Does
        nothing once closing; never waits."""
        with self.lock:
            if not self.connected:
                return
            limit = self.options.max_send_buffer
            waiting = self.buffered + self._held_size
            if waiting and waiting + len(frame) > limit:
                self.slow_consumer = True
                self.begin_close(1013, f"slow consumer: over {limit} bytes waiting to be sent")
                self._wake()
                return
            self.messages_out += 1
            self.bytes_out += size
            if self.fragmenting:  # not inside another message: after its last fragment
                self._held.append(frame)
                self._held_size += len(frame)
            elif self._out or self._eof_pending:
                self._queue(frame)
            else:
                try:
                    sent = os.write(self.fd, frame)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent = -1
                if sent != len(frame):
                    self.write_rest(frame, sent)

    def write_rest(self, data: bytes, sent: int) -> None:
        """After a write of ``data`` straight to the socket that took ``sent`` bytes of it
        (``-1``: the write failed), keep the rest to write when the socket takes more, or
        treat the failure as the end of the stream. With the lock held."""
        if sent < 0:
            self._connection_lost()
            self._update_reading()
            self._wake()  # a handler waiting for a message learns of the end
        else:
            self._queue(memoryview(data)[sent:] if sent else data)
            self._update_writing()

    def ping(self, data: bytes | str | None = None) -> Ping:
        """Send a ping with ``data`` (``None``: 4 random bytes); its :class:`Ping` is
        answered when the pong comes (one :class:`Ping` for pings of the same data while
        they wait). With the lock held."""
        if data is None:
            data = os.urandom(4)
            while data in self._pings:
                data = os.urandom(4)
        elif isinstance(data, str):
            data = data.encode()
        if self.protocol.state is not OPEN:
            raise self.closed_error()
        # The same data as a ping still waiting: its pong answers both, as the same Ping.
        ping = self._pings.get(data) or self._pings.setdefault(data, Ping(data))
        self.protocol.send_ping(data)
        self._flush_protocol()
        return ping

    def begin_close(self, code: int, reason: str, timeout: float | None = None) -> None:
        """Start the closing handshake with ``code``; nothing once closing. With the lock
        held; the connection is :attr:`closed` when it ends: ``timeout`` seconds at most
        (default ``close_timeout``)."""
        if self.protocol.state is OPEN:
            self.protocol.send_close(code, reason)
            self._flush_protocol()
            self._start_close_timer(timeout)
            if self._holding:  # closing, the protocol reads the frames held back
                self._release()
            self._update_reading()  # read the peer's answer even when the queue is full

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455, section 7.1.7) with ``code``. With the lock held."""
        self._failed = True
        if self.protocol.state is not CLOSED:
            # Closing since our close frame: no second close frame, but the rest is
            # discarded and the TCP connection closed all the same.
            self.protocol.fail(code, reason)
            self._flush_protocol()
            self._start_close_timer()

    def _abort(self) -> None:
        """Give up on the peer: the connection is over now."""
        if not self._eof_received:
            self._receive_eof()
        self._update_reading()
        self._update_writing()

    def _start_close_timer(self, timeout: float | None = None) -> None:
        if self._close_timer is None:
            self._close_timer = self.reactor.call_later(
                self.options.close_timeout if timeout is None else timeout,
                self._on_close_timeout,
            )

    def _on_close_timeout(self) -> None:
        with self.lock:
            self._close_timer = None
            self._abort()
            self._wake()

    def _schedule_keepalive(self) -> None:
        if self.options.ping_interval is not None and self.protocol.state is OPEN:
            self._keepalive_timer = self.reactor.call_later(
                self.options.ping_interval, self._on_keepalive
            )

    def _on_keepalive(self) -> None:
        with self.lock:
            self._keepalive_timer = None
            if self.protocol.state is not OPEN:
                return
            if self._ping_payload is None:
                self._ping_payload = os.urandom(4)
                self._ping_sent = time.monotonic()
                self.protocol.send_ping(self._ping_payload)
                self._flush_protocol()
                if self.options.ping_timeout is not None:
                    self._pong_timer = self.reactor.call_later(
                        self.options.ping_timeout, self._on_pong_timeout
                    )
            self._schedule_keepalive()

    def _on_pong_timeout(self) -> None:
        with self.lock:
            self._pong_timer = None
            if self._ping_payload is None or self.protocol.state is not OPEN:
                return
            if not self._reading and self.buffered <= self.options.write_limit:
                # We stopped reading because the handler does not keep up (max_queue):
                # the pong may be waiting in the socket. Not the peer's fault: look again
                # later. Stopped because the peer does not read what we send (write_limit),
                # our ping waits behind it: the peer's fault, as with a peer that floods
                # pings and never reads the pongs.
                assert self.options.ping_timeout is not None
                self._pong_timer = self.reactor.call_later(
                    self.options.ping_timeout, self._on_pong_timeout
                )
                return
            if self._reading:
                # A busy worker may run this timer before the read that has the pong.
                self.on_readable()
                if self._ping_payload is None or self.protocol.state is not OPEN:
                    return
            self.fail(1011, "keepalive ping timeout")
            self._abort()
            self._wake()

    def _stop_timers(self) -> None:
        for name in ("_keepalive_timer", "_pong_timer", "_close_timer", "_linger_timer"):
            timer = getattr(self, name)
            if timer is not None:
                timer.cancel()
                setattr(self, name, None)

    # Releasing the socket.

    def release(self) -> None:
        """Stop watching the socket and the timers; its owner closes the socket after."""
        with self.lock:
            self._stop_timers()
            self._reading = self._writing = False
            self._released = True
        # Not under the lock: the plain flavour waits here for its I/O thread, which may
        # be waiting for the lock in a callback.
        self.reactor.close()


def deliver(
    connections: Iterable[Connection], frame: bytes, size: int, exclude: Collection[str] = ()
) -> None:
    """Queue ``frame``, one whole frame of a ``size``-byte payload made for many connections
    (a broadcast), on each of ``connections`` but those whose id is in ``exclude``. A
    connection with output already waiting that ``frame`` would take over its
    ``max_send_buffer`` is closed with 1013 instead (a slow consumer); one that is closing
    is skipped. Never waits.

    One loop for all of them, not a method call each: it runs once per recipient, and
    most recipients are idle -- no lock (gevent, asyncio), nothing waiting to be sent, no
    fragmented message being sent, open -- so the frame goes to their socket at once,
    after the checks that say so. The others take :meth:`Connection.deliver`.
    """
    if exclude:
        connections = [c for c in connections if c.id not in exclude]
    length = len(frame)
    write = os.write
    no_lock = _NO_LOCK
    for connection in connections:
        # Nothing buffered also means no half-close pending: that waits for buffered output.
        if (
            connection.buffered
            or connection.fragmenting
            or not connection.connected
            or connection.lock is not no_lock
        ):
            connection.deliver(frame, size)
            continue
        connection.messages_out += 1
        connection.bytes_out += size
        try:
            sent = write(connection.fd, frame)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            sent = -1
        if sent != length:
            connection.write_rest(frame, sent)
