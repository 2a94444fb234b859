"""What the test apps of every flavour share: the Flask app, its HTTP views, the event log.

uWSGI runs one worker process in the tests, so one list holds every connection's events.
"""

from __future__ import annotations

import json
from typing import Any

from flask import Flask

app = Flask("tests.app")
app.config["WEBSOCKET_MAX_MESSAGE_SIZE"] = 1_500_000  # read by init_app (see tests)
app.config["WEBSOCKET_SUBPROTOCOLS"] = ["echo.v1"]  # every route's, unless the route says
events: list[dict[str, Any]] = []

#: Per-route compression settings of the ``/deflate-tuned`` routes.
TUNED_DEFLATE = {
    "server_max_window_bits": 10,
    "client_max_window_bits": 9,
    "server_no_context_takeover": True,
}


def pick_last(offered: list[str]) -> str | None:
    """A subprotocol selector: the client's last offer, none when it offers ``none``."""
    return None if "none" in offered else offered[-1]


def pick_unoffered(offered: list[str]) -> str | None:
    """A faulty subprotocol selector: it answers what the client did not offer."""
    return "never-offered"


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


@app.route("/memory")
def memory() -> Any:
    """The worker's peak and current resident memory, in KiB (Linux)."""
    with open("/proc/self/status") as status:
        fields = dict(line.split(":", 1) for line in status)
    return {name: int(fields[name].split()[0]) for name in ("VmHWM", "VmRSS")}


@app.route("/echo")
def echo_http() -> str:
    return "HTTP view at the same URL"
