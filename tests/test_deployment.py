"""README.rst's Deployment chapter, run for real: Debian's nginx and uWSGI's ``--https``
router in front of uWSGI, with TLS from a certificate made here; and TLS in the worker
itself (``--https-socket``, ``--ssl-socket``, ``--suwsgi-socket``), refused before the 101.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import InvalidMessage, InvalidStatus
from websockets.http11 import Response
from websockets.sync.client import ClientConnection, connect

from flask_uwsgi_websocket.uwsgi_api import listens_on

from .helpers import AppServer, NginxServer, free_port, tls_certificate

Certificate = tuple[Path, Path]


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    """A self-signed certificate for 127.0.0.1, and its key."""
    return tls_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def nginx_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nginx")


def client_ssl(certificate: Certificate) -> ssl.SSLContext:
    """A client context that trusts the test's certificate, and nothing else."""
    return ssl.create_default_context(cafile=str(certificate[0]))


def ws_connect(url: str, certificate: Certificate, **kwargs: Any) -> ClientConnection:
    """A ``websockets`` client connection to ``url`` (``ws://`` or ``wss://``)."""
    if url.startswith("wss://"):
        kwargs["ssl"] = client_ssl(certificate)
    return connect(url, open_timeout=10, **kwargs)


def echoes(ws: ClientConnection) -> bool:
    ws.send("hello")
    return ws.recv(timeout=10) == "hello"


# TLS in the worker: refused before the 101, with one log line per worker.

#: What the log line and the 501's body both say.
TLS_REASON = "end TLS at nginx, or at uWSGI's --https router with --http-websockets"


@pytest.fixture(scope="module", params=["plain", "gevent", "asyncio"])
def tls_worker(
    request: pytest.FixtureRequest, certificate: Certificate
) -> Iterator[tuple[AppServer, dict[str, str]]]:
    """The test app in one worker with an ``--http-socket`` and the three kinds of TLS
    socket; and the address of each TLS socket."""
    cert, key = certificate
    tls = {name: f"127.0.0.1:{free_port()}" for name in ("https", "ssl", "suwsgi")}
    extra = tuple(
        arg
        for name, address in tls.items()
        for arg in (f"--{name}-socket", f"{address},{cert},{key}")
    )
    with AppServer(request.param, "http-socket", ("--processes", "1", *extra)) as server:
        yield server, tls


def refusal(url: str, certificate: Certificate) -> Response:
    """The HTTP response refusing an upgrade at ``url``.

    Tried twice if no HTTP response came at all: uWSGI's ``--https-socket`` sometimes
    never reads a request (its log shows it with no variables, ``app: -1``): with
    ``--threads`` it drops the connection at its 4 s ``--socket-timeout``, with
    ``--asyncio`` it holds it until the client gives up. Measured with the ``websockets``
    client, 10 connections at a time: about once in 200 to 400, never with gevent.
    """
    for attempt in (1, 2):
        try:
            ws_connect(url, certificate).close()
        except InvalidStatus as refused:
            return refused.response
        except (InvalidMessage, TimeoutError):
            if attempt == 2:
                raise
    raise AssertionError(f"{url}: the upgrade was accepted")


def test_https_socket_refuses_the_upgrade_before_the_101(
    tls_worker: tuple[AppServer, dict[str, str]], certificate: Certificate, nginx_dir: Path
) -> None:
    server, tls = tls_worker
    response = refusal(f"wss://{tls['https']}/echo", certificate)
    assert response.status_code == 501
    assert response.body is not None
    assert TLS_REASON in response.body.decode()
    # nginx reaches the other two: uwsgi_pass over TLS (suwsgi://).
    for name in ("ssl", "suwsgi"):
        site = f"location / {{ include uwsgi_params; uwsgi_pass suwsgi://{tls[name]}; }}"
        with NginxServer(site, nginx_dir) as nginx, pytest.raises(InvalidStatus) as refused:
            ws_connect(f"ws://{nginx.address}/echo", certificate)
        assert refused.value.response.status_code == 501, nginx.output()
    # The same worker's plain socket serves WebSockets.
    with ws_connect(server.url + "/echo", certificate) as ws:
        assert echoes(ws)
    assert server.output().count(TLS_REASON) == 1, server.output()


@pytest.mark.parametrize(
    ("address", "local", "expected"),
    [
        ("127.0.0.1:8443", ("127.0.0.1", 8443), True),
        ("127.0.0.1:8443", ("127.0.0.1", 8080), False),
        ("127.0.0.1:8443", ("10.0.0.1", 8443), False),
        (":8443", ("10.0.0.1", 8443), True),
        ("0.0.0.0:8443", ("127.0.0.1", 8443), True),
        ("[::]:8443", ("::1", 8443, 0, 0), True),
        ("[::1]:8443", ("::1", 8443, 0, 0), True),
        ("127.0.0.1:8443", ("::ffff:127.0.0.1", 8443, 0, 0), True),
        ("localhost:8443", ("127.0.0.1", 8443), True),
        ("/run/app.sock", "/run/app.sock", True),
        ("/run/app.sock", "/run/other.sock", False),
        ("@app", b"\0app", True),
        ("@app", b"\0other", False),
        ("/run/app.sock", ("127.0.0.1", 8443), False),
        ("/run/app.sock", "", False),
    ],
)
def test_listens_on(address: str, local: object, expected: bool) -> None:
    assert listens_on(address, local) is expected
