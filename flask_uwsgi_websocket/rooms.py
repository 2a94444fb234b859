"""Rooms: which connections of an app this process holds, and how a broadcast reaches them.

A :class:`Broadcast` is one message for every connection of an app, or of one
room, but those excluded. A broker (see ``brokers``) carries it to every process
that serves the app; in each, :meth:`Rooms.deliver` frames it once -- one
unmasked, uncompressed frame, the same bytes for every recipient -- and queues
those bytes on each recipient's connection. A connection whose unsent output
is over its ``max_send_buffer`` is not given more: it is closed with 1013
(Try Again Later), so a slow consumer neither grows memory nor holds up the
broadcaster and the other recipients.

Uncompressed on purpose, also on connections that agreed permessage-deflate:
RFC 7692 lets each message be compressed or not (the RSV1 bit), and a frame
compressed once could not be shared, since each connection's compressor keeps
its own context.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, NamedTuple

from websockets.frames import Opcode

from .connection import frame_header

if TYPE_CHECKING:
    from .connection import Connection

__all__ = ["Broadcast", "Rooms", "exclusion"]

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
        if isinstance(message, str):
            opcode, payload = Opcode.TEXT, message.encode()
        elif isinstance(message, (bytes, bytearray, memoryview)):
            opcode, payload = Opcode.BINARY, bytes(message)
        else:
            raise TypeError(f"a message is str or bytes-like, not {type(message).__name__}")
        if room is not None:
            check_room(room)
        return cls(opcode, payload, room, exclusion(exclude))

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


class Rooms:
    """The connections of one app in this process, and the rooms they joined.

    Connections enter when their handler starts and leave, with all their rooms,
    when it ends. Safe to use from any thread; :meth:`deliver` hands the work to
    the thread that runs the connections (the gevent hub, the asyncio loop).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all: set[Connection] = set()
        self._rooms: dict[str, set[Connection]] = {}
        # Runs a function where the connections' callbacks run: set by the first one.
        self._call: Callable[[Callable[[], None]], None] | None = None

    def add(self, connection: Connection) -> None:
        """Count ``connection`` among the app's connections."""
        with self._lock:
            self._all.add(connection)
            if self._call is None:
                self._call = connection._make_caller()

    def remove(self, connection: Connection) -> None:
        """Forget ``connection`` and take it out of every room."""
        with self._lock:
            self._all.discard(connection)
            for room in connection._joined:
                self._take_out(connection, room)

    def join(self, connection: Connection, room: str) -> None:
        """Put ``connection`` in ``room``."""
        check_room(room)
        with self._lock:
            if connection in self._all:
                self._rooms.setdefault(room, set()).add(connection)
                connection._joined |= {room}

    def leave(self, connection: Connection, room: str) -> None:
        """Take ``connection`` out of ``room``; nothing happens if it is not in."""
        check_room(room)
        with self._lock:
            self._take_out(connection, room)

    def _take_out(self, connection: Connection, room: str) -> None:
        """Take ``connection`` out of ``room``, which goes when empty; with the lock held."""
        members = self._rooms.get(room)
        if members is not None:
            members.discard(connection)
            if not members:
                del self._rooms[room]
        connection._joined -= {room}

    def count(self, room: str | None = None) -> int:
        """How many connections of this process are in ``room`` (``None``: in all)."""
        with self._lock:
            return len(self._all if room is None else self._rooms.get(room, ()))

    def deliver(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` on every recipient in this process; never waits."""
        call = self._call
        if call is not None:
            call(lambda: self._deliver_now(broadcast))

    def _deliver_now(self, broadcast: Broadcast) -> None:
        room = broadcast.room
        with self._lock:
            members: Iterable[Connection] = self._all if room is None else self._rooms.get(room, ())
            recipients = list(members)
        if not recipients:
            return
        payload = broadcast.payload
        frame = frame_header(broadcast.opcode, len(payload)) + payload
        exclude = broadcast.exclude
        for connection in recipients:
            if not exclude or connection.id not in exclude:
                connection._deliver(frame)
