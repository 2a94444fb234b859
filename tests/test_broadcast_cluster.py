"""Broadcast through a Redis Cluster (``redis+cluster://``): three masters with a replica
each, real redis-server processes on loopback, and two uWSGI instances of one worker.

Each room's channel lives on the shard that serves its hash slot (sharded pub/sub):
the rooms of the tests are picked one per shard. The last test kills a master; its
replica takes over, and the broadcasts to its rooms resume.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from .helpers import ROOT, Member, RedisCluster, RoomsServer, child_env, free_port, wait_for

pytestmark = pytest.mark.timeout(180)

CHANNEL = "tests-cluster"


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisCluster]:
    with RedisCluster() as made:
        yield made


@pytest.fixture(scope="module")
def rooms(cluster: RedisCluster) -> list[str]:
    """A room for each shard, in the order of :meth:`RedisCluster.masters`."""
    masters = [master.port for master in cluster.masters()]
    found: dict[int, str] = {}
    number = 0
    while len(found) < len(masters):
        room = f"room-{number}"
        found.setdefault(cluster.master_of(room_channel(room)).port, room)
        number += 1
    return [found[port] for port in masters]


@pytest.fixture(scope="module")
def servers(cluster: RedisCluster) -> Iterator[list[RoomsServer]]:
    """Two uWSGI instances of one worker each, gevent and plain."""
    made = [
        RoomsServer(flavour, cluster.url, CHANNEL, ("--processes", "1"))
        for flavour in ("gevent", "plain")
    ]
    try:
        for server in made:
            server.wait_ready()
        yield made
    finally:
        for server in made:
            server.close()


def room_channel(room: str) -> str:
    return f"{CHANNEL}:room:{room}"


def test_rooms_are_spread_over_the_shards(
    cluster: RedisCluster, rooms: list[str], servers: list[RoomsServer]
) -> None:
    """Each master has the subscriptions of the rooms its shard serves, one per worker,
    and no other; every member gets each sender's broadcasts to its room in order."""
    a, b = servers
    members = {server.port: [Member(server) for _ in rooms] for server in servers}
    everywhere = [Member(server) for server in servers]
    for server in servers:
        for member, room in zip(members[server.port], rooms, strict=True):
            member.join(room)
    for member in everywhere:
        member.join(*rooms)
    for master, room in zip(cluster.masters(), rooms, strict=True):
        client = master.client()
        shard_channels = client.execute_command("PUBSUB SHARDCHANNELS", f"{CHANNEL}:room:*")
        assert shard_channels == [room_channel(room).encode()]
        assert client.execute_command("PUBSUB SHARDNUMSUB", room_channel(room))[0][1] == 2
    count = 200
    for number, room in enumerate(rooms):
        everywhere[0].command(flood=count, prefix=f"a{number}", room=room)  # from a handler
        b.http("/flood", count=count, prefix=f"b{number}", room=room)  # from a view
    for number, room in enumerate(rooms):
        expected = {f"a{number}": list(range(count)), f"b{number}": list(range(count))}
        for member in (members[a.port][number], members[b.port][number]):
            assert by_sender(member, 2 * count) == expected, (room, member.pid)
    expected = {f"{s}{n}": list(range(count)) for s in "ab" for n in range(len(rooms))}
    for member in everywhere:
        assert by_sender(member, 2 * count * len(rooms)) == expected, member.pid
    a.http("/broadcast", message="to everyone")
    for member in [*everywhere, *members[a.port], *members[b.port]]:
        assert member.recv(timeout=30) == "to everyone"
        member.close()


def test_a_broadcast_right_after_join_reaches_the_member(servers: list[RoomsServer]) -> None:
    """Joined and broadcast in one command, in rooms new to the worker, on every shard:
    ``join`` waited for the subscription on the room's shard."""
    for server in servers:
        member = Member(server)
        for n in range(20):
            member.command(join=f"fresh-{n}", broadcast=f"first-{n}", room=f"fresh-{n}")
            assert member.recv(timeout=30) == f"first-{n}"
        member.close()


