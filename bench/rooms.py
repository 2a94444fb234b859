"""Rooms benchmark: the Redis messages each worker receives when the app has many rooms.

    .venv/bin/python bench/rooms.py [--rooms 1000] [--workers 4] [--rounds 10]
                                    [--everyone 10] [--cluster] [--json out.json]

bench/rooms_app.py runs under ``uwsgi --master --processes W --gevent N --http-socket``
with the Redis broker (a redis-server of its own; with ``--cluster``, a Redis Cluster of
three masters, which also gives, per node, the room channels subscribed there and the
commands and bytes it handled during the broadcasts). This process opens one connection per
room (``/rooms/room-<i>``; the kernel spreads them over the workers), then broadcasts, as a
process that serves no connection: ``--rounds`` times one message to each room, and
``--everyone`` messages to every connection (``room=None``), then ``websocket.flush()``.
Every connection must get its room's messages and the app-wide ones, each exactly once and
in the order they were made (with a cluster, the room's in order and the app-wide ones in
order: they go through two shards), otherwise the exit status is 1. Each worker's Redis
subscriber counts the pub/sub messages it receives (see bench/rooms_app.py); the table
gives, per worker, the rooms it has members in, the broadcasts it received during the
broadcasts (``message``), how many of them had a recipient there (``useful``), and the
messages and subscription confirmations it received while the connections joined.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from echo import HOST, free_port, log_trouble, run_pinned
from websockets.asyncio.client import ClientConnection, connect

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT))
from tests.helpers import RedisCluster, RedisServer  # noqa: E402

CHANNEL = "bench-rooms"
#: Sharded pub/sub's messages, and the others' names for them.
SHARDED = {"smessage": "message", "ssubscribe": "subscribe", "sunsubscribe": "unsubscribe"}
#: Connections opened at the same time.
CONNECT_BATCH = 100
#: Seconds every message may take to arrive, all of them.
DELIVERY_TIMEOUT = 120.0


class Member:
    """One connection, in one room: what it received."""

    def __init__(self, ws: ClientConnection, room: str, pid: int) -> None:
        self.ws = ws
        self.room = room
        self.pid = pid
        self.messages: list[str] = []
        self.stats: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def read(self) -> None:
        """Keep the broadcasts, hand the stats replies over."""
        async for message in self.ws:
            assert isinstance(message, str)
            if message.startswith("{"):
                await self.stats.put(json.loads(message))
            else:
                self.messages.append(message)

    async def ask(self) -> dict[str, Any]:
        """This member's worker's counts."""
        await self.ws.send("stats")
        return await asyncio.wait_for(self.stats.get(), 30)


async def open_member(port: int, room: str) -> Member:
    ws = await connect(f"ws://{HOST}:{port}/rooms/{room}", max_queue=None, open_timeout=60)
    hello = json.loads(await ws.recv())
    return Member(ws, room, hello["pid"])


async def worker_counts(members: list[Member]) -> dict[int, Counter[str]]:
    """Each worker's counts, asked of one of its members (sharded pub/sub's ``smessage``
    counted as ``message``, and so on)."""
    one_each = {member.pid: member for member in members}
    counts = {}
    for pid, member in sorted(one_each.items()):
        received = (await member.ask())["received"]
        counts[pid] = Counter({SHARDED.get(kind, kind): n for kind, n in received.items()})
    return counts


def node_stats(ports: list[int], channel: str) -> list[dict[str, int]]:
    """Each Redis node's commands and bytes out so far, and the room channels subscribed."""
    from redis import Redis

    found = []
    for port in ports:
        node = Redis(host=HOST, port=port, socket_timeout=10)
        stats = node.info("stats")
        channels = node.execute_command("PUBSUB SHARDCHANNELS", f"{channel}:room:*")
        found.append({
            "port": port,
            "commands": stats["total_commands_processed"],
            "bytes_out": stats["total_net_output_bytes"],
            "room_channels": len(channels),
        })  # fmt: skip
        node.close()
    return found


