"""Broadcast through a Redis master watched by Sentinel (``redis+sentinel://``): a master,
its replica and three Sentinels, real redis-server processes on loopback, and two
uWSGI instances of one worker. The master is killed, the Sentinels promote the replica,
and the broker follows."""

from __future__ import annotations

import re
import time

import pytest

from .helpers import Member, RedisSentinels, RoomsServer, wait_for

pytestmark = pytest.mark.timeout(180)

CHANNEL = "tests-sentinel"


def test_the_broker_follows_a_failover() -> None:
    """With the first Sentinel of the URL down too: the outage is logged once, the
    broadcasts made during it are dropped and counted (with one worker that broadcasts
    and receives, what arrives and the count in the log add up), and those made after
    the failover reach every member, in order."""
    with RedisSentinels() as redis, \
            RoomsServer("gevent", redis.url, CHANNEL, ("--processes", "1")) as a, \
            RoomsServer("asyncio", redis.url, CHANNEL, ("--processes", "1")) as b:  # fmt: skip
        members = [Member(a), Member(b)]
        for member in members:
            member.join("r")
        a.http("/broadcast", message="before", room="r")
        for member in members:
            assert member.recv(timeout=30) == "before"
        assert redis.master.client().pubsub_numsub(CHANNEL) == [(CHANNEL.encode(), 2)]
        redis.sentinels[0].kill()
        redis.master.kill()
        for server in (a, b):
            wait_for(lambda server=server: "is unreachable" in server.output(), timeout=30)
        made = after_back = 0
        deadline = time.monotonic() + 60
        while after_back < 10:  # broadcasts through the failover, and 10 after it
            a.http("/broadcast", message=f"during-{made}", room="r")
            made += 1
            if all("is back after" in server.output() for server in (a, b)):
                after_back += 1
            assert time.monotonic() < deadline, a.output() + b.output()
            time.sleep(0.05)
        assert redis.master_port() == redis.replica.port
        assert redis.replica.client().pubsub_numsub(CHANNEL) == [(CHANNEL.encode(), 2)]
        a.http("/flood", count=10, prefix="after", room="r")
        after = [f"after-{n}" for n in range(10)]
        got = []
        for member in members:
            received = []
            while not received or received[-1] != after[-1]:
                received.append(member.recv(timeout=30))
            during = received[: -len(after)]
            assert during == sorted(during, key=lambda m: int(m.split("-")[1])), member.pid
            assert all(m.startswith("during-") for m in during)
            assert received[-len(after) :] == after
            got.append(len(during))
            member.close()
        log = a.output()
        dropped = re.findall(r"is back after [0-9.]+ s; (\d+) broadcast", log)
        assert len(dropped) == 1 and log.count("is unreachable") == 1, log
        assert got[0] + int(dropped[0]) == made, (got, dropped, made)
        assert got[0] > 0
        assert b.output().count("is unreachable") == b.output().count("is back after") == 1
