"""Fixtures: the test app served by real uWSGI, once per flavour for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from .helpers import AppServer


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
