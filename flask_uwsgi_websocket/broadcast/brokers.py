"""Brokers: how a broadcast reaches the connections of every process that serves the app.

:class:`LocalBroker`, the default, delivers within the calling process: enough
for one worker process (any number of threads, greenlets or tasks in it).

:class:`RedisBroker` publishes each broadcast on a Redis pub/sub channel: the
app's channel (``CHANNEL``, or the one configured) for a broadcast to every
connection, and one channel per room, ``<channel>:room:<room>``, for a broadcast
to a room. Every worker process of every uWSGI instance that uses the same Redis
subscribes to the app's channel and to the channels of the rooms it has members
in, and delivers what comes to its own connections: a worker receives the
broadcasts that can reach its connections, not those of every room. The URL
says which Redis (see ``servers``): one server, the master of a Sentinel
service, or a Redis Cluster, whose channels are spread over its shards with
sharded pub/sub (see ``cluster``). In each process, links carry the channels
(see ``pubsub``): their Redis traffic runs in daemon threads, so a broadcast
never waits for Redis, and a Redis that is down or slow holds up no worker.

A worker starts receiving as it is forked. Any other process that broadcasts --
a Celery worker, a ``flask`` command, a script, a uWSGI mule or the spooler --
only publishes: its link starts at its first broadcast, and when the process
exits the broadcasts still queued are published first, for :data:`EXIT_TIMEOUT`
seconds at most (:meth:`RedisBroker.flush` waits for them at any time).
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import uuid
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from .. import uwsgi_api
from .cluster import ShardedLinks
from .message import Broadcast
from .pubsub import EXIT_TIMEOUT, JOIN_TIMEOUT, Carrier, Link
from .registry import Rooms, Subscribing
from .servers import Cluster, SentinelMaster, Standalone, safe_url

__all__ = ["EXIT_TIMEOUT", "JOIN_TIMEOUT", "Broker", "LocalBroker", "RedisBroker", "make_broker"]

#: The Redis channel the apps' broadcasts go through, unless configured.
CHANNEL = "flask-uwsgi-websocket"
#: The schemes of the URLs of a Redis broker.
REDIS_SCHEMES = ("redis://", "rediss://", "unix://", "redis+sentinel://", "redis+cluster://")


class Broker(Protocol):
    """Carries broadcasts to the :class:`Rooms` of every process that serves the app."""

    #: The app's connections in this process.
    rooms: Rooms

    def publish(self, broadcast: Broadcast) -> None:
        """Send ``broadcast`` to every process; never waits."""

    def start(self) -> None:
        """This process serves connections: make sure it receives broadcasts; cheap when
        done before."""

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Wait until the broadcasts made in this process have left it; see
        :meth:`RedisBroker.flush`."""


