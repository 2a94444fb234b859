"""Brokers: how a broadcast reaches the connections of every process that serves the app.

:class:`LocalBroker`, the default, delivers within the calling process: enough
for one worker process (any number of threads, greenlets or tasks in it).

:class:`RedisBroker` publishes each broadcast on a Redis pub/sub channel: the
app's channel (``CHANNEL``, or the one configured) for a broadcast to every
connection, and one channel per room, ``<channel>:room:<room>``, for a broadcast
to a room. Every worker process of every uWSGI instance that uses the same Redis
subscribes to the app's channel and to the channels of the rooms it has members
in, and delivers what comes to its own connections: a worker receives the
broadcasts that can reach its connections, not those of every room. Its Redis
traffic runs in daemon threads, so a broadcast never waits for Redis, whatever
the flavour, and a Redis that is down or slow holds up no worker:

- the publisher takes broadcasts from a queue (at most :data:`MAX_PENDING`) and
  sends them in pipelined batches, in the order they were made, over one
  connection;
- the subscriber, in a process that serves connections (a uWSGI worker; the
  development server or the test client once a connection came), receives
  them over one connection and hands each to the process's connections (see
  :meth:`~flask_uwsgi_websocket.broadcast.registry.Rooms.deliver`). Redis runs
  one command at a time and writes a message to each subscriber as it runs the
  ``PUBLISH``, so the broadcasts of one sender reach each connection in the
  order they were made, to its rooms and to every connection alike.

The subscriber's connection is its thread's alone, and that thread waits for
messages: when a room gains its first member in this process (or loses its
last), the publisher sends an empty message on this process's own wake-up
channel, and the subscriber, woken, subscribes to the room's channel (or
unsubscribes). ``ws.join(room)`` returns once Redis has confirmed the
subscription, :data:`JOIN_TIMEOUT` seconds at most, so a broadcast made after it
returned reaches the connection; it does not wait while Redis is down, nor once
a subscription was overdue, until one is confirmed again (that is logged once).

A worker starts both threads as it is forked, and its publisher sends nothing
before its subscriber has subscribed to the app's channel, so a connection gets
every broadcast to every connection made after it came. Any other process that
broadcasts -- a Celery worker, a ``flask`` command, a script, a uWSGI mule or the
spooler -- only publishes: its publisher starts at its first broadcast, and when
the process exits the broadcasts still queued are published first, for
:data:`EXIT_TIMEOUT` seconds at most (:meth:`RedisBroker.flush` waits for them at
any time).

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
import uuid
import weakref
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .. import uwsgi_api
from .message import Broadcast
from .registry import Rooms, Subscribing

if TYPE_CHECKING:
    import redis

__all__ = ["EXIT_TIMEOUT", "JOIN_TIMEOUT", "Broker", "LocalBroker", "RedisBroker", "make_broker"]

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
#: Seconds ``ws.join(room)`` waits at most for the room's subscription.
JOIN_TIMEOUT = 2.0
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


class Subscription:
    """A room's subscription in this process on its way: what joining connections wait for
    (:class:`~.registry.Subscribing`)."""

    #: Seconds a join waits at most.
    timeout = JOIN_TIMEOUT

    def __init__(self, overdue: Callable[[], None]) -> None:
        #: Whether the wait is over: subscribed, or not possible now.
        self.done = False
        self._overdue = overdue
        self._callbacks: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    def then(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once done, from any thread; now if it is."""
        with self._lock:
            if not self.done:
                self._callbacks.append(callback)
                return
        callback()

    def finish(self) -> None:
        """The wait is over: call the callbacks."""
        with self._lock:
            self.done = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback()

    def overdue(self) -> None:
        """A connection stopped waiting for it at its timeout."""
        self._overdue()


