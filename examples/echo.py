"""Echo server, plain flavour (threads): text comes back as text, binary as binary.

    python examples/echo.py        # uWSGI on http://localhost:5000, 8 threads
    uwsgi --master --http :5000 --http-websockets --threads 8 \\
          --wsgi-file examples/echo.py --callable app
"""

from flask import Flask

from flask_uwsgi_websocket import WebSocket

app = Flask(__name__)
app.config.from_prefixed_env()  # e.g. FLASK_WEBSOCKET_MAX_MESSAGE_SIZE=16777216
websocket = WebSocket(app)


@app.route("/")
def index() -> str:
    return "WebSocket echo at ws://<this host>/echo\n"


@websocket.route("/echo")
def echo(ws):  # type: ignore[no-untyped-def]
    for message in ws:
        ws.send(message)


if __name__ == "__main__":
    app.run(threads=8)
