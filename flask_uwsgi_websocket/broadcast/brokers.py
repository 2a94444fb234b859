"""Brokers: how a broadcast reaches the connections of every process that serves the app.

:class:`LocalBroker`, the default, delivers within the calling process: enough
for one worker process (any number of threads, greenlets or tasks in it).

:class:`RedisBroker` publishes each broadcast on one Redis pub/sub channel; every
worker process of every uWSGI instance that uses the same Redis and channel
subscribes to it and delivers what comes to its own connections. Its Redis
traffic runs in daemon threads, so a broadcast never waits for Redis, whatever
the flavour, and a Redis that is down or slow holds up no worker:

- the publisher takes broadcasts from a queue (at most :data:`MAX_PENDING`) and
  sends them in pipelined batches, in the order they were made, so a sender's
  broadcasts arrive in order;
- the subscriber, in a process that serves connections (a uWSGI worker; the
  development server or the test client once a connection came), receives
  them and hands each to the process's connections (see
  :meth:`~flask_uwsgi_websocket.broadcast.registry.Rooms.deliver`).

A worker starts both as it is forked, and its publisher sends nothing before
its subscriber has subscribed, so a connection gets every broadcast made after
it joined a room. Any other process that broadcasts -- a Celery worker, a
``flask`` command, a script, a uWSGI mule or the spooler -- only publishes: its
publisher starts at its first broadcast, and when the process exits the
broadcasts still queued are published first, for :data:`EXIT_TIMEOUT` seconds at
most (:meth:`RedisBroker.flush` waits for them at any time).

When Redis cannot be reached, at start-up or later, the app goes on serving its
connections: the outage is logged once, the subscriber reconnects with
exponential backoff (:data:`FIRST_RETRY` doubling to :data:`LAST_RETRY`
seconds), and delivery resumes once it has subscribed again, which is logged
with the outage's length and the number of broadcasts dropped. Redis pub/sub
keeps nothing: broadcasts made while the broker is down, or still waiting to be
published when the outage is noticed, are dropped (not sent late), and those
published while a subscriber is away are lost for the connections it serves.
Every drop is counted and logged: when Redis is back, when a publisher that
fell behind has caught up, or when the process exits.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .. import uwsgi_api
from .message import Broadcast
from .registry import Rooms

if TYPE_CHECKING:
    import redis

__all__ = ["EXIT_TIMEOUT", "Broker", "LocalBroker", "RedisBroker", "make_broker"]

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
#: Seconds Redis may take to answer the publisher before it counts as unreachable.
REPLY_TIMEOUT = 10.0
#: Seconds a process that exits waits at most for its broadcasts to be published.
EXIT_TIMEOUT = 5.0
#: The Redis channel the apps' broadcasts go through, unless configured.
CHANNEL = "flask-uwsgi-websocket"


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

    def __init__(self, rooms: Rooms, log: logging.Logger | None = None) -> None:
        self.rooms = rooms
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
        self._new_locks()
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._pid: int | None = None  # the process the publisher runs in
        self._receiving = False  # whether the subscriber runs too (in that process)
        self._subscribed = threading.Event()
        self._down_since: float | None = None
        self._outages = 0  # counted, so that the publisher sees one it slept through
        self._made = 0  # broadcasts made in this process
        self._settled = 0  # of which published or dropped
        self._dropped = 0  # dropped and not yet reported in the log
        self._dropped_total = 0
        self._dropped_at_flush = 0  # _dropped_total when flush() last returned
        self._overflowing = False
        self._exit_hook = False
        os.register_at_fork(after_in_child=_call_weakly(weakref.WeakMethod(self._new_locks)))

    def _new_locks(self) -> None:
        # Also in a child just forked: a lock another thread held in the parent stays held.
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # for the publisher: broadcasts queued
        self._sent = threading.Condition(self._lock)  # for flush(): broadcasts settled

    def __repr__(self) -> str:
        return f"<RedisBroker {self._safe_url()} channel={self.channel!r}>"

    def _safe_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"  # no password in logs

    # Any thread.

    def start(self) -> None:
        """This process serves connections: start its subscriber and publisher threads,
        once per process."""
        if self._pid != os.getpid() or not self._receiving:
            self._start(receive=True)

    def _start(self, receive: bool) -> None:
        with self._lock:
            if self._pid != os.getpid():
                # A fork copies no thread: start them again in the child.
                self._pending.clear()
                self._pending_bytes = 0
                self._down_since = None
                self._made = self._settled = 0
                self._dropped = self._dropped_total = self._dropped_at_flush = 0
                self._overflowing = False
                self._pid = os.getpid()
                self._receiving = False
                self._thread(self._publish_forever, "publisher")
                if not self._exit_hook:  # registered once: forked children inherit it
                    self._exit_hook = True
                    atexit.register(self._flush_at_exit)
            if receive and not self._receiving:
                self._receiving = True
                self._subscribed = threading.Event()
                self._thread(self._subscribe_forever, "subscriber")

    @staticmethod
    def _thread(target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=f"websocket-redis-{name}", daemon=True).start()

    def publish(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` for the publisher; dropped while Redis is down."""
        if self._pid != os.getpid():
            self._start(receive=False)
        data = broadcast.encode()
        with self._lock:
            self._made += 1
            if self._down_since is not None:
                self._drop(1)
                return
            if (
                len(self._pending) >= MAX_PENDING
                or self._pending_bytes + len(data) > MAX_PENDING_BYTES
            ):
                self._drop(1)
                if not self._overflowing:
                    self._overflowing = True
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

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Wait until every broadcast made in this process so far has been published to
        Redis or dropped, ``timeout`` seconds at most (``None``: no limit).

        ``True`` when they all were published (none dropped since the previous
        ``flush``); ``False`` when some were dropped (Redis unreachable, or the queue
        full: logged with their number) or time ran out first (those left are still
        queued). Blocks the calling thread.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            if self._pid != os.getpid():
                return True  # nothing made in this process
            target = self._made
            while self._settled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._sent.wait(remaining)
            dropped = self._dropped_total - self._dropped_at_flush
            self._dropped_at_flush = self._dropped_total
        return not dropped

    def _flush_at_exit(self) -> None:
        """At interpreter exit: publish what is queued (:data:`EXIT_TIMEOUT` seconds at
        most), and log what was not."""
        if self._pid != os.getpid():
            return
        self.flush(EXIT_TIMEOUT)
        with self._lock:
            unsent = self._made - self._settled
            dropped, self._dropped = self._dropped, 0
            down = self._down_since is not None
        if unsent:
            self.log.error(
                "Redis broker %s: %d broadcast(s) still unpublished %.1f s after the process "
                "began to exit are dropped", self._safe_url(), unsent, EXIT_TIMEOUT,
            )  # fmt: skip
        if dropped:
            self.log.error(
                "Redis broker %s%s: %d broadcast(s) made in this process were dropped",
                self._safe_url(), " is still unreachable as the process exits" if down else "",
                dropped,
            )  # fmt: skip

    # With the lock held.

    def _drop(self, count: int) -> None:
        """Count ``count`` broadcasts as dropped (and settled)."""
        self._dropped += count
        self._dropped_total += count
        self._settle(count)

    def _settle(self, count: int) -> None:
        self._settled += count
        self._sent.notify_all()

    # The publisher thread.

    def _publish_forever(self) -> None:
        client = self._client(REPLY_TIMEOUT)
        while True:
            with self._lock:
                while not self._pending:
                    self._ready.wait()
                count = min(len(self._pending), BATCH)
                batch = [self._pending.popleft() for _ in range(count)]
                self._pending_bytes -= sum(map(len, batch))
                outages = self._outages
            if self._receiving:
                # Not before this process has subscribed: its own connections would miss it.
                self._subscribed.wait(LAST_RETRY + CONNECT_TIMEOUT)
            if self._outages != outages:  # made before an outage: dropped, not sent late
                with self._lock:
                    self._drop(len(batch))
                continue
            try:
                pipe = client.pipeline(transaction=False)
                for data in batch:
                    pipe.publish(self.channel, data)
                pipe.execute()
            except Exception as exc:  # any Redis or socket error
                with self._lock:
                    self._drop(len(batch))
                self._went_down(exc)
                self._wait_until_back(client)
                continue
            with self._lock:
                self._settle(len(batch))
                caught_up = self._overflowing and not self._pending
                if caught_up:
                    self._overflowing = False
                    dropped, self._dropped = self._dropped, 0
            if caught_up:
                self.log.warning(
                    "Redis broker %s: the publisher has caught up; %d broadcast(s) made here "
                    "were dropped", self._safe_url(), dropped,
                )  # fmt: skip

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

    def _client(self, reply_timeout: float | None = None) -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=reply_timeout,
            socket_keepalive=True,
            # Once at once, for a pooled socket Redis closed; not after a timeout.
            retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        )

    def _went_down(self, error: Exception) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._outages += 1
            self._drop(len(self._pending))  # dropped, rather than sent late
            self._pending.clear()
            self._pending_bytes = 0
            dropped = self._dropped
        lost = "dropped and not received" if self._receiving else "dropped"
        self.log.error(
            "Redis broker %s is unreachable (%s): %d broadcast(s) made here dropped so far; "
            "broadcasts are %s until it is back; reconnecting",
            self._safe_url(), error or type(error).__name__, dropped, lost,
        )  # fmt: skip

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            if since is None:
                return
            dropped, self._dropped = self._dropped, 0
        self.log.warning(
            "Redis broker %s is back after %.1f s; %d broadcast(s) made here were dropped",
            self._safe_url(), time.monotonic() - since, dropped,
        )  # fmt: skip


def _call_weakly(method: weakref.WeakMethod[Callable[[], None]]) -> Callable[[], None]:
    """A function that calls ``method`` while its object lives."""

    def call() -> None:
        bound = method()
        if bound is not None:
            bound()

    return call


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
        return LocalBroker(rooms, log)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBroker(rooms, url, channel or CHANNEL, log)
    raise ValueError(
        f"unknown broker {url!r}: None or 'local' (in-process), or redis://host:port/db"
    )
