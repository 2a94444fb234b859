"""A Redis broker's channels over the shards of a Redis Cluster, in one process.

:class:`ShardedLinks` keeps a :class:`~.pubsub.Link` per shard, reached through the
shard's master (:class:`~.servers.ClusterShard`), and sends each channel through the
shard that serves its hash slot, with sharded pub/sub: a broadcast travels through one
shard's nodes, and a worker subscribes on each shard to the channels of that shard it
wants. The pub/sub load spreads over the shards, as keys do.

A link follows its shard through a failover: when it reconnects it asks the cluster
for the shards again (:meth:`~.servers.Cluster.refresh`), and reaches the master the
shard has then (the replica promoted in place of the one that failed). A shard is known
again by its nodes' ids. When the shards change otherwise (slots moved between shards,
shards added or removed), the channels move to the links of their new shards, and the
links of shards that are gone are closed.

The shards are found when the first broadcast or connection of the process needs them,
by a thread that asks the nodes of the URL: until then, broadcasts wait for them (at
most :data:`~.pubsub.MAX_PENDING`) and joins too (bounded, as always). A cluster that no
node describes is an outage like any other: logged once, the broadcasts made meanwhile
dropped and counted, and the recovery logged.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque

from .pubsub import MAX_PENDING, Link, Subscription, backoff, start_thread
from .registry import Rooms, Subscribing
from .servers import SLOTS, Cluster, ClusterShard, Shard

__all__ = ["ShardedLinks"]


class ShardedLinks:
    """The links of this process to the shards of ``cluster``, for the channels named
    ``<channel>...`` (their wake-up channels too), delivered to ``rooms``: a
    :class:`~.pubsub.Carrier`."""

    def __init__(self, cluster: Cluster, rooms: Rooms, log: logging.Logger, channel: str) -> None:
        from redis.crc import key_slot

        self.cluster = cluster
        self.rooms = rooms
        self.log = log
        self._slot_of = key_slot
        self._channel = channel
        self._lock = threading.Lock()
        self._moved = threading.Condition(self._lock)  # the waiting broadcasts went on
        self._receiving = False
        self._shards: dict[Link, ClusterShard] = {}
        self._table: list[Link | None] | None = None  # slot -> its shard's link, once known
        self._wanted: set[bytes] = set()  # the channels received here
        self._through: dict[bytes, Link] = {}  # channel -> the link it is received through
        self._early: dict[bytes, Subscription] = {}  # subscriptions before the shards are known
        self._waiting: deque[tuple[bytes, bytes]] = deque()  # broadcasts, the same
        self._down_since: float | None = None  # no node answered
        self._dropped = 0  # dropped here and not yet reported in the log
        self._dropped_total = 0
        self._dropped_at_flush = 0
        cluster.on_change = self._install
        start_thread(self._discover, "cluster")

    def __repr__(self) -> str:
        return f"<ShardedLinks {self.cluster.name}>"

    def _link_of(self, channel: bytes) -> Link | None:
        """The link of the shard that serves ``channel``, if known; with the lock held."""
        return None if self._table is None else self._table[self._slot_of(channel)]

    def publish(self, channel: bytes, data: bytes) -> None:
        """Queue a broadcast on its shard's link (or until the shards are known)."""
        with self._lock:
            link = self._link_of(channel)
            if link is None:
                if self._down_since is not None or len(self._waiting) >= MAX_PENDING:
                    self._drop(1)
                else:
                    self._waiting.append((channel, data))
                return
        link.publish(channel, data)

    def subscribe(self, channel: bytes) -> Subscribing | None:
        """Receive ``channel`` through its shard's link."""
        with self._lock:
            self._wanted.add(channel)
            link = self._link_of(channel)
            if link is not None:
                self._through[channel] = link
                return link.subscribe(channel)
            if self._down_since is not None:
                return None
            return self._early.setdefault(channel, Subscription(lambda: None))

    def unsubscribe(self, channel: bytes) -> None:
        """No longer receive ``channel``."""
        with self._lock:
            self._wanted.discard(channel)
            link = self._through.pop(channel, None)
            early = self._early.pop(channel, None)
        if link is not None:
            link.unsubscribe(channel)
        if early is not None:
            early.finish()

    def receive(self) -> None:
        """Start receiving on every shard's link, now and to come."""
        with self._lock:
            self._receiving = True
            links = list(self._shards)
        for link in links:
            link.receive()

    def flush(self, timeout: float | None) -> bool:
        """Wait until the broadcasts waiting for the shards have gone to their links, then
        until every link has published or dropped what it was given (``timeout`` seconds
        in all); ``True`` when none was dropped since the previous ``flush``."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def remaining() -> float | None:
            return None if deadline is None else max(deadline - time.monotonic(), 0.0)

        with self._lock:
            while self._waiting:
                left = remaining()
                if left == 0.0:
                    return False
                self._moved.wait(left)
            links = list(self._shards)
            dropped = self._dropped_total - self._dropped_at_flush
            self._dropped_at_flush = self._dropped_total
        flushed = [link.flush(remaining()) for link in links]
        return all(flushed) and not dropped

    def report_at_exit(self) -> None:
        """Log what was dropped here or is left on the links."""
        with self._lock:
            waiting = len(self._waiting)
            dropped, self._dropped = self._dropped + waiting, 0
            links = list(self._shards)
        if dropped:
            self.log.error(
                "Redis broker %s%s: %d broadcast(s) made in this process were dropped before "
                "its shards were known", self.cluster.name,
                " is still unreachable as the process exits" if self._down_since else "", dropped,
            )  # fmt: skip
        for link in links:
            link.report_at_exit()

    def _drop(self, count: int) -> None:
        self._dropped += count
        self._dropped_total += count

    # The shards.

    def _discover(self) -> None:
        """Find the shards, with backoff; an outage until a node describes them."""
        delays = backoff()
        while True:
            try:
                self.cluster.refresh()  # calls _install if there are shards
                with self._lock:
                    if self._table is not None:
                        return
                raise ConnectionError("the cluster serves no slot")
            except Exception as exc:  # no node answered, or no shard yet
                self._unreachable(exc)
            time.sleep(next(delays))

    def _unreachable(self, error: Exception) -> None:
        """No node describes the cluster: what waits for it is dropped or released."""
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
            self._drop(len(self._waiting))
            self._waiting.clear()
            self._moved.notify_all()
            early, self._early = list(self._early.values()), {}
            receiving, dropped = self._receiving, self._dropped
        for subscription in early:
            subscription.finish()
        self.log.error(
            "Redis broker %s is unreachable (%s): %d broadcast(s) made here dropped so far; "
            "broadcasts are %s until it is back; reconnecting", self.cluster.name, error,
            dropped, "dropped and not received" if receiving else "dropped",
        )  # fmt: skip

    def _install(self, shards: list[Shard]) -> None:
        """The cluster has these shards now: a link for each (the link it had, known by its
        nodes' ids), the channels through the link of their shard, the links of shards
        gone closed. Called by :meth:`Cluster.refresh`, in any thread."""
        finished: list[Subscription] = []
        with self._lock:
            links: dict[Link, ClusterShard] = {}
            new = []
            for shard in shards:
                link = next(
                    (old for old, server in self._shards.items()
                     if old not in links and server.shard.ids & shard.ids),
                    None,
                )  # fmt: skip
                if link is None:
                    server = ClusterShard(self.cluster, shard)
                    wake = f"{self._channel}:wake:{uuid.uuid4().hex}".encode()
                    link = Link(server, self.rooms, self.log, wake)
                    new.append(link)
                else:
                    server = self._shards[link]
                    server.shard = shard
                links[link] = server
            gone = [link for link in self._shards if link not in links]
            table: list[Link | None] = [None] * SLOTS
            for link, server in links.items():
                for first, last in server.shard.slots:
                    table[first : last + 1] = [link] * (last - first + 1)
            self._shards, self._table = links, table
            for channel in self._wanted:
                to, through = self._link_of(channel), self._through.get(channel)
                if to is through:
                    continue
                if through is not None:
                    through.unsubscribe(channel)
                self._through.pop(channel, None)
                subscription = None
                if to is not None:
                    self._through[channel] = to
                    subscription = to.subscribe(channel)
                early = self._early.pop(channel, None)
                if early is not None and subscription is not None:
                    subscription.then(early.finish)
                elif early is not None:
                    finished.append(early)
            while self._waiting:
                channel, data = self._waiting.popleft()
                link = self._link_of(channel)
                if link is None:
                    self._drop(1)
                else:
                    link.publish(channel, data)
            self._moved.notify_all()
            since, self._down_since = self._down_since, None
            dropped = 0
            if since is not None:
                dropped, self._dropped = self._dropped, 0
            if self._receiving:
                for link in new:
                    link.receive()
        lost = sum(link.close() for link in gone)
        for subscription in finished:
            subscription.finish()
        if since is not None:
            self.log.warning(
                "Redis broker %s is back after %.1f s; %d broadcast(s) made here were dropped",
                self.cluster.name, time.monotonic() - since, dropped,
            )  # fmt: skip
        if gone:
            self.log.warning(
                "Redis broker %s: %d shard(s) gone, %d left; %d broadcast(s) made here for "
                "them were dropped", self.cluster.name, len(gone), len(links), lost,
            )  # fmt: skip
