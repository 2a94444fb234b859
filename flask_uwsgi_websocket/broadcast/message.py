"""A broadcast: one message for every connection of an app, or of one room, but those excluded.

:meth:`Broadcast.encode` and :meth:`Broadcast.decode` carry it between processes
(see ``brokers``) in a compact binary form.
"""

from __future__ import annotations

import struct
from typing import Any, NamedTuple

from websockets.frames import Opcode

from ..core.framing import data_of

__all__ = ["Broadcast", "check_room", "exclusion"]

_VERSION = 1
_header = struct.Struct("!BBHH")  # version, opcode, room length (0xFFFF: no room), ids


class Broadcast(NamedTuple):
    """One message for many connections."""

    #: ``Opcode.TEXT`` or ``Opcode.BINARY``.
    opcode: int
    #: The payload: UTF-8 for a text message.
    payload: bytes
    #: The room, or ``None`` for every connection of the app.
    room: str | None
    #: The ids of the connections that do not get it.
    exclude: frozenset[str]

    @classmethod
    def of(cls, message: Any, room: str | None, exclude: Any) -> Broadcast:
        """The broadcast of ``message`` (``str``: text, bytes-like: binary)."""
        opcode, payload = data_of(message)
        if room is not None:
            check_room(room)
        return cls(Opcode(opcode), payload, room, exclusion(exclude))

    def encode(self) -> bytes:
        """The broadcast as one string of bytes, for a broker between processes."""
        room = b"" if self.room is None else self.room.encode()
        head = _header.pack(
            _VERSION, self.opcode, 0xFFFF if self.room is None else len(room), len(self.exclude)
        )
        ids = "".join(self.exclude).encode()
        return b"".join((head, room, ids, self.payload))

    @classmethod
    def decode(cls, data: bytes) -> Broadcast:
        """The broadcast :meth:`encode` made; ``ValueError`` for anything else."""
        try:
            version, opcode, room_length, count = _header.unpack_from(data)
        except struct.error:
            raise ValueError("not a broadcast: too short") from None
        if version != _VERSION or opcode not in (Opcode.TEXT, Opcode.BINARY):
            raise ValueError(f"not a broadcast of this version: {data[:6]!r}")
        pos = _header.size
        room = None
        if room_length != 0xFFFF:
            room = data[pos : pos + room_length].decode()
            pos += room_length
        ids = data[pos : pos + 32 * count].decode("ascii")
        pos += 32 * count
        exclude = frozenset(ids[i : i + 32] for i in range(0, len(ids), 32))
        return cls(Opcode(opcode), data[pos:], room, exclude)


def check_room(room: Any) -> None:
    """Raise ``TypeError``/``ValueError`` unless ``room`` is a room name."""
    if not isinstance(room, str):
        raise TypeError(f"a room is named by a str, not {type(room).__name__}")
    if len(room.encode()) >= 0xFFFF:
        raise ValueError("a room name is shorter than 65535 bytes in UTF-8")


def exclusion(exclude: Any) -> frozenset[str]:
    """The connection ids in ``exclude``: a connection, an id, or an iterable of them."""
    if exclude is None:
        return frozenset()
    if isinstance(exclude, str) or hasattr(exclude, "id"):
        exclude = (exclude,)
    ids = set()
    for item in exclude:
        ident = item if isinstance(item, str) else getattr(item, "id", None)
        if not isinstance(ident, str) or len(ident) != 32:
            raise TypeError(f"exclude takes connections or their ids, not {item!r}")
        ids.add(ident)
    return frozenset(ids)
