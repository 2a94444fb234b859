"""A callback handler, gevent flavour: a class whose methods the connection's events call.

    python examples/callbacks.py          # uWSGI on http://localhost:5000, 100 greenlets
    uwsgi --master --http :5000 --http-websockets --gevent 100 \\
          --wsgi-file examples/callbacks.py --callable app

Connect to ws://localhost:5000/count/<name>: a greeting, then each message comes back
numbered; the server logs how many messages each connection sent and how it closed.
"""

from flask import Flask

from flask_uwsgi_websocket import GeventWebSocket, WebSocketHandler

app = Flask(__name__)
websocket = GeventWebSocket(app)


@websocket.route("/count/<name>")
class Counter(WebSocketHandler):
    """Numbers each connection's messages; one instance per connection."""

    def on_open(self, ws, name):  # type: ignore[no-untyped-def]
        self.name, self.count = name, 0
        ws.send(f"hello {name}")

    def on_message(self, ws, message):  # type: ignore[no-untyped-def]
        self.count += 1
        ws.send(f"{self.count}: {message}")

    def on_close(self, ws, code, reason):  # type: ignore[no-untyped-def]
        app.logger.warning("%s sent %d message(s), closed with %s", self.name, self.count, code)


if __name__ == "__main__":
    app.run(gevent=100)
