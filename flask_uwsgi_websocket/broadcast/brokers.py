"""Brokers: how a broadcast reaches the connections of every process that serves the app.

:class:`LocalBroker`, the default, delivers within the calling process: enough
for one worker process (any number of threads, greenlets or tasks in it).

:class:`RedisBroker` publishes each broadcast on one Redis pub/sub channel; every
worker process of every uWSGI instance that uses the same Redis and channel
subscribes to it and delivers what comes to its own connections. Its Redis
traffic runs in two daemon threads per worker process, so a broadcast never
waits for Redis, whatever the flavour, and a Redis that is down or slow holds
up no worker:

- the publisher takes broadcasts from a queue (at most :data:`MAX_PENDING`) and
  sends them in pipelined batches, in the order they were made, so a sender's
  broadcasts arrive in order;
- the subscriber receives them and hands each to the worker's connections
  (see :meth:`~flask_uwsgi_websocket.broadcast.registry.Rooms.deliver`).

Both start as the worker is forked, and the publisher sends nothing before the
subscriber has subscribed, so a connection gets every broadcast made after it
joined a room.

When Redis cannot be reached, at start-up or later, the app goes on serving its
connections: the outage is logged once, the subscriber reconnects with
exponential backoff (:data:`FIRST_RETRY` doubling to :data:`LAST_RETRY`
seconds), and delivery resumes once it has subscribed again, which is logged
with the outage's length and the number of broadcasts dropped. Redis pub/sub
keeps nothing: broadcasts made while the broker is down, or still waiting to be
published when the outage is noticed, are dropped (not sent late), and those
published while a subscriber is away are lost for the connections it serves.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .message import Broadcast
from .registry import Rooms

if TYPE_CHECKING:
    import redis

__all__ = ["Broker", "LocalBroker", "RedisBroker", "make_broker"]

#: Broadcasts waiting for the publisher, and their bytes, at most: more are dropped (and
#: counted) until it catches up.
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 2**20
#: Broadcasts the publisher sends in one pipelined batch at most.
BATCH = 1000
#: Seconds before the first reconnection attempt; doubled at each failure.
FIRST_RETRY = 0.1
#: Seconds between reconnection attempts at most.
LAST_RETRY = 2.0
#: Seconds a connection attempt to Redis may take.
CONNECT_TIMEOUT = 2.0
#: The Redis channel the apps' broadcasts go through, unless configured.
CHANNEL = "flask-uwsgi-websocket"


class Broker(Protocol):
    """Carries broadcasts to the :class:`Rooms` of every process that serves the app."""

    #: The app's connections in this process.
    rooms: Rooms

    def publish(self, broadcast: Broadcast) -> None:
        """Send ``broadcast`` to every process; never waits."""

    def start(self) -> None:
        """Make sure this process receives broadcasts; cheap when done before."""


class LocalBroker:
    """Delivery within this process: the default, for one worker process."""

    def __init__(self, rooms: Rooms) -> None:
        self.rooms = rooms

    def publish(self, broadcast: Broadcast) -> None:
        """Deliver ``broadcast`` to this process's connections."""
        self.rooms.deliver(broadcast)

    def start(self) -> None:
        """Nothing to start."""

    def __repr__(self) -> str:
        return "<LocalBroker>"


