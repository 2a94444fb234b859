"""Echo load generator: picows on uvloop, one message in flight per connection.

    python bench/client.py ws://127.0.0.1:5000/echo --conns 50 --size 64 --duration 5

Opens ``--conns`` connections, then on each one sends a binary message of ``--size``
bytes, waits for the whole echo, and sends again. After ``--warmup`` seconds it counts
completed round trips for ``--duration`` seconds and prints one JSON object on stdout:
round trips per second, per-connection minimum and maximum, and any errors.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

import uvloop
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0


class EchoListener(WSListener):
    """Keeps exactly one message in flight and counts completed round trips."""

    def __init__(self, payload: bytes) -> None:
        """Echo ``payload`` over and over."""
        self.payload = payload
        self.transport: WSTransport | None = None
        self.received = 0  # bytes of the current echo received so far
        self.count = 0  # completed round trips
        self.error: str | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        """Remember the transport; sending starts with :meth:`start`."""
        self.transport = transport

    def start(self) -> None:
        """Send the first message."""
        assert self.transport is not None
        self.transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        """Collect the echo (possibly fragmented); when complete, send the next message."""
        if frame.msg_type == WSMsgType.CLOSE:
            if not transport.is_close_frame_sent:
                self.error = self.error or f"server closed: {frame.get_close_code()}"
            transport.disconnect()
            return
        if frame.msg_type not in (WSMsgType.BINARY, WSMsgType.CONTINUATION):
            self.error = self.error or f"unexpected frame type {frame.msg_type}"
            return
        self.received += frame.payload_size
        if not frame.fin:
            return
        if self.received != len(self.payload):
            self.error = self.error or f"echo of {self.received} bytes, sent {len(self.payload)}"
        self.received = 0
        self.count += 1
        if not transport.is_close_frame_sent:
            transport.send(WSMsgType.BINARY, self.payload)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        """Note an unexpected disconnect."""
        if self.error is None and not transport.is_close_frame_sent:
            self.error = "disconnected"


async def run(
    url: str,
    conns: int,
    size: int,
    warmup: float,
    duration: float,
    sample: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Run the load and return the figures (``sample``: see :func:`count_round_trips`)."""
    payload = os.urandom(size)
    opened = await asyncio.wait_for(
        asyncio.gather(
            *(ws_connect(lambda: EchoListener(payload), url) for _ in range(conns)),
            return_exceptions=True,
        ),
        CONNECT_TIMEOUT + 5,
    )
    failures = [repr(r) for r in opened if isinstance(r, BaseException)]
    listeners = [cast(EchoListener, r[1]) for r in opened if not isinstance(r, BaseException)]
    result: dict[str, Any] = {"url": url, "conns": conns, "size": size, "errors": failures}
    try:
        if failures:
            return result
        result.update(await count_round_trips(listeners, warmup, duration, sample))
        return result
    finally:
        await close_all(listeners)


async def count_round_trips(
    echoes: Sequence[Any],
    warmup: float,
    duration: float,
    sample: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Start each echo loop (its ``start()``; it counts round trips in ``count`` and
    keeps its failure in ``error``), let them warm up, then count for ``duration``
    seconds: the figures of a run. ``sample``, if given, is called (without yielding to
    the loop, so no round trip is counted on one side of it only) as the counting starts
    and as it ends; its two results are ``samples``."""
    for echo in echoes:
        echo.start()
    await asyncio.sleep(warmup)
    samples = [sample()] if sample else []
    before = [echo.count for echo in echoes]
    start = time.perf_counter()
    await asyncio.sleep(duration)
    after = [echo.count for echo in echoes]
    elapsed = time.perf_counter() - start
    if sample:
        samples.append(sample())
    per_conn = [a - b for a, b in zip(after, before, strict=True)]
    return {
        "rt_per_s": sum(per_conn) / elapsed,
        "round_trips": sum(per_conn),
        "elapsed": elapsed,
        "min_conn": min(per_conn),
        "max_conn": max(per_conn),
        "stalled_conns": sum(1 for n in per_conn if n == 0),
        "errors": [echo.error for echo in echoes if echo.error],
    } | ({"samples": samples} if sample else {})


async def close_all(listeners: list[EchoListener]) -> None:
    """Close handshake on every connection; wait (bounded) for the server to hang up."""
    transports = [lst.transport for lst in listeners if lst.transport is not None]
    for transport in transports:
        if not transport.is_disconnected:
            transport.send_close(WSCloseCode.OK)  # picows' default, 1005, is not for the wire
    waits = [t.wait_disconnected() for t in transports]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.gather(*waits), CLOSE_TIMEOUT)
    for transport in transports:
        transport.disconnect(graceful=False)


def main() -> None:
    """Parse arguments, pin to a CPU if asked, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = uvloop.run(run(args.url, args.conns, args.size, args.warmup, args.duration))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1 if "rt_per_s" not in result else 0)


if __name__ == "__main__":
    main()
