"""The test app of the asyncio flavour: the routes of ``app.py``, as coroutines.

Served with ``uwsgi --asyncio N --greenlet --module tests.app_asyncio:app``; plus a few
routes of its own (broadcast, cancellation).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from flask import request

from flask_uwsgi_websocket import AsyncioWebSocket, AsyncioWebSocketClient, ConnectionClosed

from .app_common import (
    TUNED_DEFLATE,
    add_async_flask_routes,
    app,
    pick_last,
    pick_unoffered,
    record,
)

websocket = AsyncioWebSocket(app)
clients: dict[str, AsyncioWebSocketClient] = {}
subscribers: set[AsyncioWebSocketClient] = set()
tasks: set[asyncio.Task[Any]] = set()  # strong references to background tasks


def spawn(coroutine: Any) -> None:
    task = asyncio.get_event_loop().create_task(coroutine)
    tasks.add(task)
    task.add_done_callback(tasks.discard)


@websocket.route("/echo")
async def echo(ws: AsyncioWebSocketClient) -> None:
    while True:
        msg = await ws.receive()
        await ws.send(msg)  # type: ignore[arg-type]


@websocket.route("/iterate")
async def iterate(ws: AsyncioWebSocketClient) -> None:
    async for message in ws:
        await ws.send(message)
    record(route="iterate", code=ws.close_code, reason=ws.close_reason)


@websocket.route("/vars/<int:number>/<name>")
async def url_variables(ws: AsyncioWebSocketClient, number: int, name: str) -> None:
    await ws.send(json.dumps({"number": number, "name": name, "type": type(number).__name__}))


@websocket.route("/info")
async def info(ws: AsyncioWebSocketClient) -> None:
    await ws.send(
        json.dumps(
            {
                "id": ws.id,
                "path": ws.environ["PATH_INFO"],
                "query": request.args.get("q"),
                "connected": ws.connected,
                "subprotocol": ws.subprotocol,
                "class": type(ws).__name__,
            }
        )
    )


@websocket.route("/close/<int:code>")
async def close(ws: AsyncioWebSocketClient, code: int) -> None:
    await ws.close(code, "server says bye")
    record(route="close", connected=ws.connected, code=ws.close_code)
    try:
        await ws.send("too late")
    except ConnectionClosed as exc:
        record(route="close", send_after_close=exc.code)


@websocket.route("/peer-close")
async def peer_close(ws: AsyncioWebSocketClient) -> None:
    try:
        while True:
            await ws.receive()
    except ConnectionClosed as exc:
        record(route="peer-close", code=exc.code, reason=exc.reason, ok=exc.ok,
               close_code=ws.close_code, close_reason=ws.close_reason,
               connected=ws.connected)  # fmt: skip
        raise


@websocket.route("/return")
async def returns(ws: AsyncioWebSocketClient) -> None:
    await ws.send("bye")


@websocket.route("/raise")
async def raises(ws: AsyncioWebSocketClient) -> None:
    await ws.send("about to fail")
    raise RuntimeError("boom from the handler")


@websocket.route("/stream-echo", max_message_size=2**28)
@websocket.route("/stream-echo-deflate", max_message_size=2**28, compression="deflate")
async def stream_echo(ws: AsyncioWebSocketClient) -> None:
    """Each message back as it streams in, piece by piece: bounded memory at any size."""
    while True:
        await ws.send(ws.receive_streaming())


@websocket.route("/small", max_message_size=1024)
@websocket.route("/uncompressed", compression=None)
@websocket.route("/deflate-tuned", compression=TUNED_DEFLATE)
async def small(ws: AsyncioWebSocketClient) -> None:
    async for message in ws:
        await ws.send(message)


@websocket.route("/subprotocol", subprotocols=["chat.v2", "chat.v1"])
@websocket.route("/subprotocol-pick", subprotocols=pick_last)
@websocket.route("/subprotocol-bad", subprotocols=pick_unoffered)
async def subprotocol(ws: AsyncioWebSocketClient) -> None:
    await ws.send(json.dumps(ws.subprotocol))


@websocket.route("/keepalive-busy", ping_interval=0.3, ping_timeout=0.6)
async def keepalive_busy(ws: AsyncioWebSocketClient) -> None:
    await asyncio.sleep(2.5)
    await ws.send("still here")
    record(route="keepalive-busy", connected=ws.connected)


@websocket.route("/receive-then-busy")
async def receive_then_busy(ws: AsyncioWebSocketClient) -> None:
    """As tests/app.py's."""
    await ws.send(await ws.receive())
    until = time.monotonic() + 30
    while not os.path.exists(request.args["flag"]) and time.monotonic() < until:
        await asyncio.sleep(0.05)
    await ws.send(f"{await ws.receive()} {await ws.receive()}")