class RedisBroker:
    """Delivery through Redis pub/sub channels, to every process that subscribes to them."""

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
        self._app_channel = channel.encode()
        self._room_prefix = f"{channel}:room:".encode()
        self._new_locks()
        self._pending: deque[tuple[bytes, bytes]] = deque()  # (channel, broadcast)
        self._pending_bytes = 0
        self._pid: int | None = None  # the process the publisher runs in
        self._receiving = False  # whether the subscriber runs too (in that process)
        self._subscribed = threading.Event()  # to the app's channel
        self._wake_channel = b""
        #: The rooms this process has members in, and their subscription: ``None`` once
        #: Redis confirmed it.
        self._wanted: dict[str, Subscription | None] = {}
        self._changes: dict[str, bool] = {}  # room -> wanted, since the subscriber looked
        self._recheck = False  # the subscriber is to look at every room
        self._wake = False  # the subscriber is to be woken
        self._stalled = False  # a join waited in vain, and no subscription came since
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
        self._ready = threading.Condition(self._lock)  # for the publisher: work to do
        self._sent = threading.Condition(self._lock)  # for flush(): broadcasts settled

    def __repr__(self) -> str:
        return f"<RedisBroker {self._safe_url()} channel={self.channel!r}>"

    def _safe_url(self) -> str:
        scheme, sep, rest = self.url.partition("://")
        return f"{scheme}{sep}{rest.rpartition('@')[2]}"  # no password in logs

    def _room_channel(self, room: str) -> bytes:
        return self._room_prefix + room.encode()

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
                self._wanted.clear()
                self._changes.clear()
                self._recheck = self._wake = self._stalled = False
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
                self._wake_channel = f"{self.channel}:wake:{uuid.uuid4().hex}".encode()
                self._thread(self._subscribe_forever, "subscriber")

    @staticmethod
    def _thread(target: Callable[[], None], name: str) -> None:
        threading.Thread(target=target, name=f"websocket-redis-{name}", daemon=True).start()

    def publish(self, broadcast: Broadcast) -> None:
        """Queue ``broadcast`` for the publisher; dropped while Redis is down."""
        if self._pid != os.getpid():
            self._start(receive=False)
        data = broadcast.encode()
        room = broadcast.room
        channel = self._app_channel if room is None else self._room_channel(room)
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
            self._pending.append((channel, data))
            self._pending_bytes += len(data)
            if len(self._pending) == 1:
                self._ready.notify()

    def subscribe(self, room: str) -> Subscribing | None:
        """A connection of this process joins ``room``: receive its channel. What the
        connection waits for, or ``None``: subscribed already, or no use waiting (Redis is
        down, or a subscription was overdue and none came since)."""
        with self._lock:
            if room not in self._wanted:
                self._wanted[room] = Subscription(self._join_overdue)
                self._change(room, True)
            waiting = self._wanted[room]
            if waiting is None or self._down_since is not None or self._stalled:
                return None
            return waiting

    def unsubscribe(self, room: str) -> None:
        """No connection of this process is in ``room`` any longer: leave its channel."""
        with self._lock:
            waiting = self._wanted.pop(room, None)
            self._change(room, False)
        if waiting is not None:
            waiting.finish()

    def _join_overdue(self) -> None:
        with self._lock:
            if self._stalled or self._down_since is not None:
                return
            self._stalled = True
        self.log.warning(
            "Redis broker %s: a room's subscription was not confirmed within %.1f s; joins "
            "do not wait for theirs until one is, and a broadcast made just after a join may "
            "miss that connection", self._safe_url(), JOIN_TIMEOUT,
        )  # fmt: skip

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

    def _change(self, room: str, wanted: bool) -> None:
        """Have the subscriber subscribe to ``room`` (or leave it)."""
        self._changes[room] = wanted
        self._wake = True
        self._ready.notify()

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
                while not self._pending and not self._wake:
                    self._ready.wait()
                wake, self._wake = self._wake, False
                count = min(len(self._pending), BATCH)
                batch = [self._pending.popleft() for _ in range(count)]
                self._pending_bytes -= sum(len(data) for _, data in batch)
                outages = self._outages
            if self._receiving:
                # Not before this process has subscribed: its own connections would miss it.
                self._subscribed.wait(LAST_RETRY + CONNECT_TIMEOUT)
            if self._outages != outages:  # made before an outage: dropped, not sent late
                with self._lock:  # (and the subscriber subscribes anew when Redis is back)
                    self._drop(len(batch))
                continue
            try:
                pipe = client.pipeline(transaction=False)
                if wake:
                    pipe.publish(self._wake_channel, b"")
                for channel, data in batch:
                    pipe.publish(channel, data)
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
                pubsub = self._client(retries=0).pubsub()  # type: ignore[no-untyped-call]
                pubsub.subscribe(self._app_channel, self._wake_channel)
                rooms = RoomChannels()
                self._update(pubsub, rooms, everything=True)
                for message in pubsub.listen():
                    kind, channel = message["type"], message["channel"]
                    if kind == "message":
                        if channel == self._wake_channel:
                            self._update(pubsub, rooms)
                        else:
                            self._receive(channel, message["data"])
                    elif kind == "subscribe" and channel != self._wake_channel:
                        if channel == self._app_channel:
                            self._subscribed.set()
                            self._came_back()
                            delays = backoff()
                        elif (room := rooms.confirmed(channel)) is not None:
                            self._confirm([room])
            except Exception as exc:  # any Redis or socket error
                self._subscribed.clear()
                self._went_down(exc, subscriptions_lost=True)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # already broken
                        pass
            time.sleep(next(delays))

    def _update(self, pubsub: Any, rooms: RoomChannels, everything: bool = False) -> None:
        """Subscribe to the channels of the rooms that gained their first member here, and
        leave those that lost their last (``everything``: of every room, on a new
        connection); a room subscribed already ends its joins' wait."""
        with self._lock:
            if everything or self._recheck:
                changes = dict.fromkeys(self._wanted, True)
                self._changes.clear()
                self._recheck = False
            else:
                changes, self._changes = self._changes, {}
        changed = [(self._room_channel(room), room, wanted) for room, wanted in changes.items()]
        gone, new = rooms.change(changed)
        if gone:
            pubsub.unsubscribe(*gone)
        if new:
            pubsub.subscribe(*new)
        # A room left then joined again before this update, or whose subscription an outage
        # of the publisher alone made this process doubt: subscribed all along.
        self._confirm([room for channel, room, wanted in changed if channel in rooms.done])

    def _confirm(self, rooms: list[str]) -> None:
        """Redis confirmed the subscription of ``rooms``: their joins' wait is over."""
        done = []
        with self._lock:
            for room in rooms:
                waiting = self._wanted.get(room)
                if waiting is not None:
                    self._wanted[room] = None
                    done.append(waiting)
            unstalled = bool(done) and self._stalled
            if unstalled:
                self._stalled = False
        for waiting in done:
            waiting.finish()
        if unstalled:
            self.log.warning("Redis broker %s: subscriptions are confirmed again", self._safe_url())

    def _receive(self, channel: bytes, data: bytes) -> None:
        try:
            broadcast = Broadcast.decode(data)
        except ValueError as exc:
            self.log.warning("Redis broker: ignored a message on %r: %s", channel, exc)
            return
        self.rooms.deliver(broadcast)

    # Both threads.

    def _client(self, reply_timeout: float | None = None, retries: int = 1) -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis.from_url(
            self.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=reply_timeout,
            socket_keepalive=True,
            # The publisher's: once at once, for a pooled socket Redis closed; not after a
            # timeout. The subscriber's: none, or redis-py would reconnect and subscribe
            # anew by itself, losing what came in between without a word.
            retry=Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
        )

    def _went_down(self, error: Exception, subscriptions_lost: bool = False) -> None:
        """Redis failed the publisher or the subscriber (whose subscriptions are then lost):
        the joins waiting stop waiting, later ones wait for the new subscriptions."""
        with self._lock:
            released = []
            for room, waiting in self._wanted.items():
                if waiting is not None or subscriptions_lost:
                    self._wanted[room] = Subscription(self._join_overdue)
                    if waiting is not None:
                        released.append(waiting)
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
                self._outages += 1
                self._drop(len(self._pending))  # dropped, rather than sent late
                self._pending.clear()
                self._pending_bytes = 0
                dropped = self._dropped
        for waiting in released:
            waiting.finish()
        if first:
            lost = "dropped and not received" if self._receiving else "dropped"
            self.log.error(
                "Redis broker %s is unreachable (%s): %d broadcast(s) made here dropped so "
                "far; broadcasts are %s until it is back; reconnecting",
                self._safe_url(), error or type(error).__name__, dropped, lost,
            )  # fmt: skip

    def _came_back(self) -> None:
        with self._lock:
            since, self._down_since = self._down_since, None
            if since is None:
                return
            dropped, self._dropped = self._dropped, 0
            if self._receiving:  # subscribed all along, if the publisher alone failed:
                self._recheck = self._wake = True  # the subscriber's update will say so
                self._ready.notify()
        self.log.warning(
            "Redis broker %s is back after %.1f s; %d broadcast(s) made here were dropped",
            self._safe_url(), time.monotonic() - since, dropped,
        )  # fmt: skip


