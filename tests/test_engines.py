"""A flavour under the wrong uWSGI loop engine fails at start-up, saying which to use."""

from __future__ import annotations

import pytest

from .helpers import APP_MODULES, UwsgiServer


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
