"""What the tests and the benchmarks share: real servers, raw clients, waiting.

- :class:`ServerProcess`, :class:`UwsgiServer`, :class:`AppServer`: real uWSGI processes
  on free loopback ports (``tests/app.py`` in each flavour for :class:`AppServer`).
- :class:`RoomsServer` and :class:`Member`: ``tests/app_rooms.py`` under uWSGI, and a
  client of its ``/rooms``.
- :class:`RedisServer`: a real ``redis-server``; :class:`RedisCluster`, a Redis Cluster
  of them; :class:`RedisSentinels`, a master, its replica and three Sentinels.
- :class:`NginxServer` and :func:`tls_certificate`: Debian's ``nginx`` in front of them,
  with TLS from a certificate made at test time.
- :class:`RawClient` and :func:`frame`: a raw-socket WebSocket client for the tests that
  send what real clients never would. It frames by hand on purpose: malformed frames are
  its job.
- :func:`wait_for`, :func:`upgrade_environ`, :func:`child_env`.
- :func:`refused`, :func:`closed`: for tests with the in-process test client.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from websockets.sync.client import ClientConnection, connect

from flask_uwsgi_websocket import ConnectionClosed
from flask_uwsgi_websocket.core.handshake import accept_key
from flask_uwsgi_websocket.live_server import free_port, wait_for_answer
from flask_uwsgi_websocket.testing import TestClient, TestConnection, UpgradeRefused

if TYPE_CHECKING:
    from redis import Redis
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parent.parent
UWSGI = str(Path(sys.executable).parent / "uwsgi")

#: uWSGI options of each flavour, as the README documents them.
FLAVOUR_ARGS = {
    "plain": ["--threads", "8"],
    "gevent": ["--gevent", "100"],
    "asyncio": ["--asyncio", "100", "--greenlet"],
}


class ServerProcess:
    """A server process (``uwsgi``, or ``python script`` that becomes uWSGI) on ``port``.

    Its output goes to a temporary file; ``env`` is its whole environment (default:
    this process's).
    """

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        cwd: str | Path = ROOT,
        env: dict[str, str] | None = None,
        netns: Netns | None = None,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"ws://{self.address}"
        #: The network namespace it runs in (its 127.0.0.1), if not this process's.
        self.netns = netns
        self.log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            netns.command(self.args) if netns else self.args,
            stdout=self.log, stderr=subprocess.STDOUT, cwd=str(cwd), env=env,
        )  # fmt: skip
        self.pid = self.process.pid

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A TCP connection to it (from its network namespace)."""
        if self.netns is not None:
            return self.netns.connect("127.0.0.1", self.port, timeout)
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the app answers HTTP (so the worker has loaded it)."""
        request = b"GET /__ready__ HTTP/1.0\r\nHost: localhost\r\n\r\n"
        if self.netns is None:
            wait_for_answer(
                self.process, self.port, request, b"HTTP/", timeout, "uWSGI", self.output
            )
            return
        deadline = time.monotonic() + timeout
        while not answers(self.connect, request, b"HTTP/"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"uWSGI did not answer in {self.netns}:\n{self.output()}")
            time.sleep(0.05)

    def output(self) -> str:
        """What the server has logged so far."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    #: The signal that stops it: SIGINT for uWSGI (SIGTERM would make it reload).
    stop_signal = signal.SIGINT

    def stop(self) -> int:
        """Stop it with :attr:`stop_signal`; return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(self.stop_signal)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(
                    f"did not exit on {self.stop_signal.name}:\n{self.output()}"
                ) from None
        return self.process.returncode

    def close(self) -> None:
        """Stop it and delete its log."""
        try:
            self.stop()
        finally:
            self.log.close()
            os.unlink(self.log.name)

    def __enter__(self) -> Self:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UwsgiServer(ServerProcess):
    """A uWSGI master serving ``app_args`` on a free loopback port.

    ``mode`` is how clients reach the worker: ``"http"`` (the ``--http`` router
    with ``--http-websockets``), ``"http-socket"`` (the worker speaks HTTP), or
    ``"http-socket-websockets"`` (both ``--http-socket`` and ``--http-websockets``), or
    ``"http11-socket"`` (the worker speaks HTTP/1.1 with keepalive).
    ``port``: that port instead of a free one (a new server where a stopped one was).
    """

    def __init__(
        self,
        app_args: Sequence[str],
        extra_args: Sequence[str] = (),
        mode: str = "http",
        env: dict[str, str] | None = None,
        cwd: str | Path = ROOT,
        port: int | None = None,
        netns: Netns | None = None,
    ) -> None:
        port = port or free_port()
        address = f"127.0.0.1:{port}"
        if mode == "http":
            listen = ["--http", address, "--http-websockets"]
        elif mode == "http-socket":
            listen = ["--http-socket", address]
        elif mode == "http11-socket":
            listen = ["--http11-socket", address]
        elif mode == "http-socket-websockets":
            listen = ["--http-socket", address, "--http-websockets"]
        else:
            raise ValueError(mode)
        args = [
            UWSGI, "--master", *listen, "--virtualenv", sys.prefix, "--pythonpath", str(ROOT),
            "--need-app", *app_args, *extra_args,
        ]  # fmt: skip
        super().__init__(args, port, cwd, {**os.environ, **(env or {})}, netns)


APP_MODULES = {"asyncio": "tests.app_asyncio:app"}


class AppServer(UwsgiServer):
    """``tests/app.py`` served by uWSGI in one flavour."""

    def __init__(self, flavour: str, mode: str = "http", extra_args: tuple[str, ...] = ()) -> None:
        self.flavour = flavour
        super().__init__(
            [
                "--module",
                APP_MODULES.get(flavour, "tests.app:app"),
                "--sharedarea",
                "1",
                *FLAVOUR_ARGS[flavour],
            ],
            extra_args,
            mode=mode,
            env={"TEST_FLAVOUR": flavour},
        )

    def http(self, path: str, method: str = "GET") -> Any:
        """The body of an HTTP request to the app (JSON decoded when it is JSON)."""
        req = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as response:
            body = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(body)
            return body.decode()

    def events(self, route: str | None = None) -> list[dict[str, Any]]:
        """What the app's handlers recorded (see ``tests/app.py``)."""
        found: list[dict[str, Any]] = self.http("/events")
        return [e for e in found if route is None or e.get("route") == route]


class RoomsServer(UwsgiServer):
    """``tests/app_rooms.py`` under uWSGI."""

    def __init__(
        self,
        flavour: str,
        broker: str | None = None,
        channel: str = "tests",
        extra_args: tuple[str, ...] = (),
        mode: str = "http",
        netns: Netns | None = None,
    ) -> None:
        env = {"TEST_FLAVOUR": flavour}
        if broker is not None:
            env["FLASK_WEBSOCKET_BROKER_URL"] = broker
            env["FLASK_WEBSOCKET_BROKER_CHANNEL"] = channel
        super().__init__(
            ["--module", "tests.app_rooms:app", *FLAVOUR_ARGS[flavour]], extra_args, mode, env,
            netns=netns,
        )  # fmt: skip

    def http(self, path: str, **query: Any) -> str:
        """The body of ``GET path?query``."""
        if query:
            path += "?" + urllib.parse.urlencode(query, doseq=True)
        if self.netns is not None:  # urllib cannot go into another network namespace
            return http_get(self.connect(30), path)
        with urllib.request.urlopen(f"http://{self.address}{path}", timeout=30) as response:
            body: bytes = response.read()
        return body.decode()


class Member:
    """A ``websockets`` client of ``/rooms``."""

    def __init__(self, server: RoomsServer, path: str = "/rooms", **options: Any) -> None:
        if server.netns is not None:
            options["sock"] = server.connect()
        self.ws: ClientConnection = connect(
            f"{server.url}{path}", open_timeout=10, **options
        ).__enter__()  # closed by close()
        hello = json.loads(self.recv())
        self.id: str = hello["id"]
        self.pid: int = hello["pid"]

    def command(self, **command: Any) -> None:
        self.ws.send(json.dumps(command))

    def rooms_after(self, **command: Any) -> list[str]:
        """Send a join/leave command; the rooms it answers."""
        self.command(**command)
        reply = json.loads(self.recv())
        assert reply["reply"] == "rooms", reply
        rooms: list[str] = reply["rooms"]
        return rooms

    def join(self, *rooms: str) -> None:
        for room in rooms:
            assert room in self.rooms_after(join=room)

    def recv(self, timeout: float = 10) -> Any:
        return self.ws.recv(timeout=timeout)

    def close(self) -> None:
        self.ws.close()


def redis_binary() -> str:
    """The system's ``redis-server`` (``scripts/install.sh --test`` installs it)."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found: run scripts/install.sh --test")
    return found


class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence (and ``args`` more); :meth:`kill`
    and :meth:`start` again on the same port simulate an outage."""

    def __init__(
        self,
        port: int | None = None,
        args: Sequence[str] = (),
        netns: Netns | None = None,
        host: str = "127.0.0.1",
    ) -> None:
        self.port = port or free_port()
        self.address = f"{host}:{self.port}"
        self.url = f"redis://{self.address}/0"
        self.args = list(args)
        #: The network namespace it runs in, where it listens on 127.0.0.1 and ``host``.
        self.netns = netns
        self.host = host
        self.dir = tempfile.TemporaryDirectory(prefix="redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        """The command line that starts it."""
        hosts = dict.fromkeys(["127.0.0.1", self.host])
        # Without a password, protected mode refuses clients from other hosts.
        protected = "yes" if len(hosts) == 1 else "no"
        return [
            redis_binary(), "--port", str(self.port), "--bind", *hosts, "--save", "",
            "--appendonly", "no", "--dir", self.dir.name, "--loglevel", "warning",
            "--protected-mode", protected, *self.args,
        ]  # fmt: skip

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers ``PING``."""
        command = self.command()
        self.process = subprocess.Popen(
            self.netns.command(command) if self.netns else command,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if self.netns is None:
            wait_for_answer(self.process, self.port, b"PING\r\n", b"+PONG", timeout, "redis")
            return
        netns = self.netns
        deadline = time.monotonic() + timeout
        while not answers(lambda: netns.connect("127.0.0.1", self.port, 1), b"PING\r\n", b"+PONG"):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not answer in {netns}")
            time.sleep(0.05)

    def client(self) -> Redis:
        """A client of it (not for one in another network namespace)."""
        from redis import Redis

        assert self.netns is None, "a client of this process cannot reach it"
        return Redis(host="127.0.0.1", port=self.port, socket_timeout=10)

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM: redis-server exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.dir.cleanup()


#: A master sends its data to a new replica at once, not after 5 s (waiting for others).
NO_SYNC_DELAY = ("--repl-diskless-sync-delay", "0")


class StartedTogether:
    """A group of servers used as a context manager: ``start()`` on entering (``stop()``
    if that fails part-way), ``stop()`` on leaving."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisCluster(StartedTogether):
    """A Redis Cluster on 127.0.0.1: ``masters`` masters, each with ``replicas`` replicas
    (``redis-cli --cluster create ... --cluster-replicas 1``). Nodes that stop answering
    for 1 s fail (``cluster-node-timeout``), so a replica takes over in a few seconds."""

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1000) -> None:
        self.replicas = replicas
        args = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(node_timeout_ms), *NO_SYNC_DELAY]  # fmt: skip
        # The bus port too: by default the port + 10000, which may be taken or too high.
        self.nodes = [
            RedisServer(args=[*args, "--cluster-port", str(free_port())])
            for _ in range((1 + replicas) * masters)
        ]
        self.url = "redis+cluster://" + ",".join(node.address for node in self.nodes[:masters])

    def start(self, timeout: float = 60.0) -> None:
        """Start the nodes, make them a cluster, and wait until every node is online."""
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(node.address for node in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        wait_for(self._whole, timeout=timeout)

    def _whole(self) -> bool:
        # A replica counts as "loading" until the replication offset moves (a ping every
        # 10 s): its link to the master tells sooner that it is in sync.
        nodes = [node for shard in self.shards() for node in shard["nodes"]]
        replicas = [self.node(n["port"]) for n in nodes if n["role"] == "replica"]
        return (
            len(nodes) == len(self.nodes)
            and all(n["health"] == "online" for n in nodes if n["role"] == "master")
            and all(r.client().info("replication")["master_link_status"] == "up" for r in replicas)
        )

    def node(self, port: int) -> RedisServer:
        """The node on ``port``."""
        return next(node for node in self.nodes if node.port == port)

    def shards(self) -> list[dict[str, Any]]:
        """``CLUSTER SHARDS`` (with ``str`` keys and roles) of a node that answers; the
        shards that serve slots."""
        from redis import RedisError

        for node in self.nodes:
            if node.process is None or node.process.poll() is not None:
                continue
            try:
                answer = node.client().execute_command("CLUSTER SHARDS")
            except RedisError:
                continue
            shards = []
            for shard in answer:
                nodes = [{key.decode(): value.decode() if isinstance(value, bytes) else value
                          for key, value in item.items()} for item in shard[b"nodes"]]  # fmt: skip
                if shard[b"slots"]:
                    shards.append({"slots": list(shard[b"slots"]), "nodes": nodes})
            return shards
        raise AssertionError("no node of the cluster answers")

    def master_of(self, channel: str) -> RedisServer:
        """The master of the shard that serves ``channel``."""
        from redis.crc import key_slot

        return self.master_of_slot(key_slot(channel.encode()))

    def master_of_slot(self, slot: int) -> RedisServer:
        """The master of the shard that serves ``slot``."""
        for shard in self.shards():
            bounds = shard["slots"]
            if any(a <= slot <= b for a, b in zip(bounds[::2], bounds[1::2], strict=True)):
                master = next(n for n in shard["nodes"] if n["role"] == "master")
                return self.node(master["port"])
        raise AssertionError(f"no shard serves slot {slot}")

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """Give ``slot`` (with no key in it) to the shard of the master ``to``, as
        ``redis-cli --cluster reshard`` does, and wait until every node knows."""
        source = self.master_of_slot(slot)
        ids = {node.port: node.client().execute_command("CLUSTER MYID").decode()
               for node in (source, to)}  # fmt: skip
        to.client().execute_command("CLUSTER SETSLOT", slot, "IMPORTING", ids[source.port])
        source.client().execute_command("CLUSTER SETSLOT", slot, "MIGRATING", ids[to.port])
        for master in (to, source, *self.masters()):
            master.client().execute_command("CLUSTER SETSLOT", slot, "NODE", ids[to.port])
        wait_for(lambda: all(
            self.owner(node, slot) == ids[to.port] for node in self.nodes
            if node.process is not None and node.process.poll() is None
        ))  # fmt: skip

    @staticmethod
    def owner(node: RedisServer, slot: int) -> str:
        """The id of the master of ``slot``, as ``node`` knows it."""
        for first, last, master, *_ in node.client().execute_command("CLUSTER SLOTS"):
            if first <= slot <= last:
                return str(master[2].decode())
        return ""

    def masters(self) -> list[RedisServer]:
        """The masters, one per shard."""
        return [
            self.node(next(n["port"] for n in shard["nodes"] if n["role"] == "master"))
            for shard in self.shards()
        ]

    def stop(self) -> None:
        """Stop every node and remove their files."""
        for node in self.nodes:
            node.stop()
            node.dir.cleanup()


SENTINEL_CONF = """\
port {port}
bind 127.0.0.1
dir {dir}
sentinel monitor {service} 127.0.0.1 {master} 2
sentinel down-after-milliseconds {service} 500
sentinel failover-timeout {service} 5000
"""


class RedisSentinel(RedisServer):
    """A Sentinel on 127.0.0.1 that watches the master on ``master_port`` as ``service``."""

    def __init__(self, service: str, master_port: int) -> None:
        super().__init__()
        self.conf = Path(self.dir.name) / "sentinel.conf"
        self.conf.write_text(SENTINEL_CONF.format(
            port=self.port, dir=self.dir.name, service=service, master=master_port
        ))  # fmt: skip

    def command(self) -> list[str]:
        """``redis-server sentinel.conf --sentinel``."""
        return [redis_binary(), str(self.conf), "--sentinel"]


class RedisSentinels(StartedTogether):
    """A master and its replica on 127.0.0.1, watched as ``service`` by three Sentinels
    (quorum 2); a master that does not answer for 0.5 s is down, and the Sentinels
    promote the replica."""

    def __init__(self, service: str = "tests") -> None:
        self.service = service
        self.master = RedisServer(args=NO_SYNC_DELAY)
        self.replica = RedisServer(args=["--replicaof", "127.0.0.1", str(self.master.port)])
        self.sentinels = [RedisSentinel(service, self.master.port) for _ in range(3)]
        addresses = ",".join(sentinel.address for sentinel in self.sentinels)
        self.url = f"redis+sentinel://{addresses}/{service}"

    def start(self, timeout: float = 30.0) -> None:
        """Start them; wait until the replica is in sync and every Sentinel knows the
        replica and the two other Sentinels (they must, to agree on a failover)."""
        self.master.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        wait_for(self._ready, timeout=timeout)

    def _ready(self) -> bool:
        info = self.replica.client().info("replication")
        if info.get("master_link_status") != "up":
            return False
        for sentinel in self.sentinels:
            client = sentinel.client()
            if len(client.sentinel_slaves(self.service)) != 1:
                return False
            if len(client.sentinel_sentinels(self.service)) != 2:
                return False
        return True

    def master_port(self) -> int:
        """The port of the master, as the first Sentinel that answers says."""
        for sentinel in self.sentinels:
            try:
                return int(sentinel.client().sentinel_get_master_addr_by_name(self.service)[1])
            except Exception:
                continue
        raise AssertionError("no Sentinel answers")

    def stop(self) -> None:
        """Stop them all and remove their files."""
        for server in (*self.sentinels, self.master, self.replica):
            server.stop()
            server.dir.cleanup()


class NetnsRefused(Exception):
    """This machine does not let the tests make network namespaces."""


class Netns:
    """A network namespace the test makes (``ip netns add``), with its loopback up, as a
    host of its own: :meth:`command` runs a program in it, :meth:`connect` opens a TCP
    connection from it, :meth:`ip` configures it. :meth:`close` removes it (its
    interfaces go with it). ``NetnsRefused`` if the system does not allow it.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        done = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
        if done.returncode != 0:
            raise NetnsRefused(f"`ip netns add {name}` failed ({done.returncode}): {done.stderr}")
        self.ip("link", "set", "lo", "up")

    def __str__(self) -> str:
        return f"network namespace {self.name}"

    def command(self, args: Sequence[str]) -> list[str]:
        """``args`` run in the namespace (``ip netns exec`` execs it: same process)."""
        return ["ip", "netns", "exec", self.name, *args]

    def ip(self, *args: str) -> None:
        """``ip -n <name> ARGS``; ``CalledProcessError`` if it fails."""
        subprocess.run(["ip", "-n", self.name, *args], check=True, capture_output=True)

    def connect(self, host: str, port: int, timeout: float) -> socket.socket:
        """A TCP connection to ``host:port`` made from the namespace (a socket stays in
        the namespace it was made in: a thread enters it, makes it, and ends)."""
        made: list[socket.socket] = []
        failed: list[BaseException] = []

        def inside() -> None:
            try:
                with open(f"/run/netns/{self.name}") as handle:
                    setns(handle.fileno())
                made.append(socket.create_connection((host, port), timeout=timeout))
            except BaseException as exc:
                failed.append(exc)

        thread = threading.Thread(target=inside)
        thread.start()
        thread.join()
        if failed:
            raise failed[0]
        return made[0]

    def close(self) -> None:
        """Remove the namespace."""
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def setns(fd: int) -> None:
    """Move this thread into the network namespace ``fd`` refers to."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, 0x40000000) != 0:  # CLONE_NEWNET
        errno = ctypes.get_errno()
        raise OSError(errno, os.strerror(errno))


def answers(connect: Any, request: bytes, answer: bytes) -> bool:
    """Whether a connection from ``connect()`` gets ``answer`` first to ``request``."""
    try:
        with connect() as sock:
            sock.settimeout(1)
            sock.sendall(request)
            return bool(sock.recv(64).startswith(answer))
    except OSError:
        return False


def http_get(sock: socket.socket, path: str) -> str:
    """The body of ``GET path`` (HTTP/1.0) over ``sock``, which it closes; an error
    unless the status is 200."""
    with sock:
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.0 200", b"HTTP/1.1 200")):
        raise RuntimeError(f"GET {path}: {head[:80]!r}")
    return body.decode()


def tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A new self-signed certificate for ``localhost`` and ``127.0.0.1``, valid for two
    days, and its key: ``(cert.pem, key.pem)`` in ``directory`` (made with the
    ``openssl`` command). Clients trust it with ``ssl.create_default_context(cafile=cert)``.
    """
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert),
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-addext", "extendedKeyUsage=serverAuth"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


#: Debian's nginx (``scripts/install.sh --test`` installs it).
NGINX = "/usr/sbin/nginx"

NGINX_CONF = """\
master_process off;
pid {pid};
error_log {error_log} notice;
events {{}}
http {{
access_log {access_log};
{temp_paths}
{http}
server {{
{listen}
{server}
}}
}}
"""

#: The files Debian keeps in /etc/nginx that a ``server`` block may ``include`` by name.
NGINX_INCLUDES = ("uwsgi_params", "proxy_params", "mime.types")


class NginxServer:
    """Debian's nginx serving one ``server`` block on a free port of 127.0.0.1.

    ``server`` is the body of the block (``location`` blocks and directives); the
    ``listen`` line is added, with ``ssl`` and the certificate when ``certificate``
    (``(cert, key)``, see :func:`tls_certificate`) is given. ``http`` is more text for
    the ``http`` block (a ``map``, an ``upstream``). ``include uwsgi_params;`` and
    ``include proxy_params;`` find Debian's files, as in /etc/nginx.

    It runs as one foreground process (``master_process off``: no user switch, so it
    works as any user), with its configuration, logs and temporary files in a new
    directory under ``directory``. Use it as a context manager; :meth:`stop` sends
    SIGTERM (nginx's fast shutdown, which does not wait for open WebSockets).
    """

    def __init__(
        self,
        server: str,
        directory: Path,
        certificate: tuple[Path, Path] | None = None,
        http: str = "",
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        #: ``http://`` or ``https://`` and the address; the base of URLs to it.
        self.url = f"{'https' if certificate else 'http'}://{self.address}"
        self.dir = Path(tempfile.mkdtemp(prefix="nginx-", dir=directory))
        for name in NGINX_INCLUDES:
            if (Path("/etc/nginx") / name).exists():
                (self.dir / name).symlink_to(Path("/etc/nginx") / name)
        listen = f"listen {self.address};"
        if certificate:
            listen = (
                f"listen {self.address} ssl;\n"
                f"ssl_certificate {certificate[0]};\n"
                f"ssl_certificate_key {certificate[1]};"
            )
        temp_paths = "\n".join(
            f"{kind}_temp_path {self.dir / kind};"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        self.conf = self.dir / "nginx.conf"
        conf = NGINX_CONF.format(
            pid=self.dir / "nginx.pid", error_log=self.error_log,
            access_log=self.dir / "access.log", temp_paths=temp_paths, http=http,
            listen=listen, server=server,
        )  # fmt: skip
        self.conf.write_text(conf)
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.dir), "-c", str(self.conf), "-e", str(self.error_log),
             "-g", "daemon off;"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        #: nginx's process id.
        self.pid = self.process.pid

    @property
    def error_log(self) -> Path:
        """Where nginx logs (level ``notice`` and up)."""
        return self.dir / "error.log"

    def output(self) -> str:
        """What nginx has logged so far."""
        return self.error_log.read_text(errors="replace") if self.error_log.exists() else ""

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait until nginx accepts connections; ``RuntimeError`` if it exits or is late."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.output()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"nginx did not listen within {timeout} s:\n{self.output()}")

    def stop(self) -> int:
        """Stop it (SIGTERM to its PID); return its exit status."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(f"nginx did not exit on SIGTERM:\n{self.output()}") from None
        return self.process.returncode

    def __enter__(self) -> Self:
        try:
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame; ``mask=False`` and ``rsv`` make malformed ones."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class RawClient:
    """One WebSocket connection over a plain socket."""

    def __init__(self, address: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {address}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed during the handshake")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status_line, *header_lines = head.decode().split("\r\n")
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
        }
        assert self.status_line.startswith("HTTP/1.1 101"), self.status_line
        assert self.headers["sec-websocket-accept"] == accept_key(key)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes, bool]:
        """The next server frame: (opcode, payload, fin); its RSV bits go to ``self.rsv``."""
        b0, b1 = self._read(2)
        self.rsv = (b0 >> 4) & 0x7
        assert not b1 & 0x80, "server frames are not masked"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(length), bool(b0 & 0x80)

    def recv_data(self) -> tuple[int, bytes]:
        """The next non-ping, non-pong frame."""
        while True:
            opcode, payload, _ = self.recv_frame()
            if opcode not in (PING, PONG):
                return opcode, payload

    def expect_close(self, timeout: float = 10.0) -> tuple[int, str]:
        """Read until the server's close frame; return its code and reason."""
        self.sock.settimeout(timeout)
        while True:
            opcode, payload, _ = self.recv_frame()
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return code, payload[2:].decode()

    def wait_eof(self, timeout: float = 10.0) -> float:
        """Wait until the server closes TCP; return how long it took."""
        started = time.monotonic()
        self.sock.settimeout(timeout)
        while True:
            if not self.sock.recv(65536):
                return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()


def wait_for(predicate, timeout: float = 10.0):  # type: ignore[no-untyped-def]
    """The first true result of ``predicate()``, polled for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


RFC_KEY = "dGhlIHNhbXBsZSBub25jZQ=="


def upgrade_environ(**changes: str | None) -> dict[str, Any]:
    """A valid upgrade request's environ; ``NAME=None`` removes ``NAME``."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/echo",
        "HTTP_HOST": "localhost",
        "HTTP_UPGRADE": "websocket",
        "HTTP_CONNECTION": "Upgrade",
        "HTTP_SEC_WEBSOCKET_KEY": RFC_KEY,
        "HTTP_SEC_WEBSOCKET_VERSION": "13",
    }
    for name, value in changes.items():
        if value is None:
            environ.pop(name, None)
        else:
            environ[name] = value
    return environ


def child_env(**extra: str) -> dict[str, str]:
    """The environment of the processes the tests start.

    No VIRTUAL_ENV: the venv's uWSGI finds the venv by itself. PYTHONPATH has
    the checkout, for a venv where the package is not installed.
    """
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FLASK_DEBUG")}
    env.pop("FLASK_RUN_HOST", None)
    env.pop("FLASK_RUN_PORT", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


# The in-process test client.

#: How long a message that is on its way may take; generous, the machine may be busy.
SOON = 5.0


def refused(client: TestClient, path: str, **kwargs: Any) -> Any:
    """The response of an upgrade the app refuses."""
    with pytest.raises(UpgradeRefused) as info:
        client.connect(path, **kwargs).close()
    return info.value.response


def closed(ws: TestConnection) -> ConnectionClosed:
    """What ``receive`` raises once the server has closed the connection."""
    with pytest.raises(ConnectionClosed) as info:
        ws.receive(timeout=SOON)
    return info.value
