"""What the test apps of every flavour share: the Flask app, its HTTP views, the event log.

uWSGI runs one worker process in the tests, so one list holds every connection's events.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

app = Flask("tests.app")
app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] = 1_500_000  # read by init_app (see tests)
events: list[dict[str, Any]] = []


def record(**event: Any) -> None:
    """Keep ``event`` for ``GET /events``."""
    events.append(event)


@app.route("/events")
def get_events() -> Any:
    return app.response_class(json.dumps(events), mimetype="application/json")


@app.route("/events", methods=["DELETE"])
def clear_events() -> str:
    events.clear()
    return ""


@app.route("/loop-iterations")
def loop_iterations() -> str:
    """The gevent hub's loop iteration count (how often it woke up)."""
    import gevent

    return str(gevent.get_hub().loop.iteration)


@app.route("/echo")
def echo_http() -> str:
    return "HTTP view at the same URL"
