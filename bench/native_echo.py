"""The baseline: a WebSocket echo loop on uWSGI's own primitives (run under ``--gevent``).

    uwsgi --master --gevent 100 --http-socket 127.0.0.1:5000 --wsgi-file bench/native_echo.py

Every message is echoed back as binary. ``uwsgi.websocket_recv`` raises ``OSError``
when the peer goes away, which ends the request quietly. A request that is not a
WebSocket upgrade (the benchmark's readiness probe) gets a plain ``200``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import uwsgi


def application(env: dict[str, Any], sr: Callable[..., Any]) -> Iterable[bytes]:
    """Handshake with uWSGI's C code, then echo until the connection closes."""
    if "HTTP_SEC_WEBSOCKET_KEY" not in env:
        sr("200 OK", [("Content-Type", "text/plain")])
        return [b"native echo\n"]
    uwsgi.websocket_handshake(env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", ""))
    try:
        while True:
            msg = uwsgi.websocket_recv()
            uwsgi.websocket_send_binary(msg)
    except OSError:
        return []
