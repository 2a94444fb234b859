"""The registry of an app's connections in this process and their rooms, and delivery.

In each process, :meth:`Rooms.deliver` frames a broadcast once -- one unmasked,
uncompressed frame, the same bytes for every recipient -- and queues those bytes
on each recipient's connection. A connection whose unsent output is over its
``max_send_buffer`` is not given more: it is closed with 1013 (Try Again Later),
so a slow consumer neither grows memory nor holds up the broadcaster and the
other recipients.

Uncompressed on purpose, also on connections that agreed permessage-deflate:
RFC 7692 lets each message be compressed or not (the RSV1 bit), and a frame
compressed once could not be shared, since each connection's compressor keeps
its own context.

A broker between processes receives only the broadcasts of the rooms this
process has members in (and those to every connection): the registry tells its
:class:`Subscriptions` when a room gains its first member here and loses its last,
and a joining connection may wait for the subscription (:class:`Subscribing`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Protocol

from ..core.connection import Connection, deliver
from ..core.framing import build_frame
from .message import Broadcast, check_room

__all__ = ["Rooms", "Subscribing", "Subscriptions"]


class Subscribing(Protocol):
    """A room's subscription on its way: what a joining connection waits for, until it is
    :attr:`done` or :attr:`timeout` seconds have passed."""

    #: Whether the wait is over: subscribed, or it cannot be now (the broker is down).
    done: bool
    #: Seconds a connection waits at most.
    timeout: float

    def then(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once done, from any thread; now if it is."""

    def overdue(self) -> None:
        """Say that a connection stopped waiting at the timeout."""


class Subscriptions(Protocol):
    """Where a process receives the broadcasts of the rooms it has members in: a broker."""

    def subscribe(self, room: str) -> Subscribing | None:
        """A connection of this process joins ``room``: receive its broadcasts. What it
        may wait for, or ``None`` when there is nothing to wait for."""

    def unsubscribe(self, room: str) -> None:
        """No connection of this process is in ``room`` any longer."""


class Rooms:
    """The connections of one app in this process, and the rooms they joined.

    Connections enter when their handler starts and leave, with all their rooms,
    when it ends. Safe to use from any thread; :meth:`deliver` hands the work to
    the thread that runs the connections (the gevent hub, the asyncio loop).
    ``subscriptions`` is told of the rooms that gain their first member here and
    lose their last (called with the registry's lock held, so in that order).
    """

    def __init__(self, subscriptions: Subscriptions | None = None) -> None:
        self._subscriptions = subscriptions
        self._lock = threading.Lock()
        self._all: set[Connection] = set()
        self._rooms: dict[str, set[Connection]] = {}
        self._joined: dict[Connection, frozenset[str]] = {}
        # Runs a function where the connections' callbacks run: set by the first one.
        self._call: Callable[[Callable[[], None]], None] | None = None

    def add(self, connection: Connection, call: Callable[[Callable[[], None]], None]) -> None:
        """Count ``connection`` among the app's connections. ``call`` runs a function
        where its callbacks run, from any thread (its reactor's ``call_soon_threadsafe``);
        the first connection's is kept, since a process runs one flavour."""
        with self._lock:
            self._all.add(connection)
            if self._call is None:
                self._call = call

    @property
    def serving(self) -> bool:
        """Whether this process serves connections: one has entered already."""
        return self._call is not None

    def remove(self, connection: Connection) -> None:
        """Forget ``connection`` and take it out of every room."""
        with self._lock:
            self._all.discard(connection)
            for room in self._joined.get(connection, ()):
                self._take_out(connection, room)
            self._joined.pop(connection, None)

    def rooms_of(self, connection: Connection) -> frozenset[str]:
        """The rooms ``connection`` is in."""
        return self._joined.get(connection, frozenset())

    def join(self, connection: Connection, room: str) -> Subscribing | None:
        """Put ``connection`` in ``room``; what it may wait for before a broadcast made
        from now on is sure to reach it (see :class:`Subscribing`), or ``None``."""
        check_room(room)
        with self._lock:
            if connection not in self._all:
                return None
            self._rooms.setdefault(room, set()).add(connection)
            self._joined[connection] = self._joined.get(connection, frozenset()) | {room}
            if self._subscriptions is None:
                return None
            return self._subscriptions.subscribe(room)

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
                if self._subscriptions is not None:
                    self._subscriptions.unsubscribe(room)
        joined = self._joined.get(connection)
        if joined is not None and room in joined:
            self._joined[connection] = joined - {room}

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
        frame = build_frame(broadcast.opcode, broadcast.payload)
        deliver(recipients, frame, len(broadcast.payload), broadcast.exclude)
