"""The rooms benchmark's app, gevent flavour, Redis broker (see bench/rooms.py).

    FLASK_WEBSOCKET_BROKER_URL=redis://127.0.0.1:6379/0 uwsgi --master --processes 4 \\
        --gevent 600 --http-socket 127.0.0.1:5000 --listen 4096 \\
        --wsgi-file bench/rooms_app.py --callable app

A client of ``/rooms/<room>`` joins ``room``, is sent ``{"pid": ...}`` (its worker), then
gets the broadcasts; each text message it sends is answered with ``{"pid", "received"}``:
the pub/sub messages its worker's Redis subscriber has received since it started, by
type (``message``: a broadcast; ``subscribe``, ``unsubscribe``: confirmations), counted
where redis-py parses them, whatever the broker does with them after.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from typing import Any

import redis.client
from flask import Flask

from flask_uwsgi_websocket import GeventWebSocket

app = Flask(__name__)
app.config.from_prefixed_env()
websocket = GeventWebSocket(app)

#: Pub/sub messages this process's subscriber received, by type.
received: Counter[str] = Counter()
_handle_message = redis.client.PubSub.handle_message


def _counted(self: redis.client.PubSub, response: Any, *args: Any, **kwargs: Any) -> Any:
    """``PubSub.handle_message``, counting each message by its type first."""
    if isinstance(response, list) and response and isinstance(response[0], bytes):
        received[response[0].decode()] += 1
    return _handle_message(self, response, *args, **kwargs)


redis.client.PubSub.handle_message = _counted  # type: ignore[method-assign]


@websocket.route("/rooms/<room>")
def member(ws: Any, room: str) -> None:
    """Join ``room``; answer every message with this worker's counts."""
    ws.join(room)
    ws.send(json.dumps({"pid": os.getpid()}))
    for _ in ws:
        ws.send(json.dumps({"pid": os.getpid(), "received": received}))