@websocket.route("/keepalive-echo", ping_interval=0.3, ping_timeout=0.6)
async def keepalive_echo(ws: AsyncioWebSocketClient) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    finally:
        record(route="keepalive-echo", code=ws.close_code)


@websocket.route("/push")
async def push(ws: AsyncioWebSocketClient) -> None:
    for i in range(30):
        await ws.send(f"tick {i}")
        await asyncio.sleep(0.05)


@websocket.route("/ping")
async def ping(ws: AsyncioWebSocketClient) -> None:
    await ws.ping(b"abc")
    await ws.send(await ws.receive())  # type: ignore[arg-type]


@websocket.route("/timeout")
async def receive_timeout(ws: AsyncioWebSocketClient) -> None:
    loop = asyncio.get_event_loop()
    started = loop.time()
    message = await ws.receive(timeout=0.3)
    await ws.send(json.dumps({"message": message, "waited": loop.time() - started}))
    await ws.send(await ws.receive())  # type: ignore[arg-type]


@websocket.route("/nonblocking")
async def nonblocking(ws: AsyncioWebSocketClient) -> None:
    nones = 0
    while True:
        message = ws.recv_nb()
        if message is None:
            nones += 1
            await asyncio.sleep(0.01)
            continue
        ws.send_nb(json.dumps({"message": message, "nones": nones > 0}))
        nones = 0


@websocket.route("/relay/<name>")
async def relay(ws: AsyncioWebSocketClient, name: str) -> None:
    clients[name] = ws
    try:
        async for message in ws:
            assert isinstance(message, str)
            _, target, text = message.split(" ", 2)
            await clients[target].send(text)
    finally:
        clients.pop(name, None)


@websocket.route("/concurrent-send")
async def concurrent_send(ws: AsyncioWebSocketClient) -> None:
    size = int(await ws.receive() or 0)

    async def other() -> None:
        for i in range(200):
            await ws.send("o" * size + f" other {i}")
            await asyncio.sleep(0)

    spawn(other())
    for i in range(200):
        await ws.send("h" * size + f" handler {i}")
        await asyncio.sleep(0)
    await ws.receive()


@websocket.route("/blocked")
async def blocked(ws: AsyncioWebSocketClient) -> None:
    """Awaiting something else (a long sleep) when the peer goes away."""
    await ws.send("sleeping")
    try:
        await asyncio.sleep(30)
        record(route="blocked", outcome="woke up")
    except asyncio.CancelledError:
        record(route="blocked", outcome="CancelledError", code=ws.close_code)
        raise


@websocket.route("/sharedarea")
async def sharedarea(ws: AsyncioWebSocketClient) -> None:
    import uwsgi

    uwsgi.sharedarea_write(0, 0, b"shared text")
    await ws.send_from_sharedarea(0, 0)
    await ws.send_binary_from_sharedarea(0, 7)


@websocket.route("/send-types")
async def send_types(ws: AsyncioWebSocketClient) -> None:
    await ws.send("text")
    await ws.send(b"bytes")
    await ws.send(bytearray(b"bytearray"))
    await ws.send(memoryview(b"memoryview"))
    await ws.send_binary(b"send_binary")
    await ws.send("binary=True", binary=True)
    try:
        await ws.send(42)  # type: ignore[arg-type]
    except TypeError as exc:
        await ws.send(f"TypeError: {exc}")


@websocket.route("/subscribe")
async def subscribe(ws: AsyncioWebSocketClient) -> None:
    subscribers.add(ws)
    try:
        async for _ in ws:
            pass
    finally:
        subscribers.discard(ws)


@websocket.route("/broadcast")
async def broadcast(ws: AsyncioWebSocketClient) -> None:
    """``N``: one task sends N numbered messages to every subscriber."""
    count = int(await ws.receive() or 0)

    async def send_all() -> None:
        for i in range(count):
            for subscriber in list(subscribers):
                await subscriber.send(f"news {i}")

    task = asyncio.get_event_loop().create_task(send_all())
    await task
    await ws.send(f"sent {count} to {len(subscribers)}")


# Flask integration (see app_common): contexts, lifecycle, extensions, blueprints, errors.
add_async_flask_routes(app, websocket)
