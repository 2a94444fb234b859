"""``flask run`` (Werkzeug's development server) serves WebSocket routes too, in every flavour.

The examples run under ``flask --app examples/<example>.py run``; real clients talk to them.
"""

from __future__ import annotations

import re
import signal
import sys
import urllib.request
from pathlib import Path

import pytest
from websockets.sync.client import connect

from .helpers import ROOT, ServerProcess, child_env, free_port

EXAMPLES = {"plain": "echo.py", "gevent": "echo_gevent.py", "asyncio": "echo_asyncio.py"}


class FlaskRun(ServerProcess):
    """``flask --app examples/<example> run`` on a free port."""

    # Python ignores SIGINT when started with it ignored (a background job): SIGTERM ends it.
    stop_signal = signal.SIGTERM

    def __init__(self, example: str) -> None:
        port = free_port()
        flask = str(Path(sys.executable).parent / "flask")
        args = [flask, "--app", f"examples/{example}", "run", "--port", str(port)]
        super().__init__(args, port, ROOT, child_env())


@pytest.mark.parametrize("flavour", list(EXAMPLES))
def test_flask_run_serves_websocket_routes(flavour: str) -> None:
    with FlaskRun(EXAMPLES[flavour]) as server:
        for _ in range(2):  # one connection after another
            with connect(f"{server.url}/echo") as ws:
                ws.send("héllo")
                assert ws.recv(timeout=5) == "héllo"
                ws.send(b"\x00" * 100_000)
                assert ws.recv(timeout=5) == b"\x00" * 100_000
                ws.close(4000, "bye")
            assert (ws.close_code, ws.close_reason) == (4000, "bye")  # the server's answer
        with connect(f"{server.url}/echo") as first, connect(f"{server.url}/echo") as second:
            first.send("one")
            second.send("two")
            assert (first.recv(timeout=5), second.recv(timeout=5)) == ("one", "two")
        with urllib.request.urlopen(f"http://{server.address}/", timeout=5) as response:
            assert response.status == 200  # HTTP views as ever
        assert re.search(r'"\S*GET /echo HTTP/1.1\S*" 101', server.output())
