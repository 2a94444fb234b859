"""The Redis servers a broker URL names, and how a link (see ``pubsub``) reaches them.

- ``redis://``, ``rediss://``, ``unix://``: one server (:class:`Standalone`).
- ``redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db]``: the
  master that the Sentinels call ``service`` (:class:`SentinelMaster`). Every connection
  asks them which server that is, so a link that reconnects follows a failover.
- ``redis+cluster://[[user]:password@]host:port[,host:port...][/]``: a Redis Cluster
  (:class:`Cluster`), whose shards ``CLUSTER SHARDS`` tells on any of its nodes, each
  reached through its master (:class:`ClusterShard`), looked up again at every
  connection, so a link follows its shard through a failover. A shard's link uses
  sharded pub/sub (``SPUBLISH``/``SSUBSCRIBE``, Redis 7): a channel lives on the shard
  that serves its hash slot, and its messages travel through that shard's nodes only.

Every connection has TCP keepalive with short timers (:data:`KEEPALIVE`): a subscriber
only reads, so without it a server that vanished without closing the connection (a
host or a link down) would never be noticed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import unquote

if TYPE_CHECKING:
    import redis

__all__ = [
    "CONNECT_TIMEOUT",
    "KEEPALIVE",
    "Cluster",
    "ClusterShard",
    "SentinelMaster",
    "Server",
    "Shard",
    "Standalone",
    "safe_url",
]

#: Seconds a connection attempt to Redis (or a Sentinel) may take.
CONNECT_TIMEOUT = 2.0
#: TCP keepalive of every connection: probes after 5 s of silence, 1 s apart, 3 of them,
#: and unacknowledged data for 8 s, end it (Linux names; those this system lacks are
#: left out).
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (
        ("TCP_KEEPIDLE", 5),
        ("TCP_KEEPINTVL", 1),
        ("TCP_KEEPCNT", 3),
        ("TCP_USER_TIMEOUT", 8000),
    )
    if hasattr(socket, name)
}
#: Seconds during which the shards found by ``CLUSTER SHARDS`` are used without asking again.
REFRESH_AFTER = 0.1
SLOTS = 16384


class Server(Protocol):
    """Where a link publishes and subscribes."""

    #: Whether it takes sharded pub/sub commands (``SPUBLISH``, ``SSUBSCRIBE``).
    sharded: bool

    @property
    def name(self) -> str:
        """What the logs call it (no password)."""

    def client(self, reply_timeout: float | None, retries: int) -> redis.Redis:
        """A new client of the server to use now (``retries``: after a connection error)."""

    def wake_channel(self, base: bytes) -> bytes:
        """``base`` made a channel this server holds (a shard: a hash slot it serves)."""


def safe_url(url: str) -> str:
    """``url`` without its password, for the logs."""
    scheme, sep, rest = url.partition("://")
    netloc, slash, path = rest.partition("/")
    return f"{scheme}{sep}{netloc.rpartition('@')[2]}{slash}{path}"


def client_options(reply_timeout: float | None, retries: int) -> dict[str, Any]:
    """The connection settings of every client of a link."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    return {
        "socket_connect_timeout": CONNECT_TIMEOUT,
        "socket_timeout": reply_timeout,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE,
        "retry": Retry(NoBackoff(), retries, supported_errors=(redis.ConnectionError,)),
    }


class Standalone:
    """One Redis server, named by a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    sharded = False

    def __init__(self, url: str) -> None:
        self.url = url
        self.name = safe_url(url)

    def client(self, reply_timeout: float | None, retries: int) -> redis.Redis:
        """A client of the server."""
        import redis

        return redis.Redis.from_url(self.url, **client_options(reply_timeout, retries))

    def wake_channel(self, base: bytes) -> bytes:
        """``base``."""
        return base


class Address(NamedTuple):
    """A host and a port."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


