"""Echo server, gevent flavour, as a callback handler: its connections outlive their
requests, so an idle one holds no greenlet and no uWSGI core (see ``gevent.py``)."""

from typing import Any

from flask import Flask

from flask_uwsgi_websocket import GeventWebSocket, WebSocketHandler

app = Flask(__name__)
app.config.from_prefixed_env()  # e.g. FLASK_WEBSOCKET_MAX_MESSAGE_SIZE=16777216
websocket = GeventWebSocket(app)


@app.route("/")
def index() -> str:
    return "WebSocket echo at ws://<this host>/echo\n"


@websocket.route("/echo")
class Echo(WebSocketHandler):
    """Sends each message back."""

    def on_message(self, ws: Any, message: str | bytes) -> None:
        ws.send(message)
