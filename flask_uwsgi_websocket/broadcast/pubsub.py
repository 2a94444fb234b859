"""A link: the broadcasts of some channels between this process and one Redis server.

A Redis broker has one link in each process (one server, or the master of a Sentinel
service), or one per shard of a Redis Cluster (see ``cluster``); :class:`Carrier` is
what both offer the broker. A link's Redis traffic runs in daemon threads, so a
broadcast never waits for Redis, whatever the flavour, and a Redis that is down or slow
holds up no worker:

- the publisher takes broadcasts from a queue (at most :data:`MAX_PENDING`) and sends
  them in pipelined batches, in the order they were made, over one connection;
- the subscriber, in a process that serves connections, receives them over one
  connection and hands each to the process's connections (see
  :meth:`~flask_uwsgi_websocket.broadcast.registry.Rooms.deliver`). Redis runs one
  command at a time and writes a message to each subscriber as it runs the
  ``PUBLISH``, so the broadcasts of one sender that go through one link reach each
  connection in the order they were made, whatever their channels.

The subscriber's connection is its thread's alone, and that thread waits for
messages: when a channel is wanted here (a room gained its first member in this
process) or no longer, the publisher sends an empty message on the link's own wake-up
channel, and the subscriber, woken, subscribes to the channel (or unsubscribes). What
:meth:`Link.subscribe` returns (a :class:`Subscription`) is done once Redis confirmed
the subscription, :data:`JOIN_TIMEOUT` seconds at most; joins do not wait while Redis
is down, nor once a subscription was overdue, until one is confirmed again (that is
logged once). When the subscriber (re)connects it subscribes to every channel wanted,
then to its wake-up channel, and the publisher sends nothing before that last
subscription is confirmed: a process's connections get the broadcasts it makes.

When Redis cannot be reached, at start-up or later, the outage is logged once, the
threads reconnect with exponential backoff (:data:`FIRST_RETRY` doubling to
:data:`LAST_RETRY` seconds; each connection asks anew where the server is, so a link
follows a Sentinel or cluster failover), and delivery resumes once the subscriber has
subscribed again, which is logged with the outage's length and the number of broadcasts
dropped. Redis pub/sub keeps nothing: broadcasts made while the link is down, or still
waiting to be published when the outage is noticed, are dropped (not sent late), and
those published while a subscriber is away are lost for the connections it serves.
Every drop is counted and logged: when Redis is back, when a publisher that fell behind
has caught up, or when the process exits.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from .message import Broadcast
from .registry import Rooms, Subscribing
from .servers import CONNECT_TIMEOUT, Server

if TYPE_CHECKING:
    import redis

__all__ = [
    "EXIT_TIMEOUT",
    "JOIN_TIMEOUT",
    "Carrier",
    "Channels",
    "Link",
    "Subscription",
    "backoff",
    "start_thread",
]

#: Broadcasts waiting for a link's publisher, and their bytes, at most: more are dropped
#: (and counted) until it catches up.
MAX_PENDING = 100_000
MAX_PENDING_BYTES = 64 * 2**20
#: Broadcasts the publisher sends in one pipelined batch at most.
BATCH = 1000
#: Seconds before the first reconnection attempt; doubled at each failure.
FIRST_RETRY = 0.1
#: Seconds between reconnection attempts at most.
LAST_RETRY = 2.0
#: Seconds Redis may take to answer the publisher before it counts as unreachable.
REPLY_TIMEOUT = 10.0
#: Seconds a process that exits waits at most for its broadcasts to be published.
EXIT_TIMEOUT = 5.0
#: Seconds ``ws.join(room)`` waits at most for the room's subscription.
JOIN_TIMEOUT = 2.0


class Carrier(Protocol):
    """What carries a Redis broker's channels in one process: a :class:`Link`, or the
    links of a Redis Cluster's shards."""

    def publish(self, channel: bytes, data: bytes) -> None:
        """Queue a broadcast for ``channel``; never waits."""

    def subscribe(self, channel: bytes) -> Subscribing | None:
        """Receive ``channel`` here: what to wait for, or ``None``."""

    def unsubscribe(self, channel: bytes) -> None:
        """No longer receive ``channel``."""

    def receive(self) -> None:
        """This process serves connections: start receiving; cheap when done before."""

    def flush(self, timeout: float | None) -> bool:
        """Wait until what was made so far has been published or dropped."""

    def report_at_exit(self) -> None:
        """Log what is unpublished or was dropped and not yet logged: the process exits."""


