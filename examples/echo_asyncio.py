"""Echo server, asyncio flavour: text comes back as text, binary as binary.

    python examples/echo_asyncio.py      # uWSGI on http://localhost:5000, 100 async cores
    uwsgi --master --http :5000 --http-websockets --asyncio 100 --greenlet \\
          --wsgi-file examples/echo_asyncio.py --callable app
"""

from flask import Flask

from flask_uwsgi_websocket import AsyncioWebSocket

app = Flask(__name__)
app.config.from_prefixed_env()  # e.g. FLASK_WEBSOCKET_MAX_MESSAGE_SIZE=16777216
websocket = AsyncioWebSocket(app)


@app.route("/")
def index() -> str:
    return "WebSocket echo at ws://<this host>/echo\n"


@websocket.route("/echo")
async def echo(ws):  # type: ignore[no-untyped-def]
    async for message in ws:
        await ws.send(message)


if __name__ == "__main__":
    app.run(asyncio=100, greenlet=True)
