"""Broadcast across hosts: two uWSGI instances, each in a network namespace of its own
("hosts" A and B), share rooms through a redis-server in a third (R), reached over veth
pairs and a bridge in R (10.214.0.0/24). A's link is cut (``ip link set ... down``) and
restored: A lives through it as through a Redis outage, and B's clients see nothing of it.

Each host's clients are on its loopback (their sockets are made in its namespace), so
every packet stays in the namespaces the test makes, or on loopback. The namespaces go
when the test ends, whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Iterator

import pytest

from .helpers import Member, Netns, NetnsRefused, RedisServer, RoomsServer, wait_for

pytestmark = pytest.mark.timeout(180)

CHANNEL = "tests-hosts"
REDIS = "10.214.0.1"
HOSTS = {"a": "10.214.0.2", "b": "10.214.0.3"}


class Network:
    """The namespaces R, A and B, and the links of A and B to the bridge in R."""

    def __init__(self) -> None:
        tag = f"{os.getpid() % 100000}"
        self.made: list[Netns] = []
        #: The interface of each host on the link to R.
        self.links: dict[str, str] = {}
        try:
            self.redis = self.add(f"fws{tag}r")
            self.hosts = {name: self.add(f"fws{tag}{name}") for name in HOSTS}
            self.redis.ip("link", "add", "br0", "type", "bridge")
            self.redis.ip("addr", "add", f"{REDIS}/24", "dev", "br0")
            self.redis.ip("link", "set", "br0", "up")
            for name, address in HOSTS.items():
                host, link, peer = self.hosts[name], f"fws{tag}{name}", f"fws{tag}{name}r"
                self.redis.ip("link", "add", peer, "type", "veth", "peer", "name", link,
                              "netns", host.name)  # fmt: skip
                self.redis.ip("link", "set", peer, "master", "br0", "up")
                host.ip("addr", "add", f"{address}/24", "dev", link)
                host.ip("link", "set", link, "up")
                self.links[name] = link
        except NetnsRefused as refused:
            self.close()
            pytest.skip(f"network namespaces are refused on this machine: {refused}")
        except BaseException:
            self.close()
            raise

    def add(self, name: str) -> Netns:
        netns = Netns(name)
        self.made.append(netns)
        return netns

    def cut(self, name: str) -> None:
        self.hosts[name].ip("link", "set", self.links[name], "down")

    def restore(self, name: str) -> None:
        self.hosts[name].ip("link", "set", self.links[name], "up")

    def close(self) -> None:
        for netns in self.made:
            netns.close()


@pytest.fixture
def network() -> Iterator[Network]:
    made = Network()
    try:
        yield made
    finally:
        made.close()


def test_hosts_share_rooms_and_live_through_a_cut_link(network: Network) -> None:
    with RedisServer(netns=network.redis, host=REDIS) as redis:
        servers = {
            name: RoomsServer(flavour, redis.url, CHANNEL, ("--processes", "1"),
                              netns=network.hosts[name])
            for name, flavour in (("a", "gevent"), ("b", "plain"))
        }  # fmt: skip
        try:
            run(network, servers)
        finally:
            for server in servers.values():
                server.close()


def run(network: Network, servers: dict[str, RoomsServer]) -> None:
    a, b = servers["a"], servers["b"]
    for server in servers.values():
        server.wait_ready()
    members = {name: [Member(server), Member(server)] for name, server in servers.items()}
    everyone = members["a"] + members["b"]
    for member in everyone:
        member.join("r")
    for server in (a, b):  # each host reaches the members of both
        server.http("/broadcast", message=f"from {server.netns}", room="r")
    for member in everyone:
        assert {member.recv(), member.recv()} == {f"from {a.netns}", f"from {b.netns}"}

    network.cut("a")
    made = 0
    while "is unreachable" not in a.output():  # B goes on as if nothing happened
        b.http("/broadcast", message=f"b-{made}", room="r")
        made += 1
        for member in members["b"]:
            assert member.recv() == f"b-{made - 1}"
        assert made < 600, a.output()  # 30 s: TCP keepalive notices in about 8
        time.sleep(0.05)
    for number in range(20):  # dropped by A, and B's members get none of them either
        a.http("/broadcast", message=f"lost-{number}", room="r")
    for member in members["a"]:  # A's clients are still served
        member.command(echo="served while cut off")
        assert json.loads(member.recv())["echo"] == "served while cut off"
    for member in members["b"]:
        member.command(echo="marker")
        assert json.loads(member.recv())["echo"] == "marker"

    network.restore("a")
    wait_for(lambda: "is back after" in a.output(), timeout=30)
    for member in members["a"]:  # what B published meanwhile is lost for A: probe
        wait_for(lambda m=member: probe(b, m), timeout=30)
    for server in (a, b):
        server.http("/flood", count=20, prefix=f"after-{server.netns}", room="r")
    for member in everyone:
        got: dict[str, list[str]] = {}
        while sum(len(v) for v in got.values()) < 40:
            message = member.recv()
            if message != "probe":
                got.setdefault(message.rpartition("-")[0], []).append(message)
        prefixes = [f"after-{server.netns}" for server in (a, b)]
        assert got == {prefix: [f"{prefix}-{n}" for n in range(20)] for prefix in prefixes}
        member.close()

    log = a.output()
    assert log.count("is unreachable") == log.count("is back after") == 1, log
    dropped = re.search(r"is back after [0-9.]+ s; (\d+) broadcast", log)
    assert dropped is not None and int(dropped.group(1)) >= 20, log
    assert "unreachable" not in b.output(), b.output()


def probe(server: RoomsServer, member: Member) -> bool:
    """Broadcast ``probe`` to ``r`` from ``server``: whether ``member`` has it within 0.5 s."""
    server.http("/broadcast", message="probe", room="r")
    try:
        return bool(member.recv(timeout=0.5) == "probe")
    except TimeoutError:
        return False
