"""permessage-deflate (RFC 7692): its settings, its negotiation, and the compression.

:class:`Deflate` compresses and inflates a connection's messages. The connection
calls :meth:`Deflate.inflate` and :meth:`Deflate.deflate` itself for a whole message
in one frame (the common case); ``websockets``' protocol calls the same object, as
its extension, for everything else (fragmented messages), so both share one zlib
stream each way. Inflating is bounded by ``max_message_size``: a small frame that
would inflate past it is refused with 1009 after inflating at most that many bytes.

Memory: zlib's streams are made when a message first needs one, and each is
released after every message when the other side need not keep it:

- the compressor (``server_max_window_bits`` 12 and ``mem_level`` 5: about 38 KiB
  while it lives) is released after every message by default: the server announces
  ``server_no_context_takeover``, so a connection holds no compressor between
  messages, and its client may release its inflater too. The price: each message is
  compressed on its own, so small messages that repeat each other (JSON with the same
  keys) compress less well than with the previous ones as a dictionary. Set
  ``server_no_context_takeover`` to ``False`` to keep the compressor for the
  connection's life instead;
- the inflater (about 7 KiB plus the client's window, 2**12 bytes by default) must
  live as long as the connection when the client keeps its context. A client that
  offers ``client_max_window_bits`` is held to 2**12; one that does not (so it may
  use 2**15, and 39 KiB of inflater) is asked for ``client_no_context_takeover``
  instead, so its inflater is released after every message too. Set
  ``client_max_window_bits`` to 15 to let every client keep a 2**15 window and its
  context, or ``client_no_context_takeover`` to ``True`` to ask it of every client.

So with the defaults an idle connection that agreed permessage-deflate holds 3 KiB (no
context kept) to 14 KiB (the ``websockets`` client's offer) more than one that did not
(bench/README.md, "Memory per connection with permessage-deflate").

CPU: zlib's ``level`` 3 by default, about twice as fast as its default 6 for about 10 %
more bytes on JSON; and a message shorter than ``min_size`` (128 bytes) is sent as it
is (RSV1 clear, as RFC 7692 allows): compressed on its own it would save a few bytes
for the cost of making a compressor.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import Any

from websockets.exceptions import NegotiationError, PayloadTooBig, ProtocolError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.frames import CTRL_OPCODES, Frame, Opcode
from websockets.headers import build_extension, parse_extension
from websockets.typing import ExtensionName, ExtensionParameter

__all__ = ["DEFAULTS", "Deflate", "deflate_settings", "negotiate"]

#: The settings ``compression="deflate"`` stands for. The server's window (2**12 bytes)
#: and zlib's ``mem_level`` 5 keep the compressor to about 38 KiB while it compresses a
#: message, released after each (``server_no_context_takeover``); a client's window is
#: held to 2**12 (or it keeps no context), so its inflater takes about 11 KiB. See the
#: module's docstring and README.rst.
DEFAULTS: Mapping[str, Any] = {
    "server_max_window_bits": 12,
    "client_max_window_bits": 12,
    "server_no_context_takeover": True,
    "client_no_context_takeover": False,
    "mem_level": 5,
    "level": 3,
    "min_size": 128,
}


def deflate_settings(compression: object) -> dict[str, Any] | None:
    """Check the ``compression`` option; return its full settings, or ``None`` for off.

    ``"deflate"`` means :data:`DEFAULTS`; a mapping overrides some of them, with the
    names of RFC 7692's parameters (``server_max_window_bits`` 9-15,
    ``client_max_window_bits`` 8-15, ``server_no_context_takeover``,
    ``client_no_context_takeover``), zlib's ``mem_level`` (1-9) and ``level`` (0-9),
    and ``min_size``: messages shorter than that many bytes are sent uncompressed.
    """
    if compression is None:
        return None
    if compression == "deflate":
        return dict(DEFAULTS)
    if not isinstance(compression, Mapping):
        raise ValueError(
            f"compression is 'deflate', a dict of its settings or None, not {compression!r}"
        )
    unknown = sorted(set(compression) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown compression setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
        )
    settings = {**DEFAULTS, **compression}
    ranges = {
        "server_max_window_bits": (9, 15),  # zlib cannot compress raw deflate with 8
        "client_max_window_bits": (8, 15),
        "mem_level": (1, 9),
        "level": (0, 9),
        "min_size": (0, 2**63),
    }
    for name, (low, high) in ranges.items():
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"compression setting {name} must be an int from {low} to {high}")
    for name in ("server_no_context_takeover", "client_no_context_takeover"):
        if not isinstance(settings[name], bool):
            raise ValueError(f"compression setting {name} must be True or False")
    return settings


#: What a sync flush ends with, and RFC 7692 takes off the end of a message.
TAIL = b"\x00\x00\xff\xff"
# Below this size, appending TAIL (a copy) costs less than a second decompress() call.
_APPEND_LIMIT = 2044


class Deflate(Extension):
    """permessage-deflate as agreed for one connection: ``remote`` is the client's side
    (what the server inflates), ``local`` the server's (what it compresses).

    Also ``websockets``' extension interface (:meth:`decode`, :meth:`encode`), which its
    protocol applies to the frames the connection leaves to it.
    """

    name = ExtensionName("permessage-deflate")

    def __init__(
        self,
        remote_no_context_takeover: bool,
        local_no_context_takeover: bool,
        remote_max_window_bits: int,
        local_max_window_bits: int,
        level: int = 6,
        mem_level: int = 5,
        min_size: int = 0,
    ) -> None:
        self.remote_no_context_takeover = remote_no_context_takeover
        self.local_no_context_takeover = local_no_context_takeover
        self.remote_max_window_bits = remote_max_window_bits
        self.local_max_window_bits = local_max_window_bits
        self.level = level
        self.mem_level = mem_level
        #: Messages shorter than this are sent uncompressed (by the connection).
        self.min_size = min_size
        # zlib's streams, while they live (see the module's docstring).
        self._inflater: Any = None
        self._deflater: Any = None
        # A compressed message is being received in fragments: its continuations inflate.
        self._inflating = False

    def __repr__(self) -> str:
        return (
            f"Deflate(remote_no_context_takeover={self.remote_no_context_takeover}, "
            f"local_no_context_takeover={self.local_no_context_takeover}, "
            f"remote_max_window_bits={self.remote_max_window_bits}, "
            f"local_max_window_bits={self.local_max_window_bits})"
        )

    @property
    def streams(self) -> int:
        """How many zlib streams this connection holds now (0 to 2)."""
        return (self._inflater is not None) + (self._deflater is not None)

    def inflate(self, data: bytes, fin: bool = True, max_size: int | None = None) -> bytes:
        """Inflate ``data``, a compressed message (its part, unless ``fin``), to at most
        ``max_size`` bytes: more raises ``PayloadTooBig``; corrupt data ``ProtocolError``."""
        inflater = self._inflater
        if inflater is None:
            inflater = zlib.decompressobj(-self.remote_max_window_bits)
        small = fin and len(data) < _APPEND_LIMIT
        max_length = 0 if max_size is None else max_size
        try:
            out = inflater.decompress(data + TAIL if small else data, max_length)
            if inflater.unconsumed_tail:
                raise PayloadTooBig(None, max_size)
            # In edge cases the flush yields data that max_size held back.
            if fin and not small and inflater.decompress(TAIL, 1):
                raise PayloadTooBig(None, max_size)
        except zlib.error as exc:
            self._inflater = None
            raise ProtocolError("decompression failed") from exc
        self._inflater = None if fin and self.remote_no_context_takeover else inflater
        return out  # type: ignore[no-any-return]

    def deflate(self, data: bytes, fin: bool = True) -> bytes:
        """Compress ``data``, a message (its part, unless ``fin``), with a sync flush; the
        flush's last four bytes are left out at the end of the message."""
        deflater = self._deflater
        if deflater is None:
            deflater = zlib.compressobj(
                self.level, zlib.DEFLATED, -self.local_max_window_bits, self.mem_level
            )
        out: bytes = deflater.compress(data) + deflater.flush(zlib.Z_SYNC_FLUSH)
        self._deflater = None if fin and self.local_no_context_takeover else deflater
        return out[:-4] if fin else out

    def decode(self, frame: Frame, *, max_size: int | None = None) -> Frame:
        """Inflate a received frame of a compressed message (``websockets``' interface)."""
        if frame.opcode in CTRL_OPCODES:
            return frame
        if frame.opcode is Opcode.CONT:
            if not self._inflating:
                return frame
            if frame.rsv1:
                raise ProtocolError("RSV1 bit set in continuation frame")
        elif not frame.rsv1:
            return frame
        self._inflating = not frame.fin
        data = self.inflate(bytes(frame.data), frame.fin, max_size)
        return Frame(frame.opcode, data, frame.fin, False, frame.rsv2, frame.rsv3)

    def encode(self, frame: Frame) -> Frame:
        """Compress a frame to send (``websockets``' interface): every data frame is."""
        if frame.opcode in CTRL_OPCODES:
            return frame
        data = self.deflate(bytes(frame.data), frame.fin)
        return Frame(
            frame.opcode, data, frame.fin, frame.opcode is not Opcode.CONT, frame.rsv2, frame.rsv3
        )


