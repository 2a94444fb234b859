"""Fixtures: the test app served by real uWSGI, once per flavour for the session; and, for
the tests of the in-process test client, a new app of each flavour made by the test
module's own ``make_app(flavour)``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from flask import Flask
from hypothesis import HealthCheck, settings

from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.testing import TestClient

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


@pytest.fixture(params=["plain", "gevent", "asyncio"])
def made(request: pytest.FixtureRequest) -> tuple[Flask, WebSocketExtension]:
    """A new app and its extension of each flavour, from the test module's ``make_app``."""
    made: tuple[Flask, WebSocketExtension] = request.module.make_app(request.param)
    return made


@pytest.fixture
def app(made: tuple[Flask, WebSocketExtension]) -> Flask:
    """The app of :func:`made`."""
    return made[0]


@pytest.fixture
def websocket(made: tuple[Flask, WebSocketExtension]) -> WebSocketExtension:
    """The extension of :func:`made`."""
    return made[1]


@pytest.fixture
def client(websocket: WebSocketExtension) -> TestClient:
    """The in-process test client of :func:`made`'s app."""
    return websocket.test_client()


# Hypothesis (tests/test_core_fuzz.py): the suite's budget is small and derandomized, so CI
# is deterministic; HYPOTHESIS_PROFILE=fuzz (or --hypothesis-profile=fuzz) runs long.
settings.register_profile(
    "suite",
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=20000,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))
