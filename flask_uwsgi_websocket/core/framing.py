"""Frames (RFC 6455, section 5.2): headers read from received data, frames built to send.

Only what the connection's fast path needs; every other frame is parsed by the
``websockets`` sans-I/O :class:`~websockets.protocol.Protocol`.
"""

from __future__ import annotations

import struct

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = [
    "BINARY",
    "SHORT_HEADERS",
    "TEXT",
    "Message",
    "apply_mask",
    "build_frame",
    "data_of",
    "frame_header",
    "read_header",
]

#: A whole message: ``str`` for text, ``bytes`` for binary.
Message = str | bytes

#: The opcodes of data frames, as plain ints (cheaper on the hot paths than ``Opcode``'s).
TEXT, BINARY = 0x1, 0x2

#: The header of a final, unmasked, unextended frame of opcode ``op`` (0 to 2) and a
#: payload of ``n`` bytes under 126: ``SHORT_HEADERS[op << 7 | n]``, made once, as the
#: small echoes and broadcasts would make each.
SHORT_HEADERS = tuple(bytes((0x80 | index >> 7, index & 0x7F)) for index in range(3 << 7))

_pack_short = struct.Struct("!BBH").pack
_pack_long = struct.Struct("!BBQ").pack


def read_header(data: bytes | bytearray, pos: int, end: int) -> tuple[int, int] | None:
    """The frame header at ``data[pos:end]``: ``(payload start, payload length)``.

    The payload starts after the masking key when the frame is masked. ``None``
    when the header is not complete yet.
    """
    length = data[pos + 1] & 0x7F
    start = pos + 2
    if length == 126:
        if end - pos < 4:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        start += 2
    elif length == 127:
        if end - pos < 10:
            return None
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start += 8
    if data[pos + 1] & 0x80:
        start += 4  # the masking key
    return start, length


def frame_header(opcode: int, length: int, fin: bool = True) -> bytes:
    """The header of an unmasked, unextended frame (RFC 6455, section 5.2): final unless
    ``fin`` is false (a fragment of a message with more to come)."""
    b0 = 0x80 | opcode if fin else opcode
    if length < 126:
        return bytes((b0, length))
    if length < 65536:
        return _pack_short(b0, 126, length)
    return _pack_long(b0, 127, length)


def build_frame(opcode: int, payload: bytes) -> bytes:
    """An unmasked, final, unextended frame of ``payload``."""
    return frame_header(opcode, len(payload)) + payload


def data_of(message: object, what: str = "a message") -> tuple[int, bytes]:
    """The opcode and payload of ``message``: ``str`` as text (UTF-8), bytes-like as
    binary; ``TypeError`` (naming it ``what``) for anything else."""
    if isinstance(message, str):
        return 0x1, message.encode()
    if isinstance(message, (bytes, bytearray, memoryview)):
        return 0x2, bytes(message)
    raise TypeError(f"{what} is str or bytes-like, not {type(message).__name__}")