class Hosts(NamedTuple):
    """The parts of a URL that names several hosts: ``scheme://[[user]:password@]host:port,
    host:port/path``."""

    addresses: list[Address]
    username: str | None
    password: str | None
    path: str

    @classmethod
    def parse(cls, url: str, default_port: int) -> Hosts:
        """The parts of ``url``; ``ValueError`` when it names no host or a bad port."""
        rest = url.partition("://")[2]
        netloc, _, path = rest.partition("/")
        userinfo, _, hostlist = netloc.rpartition("@")
        username, _, password = userinfo.partition(":")
        addresses = []
        for item in filter(None, hostlist.split(",")):
            if item.startswith("["):  # [IPv6]:port
                host, _, port = item[1:].partition("]")
                port = port.removeprefix(":")
            else:
                host, _, port = item.partition(":")
            try:
                addresses.append(Address(host or "localhost", int(port or default_port)))
            except ValueError:
                raise ValueError(f"bad port in {safe_url(url)!r}: {port!r}") from None
        if not addresses:
            raise ValueError(f"no host in {safe_url(url)!r}")
        return cls(addresses, unquote(username) or None, unquote(password) or None, path)


class SentinelMaster:
    """The master the Sentinels of a ``redis+sentinel://`` URL call by its service name."""

    sharded = False

    def __init__(self, url: str) -> None:
        hosts = Hosts.parse(url, 26379)
        service, _, db = hosts.path.strip("/").partition("/")
        if not service:
            raise ValueError(
                f"no service name in {safe_url(url)!r}: redis+sentinel://host:port,.../service"
            )
        try:
            self.db = int(db or 0)
        except ValueError:
            raise ValueError(f"bad database number in {safe_url(url)!r}: {db!r}") from None
        self.name = safe_url(url)
        self.service = service
        self.hosts = hosts

    def client(self, reply_timeout: float | None, retries: int) -> redis.Redis:
        """A client whose connections go to the master the Sentinels name as they connect."""
        from redis.sentinel import Sentinel

        # A Sentinel that does not answer at once is passed over for the next one.
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [tuple(address) for address in self.hosts.addresses],
            sentinel_kwargs=client_options(CONNECT_TIMEOUT, 0),
        )
        client: redis.Redis = sentinel.master_for(  # type: ignore[no-untyped-call]
            self.service,
            db=self.db,
            username=self.hosts.username,
            password=self.hosts.password,
            **client_options(reply_timeout, retries),
        )
        return client

    def wake_channel(self, base: bytes) -> bytes:
        """``base``."""
        return base


class Shard(NamedTuple):
    """A shard of a Redis Cluster: the hash slots it serves and its nodes."""

    #: Ranges of slots, ends included.
    slots: tuple[tuple[int, int], ...]
    #: Where its master is.
    master: Address
    #: Its nodes' ids: the master's and the replicas'.
    ids: frozenset[str]
    #: Where its nodes are.
    nodes: tuple[Address, ...]

    def __str__(self) -> str:
        return "slots " + ",".join(f"{a}-{b}" if a != b else str(a) for a, b in self.slots)

    def serves(self, slot: int) -> bool:
        """Whether the shard serves ``slot``."""
        return any(first <= slot <= last for first, last in self.slots)