class Subscription:
    """A channel's subscription in this process on its way: what joining connections wait
    for (:class:`~.registry.Subscribing`)."""

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


class LostSubscription(Exception):
    """Redis ended a subscription by itself (a cluster node no longer serves its slot)."""


class Link:
    """The broadcasts of some channels between this process and one Redis ``server``,
    delivered to ``rooms``; ``wake`` names its wake-up channel. Its publisher starts
    now; its subscriber with :meth:`receive`. A link lives in the process that made it."""

    def __init__(self, server: Server, rooms: Rooms, log: logging.Logger, wake: bytes) -> None:
        self.server = server
        self.rooms = rooms
        self.log = log
        self._wake_base = wake
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)  # for the publisher: work to do
        self._sent = threading.Condition(self._lock)  # for flush(): broadcasts settled
        self._pending: deque[tuple[bytes, bytes]] = deque()  # (channel, broadcast)
        self._pending_bytes = 0
        self._receiving = False  # whether the subscriber runs
        self._closed = False
        self._subscribed = threading.Event()  # the subscriber's channels, at its connection
        self._wake_channel = b""  # the subscriber's, once it connected
        #: The channels wanted here, and their subscription: ``None`` once confirmed.
        self._wanted: dict[bytes, Subscription | None] = {}
        self._changes: dict[bytes, bool] = {}  # channel -> wanted, since the subscriber looked
        self._recheck = False  # the subscriber is to look at every channel
        self._wake = False  # the subscriber is to be woken
        self._stalled = False  # a join waited in vain, and no subscription came since
        self._down_since: float | None = None
        self._outages = 0  # counted, so that the publisher sees one it slept through
        self._made = 0  # broadcasts given to this link
        self._settled = 0  # of which published or dropped
        self._dropped = 0  # dropped and not yet reported in the log
        self._dropped_total = 0
        self._dropped_at_flush = 0  # _dropped_total when flush() last returned
        self._overflowing = False
        start_thread(self._publish_forever, "publisher")

    def __repr__(self) -> str:
        return f"<Link {self.server.name}>"

    # Any thread.

    def receive(self) -> None:
        """Start the subscriber, once."""
        with self._lock:
            if self._receiving or self._closed:
                return
            self._receiving = True
        start_thread(self._subscribe_forever, "subscriber")

    def publish(self, channel: bytes, data: bytes) -> None:
        """Queue a broadcast for the publisher; dropped while Redis is down."""
        with self._lock:
            self._made += 1
            if self._down_since is not None or self._closed:
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
                        self.server.name, len(self._pending), self._pending_bytes,
                    )  # fmt: skip
                return
            self._pending.append((channel, data))
            self._pending_bytes += len(data)
            if len(self._pending) == 1:
                self._ready.notify()

    def subscribe(self, channel: bytes) -> Subscription | None:
        """Receive ``channel``: what to wait for, or ``None``: subscribed already, or no use
        waiting (Redis is down, or a subscription was overdue and none came since)."""
        with self._lock:
            if channel not in self._wanted:
                self._wanted[channel] = Subscription(self._join_overdue)
                self._change(channel, True)
            waiting = self._wanted[channel]
            if waiting is None or self._down_since is not None or self._stalled:
                return None
            return waiting

    def unsubscribe(self, channel: bytes) -> None:
        """No longer receive ``channel``."""
        with self._lock:
            waiting = self._wanted.pop(channel, None)
            self._change(channel, False)
        if waiting is not None:
            waiting.finish()

    def close(self) -> int:
        """Retire the link: its threads end, what waits for it is dropped or released.
        The broadcasts dropped and not yet logged."""
        with self._lock:
            self._closed = True
            self._drop(len(self._pending))
            self._pending.clear()
            self._pending_bytes = 0
            dropped, self._dropped = self._dropped, 0
            waiting = [w for w in self._wanted.values() if w is not None]
            self._ready.notify()
        for subscription in waiting:
            subscription.finish()
        return dropped

    def _join_overdue(self) -> None:
        with self._lock:
            if self._stalled or self._down_since is not None:
                return
            self._stalled = True
        self.log.warning(
            "Redis broker %s: a room's subscription was not confirmed within %.1f s; joins "
            "do not wait for theirs until one is, and a broadcast made just after a join may "
            "miss that connection", self.server.name, JOIN_TIMEOUT,
        )  # fmt: skip

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Wait until every broadcast given to the link so far has been published or
        dropped, ``timeout`` seconds at most (``None``: no limit). ``True`` when they all
        were published (none dropped since the previous ``flush``); ``False`` when some
        were dropped or time ran out first (those left are still queued)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            target = self._made
            while self._settled < target:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                self._sent.wait(remaining)
            dropped = self._dropped_total - self._dropped_at_flush
            self._dropped_at_flush = self._dropped_total
        return not dropped

    def report_at_exit(self) -> None:
        """Log the broadcasts still unpublished, and those dropped and not yet logged."""
        with self._lock:
            unsent = self._made - self._settled
            dropped, self._dropped = self._dropped, 0
            down = self._down_since is not None
        if unsent:
            self.log.error(
                "Redis broker %s: %d broadcast(s) still unpublished %.1f s after the process "
                "began to exit are dropped", self.server.name, unsent, EXIT_TIMEOUT,
            )  # fmt: skip
        if dropped:
            self.log.error(
                "Redis broker %s%s: %d broadcast(s) made in this process were dropped",
                self.server.name, " is still unreachable as the process exits" if down else "",
                dropped,
            )  # fmt: skip

    # With the lock held.

    def _change(self, channel: bytes, wanted: bool) -> None:
        """Have the subscriber subscribe to ``channel`` (or leave it)."""
        self._changes[channel] = wanted
        if self._receiving:
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
        client: redis.Redis | None = None
        epoch = -1  # the outages counted when the client was made
        while True:
            with self._lock:
                while not self._pending and not self._wake and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
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
            if client is None or epoch != outages:  # after an outage, the server may have
                epoch, client = outages, self._connected()  # moved (a failover)
                if client is None:
                    return
            error = self._send(client, batch, wake)
            if error is not None:
                self._went_down(error)
                epoch, client = self._outages, self._connected()
                if client is None:
                    return
                continue
            with self._lock:
                caught_up = self._overflowing and not self._pending
                if caught_up:
                    self._overflowing = False
                    dropped, self._dropped = self._dropped, 0
            if caught_up:
                self.log.warning(
                    "Redis broker %s: the publisher has caught up; %d broadcast(s) made here "
                    "were dropped", self.server.name, dropped,
                )  # fmt: skip

    def _send(
        self, client: redis.Redis, batch: list[tuple[bytes, bytes]], wake: bool
    ) -> Exception | None:
        """Publish ``batch`` (and the wake-up) in one pipeline and settle it: the error
        that failed it, if any (its broadcasts refused or unconfirmed are dropped)."""
        pipe = client.pipeline(transaction=False)
        command = pipe.spublish if self.server.sharded else pipe.publish
        wake_channel = self._wake_channel
        if wake and wake_channel:
            command(wake_channel, b"")
        for channel, data in batch:
            command(channel, data)
        try:
            results = pipe.execute(raise_on_error=False)
        except Exception as exc:  # any Redis or socket error: none is known to be sent
            with self._lock:
                self._drop(len(batch))
            return exc
        errors = [result for result in results if isinstance(result, Exception)]
        own = results[len(results) - len(batch) :]  # after the wake-up's
        refused = sum(isinstance(result, Exception) for result in own)
        with self._lock:
            self._drop(refused)
            self._settle(len(batch) - refused)
        return errors[0] if errors else None

    def _connected(self) -> redis.Redis | None:
        """A client of the server, which has answered a ping if the link is down (or the
        subscriber is back first): a new one, that asks where the server is, tried with
        backoff. ``None`` once the link is closed."""
        delays = backoff()
        while not self._closed:
            try:
                client = self.server.client(REPLY_TIMEOUT, 1)
                if self._down_since is not None:
                    client.ping()
                    self._came_back()
                return client
            except Exception as exc:  # down, or nowhere to connect (no cluster node answers)
                self._went_down(exc)
            time.sleep(next(delays))
        return None

    # The subscriber thread.

    def _subscribe_forever(self) -> None:
        delays = backoff()
        sharded = self.server.sharded
        message_kind, subscribe_kind, unsubscribe_kind = (
            ("smessage", "ssubscribe", "sunsubscribe") if sharded
            else ("message", "subscribe", "unsubscribe")
        )  # fmt: skip
        while not self._closed:
            pubsub = None
            try:
                pubsub = self.server.client(None, 0).pubsub()  # type: ignore[no-untyped-call]
                wake = self.server.wake_channel(self._wake_base)
                with self._lock:
                    self._wake_channel = wake
                channels = Channels()
                self._update(pubsub, channels, everything=True)
                self._subscribe(pubsub, [wake])  # the last: confirms the ones before
                for message in pubsub.listen():
                    if self._closed:
                        return
                    kind, channel = message["type"], message["channel"]
                    if kind == message_kind:
                        if channel == wake:
                            self._update(pubsub, channels)
                        else:
                            self._receive(channel, message["data"])
                    elif kind == subscribe_kind:
                        if channel == wake:
                            self._subscribed.set()
                            self._came_back()
                            delays = backoff()
                        elif channels.confirmed(channel):
                            self._confirm([channel])
                    elif kind == unsubscribe_kind and not channels.left(channel):
                        raise LostSubscription(f"the server ended the subscription to {channel!r}")
            except Exception as exc:  # any Redis or socket error
                self._subscribed.clear()
                if not self._closed:
                    self._went_down(exc, subscriptions_lost=True)
            finally:
                if pubsub is not None:
                    try:
                        pubsub.close()
                    except Exception:  # already broken
                        pass
            time.sleep(next(delays))

    def _subscribe(self, pubsub: Any, channels: list[bytes]) -> None:
        if not channels:
            return
        if self.server.sharded:  # one command per channel: a cluster takes one slot at a time
            for channel in channels:
                pubsub.ssubscribe(channel)
        else:
            pubsub.subscribe(*channels)

    def _unsubscribe(self, pubsub: Any, channels: list[bytes]) -> None:
        if not channels:
            return
        if self.server.sharded:
            for channel in channels:
                pubsub.sunsubscribe(channel)
        else:
            pubsub.unsubscribe(*channels)

    def _update(self, pubsub: Any, channels: Channels, everything: bool = False) -> None:
        """Subscribe to the channels wanted since the last update, and leave those no
        longer wanted (``everything``: every channel, on a new connection); a channel
        subscribed already ends its joins' wait."""
        with self._lock:
            if everything or self._recheck:
                changes = dict.fromkeys(self._wanted, True)
                self._changes.clear()
                self._recheck = False
            else:
                changes, self._changes = self._changes, {}
        gone, new = channels.change(changes)
        self._unsubscribe(pubsub, gone)
        self._subscribe(pubsub, new)
        # A channel left then wanted again before this update, or whose subscription an
        # outage of the publisher alone made this process doubt: subscribed all along.
        self._confirm([channel for channel in changes if channel in channels.done])

    def _confirm(self, channels: list[bytes]) -> None:
        """Redis confirmed the subscription of ``channels``: their joins' wait is over."""
        done = []
        with self._lock:
            for channel in channels:
                waiting = self._wanted.get(channel)
                if waiting is not None:
                    self._wanted[channel] = None
                    done.append(waiting)
            unstalled = bool(done) and self._stalled
            if unstalled:
                self._stalled = False
        for waiting in done:
            waiting.finish()
        if unstalled:
            self.log.warning("Redis broker %s: subscriptions are confirmed again", self.server.name)

    def _receive(self, channel: bytes, data: bytes) -> None:
        try:
            broadcast = Broadcast.decode(data)
        except ValueError as exc:
            self.log.warning("Redis broker: ignored a message on %r: %s", channel, exc)
            return
        self.rooms.deliver(broadcast)

    # Both threads.

    def _went_down(self, error: Exception, subscriptions_lost: bool = False) -> None:
        """Redis failed the publisher or the subscriber (whose subscriptions are then lost):
        the joins waiting stop waiting, later ones wait for the new subscriptions."""
        with self._lock:
            released = []
            for channel, waiting in self._wanted.items():
                if waiting is not None or subscriptions_lost:
                    self._wanted[channel] = Subscription(self._join_overdue)
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
                "Redis broker %s %s (%s): %d broadcast(s) made here dropped so far; "
                "broadcasts are %s until it is back; reconnecting",
                self.server.name, failure(error), error or type(error).__name__, dropped, lost,
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
            self.server.name, time.monotonic() - since, dropped,
        )  # fmt: skip


