"""Echo load generator with permessage-deflate: raw sockets and zlib on uvloop.

    python bench/deflate_client.py ws://127.0.0.1:5000/echo --conns 50 --size 64 --duration 5

bench/client.py's counterpart for compressed traffic (picows does not do
permessage-deflate): each of ``--conns`` connections offers ``permessage-deflate;
client_max_window_bits``, fails unless the server agrees, then sends a text message of
``--size`` bytes of JSON-like ASCII, compressed, waits for the whole echo, inflates it
and checks it, and sends again. The frame sent is compressed once per connection with a
fresh compressor (within the window the server asked for): RFC 7692 lets a sender start
a new deflate stream at any message, so it is valid whether or not context takeover was
agreed, and the client spends its CPU on reading the echoes. Those are inflated, when
compressed (a server may send a message as it is), as the server's parameters say: one
inflater for the connection, or one per message when the server said
``server_no_context_takeover``. Prints one JSON object, as client.py does,
with ``extension`` (the server's answer) and ``wire`` (bytes of one sent frame).
``--count N`` makes exactly N round trips per connection instead (no warm-up), for
bench/deflate_callgrind.py.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import random
import sys
import zlib
from typing import Any
from urllib.parse import urlsplit

import uvloop
from client import count_round_trips
from websockets.speedups import apply_mask

CONNECT_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0
TAIL = b"\x00\x00\xff\xff"
OFFER = "permessage-deflate; client_max_window_bits"


def json_like(size: int, seed: int = 15) -> bytes:
    """``size`` bytes of ASCII that read like a JSON list of records (cut at ``size``)."""
    rng = random.Random(seed)
    words = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"]
    records = []
    length = 0
    while length < size:
        record = {
            "id": rng.randrange(10**6),
            "user": f"user-{rng.randrange(1000)}",
            "score": round(rng.random() * 100, 3),
            "tags": rng.sample(words, 3),
            "active": rng.random() < 0.5,
        }
        records.append(record)
        length = len(json.dumps(records))
    return json.dumps(records).encode()[:size]


def frame_header(b0: int, length: int, mask: bytes) -> bytes:
    """A masked frame's header: ``b0``, the length, the masking key."""
    if length < 126:
        return bytes((b0, 0x80 | length)) + mask
    if length < 65536:
        return bytes((b0, 0x80 | 126)) + length.to_bytes(2, "big") + mask
    return bytes((b0, 0x80 | 127)) + length.to_bytes(8, "big") + mask


def parameters(header: str) -> dict[str, str | None]:
    """The parameters of a ``permessage-deflate`` response header."""
    name, *params = (part.strip() for part in header.split(";"))
    if name != "permessage-deflate":
        raise ValueError(f"not permessage-deflate: {header!r}")
    result: dict[str, str | None] = {}
    for param in params:
        key, _, value = param.partition("=")
        result[key.strip()] = value.strip().strip('"') or None
    return result


