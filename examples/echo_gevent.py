"""Echo server, gevent flavour: text comes back as text, binary as binary.

    python examples/echo_gevent.py        # uWSGI on http://localhost:5000, 100 greenlets
    uwsgi --master --http :5000 --http-websockets --gevent 100 \\
          --wsgi-file examples/echo_gevent.py --callable app
"""

from flask import Flask

from flask_uwsgi_websocket import GeventWebSocket

app = Flask(__name__)
app.config.from_prefixed_env()  # e.g. FLASK_WEBSOCKET_MAX_MESSAGE_SIZE=16777216
websocket = GeventWebSocket(app)


@app.route("/")
def index() -> str:
    return "WebSocket echo at ws://<this host>/echo\n"


@websocket.route("/echo")
def echo(ws):  # type: ignore[no-untyped-def]
    while True:
        msg = ws.receive()
        ws.send(msg)


if __name__ == "__main__":
    app.run(gevent=100)