class RedisBroker:
    """Delivery through a Redis pub/sub channel, to every process that subscribes to it."""

    def __init__(
        self, rooms: Rooms, url: str, channel: str = CHANNEL, log: logging.Logger | None = None
    ) -> None:
        try:
            import redis  # noqa: F401
        except ImportError:
            raise RuntimeError(
                "the Redis broker needs the redis package: pip install Flask-uWSGI-WebSocket[redis]"
            ) from None
        self.rooms = rooms
        self.url = url
        self.channel = channel
        self.log = log or logging.getLogger("flask_uwsgi_websocket")
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._pid: int | None = None  # the process the threads run in
        self._subscribed = threading.Event()
        self._down_since: float | None = None
        self._outages = 0  # counted, so that the publisher sees one it slept through
        self._dropped = 0
        self._overflow_logged = False

    def __repr__(self) -> str:
        return f"<RedisBroker {self._safe_url()} channel={self.channel!r}>"

    def _safe_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"  # no password in logs

    # Any thread.

    def start(self) -> None:
        """Start this process's publisher and subscriber threads, once per process."""
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            # A fork copies no thread: start them again in the child.
            self._pending.clear()
            self._pending_bytes = 0
            self._down_since = None
            self._dropped = 0
            self._pid = os.getpid()
            self._subscribed = threading.Event()
            for target, name in ((self._publish_forever, "publisher"),
                                 (self._subscribe_forever, "subscriber")):  # fmt: skip
                threading.Thread(target=target, name=f"websocket-redis-{name}", daemon=True).start()

    def publish(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` for the publisher; dropped while Redis is down."""
        self.start()
        data = broadcast.encode()
        with self._lock:
            if self._down_since is not None:
                self._dropped += 1
                return
            if (
                len(self._pending) >= MAX_PENDING
                or self._pending_bytes + len(data) > MAX_PENDING_BYTES
            ):
                self._dropped += 1
                if not self._overflow_logged:
                    self._overflow_logged = True
                    self.log.error(
                        "Redis broker %s: %d broadcasts (%d bytes) wait to be published; "
                        "dropping broadcasts until it catches up",
                        self._safe_url(), len(self._pending), self._pending_bytes,
                    )  # fmt: skip
                return
            self._pending.append(data)
            self._pending_bytes += len(data)
            if len(self._pending) == 1:
                self._ready.notify()

    # The publisher thread.

    def _publish_forever(self) -> None:
        client = self._client()
        while True:
            with self._lock:
                while not self._pending:
                    self._ready.wait()
                count = min(len(self._pending), BATCH)
                batch = [self._pending.popleft() for _ in range(count)]
                self._pending_bytes -= sum(map(len, batch))
                if not self._pending:
                    self._overflow_logged = False
                outages = self._outages
            # Not before this process has subscribed: its own connections would miss it.
            self._subscribed.wait(LAST_RETRY + CONNECT_TIMEOUT)
            if self._outages != outages:  # made before an outage: dropped, not sent late
                with self._lock:
                    self._dropped += len(batch)
                continue
            try:
                pipe = client.pipeline(transaction=False)
                for data in batch:
                    pipe.publish(self.channel, data)
                pipe.execute()
            except Exception as exc:  # any Redis or socket error
                with self._lock:
                    self._dropped += len(batch)
                self._went_down(exc)
                self._wait_until_back(client)

    def _wait_until_back(self, client: redis.Redis) -> None:
        """Ping with backoff until Redis answers (or the subscriber is back first)."""
        for delay in backoff():
            if self._down_since is None:
                return
            time.sleep(delay)
            try:
                client.ping()
            except Exception:  # still down
                continue
            self._came_back()

    # The subscriber thread.

    def _subscribe_forever(self) -> None:
        delays = backoff()
        while True:
            pubsub = None
            try:
                pubsub = self._client().pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
                pubsub.subscribe(self.channel)
                pubsub.get_message(timeout=CONNECT_TIMEOUT)  # the subscription's confirmation
                self._subscribed.set()
                self._came_back()
                delays = backoff()
                for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._receive(message["data"])
            except Exception as exc:  # any Redis or socket error
                self._subscribed.clear()
                self._went_down(exc)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # already broken
                        pass
            time.sleep(next(delays))

    def _receive(self, data: bytes) -> None:
        try:
            broadcast = Broadcast.decode(data)
        except ValueError as exc:
            self.log.warning("Redis broker: ignored a message on %r: %s", self.channel, exc)
            return
        self.rooms.deliver(broadcast)

    # Both threads.

    def _client(self) -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_keepalive=True,
            retry=Retry(NoBackoff(), 1),  # once at once: a pooled socket Redis closed
        )

    def _went_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._outages += 1
            self._dropped += len(self._pending)  # dropped, rather than sent late
            self._pending.clear()
            self._pending_bytes = 0
        self.log.error(
            "Redis broker %s is unreachable (%s): broadcasts are dropped and not received "
            "until it is back; reconnecting", self._safe_url(), error or type(error).__name__,
        )  # fmt: skip

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            dropped, self._dropped = self._dropped, 0
        if since is not None:
            self.log.warning(
                "Redis broker %s is back after %.1f s; %d broadcast(s) made here were dropped",
                self._safe_url(), time.monotonic() - since, dropped,
            )  # fmt: skip


def backoff() -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: :data:`FIRST_RETRY`, doubling
    up to :data:`LAST_RETRY`."""
    delay = FIRST_RETRY
    while True:
        yield delay
        delay = min(delay * 2, LAST_RETRY)


def make_broker(url: str | None, rooms: Rooms, channel: str | None, log: Any = None) -> Broker:
    """The broker ``url`` names: ``None`` or ``"local"``, or a ``redis://`` (``rediss://``,
    ``unix://``) URL."""
    if url is None or url == "local":
        return LocalBroker(rooms)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBroker(rooms, url, channel or CHANNEL, log)
    raise ValueError(
        f"unknown broker {url!r}: None or 'local' (in-process), or redis://host:port/db"
    )