class LocalBroker:
    """Delivery within this process: the default, for one worker process."""

    def __init__(self, log: logging.Logger | None = None) -> None:
        self.rooms = Rooms()
        self.log = log or logging.getLogger("flask_uwsgi_websocket")
        self._warned_in: int | None = None  # the process it warned in

    def publish(self, broadcast: Broadcast) -> None:
        """Deliver ``broadcast`` to this process's connections."""
        if not self.rooms.serving and self._warned_in != os.getpid():
            self._warn_of_no_connections()
        self.rooms.deliver(broadcast)

    def _warn_of_no_connections(self) -> None:
        """Once per process outside the uWSGI workers: a broadcast that can reach no one."""
        self._warned_in = os.getpid()
        if uwsgi_api.worker_id() > 0:
            return  # a worker with no connection yet: its later ones will get broadcasts
        self.log.warning(
            "websocket.broadcast() with the in-process broker, in a process that serves no "
            "WebSocket connection (not a uWSGI worker): it reaches no one, nor will any "
            "broadcast made here. To broadcast from a script, a flask command, a Celery "
            "worker, a mule or the spooler, set WEBSOCKET_BROKER_URL = 'redis://host:port/db' "
            "in this process and in the uWSGI workers."
        )

    def start(self) -> None:
        """Nothing to start."""

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Nothing waits: the broadcasts were delivered when made. ``True``."""
        return True

    def __repr__(self) -> str:
        return "<LocalBroker>"


class RedisBroker:
    """Delivery through Redis pub/sub channels, to every process that subscribes to them:
    on one server (``redis://``, ``rediss://``, ``unix://``), on the master of a Sentinel
    service (``redis+sentinel://``) or on the shards of a Redis Cluster
    (``redis+cluster://``); see ``servers`` for the URLs."""

    def __init__(self, url: str, channel: str = CHANNEL, log: logging.Logger | None = None) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the Redis broker needs the redis package: pip install Flask-uWSGI-WebSocket[redis]"
            ) from None
        self.rooms = Rooms(self)
        self.url = url
        self.channel = channel
        self.log = log or logging.getLogger("flask_uwsgi_websocket")
        self._servers()  # a bad URL fails here
        self._app_channel = channel.encode()
        self._room_prefix = f"{channel}:room:".encode()
        self._new_lock()
        self._pid: int | None = None  # the process the carrier works in
        self._carrier: Carrier | None = None
        self._receiving = False  # whether it receives too (in that process)
        self._exit_hook = False
        os.register_at_fork(after_in_child=_call_weakly(weakref.WeakMethod(self._new_lock)))

    def _new_lock(self) -> None:
        # Also in a child just forked: a lock another thread held in the parent stays held.
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"<RedisBroker {safe_url(self.url)} channel={self.channel!r}>"

    def _servers(self) -> Standalone | SentinelMaster | Cluster:
        """The servers the URL names (new objects: one process's)."""
        if self.url.startswith("redis+cluster://"):
            return Cluster(self.url)
        if self.url.startswith("redis+sentinel://"):
            return SentinelMaster(self.url)
        return Standalone(self.url)

    def _room_channel(self, room: str) -> bytes:
        return self._room_prefix + room.encode()

    def start(self) -> None:
        """This process serves connections: have it receive broadcasts, once per process."""
        if self._pid != os.getpid() or not self._receiving:
            self._start(receive=True)

    def _start(self, receive: bool) -> Carrier:
        with self._lock:
            if self._pid != os.getpid() or self._carrier is None:
                # A fork copies no thread: a carrier of its own for this process.
                servers = self._servers()
                if isinstance(servers, Cluster):
                    self._carrier = ShardedLinks(servers, self.rooms, self.log, self.channel)
                else:
                    wake = f"{self.channel}:wake:{uuid.uuid4().hex}".encode()
                    self._carrier = Link(servers, self.rooms, self.log, wake)
                self._pid = os.getpid()
                self._receiving = False
                if not self._exit_hook:  # registered once: forked children inherit it
                    self._exit_hook = True
                    atexit.register(self._flush_at_exit)
            carrier = self._carrier
            if receive and not self._receiving:
                self._receiving = True
                carrier.subscribe(self._app_channel)  # before it receives: no wake-up needed
                carrier.receive()
        return carrier

    def _here(self) -> Carrier:
        """This process's carrier: started now if it is the first broadcast here."""
        carrier = self._carrier
        if carrier is None or self._pid != os.getpid():
            carrier = self._start(receive=False)
        return carrier

    def publish(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` for Redis; dropped while Redis is down."""
        carrier = self._here()
        room = broadcast.room
        channel = self._app_channel if room is None else self._room_channel(room)
        carrier.publish(channel, broadcast.encode())

    def subscribe(self, room: str) -> Subscribing | None:
        """A connection of this process joins ``room``: receive its channel. What the
        connection waits for, or ``None``: subscribed already, or no use waiting (Redis is
        down, or a subscription was overdue and none came since)."""
        return self._here().subscribe(self._room_channel(room))

    def unsubscribe(self, room: str) -> None:
        """No connection of this process is in ``room`` any longer: leave its channel."""
        self._here().unsubscribe(self._room_channel(room))

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Wait until every broadcast made in this process so far has been published to
        Redis or dropped, ``timeout`` seconds at most (``None``: no limit).

        ``True`` when they all were published (none dropped since the previous
        ``flush``); ``False`` when some were dropped (Redis unreachable, or the queue
        full: logged with their number) or time ran out first (those left are still
        queued). Blocks the calling thread.
        """
        carrier = self._carrier
        if carrier is None or self._pid != os.getpid():
            return True  # nothing made in this process
        return carrier.flush(timeout)

    def _flush_at_exit(self) -> None:
        """At interpreter exit: publish what is queued (:data:`EXIT_TIMEOUT` seconds at
        most), and log what was not."""
        carrier = self._carrier
        if carrier is None or self._pid != os.getpid():
            return
        carrier.flush(EXIT_TIMEOUT)
        carrier.report_at_exit()


def _call_weakly(method: weakref.WeakMethod[Callable[[], None]]) -> Callable[[], None]:
    """A function that calls ``method`` while its object lives."""

    def call() -> None:
        bound = method()
        if bound is not None:
            bound()

    return call


def make_broker(url: str | None, channel: str | None, log: Any = None) -> Broker:
    """The broker ``url`` names: ``None`` or ``"local"``, or a Redis URL: ``redis://``,
    ``rediss://``, ``unix://``, ``redis+sentinel://`` or ``redis+cluster://``."""
    if url is None or url == "local":
        return LocalBroker(log)
    if url.startswith(REDIS_SCHEMES):
        return RedisBroker(url, channel or CHANNEL, log)
    raise ValueError(
        f"unknown broker {url!r}: None or 'local' (in-process), or redis://host:port/db, "
        "redis+sentinel://host:port,host:port/service or redis+cluster://host:port,host:port"
    )
