"""pytest fixtures for apps that use Flask-uWSGI-WebSocket (a ``pytest11`` plugin).

Installed with the package and loaded by pytest on its own. The fixtures use the
test's ``app`` fixture (the app under test, with its extension), as pytest-flask's do:

- ``websocket_client``: the extension's in-process test client of ``app``
  (:class:`~flask_uwsgi_websocket.testing.TestClient`), no uWSGI needed;
- ``websocket_live_server``: ``app`` under real uWSGI on a free loopback port
  (:class:`~flask_uwsgi_websocket.live_server.LiveServer`), stopped after the test;
  ``@pytest.mark.uwsgi(processes=2, ...)`` gives it ``app.run``'s keywords.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from .live_server import LiveServer

if TYPE_CHECKING:
    from flask import Flask

    from .testing import TestClient


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``uwsgi`` marker."""
    config.addinivalue_line(
        "markers",
        "uwsgi(**options): uWSGI options (app.run's keywords) of websocket_live_server",
    )


def _extension(app: Flask) -> Any:
    websocket = app.extensions.get("uwsgi_websocket")
    if websocket is None:
        pytest.fail(f"the app fixture's app {app.name!r} has no Flask-uWSGI-WebSocket extension")
    return websocket


@pytest.fixture
def websocket_client(app: Flask) -> TestClient:
    """The in-process WebSocket test client of the ``app`` fixture."""
    client: TestClient = _extension(app).test_client(app)
    return client


@pytest.fixture
def websocket_live_server(app: Flask, request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    """The ``app`` fixture's app under real uWSGI; ``.url`` is its ``ws://`` base URL."""
    _extension(app)
    marker = request.node.get_closest_marker("uwsgi")
    with LiveServer(app, **(marker.kwargs if marker is not None else {})) as server:
        yield server
