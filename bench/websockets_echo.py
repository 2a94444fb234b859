"""A peer to compare with: the ``websockets`` library's asyncio server, echoing.

    python bench/websockets_echo.py --port 5000

Every message is echoed back as it came (text or binary), on any path, with the
library's defaults (keepalive ping every 20 s, no compression unless the client asks).
A plain HTTP request gets the library's answer (426). Runs until SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection, serve


async def echo(ws: ServerConnection) -> None:
    """Echo until the client goes."""
    async for message in ws:
        await ws.send(message)


async def main(host: str, port: int) -> None:
    """Serve until cancelled."""
    async with serve(echo, host, port, backlog=4096) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main(args.host, args.port))