def test_a_process_that_only_publishes(
    cluster: RedisCluster, rooms: list[str], servers: list[RoomsServer]
) -> None:
    """A script finds the shards as it makes its first broadcasts and publishes them."""
    members = [Member(server) for server in servers]
    for member in members:
        member.join(rooms[1])
    env = child_env(FLASK_WEBSOCKET_BROKER_URL=cluster.url, FLASK_WEBSOCKET_BROKER_CHANNEL=CHANNEL)
    done = subprocess.run(
        [sys.executable, "-m", "tests.flood", rooms[1], "100", "script", "0", "30"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "flushed: True" in done.stdout, done.stdout + done.stderr
    for member in members:
        got = [member.recv(timeout=30) for _ in range(101)]
        # The room's channel and the app's (the end) may be on two shards: no order between.
        assert [m for m in got if m != "script-end"] == [f"script-{n}" for n in range(100)]
        assert "script-end" in got
        member.close()


def test_a_cluster_no_node_answers_for() -> None:
    """A process that only publishes, with no node of the URL answering: the outage is
    logged once, and what was dropped as the process exits."""
    url = f"redis+cluster://127.0.0.1:{free_port()},127.0.0.1:{free_port()}"
    env = child_env(FLASK_WEBSOCKET_BROKER_URL=url, FLASK_WEBSOCKET_BROKER_CHANNEL=CHANNEL)
    done = subprocess.run(
        [sys.executable, "-m", "tests.flood", "r", "100", "script", "0", "10"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    output = done.stdout + done.stderr
    assert "flushed: False" in output, output
    assert output.count("is unreachable (no node of the cluster answers") == 1, output
    assert "is still unreachable as the process exits: 101 broadcast(s) made in this " \
        "process were dropped before its shards were known" in output, output  # fmt: skip


def test_a_slot_moved_to_another_shard(
    cluster: RedisCluster, rooms: list[str], servers: list[RoomsServer]
) -> None:
    """The node that gave the slot away ends the subscriptions to its channels; each
    worker logs that once, its link to that shard reconnects, and the room's channel
    moves to the link of the shard that has the slot now: the room's members get its
    broadcasts again, in order."""
    from redis.crc import key_slot

    marks = [len(server.output()) for server in servers]
    members = [Member(server) for server in servers]
    for member in members:
        member.join(rooms[1])
    source = cluster.master_of(room_channel(rooms[1]))
    target = cluster.masters()[2]
    cluster.move_slot(key_slot(room_channel(rooms[1]).encode()), target)
    for server, mark in zip(servers, marks, strict=True):
        wait_for(lambda s=server, m=mark: "is back after" in s.output()[m:], timeout=30)
    for member in members:  # probes until delivery resumes
        wait_for(lambda m=member: probe(servers[0], m, rooms[1]), timeout=30)
    numsub = "PUBSUB SHARDNUMSUB"
    assert target.client().execute_command(numsub, room_channel(rooms[1]))[0][1] == 2
    assert source.client().execute_command(numsub, room_channel(rooms[1]))[0][1] == 0
    servers[0].http("/flood", count=50, prefix="moved", room=rooms[1])
    for member in members:
        got = until(member, "moved-49")
        assert [m for m in got if m != "probe"] == [f"moved-{n}" for n in range(50)]
        member.close()
    for server, mark in zip(servers, marks, strict=True):
        log = server.output()[mark:]
        assert log.count("lost its subscriptions (the server ended the subscription") == 1, log
        assert log.count("is back after") == 1, log


def probe(server: RoomsServer, member: Member, room: str) -> bool:
    """Broadcast ``probe`` to ``room``: whether ``member`` has it within 0.5 s."""
    server.http("/broadcast", message="probe", room=room)
    try:
        return bool(member.recv(timeout=0.5) == "probe")
    except TimeoutError:
        return False


def test_a_master_killed_and_its_replica_promoted(
    cluster: RedisCluster, rooms: list[str], servers: list[RoomsServer]
) -> None:
    """The rooms of the other shards lose nothing; those of the failed shard get what is
    made after the failover (its broadcasts made during the outage are dropped and
    counted: with one worker that broadcasts and receives, what arrives and the count in
    the log add up); each worker logs the outage once and the recovery once."""
    a, b = servers
    marks = {server.port: len(server.output()) for server in servers}
    members = {server.port: [Member(server) for _ in rooms] for server in servers}
    for server in servers:
        for member, room in zip(members[server.port], rooms, strict=True):
            member.join(room)
    for room in rooms:
        a.http("/broadcast", message="before", room=room)
    for member in [*members[a.port], *members[b.port]]:
        assert member.recv(timeout=30) == "before"
    victim = cluster.master_of(room_channel(rooms[0]))
    victim.kill()
    for server in servers:
        wait_for(lambda s=server: "is unreachable" in s.output()[marks[s.port] :], timeout=30)
    made = 0
    deadline = time.monotonic() + 60
    after_back = 0
    while after_back < 10:  # broadcasts through the failover, and 10 rounds after it
        for room in rooms:
            a.http("/broadcast", message=f"during-{made}", room=room)
        made += 1
        if all("is back after" in server.output()[marks[server.port] :] for server in servers):
            after_back += 1
        assert time.monotonic() < deadline, [server.output() for server in servers]
        time.sleep(0.05)
    assert cluster.master_of(room_channel(rooms[0])).port != victim.port  # promoted
    for room in rooms:
        a.http("/flood", count=10, prefix="after", room=room)
    during = [f"during-{n}" for n in range(made)]
    after = [f"after-{n}" for n in range(10)]
    for server in servers:
        for member, room in zip(members[server.port][1:], rooms[1:], strict=True):
            assert [member.recv(timeout=30) for _ in during + after] == during + after, room
    got = {server.port: until(members[server.port][0], "after-9") for server in servers}
    for received in got.values():
        kept = [m for m in received if m.startswith("during-")]
        assert kept == sorted(kept, key=lambda m: int(m.split("-")[1]))  # in order
        assert received[len(kept) :] == after
    log = a.output()[marks[a.port] :]
    shard = re.search(r"Redis broker (redis\+cluster://\S+ \([^)]*\)) is unreachable", log)
    assert shard is not None, log
    name = re.escape(shard.group(1))
    assert len(re.findall(f"{name} is unreachable", log)) == 1, log
    back = re.findall(rf"{name} is back after [0-9.]+ s; (\d+) broadcast", log)
    assert len(back) == 1, log
    received_during = len(got[a.port]) - len(after)
    assert received_during + int(back[0]) == made, (received_during, back, made)
    assert received_during > 0
    for server in servers:
        output = server.output()[marks[server.port] :]
        assert output.count("is unreachable") == output.count("is back after") == 1, output
    for member in [*members[a.port], *members[b.port]]:
        member.close()


def by_sender(member: Member, count: int) -> dict[str, list[int]]:
    """``count`` messages ``<sender>-<n>`` of ``member``, the numbers by sender."""
    got: dict[str, list[int]] = {}
    for _ in range(count):
        sender, number = member.recv(timeout=30).split("-")
        got.setdefault(sender, []).append(int(number))
    return got


def until(member: Member, last: str) -> list[str]:
    """The messages of ``member`` up to ``last``."""
    got = []
    while not got or got[-1] != last:
        got.append(member.recv(timeout=30))
    return got
