"""Fixtures: the test app served by real uWSGI, once per flavour for the session."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from .uwsgi_server import FLAVOUR_ARGS, UwsgiServer

APP_MODULES = {"asyncio": "tests.app_asyncio:app"}


class AppServer(UwsgiServer):
    """``tests/app.py`` served by uWSGI in one flavour."""

    def __init__(self, flavour: str, mode: str = "http", extra_args: tuple[str, ...] = ()) -> None:
        self.flavour = flavour
        super().__init__(
            [
                "--module",
                APP_MODULES.get(flavour, "tests.app:app"),
                "--sharedarea",
                "1",
                *FLAVOUR_ARGS[flavour],
            ],
            extra_args,
            mode=mode,
            env={"TEST_FLAVOUR": flavour},
        )

    def http(self, path: str, method: str = "GET") -> Any:
        """The body of an HTTP request to the app (JSON decoded when it is JSON)."""
        req = urllib.request.Request(f"http://{self.address}{path}", method=method)
        with urllib.request.urlopen(req, timeout=10) as response:
            body = response.read()
            if response.headers.get_content_type() == "application/json":
                return json.loads(body)
            return body.decode()

    def events(self, route: str | None = None) -> list[dict[str, Any]]:
        """What the app's handlers recorded (see ``tests/app.py``)."""
        found: list[dict[str, Any]] = self.http("/events")
        return [e for e in found if route is None or e.get("route") == route]


@pytest.fixture(
    scope="session",
    params=[(flavour, mode) for mode in ("http", "http-socket")
            for flavour in ("plain", "gevent", "asyncio")],
    ids=[f"{flavour}-{mode}" for mode in ("http", "http_socket")
         for flavour in ("plain", "gevent", "asyncio")],
)  # fmt: skip
def server(request: pytest.FixtureRequest) -> Iterator[AppServer]:
    """The test app under uWSGI in each flavour, behind the ``--http`` router and not."""
    flavour, mode = request.param
    with AppServer(flavour, mode) as srv:
        yield srv


@pytest.fixture(scope="session")
def gevent_server() -> Iterator[AppServer]:
    """The test app under uWSGI in the gevent flavour only."""
    with AppServer("gevent") as srv:
        yield srv


@pytest.fixture(scope="session")
def asyncio_server() -> Iterator[AppServer]:
    """The test app under uWSGI in the asyncio flavour only."""
    with AppServer("asyncio") as srv:
        yield srv
