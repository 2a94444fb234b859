"""A uWSGI set up so that WebSockets cannot work is refused or warned of, saying what to do."""

from __future__ import annotations

import os
import sys
import urllib.request

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from .helpers import APP_MODULES, ROOT, UWSGI, ServerProcess, UwsgiServer, free_port


@pytest.mark.parametrize(
    ("flavour", "engine_args", "message"),
    [
        ("plain", ["--gevent", "10"], "WebSocket needs uWSGI started with --threads N"),
        ("gevent", ["--threads", "2"], "GeventWebSocket needs uWSGI started with --gevent N"),
        ("asyncio", ["--gevent", "10"], "AsyncioWebSocket needs uWSGI started with --asyncio N"),
        ("asyncio", ["--asyncio", "10"], "needs uWSGI started with --asyncio N --greenlet"),
    ],
)
def test_wrong_engine_is_refused_at_start_up(
    flavour: str, engine_args: list[str], message: str
) -> None:
    server = UwsgiServer(
        ["--module", APP_MODULES.get(flavour, "tests.app:app"), *engine_args],
        env={"TEST_FLAVOUR": flavour},
    )
    try:
        with pytest.raises(RuntimeError, match="uWSGI exited"):
            server.wait_ready(timeout=30)
        assert message in server.output()
    finally:
        server.stop()


def test_the_http_router_without_http_websockets_is_warned_of_and_refused() -> None:
    """Without --http-websockets the router would relay no frame after the 101: refuse."""
    port = free_port()
    args = [
        UWSGI, "--master", "--http", f"127.0.0.1:{port}", "--virtualenv", sys.prefix,
        "--pythonpath", str(ROOT), "--need-app", "--module", "tests.app:app", "--gevent", "10",
    ]  # fmt: skip
    with ServerProcess(args, port, ROOT, {**os.environ, "TEST_FLAVOUR": "gevent"}) as server:
        assert "WebSocket upgrades will be refused: uWSGI's --http router" in server.output()
        with pytest.raises(InvalidStatus) as info:
            connect(f"{server.url}/echo", open_timeout=10)
        response = info.value.response
        assert response.status_code == 500
        assert b"start uWSGI with --http-websockets" in response.body
        with urllib.request.urlopen(f"http://{server.address}/echo", timeout=10) as page:
            assert page.read() == b"HTTP view at the same URL"  # HTTP views as ever