def negotiate(
    header: str | None, settings: Mapping[str, Any] | None
) -> tuple[str | None, list[Extension]]:
    """Answer a ``Sec-WebSocket-Extensions`` request header.

    Returns the response header (``None``: no extension) and the extensions to
    apply: a :class:`Deflate` or none. Of the client's offers, the first
    permessage-deflate offer the settings can accept is taken (RFC 7692, section 5);
    other extensions are ignored. A client that keeps its context with a window over
    ``client_max_window_bits`` (it did not offer the parameter) is asked for
    ``client_no_context_takeover``. A malformed header raises ``InvalidHandshake``.
    """
    if not header or settings is None:
        return None, []
    offers = parse_extension(header)
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=settings["server_no_context_takeover"],
        client_no_context_takeover=settings["client_no_context_takeover"],
        server_max_window_bits=settings["server_max_window_bits"],
        client_max_window_bits=settings["client_max_window_bits"],
        compress_settings={"memLevel": settings["mem_level"], "level": settings["level"]},
    )
    for name, params in offers:
        if name != factory.name:
            continue
        try:
            response_params, extension = factory.process_request_params(params, [])
        except NegotiationError:
            continue  # not acceptable as offered: try the client's next offer
        except ValueError:
            # The same for websockets < 17 when it makes a compressor at once: it leaves
            # server_max_window_bits=8 to zlib, which refuses to compress with a 2**8 window.
            continue
        if extension.local_max_window_bits < 9:
            continue  # that window again, where websockets < 17 made no compressor yet
        remote_no_context_takeover = extension.remote_no_context_takeover
        if (
            not remote_no_context_takeover
            and extension.remote_max_window_bits > settings["client_max_window_bits"]
        ):
            remote_no_context_takeover = True
            response_params = [*response_params, ("client_no_context_takeover", None)]
        deflate = Deflate(
            remote_no_context_takeover,
            extension.local_no_context_takeover,
            extension.remote_max_window_bits,
            extension.local_max_window_bits,
            settings["level"],
            settings["mem_level"],
            settings["min_size"],
        )
        return build_extension([(name, _in_order(response_params))]), [deflate]
    return None, []


def _in_order(params: Sequence[ExtensionParameter]) -> list[ExtensionParameter]:
    """``params`` in the order ``websockets`` writes them (RFC 7692's)."""
    order = [
        "server_no_context_takeover",
        "client_no_context_takeover",
        "server_max_window_bits",
        "client_max_window_bits",
    ]
    return sorted(params, key=lambda param: order.index(param[0]))