class RoomChannels:
    """The room channels of one subscriber connection: those it asked for, and which of
    them Redis has confirmed (its last request for each)."""

    def __init__(self) -> None:
        #: channel -> room, subscribed or on its way.
        self.asked: dict[bytes, str] = {}
        #: The channels whose last subscription Redis has confirmed.
        self.done: set[bytes] = set()
        self._unconfirmed: Counter[bytes] = Counter()  # subscriptions sent, not confirmed

    def change(self, changes: list[tuple[bytes, str, bool]]) -> tuple[list[bytes], list[bytes]]:
        """Apply ``changes`` (channel, room, whether wanted): the channels to leave and
        those to subscribe to."""
        gone, new = [], []
        for channel, room, wanted in changes:
            if wanted and channel not in self.asked:
                self.asked[channel] = room
                self._unconfirmed[channel] += 1
                new.append(channel)
            elif not wanted and channel in self.asked:
                del self.asked[channel]
                gone.append(channel)
            else:
                continue
            self.done.discard(channel)
        return gone, new

    def confirmed(self, channel: bytes) -> str | None:
        """Redis confirmed a subscription to ``channel``: its room, once the last one
        asked for is confirmed and the room is still wanted."""
        self._unconfirmed[channel] -= 1
        if self._unconfirmed[channel] > 0:
            return None
        del self._unconfirmed[channel]
        room = self.asked.get(channel)
        if room is not None:
            self.done.add(channel)
        return room


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


def make_broker(url: str | None, channel: str | None, log: Any = None) -> Broker:
    """The broker ``url`` names: ``None`` or ``"local"``, or a ``redis://`` (``rediss://``,
    ``unix://``) URL."""
    if url is None or url == "local":
        return LocalBroker(log)
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisBroker(url, channel or CHANNEL, log)
    raise ValueError(
        f"unknown broker {url!r}: None or 'local' (in-process), or redis://host:port/db"
    )