class Channels:
    """The channels of one subscriber connection: those it asked for, and which of them
    Redis has confirmed (its last request for each)."""

    def __init__(self) -> None:
        #: The channels subscribed or on their way.
        self.asked: set[bytes] = set()
        #: The channels whose last subscription Redis has confirmed.
        self.done: set[bytes] = set()
        self._joining: Counter[bytes] = Counter()  # subscriptions sent, not confirmed
        self._leaving: Counter[bytes] = Counter()  # unsubscriptions sent, not confirmed

    def change(self, changes: dict[bytes, bool]) -> tuple[list[bytes], list[bytes]]:
        """Apply ``changes`` (channel -> whether wanted): the channels to leave and those
        to subscribe to."""
        gone, new = [], []
        for channel, wanted in changes.items():
            if wanted and channel not in self.asked:
                self.asked.add(channel)
                self._joining[channel] += 1
                new.append(channel)
            elif not wanted and channel in self.asked:
                self.asked.discard(channel)
                self._leaving[channel] += 1
                gone.append(channel)
            else:
                continue
            self.done.discard(channel)
        return gone, new

    def confirmed(self, channel: bytes) -> bool:
        """Redis confirmed a subscription to ``channel``: whether that was the last one
        asked for, and the channel is still wanted."""
        self._joining[channel] -= 1
        if self._joining[channel] > 0:
            return False
        del self._joining[channel]
        if channel in self.asked:
            self.done.add(channel)
            return True
        return False

    def left(self, channel: bytes) -> bool:
        """Redis says ``channel`` is left: whether this connection asked it to."""
        if not self._leaving[channel]:
            return False
        self._leaving[channel] -= 1
        if not self._leaving[channel]:
            del self._leaving[channel]
        return True


def failure(error: Exception) -> str:
    """What ``error`` says of the server, for the log."""
    import redis

    if isinstance(error, LostSubscription):
        return "lost its subscriptions"
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, OSError)):
        return "is unreachable"
    return "answered with an error"  # MOVED (a slot moved to another shard), READONLY...


def start_thread(target: Callable[[], None], name: str) -> None:
    """Run ``target`` in a daemon thread called ``websocket-redis-<name>``."""
    threading.Thread(target=target, name=f"websocket-redis-{name}", daemon=True).start()


def backoff() -> Iterator[float]:
    """Seconds to wait before each reconnection attempt: :data:`FIRST_RETRY`, doubling
    up to :data:`LAST_RETRY`."""
    delay = FIRST_RETRY
    while True:
        yield delay
        delay = min(delay * 2, LAST_RETRY)