class Echo(asyncio.Protocol):
    """One connection: the handshake, then one compressed message in flight at a time."""

    def __init__(self, host: str, path: str, message: bytes) -> None:
        """Send ``message`` over and over to ``path`` once connected."""
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Key: {base64.b64encode(os.urandom(16)).decode()}\r\n"
            f"Sec-WebSocket-Extensions: {OFFER}\r\n\r\n"
        ).encode()
        self.message = message
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.frame = b""
        self.extension = ""
        self.inflater: Any = None
        self.wbits = 15
        self.fresh_inflater = False
        self.count = 0
        self.limit = 0  # stop after this many round trips; 0: never
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.running = False
        self.error: str | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Send the opening handshake."""
        self.transport = transport  # type: ignore[assignment]  # uvloop's: no subclass
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        """The handshake's answer, then echoes."""
        self.buffer += data
        if not self.upgraded.done():
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            del self.buffer[: end + 4]
            try:
                self.handshake(head)
            except ValueError as exc:
                self.upgraded.set_exception(exc)
                return
            self.upgraded.set_result(None)
        self.read_frames()

    def handshake(self, head: list[str]) -> None:
        """Check the 101 and the extension agreed; make the frame to send."""
        if not head[0].startswith("HTTP/1.1 101"):
            raise ValueError(f"no upgrade: {head[0]!r}")
        headers = {}
        for line in head[1:]:
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        self.extension = headers.get("sec-websocket-extensions", "")
        if not self.extension:
            raise ValueError("the server did not agree permessage-deflate")
        params = parameters(self.extension)
        self.wbits = int(params.get("server_max_window_bits") or 15)
        self.fresh_inflater = "server_no_context_takeover" in params
        self.inflater = zlib.decompressobj(-self.wbits)
        client_wbits = int(params.get("client_max_window_bits") or 15)
        compressor = zlib.compressobj(6, zlib.DEFLATED, -max(client_wbits, 9))
        payload = compressor.compress(self.message) + compressor.flush(zlib.Z_SYNC_FLUSH)
        assert payload.endswith(TAIL)
        payload = payload[:-4]
        mask = os.urandom(4)
        self.frame = frame_header(0xC1, len(payload), mask) + apply_mask(payload, mask)

    def read_frames(self) -> None:
        """Take every whole frame in the buffer."""
        buf = self.buffer
        pos = 0
        while len(buf) - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            start = pos + 2
            if length == 126:
                if len(buf) - pos < 4:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 4], "big")
                start += 2
            elif length == 127:
                if len(buf) - pos < 10:
                    break
                length = int.from_bytes(buf[pos + 2 : pos + 10], "big")
                start += 8
            stop = start + length
            if stop > len(buf):
                break
            self.on_frame(b0, bytes(buf[start:stop]))
            pos = stop
        del buf[:pos]

    def on_frame(self, b0: int, payload: bytes) -> None:
        """One whole frame from the server."""
        opcode = b0 & 0x0F
        if opcode == 0x8:
            if self.running and self.error is None:
                self.error = f"server closed: {int.from_bytes(payload[:2], 'big')}"
            if not self.closed.done():
                self.closed.set_result(None)
            return
        if opcode in (0x9, 0xA):
            return  # a keepalive ping: the bench does not last long enough to need a pong
        if b0 == 0xC1:
            if self.fresh_inflater:
                self.inflater = zlib.decompressobj(-self.wbits)
            payload = self.inflater.decompress(payload + TAIL)
        elif b0 != 0x81:  # a server may send a message uncompressed (RFC 7692, 6)
            self.error = self.error or f"not a whole text frame: {b0:#x}"
            return
        if payload != self.message:
            self.error = self.error or "the echo is not the message"
        self.count += 1
        if self.count == self.limit:
            self.running = False
            self.done.set_result(None)
        if self.running and self.transport is not None:
            self.transport.write(self.frame)

    def start(self) -> None:
        """Send the first message."""
        assert self.transport is not None
        self.running = True
        self.transport.write(self.frame)

    def close(self) -> None:
        """Send a close frame (1000); the server answers and hangs up."""
        self.running = False
        if self.transport is not None and not self.transport.is_closing():
            mask = os.urandom(4)
            self.transport.write(frame_header(0x88, 2, mask) + apply_mask(b"\x03\xe8", mask))

    def connection_lost(self, exc: Exception | None) -> None:
        """Note an unexpected disconnect."""
        if self.running and self.error is None:
            self.error = "disconnected"
        if not self.upgraded.done():
            self.upgraded.set_exception(ConnectionError("closed before the upgrade"))
        if not self.closed.done():
            self.closed.set_result(None)


async def run(
    url: str, conns: int, size: int, warmup: float, duration: float, count: int = 0
) -> dict[str, Any]:
    """Run the load and return the figures."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    message = json_like(size)
    loop = asyncio.get_running_loop()

    async def connect() -> Echo:
        _, echo = await loop.create_connection(
            lambda: Echo(f"{host}:{port}", parts.path or "/", message), host, port
        )
        await echo.upgraded
        return echo

    opened = await asyncio.wait_for(
        asyncio.gather(*(connect() for _ in range(conns)), return_exceptions=True),
        CONNECT_TIMEOUT + 5,
    )
    failures = [repr(r) for r in opened if isinstance(r, BaseException)]
    echoes = [r for r in opened if isinstance(r, Echo)]
    result: dict[str, Any] = {"url": url, "conns": conns, "size": size, "errors": failures}
    try:
        if failures:
            return result
        result.update(extension=echoes[0].extension, wire=len(echoes[0].frame))
        if count:
            for echo in echoes:
                echo.limit = count
                echo.start()
            await asyncio.gather(*(echo.done for echo in echoes))
            result.update(round_trips=count * conns, rt_per_s=0.0)
            result["errors"] = [echo.error for echo in echoes if echo.error]
            return result
        result.update(await count_round_trips(echoes, warmup, duration))
        return result
    finally:
        for echo in echoes:
            echo.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(e.closed for e in echoes)), CLOSE_TIMEOUT)
        for echo in echoes:
            if echo.transport is not None:
                echo.transport.abort()


def main() -> None:
    """Parse arguments, pin to a CPU if asked, run, print JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--conns", type=int, default=1)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin this process to one CPU")
    parser.add_argument("--count", type=int, default=0, help="round trips per connection")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    result = uvloop.run(
        run(args.url, args.conns, args.size, args.warmup, args.duration, args.count)
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1 if "rt_per_s" not in result else 0)


if __name__ == "__main__":
    main()
