"""The peers bench/echo.py compares with: echo servers users would pick instead of this package.

    python bench/peer_echo.py picows 127.0.0.1 5000        # picows on uvloop
    python bench/peer_echo.py websockets 127.0.0.1 5000    # websockets' asyncio server
    gunicorn -k gevent -w 1 -b 127.0.0.1:5000 --chdir bench peer_echo:flask_sock_app

Each echoes every message on ``/echo`` as it came (text as text, binary as binary) and
answers any other request with an HTTP status, which is how bench/echo.py sees that it is
up. ``flask_sock_app`` is flask-sock's documented echo loop, for gunicorn's gevent worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any


def _flask_sock_app() -> Any:
    from flask import Flask
    from flask_sock import Sock

    app = Flask(__name__)
    sock = Sock(app)

    @app.route("/")
    def index() -> str:
        return "flask-sock echo\n"

    @sock.route("/echo")
    def echo(ws: Any) -> None:
        while True:
            ws.send(ws.receive())

    return app


def run_picows(host: str, port: int) -> None:
    """Serve with picows on uvloop: a listener that sends every frame back as it came."""
    import uvloop
    from picows import (
        WSFrame,
        WSListener,
        WSMsgType,
        WSTransport,
        WSUpgradeRequest,
        ws_create_server,
    )

    class Echo(WSListener):  # type: ignore[misc]
        def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
            if frame.msg_type == WSMsgType.CLOSE:
                transport.send_close(frame.get_close_code(), frame.get_close_message())
                transport.disconnect()
            elif frame.msg_type in (WSMsgType.TEXT, WSMsgType.BINARY):
                # The benchmark's messages come whole, in one frame each.
                transport.send(frame.msg_type, frame.get_payload_as_memoryview())

    def listener(request: WSUpgradeRequest) -> Echo | None:
        return Echo() if request.path == b"/echo" else None  # None: 404

    async def main() -> None:
        server = await ws_create_server(listener, host, port)
        await server.serve_forever()

    uvloop.run(main())


def run_websockets(host: str, port: int) -> None:
    """Serve with websockets' asyncio server on asyncio's own loop, as its docs show."""
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(connection: ServerConnection) -> None:
        # A close between a message and its echo makes send() raise: not a failure.
        with contextlib.suppress(ConnectionClosed):
            async for message in connection:
                await connection.send(message)

    async def main() -> None:
        async with serve(echo, host, port) as server:
            await server.serve_forever()

    asyncio.run(main())


def __getattr__(name: str) -> Any:
    # Made when gunicorn imports it: the other peers need not have Flask's extension.
    if name == "flask_sock_app":
        return _flask_sock_app()
    raise AttributeError(name)


if __name__ == "__main__":
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with contextlib.suppress(KeyboardInterrupt):  # bench/echo.py stops it with SIGINT
        {"picows": run_picows, "websockets": run_websockets}[kind](host, port)