class Cluster:
    """The shards of a Redis Cluster, as its nodes tell them (``CLUSTER SHARDS``)."""

    def __init__(self, url: str) -> None:
        self.hosts = Hosts.parse(url, 6379)
        self.name = safe_url(url)
        #: Called with the shards whenever they differ from the last ones found.
        self.on_change: Callable[[list[Shard]], None] | None = None
        self._lock = threading.Lock()
        self._shards: list[Shard] = []
        self._checked = -REFRESH_AFTER
        self._nodes = list(self.hosts.addresses)  # asked in this order: the last to answer first

    def refresh(self) -> list[Shard]:
        """The shards, asked again unless they were just now; :attr:`on_change` is told of
        new ones. A ``redis.ConnectionError`` when no node answers."""
        with self._lock:
            if time.monotonic() - self._checked < REFRESH_AFTER:
                return self._shards
            shards = self._ask()
            self._checked = time.monotonic()
            if shards != self._shards:
                self._shards = shards
                if self.on_change is not None:
                    self.on_change(shards)
            return shards

    def _ask(self) -> list[Shard]:
        import redis

        errors = []
        for address in self._nodes:
            client = self.client(address, CONNECT_TIMEOUT, 0)
            try:
                answer = client.execute_command("CLUSTER SHARDS")  # type: ignore[no-untyped-call]
            except redis.RedisError as exc:
                errors.append(f"{address}: {exc}")
                continue
            finally:
                client.close()
            shards = [shard for shard in map(parse_shard, answer) if shard.slots]
            known = [node for shard in shards for node in shard.nodes]
            self._nodes = list(dict.fromkeys([address, *known, *self.hosts.addresses]))
            return shards
        raise redis.ConnectionError("no node of the cluster answers: " + "; ".join(errors))

    def client(self, address: Address, reply_timeout: float | None, retries: int) -> redis.Redis:
        """A client of the node at ``address``."""
        import redis

        return redis.Redis(
            address.host,
            address.port,
            username=self.hosts.username,
            password=self.hosts.password,
            **client_options(reply_timeout, retries),
        )


def parse_shard(answer: Any) -> Shard:
    """A shard of a ``CLUSTER SHARDS`` answer (maps, or flat lists of keys and values)."""
    shard = as_dict(answer)
    bounds = [int(slot) for slot in shard["slots"]]
    slots = tuple(zip(bounds[::2], bounds[1::2], strict=True))
    nodes = [as_dict(node) for node in shard["nodes"]]
    addresses = tuple(Address(node_host(node), int(node["port"])) for node in nodes)
    roles = [text(node["role"]) for node in nodes]
    masters = [address for role, address in zip(roles, addresses, strict=True) if role == "master"]
    ids = frozenset(text(node["id"]) for node in nodes)
    return Shard(slots, masters[0] if masters else addresses[0], ids, addresses)


def as_dict(answer: Any) -> dict[str, Any]:
    """A map of Redis's answer, with ``str`` keys."""
    if not isinstance(answer, dict):
        answer = dict(zip(answer[::2], answer[1::2], strict=True))
    return {text(key): value for key, value in answer.items()}


def node_host(node: dict[str, Any]) -> str:
    """Where a node of ``CLUSTER SHARDS`` is reached: its endpoint, else its IP."""
    endpoint = text(node.get("endpoint") or "")
    return endpoint if endpoint and endpoint != "?" else text(node["ip"])


def text(value: Any) -> str:
    """``value`` as ``str`` (Redis answers with bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


class ClusterShard:
    """A shard of a :class:`Cluster`, reached through the master it has at the moment."""

    sharded = True

    def __init__(self, cluster: Cluster, shard: Shard) -> None:
        self.cluster = cluster
        #: The shard as last found; its owner updates it when the cluster changes.
        self.shard = shard

    @property
    def name(self) -> str:
        """The cluster's URL and the shard's slots."""
        return f"{self.cluster.name} ({self.shard})"

    def client(self, reply_timeout: float | None, retries: int) -> redis.Redis:
        """A client of the shard's master, looked up again first."""
        self.cluster.refresh()  # this shard, changed or not, is in self.shard then
        return self.cluster.client(self.shard.master, reply_timeout, retries)

    def wake_channel(self, base: bytes) -> bytes:
        """``base`` behind a hash tag of a slot the shard serves."""
        from redis.crc import key_slot

        for tag in range(SLOTS * 64):  # a shard of one slot takes 16384 on average
            if self.shard.serves(key_slot(b"%d" % tag)):
                return b"{%d}%s" % (tag, base)
        raise ValueError(f"no hash tag found for {self.shard}")