async def run(
    port: int, args: argparse.Namespace, websocket: Any, nodes: list[int]
) -> dict[str, Any]:
    """Open the connections, broadcast, check what arrived; the figures."""
    rooms = [f"room-{i}" for i in range(args.rooms)]
    members: list[Member] = []
    started = time.monotonic()
    for first in range(0, len(rooms), CONNECT_BATCH):
        batch = rooms[first : first + CONNECT_BATCH]
        members += await asyncio.gather(*(open_member(port, room) for room in batch))
    joined = time.monotonic() - started
    readers = [asyncio.create_task(member.read()) for member in members]
    before = await worker_counts(members)
    nodes_before = node_stats(nodes, CHANNEL)

    started = time.monotonic()
    for round_ in range(args.rounds):
        for room in rooms:
            websocket.broadcast(f"b-{round_}", room=room)
        if round_ < args.everyone:
            websocket.broadcast(f"all-{round_}")
    for extra in range(args.rounds, args.everyone):
        websocket.broadcast(f"all-{extra}")
    published = await asyncio.to_thread(websocket.flush, 60)
    deadline = time.monotonic() + DELIVERY_TIMEOUT
    expected_count = args.rounds + args.everyone
    while any(len(m.messages) < expected_count for m in members):
        if time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    delivered = time.monotonic() - started
    await asyncio.sleep(0.5)  # late duplicates would arrive by now
    after = await worker_counts(members)
    nodes_after = node_stats(nodes, CHANNEL)

    failures = [] if published else ["flush() says some broadcasts were not published"]
    expected = []
    for round_ in range(max(args.rounds, args.everyone)):
        if round_ < args.rounds:
            expected.append(f"b-{round_}")
        if round_ < args.everyone:
            expected.append(f"all-{round_}")

    def channels(messages: list[str]) -> Any:
        """The messages of each channel, with a cluster (two shards maybe); else all."""
        if not nodes:
            return messages
        return [[m for m in messages if m.startswith(p)] for p in ("b-", "all-")]

    wrong = [m for m in members if channels(m.messages) != channels(expected)]
    if wrong:
        failures.append(
            f"{len(wrong)} connections did not get exactly their messages in order "
            f"(first: {wrong[0].room} on {wrong[0].pid}: {wrong[0].messages[:6]}...)"
        )
    rooms_of: Counter[int] = Counter(member.pid for member in members)
    workers = []
    for pid in sorted(after):
        during = after[pid] - before.get(pid, Counter())
        useful = rooms_of[pid] * args.rounds + args.everyone
        workers.append(
            {
                "pid": pid,
                "rooms": rooms_of[pid],
                "message": during["message"],
                "useful": useful,
                "other_during": {k: v for k, v in during.items() if k != "message"},
                "subscribe_at_join": before.get(pid, Counter())["subscribe"],
                "message_at_join": before.get(pid, Counter())["message"],
            }
        )
    for member in members:
        await member.ws.close()
    for reader in readers:
        reader.cancel()
    broadcasts = args.rounds * args.rooms + args.everyone
    node_figures = [
        {
            "port": now["port"],
            "room_channels": now["room_channels"],
            "commands": now["commands"] - then["commands"],
            "bytes_out": now["bytes_out"] - then["bytes_out"],
        }
        for then, now in zip(nodes_before, nodes_after, strict=True)
    ]
    return {
        "rooms": args.rooms, "rounds": args.rounds, "everyone": args.everyone,
        "broadcasts": broadcasts, "join_s": joined, "deliver_s": delivered,
        "workers": workers, "nodes": node_figures, "failures": failures,
    }  # fmt: skip


def table(result: dict[str, Any]) -> str:
    rows = [
        f"{result['broadcasts']:,} broadcasts ({result['rounds']} to each of "
        f"{result['rooms']:,} rooms, {result['everyone']} to every connection); "
        f"joined in {result['join_s']:.1f} s, all delivered {result['deliver_s']:.1f} s "
        f"after the first broadcast",
        "",
        "| worker | rooms | messages received | with a recipient there | share useful "
        "| other pub/sub messages | while joining: messages | subscribe confirmations |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for n, w in enumerate(result["workers"], 1):
        share = w["useful"] / w["message"] if w["message"] else 0.0
        other = ", ".join(f"{k} {v}" for k, v in sorted(w["other_during"].items())) or "-"
        rows.append(
            f"| {n} | {w['rooms']:,} | {w['message']:,} | {w['useful']:,} | {share:.0%} "
            f"| {other} | {w['message_at_join']:,} | {w['subscribe_at_join']:,} |"
        )
    if result["nodes"]:
        rows += [
            "",
            "| node | room channels | commands during the broadcasts | bytes out |",
            "|---|--:|--:|--:|",
        ]
        for n, node in enumerate(result["nodes"], 1):
            rows.append(
                f"| {n} | {node['room_channels']:,} | {node['commands']:,} "
                f"| {node['bytes_out']:,} |"
            )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=10, help="broadcasts to each room")
    parser.add_argument("--everyone", type=int, default=10, help="app-wide broadcasts")
    parser.add_argument("--cluster", action="store_true", help="a Redis Cluster of 3 masters")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    args = parser.parse_args()
    notes: list[str] = []
    logdir = Path(tempfile.mkdtemp(prefix="rooms-bench-"))
    log = logdir / "uwsgi.log"
    with contextlib.ExitStack() as stack:
        nodes: list[int] = []
        if args.cluster:
            cluster = stack.enter_context(RedisCluster(masters=3, replicas=0))
            url, nodes = cluster.url, [node.port for node in cluster.nodes]
        else:
            redis = RedisServer()
            redis.start()
            stack.callback(redis.dir.cleanup)
            stack.callback(redis.stop)
            url = redis.url
        os.environ["FLASK_WEBSOCKET_BROKER_URL"] = url
        os.environ["FLASK_WEBSOCKET_BROKER_CHANNEL"] = CHANNEL
        port = free_port()
        greenlets = args.rooms // args.workers * 2 + 100
        cmd = [
            str(Path(sys.prefix) / "bin" / "uwsgi"),
            "--master", "--processes", str(args.workers), "--gevent", str(greenlets),
            "--http-socket", f"{HOST}:{port}", "--listen", "4096",
            "--virtualenv", sys.prefix, "--pythonpath", str(ROOT), "--chdir", str(ROOT),
            "--need-app", "--disable-logging",
            "--wsgi-file", str(BENCH / "rooms_app.py"), "--callable", "app",
        ]  # fmt: skip
        stack.enter_context(run_pinned(cmd, port, None, log, notes, "rooms_app", dict(os.environ)))
        from rooms_app import websocket  # this process broadcasts with the same broker

        result = asyncio.run(run(port, args, websocket, nodes))
    print(table(result))
    if trouble := log_trouble(log):
        notes.append("uWSGI log: " + " | ".join(trouble))
    for note in notes:
        print("note:", note)
    for failure in result["failures"]:
        print("FAILED:", failure)
    print(f"uWSGI log: {log}")
    if args.json:
        args.json.write_text(json.dumps({**result, "notes": notes}, indent=2) + "\n")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
