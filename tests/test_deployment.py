"""README.rst's Deployment chapter, run for real: the files of ``examples/deploy/`` (each
one in README whole) with Debian's nginx and uWSGI's ``--https`` router in front of uWSGI,
with TLS from a certificate made here; and TLS in the worker itself (``--https-socket``,
``--ssl-socket``, ``--suwsgi-socket``), refused before the 101.

What the tests change in those files: addresses, ports and certificate paths, and the
``/srv/app`` of the systemd unit. nginx's ``listen``, ``server_name`` and
``ssl_certificate*`` lines are :class:`NginxServer`'s own.
"""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from flask_uwsgi_websocket.uwsgi_api import listens_on

from .helpers import (
    ROOT,
    UWSGI,
    AppServer,
    NginxServer,
    ServerProcess,
    child_env,
    free_port,
    tls_certificate,
)

DEPLOY = ROOT / "examples" / "deploy"

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


def test_tls_in_the_worker_is_refused_before_the_101(
    tls_worker: tuple[AppServer, dict[str, str]], certificate: Certificate, nginx_dir: Path
) -> None:
    server, tls = tls_worker
    # A client straight to --https-socket under gevent only: with --threads or --asyncio,
    # uWSGI's --https-socket sometimes never reads a request, whatever its route (its log
    # shows it with no variables, "app: -1"), and drops it at --socket-timeout (threads)
    # or when the client gives up (asyncio); measured with the websockets client, about
    # once in 200 to 400 connections under load. The request never reaches Python.
    if server.flavour == "gevent":
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"wss://{tls['https']}/echo", certificate)
        assert refused.value.response.status_code == 501
        assert TLS_REASON in (refused.value.response.body or b"").decode()
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


# The configurations of README's Deployment chapter.

#: The configuration files of ``examples/deploy``, each shown whole in README.
CONFIG_FILES = (
    "uwsgi.ini",
    "nginx-proxy.conf",
    "nginx-uwsgi.conf",
    "uwsgi-https.ini",
    "app.service",
)


def literal_blocks(rst: str) -> list[str]:
    """The literal blocks (after ``::`` or ``.. code-block::``) of ``rst``, dedented."""
    lines = rst.splitlines()
    blocks = []
    for number, line in enumerate(lines):
        if line.rstrip().endswith("::") or line.startswith(".. code-block::"):
            body = []
            for following in lines[number + 1 :]:
                if following.strip() and not following.startswith(" "):
                    break
                body.append(following)
            blocks.append(textwrap.dedent("\n".join(body)).strip("\n") + "\n")
    return blocks


def test_readme_shows_each_deploy_file_whole_and_nothing_the_tests_do_not_run() -> None:
    readme = (ROOT / "README.rst").read_text()
    chapter = readme.split("\nDeployment\n----------\n", 1)[1].split("\n-------\n", 1)[0]
    blocks = literal_blocks(chapter)
    files = {name: (DEPLOY / name).read_text() for name in CONFIG_FILES}
    for name, text in files.items():
        assert text in blocks, f"README.rst does not show examples/deploy/{name} as it is"
    app = (DEPLOY / "app.py").read_text()
    for block in blocks:
        assert block in files.values() or block in app, f"not in examples/deploy:\n{block}"


def deploy_file(name: str, changes: dict[str, str] | None = None) -> str:
    """``examples/deploy/<name>``, each ``old`` of ``changes`` (it must be there) made ``new``."""
    text = (DEPLOY / name).read_text()
    for old, new in (changes or {}).items():
        assert old in text, f"{name} no longer has {old!r}"
        text = text.replace(old, new)
    return text


def nginx_site(
    name: str, directory: Path, certificate: Certificate | None, changes: dict[str, str]
) -> NginxServer:
    """nginx serving the site file ``examples/deploy/<name>`` on a port of its own, with TLS
    when ``certificate`` is given: the file's text before ``server {`` goes to the ``http``
    block, its ``server`` block without the lines :class:`NginxServer` writes itself."""
    text = deploy_file(name, changes)
    http, server = text.split("server {", 1)
    body = server.rsplit("}", 1)[0]
    own = ("listen ", "server_name ", "ssl_certificate")
    kept = [line for line in body.splitlines() if not line.strip().startswith(own)]
    return NginxServer("\n".join(kept), directory, certificate, http=http)


class Deployed(ServerProcess):
    """``uwsgi.ini`` in a copy of ``examples/deploy``, started as ``app.service`` starts it:
    its ``ExecStart``, with ``NOTIFY_SOCKET`` as systemd gives it (``Type=notify``), stopped
    with systemd's stop signal, SIGTERM (the unit sets no ``KillSignal``)."""

    stop_signal = signal.SIGTERM

    def __init__(self, directory: Path) -> None:
        self.http_socket = f"127.0.0.1:{free_port()}"
        self.socket = f"127.0.0.1:{free_port()}"
        shutil.copy(DEPLOY / "app.py", directory)
        (directory / "uwsgi.ini").write_text(
            deploy_file(
                "uwsgi.ini",
                {"127.0.0.1:8080": self.http_socket, "127.0.0.1:3031": self.socket},
            )
        )
        self.unit = directory / "app.service"
        self.unit.write_text(
            deploy_file(
                "app.service",
                {"/srv/app/.venv/bin/uwsgi": UWSGI, "/srv/app": str(directory)},
            )
        )
        exec_start = next(
            line.split("=", 1)[1]
            for line in self.unit.read_text().splitlines()
            if line.startswith("ExecStart=")
        )
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(directory / "notify"))
        env = child_env(NOTIFY_SOCKET=str(directory / "notify"))
        port = int(self.http_socket.rsplit(":", 1)[1])
        super().__init__(shlex.split(exec_start), port, directory, env)

    def notified(self, timeout: float = 10.0) -> list[bytes]:
        """What uWSGI told systemd's notification socket, up to ``READY=1``."""
        self.notify.settimeout(timeout)
        messages = [self.notify.recv(4096)]
        while b"READY=1" not in messages[-1]:
            messages.append(self.notify.recv(4096))
        return messages

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.notify.close()


@pytest.fixture(scope="module")
def deployed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """The app of ``examples/deploy`` under uWSGI, as ``app.service`` and ``uwsgi.ini`` say."""
    with Deployed(tmp_path_factory.mktemp("srv-app")) as server:
        yield server


def get_json(url: str, certificate: Certificate) -> Any:
    """The JSON body of a GET to ``url`` (``http://`` or ``https://``)."""
    context = client_ssl(certificate) if url.startswith("https://") else None
    with urllib.request.urlopen(url, timeout=10, context=context) as response:
        return json.loads(response.read())


def check_site(url: str, certificate: Certificate) -> None:
    """What a browser on ``url`` (the page's origin) sees of the deployed app: ``url_for``
    gives the WebSocket's URL, ``wss://`` for ``https://``; an upgrade with the page's
    ``Origin`` (and the ``Host`` of that URL, port included) echoes; another site's is
    refused."""
    ws_url = "ws" + url.removeprefix("http")
    assert get_json(url + "/", certificate) == {"echo": ws_url + "/echo"}
    with ws_connect(ws_url + "/echo", certificate, origin=url) as ws:
        assert echoes(ws)
    with pytest.raises(InvalidStatus) as refused:
        ws_connect(ws_url + "/echo", certificate, origin="https://elsewhere.example")
    assert refused.value.response.status_code == 403


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize(
    ("site", "backend"),
    [("nginx-proxy.conf", "http_socket"), ("nginx-uwsgi.conf", "socket")],
    ids=["proxy_pass", "uwsgi_pass"],
)
def test_nginx_in_front(
    site: str,
    backend: str,
    tls: bool,
    deployed: Deployed,
    certificate: Certificate,
    nginx_dir: Path,
) -> None:
    address = getattr(deployed, backend)
    changes = (
        {"127.0.0.1:8080": address} if backend == "http_socket" else {"127.0.0.1:3031": address}
    )
    with nginx_site(site, nginx_dir, certificate if tls else None, changes) as nginx:
        check_site(nginx.url, certificate)


def test_debian_uwsgi_params_alone_fail_the_origin_check_on_another_port(
    deployed: Deployed, certificate: Certificate, nginx_dir: Path
) -> None:
    """Why ``nginx-uwsgi.conf`` passes ``$http_host``: Debian's ``$host`` has no port."""
    site = f"location / {{ include uwsgi_params; uwsgi_pass {deployed.socket}; }}"
    with NginxServer(site, nginx_dir, certificate) as nginx:
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(f"wss://{nginx.address}/echo", certificate, origin=nginx.url)
        assert refused.value.response.status_code == 403


def test_the_systemd_unit(deployed: Deployed) -> None:
    """What can be checked without systemd running: the unit file is valid, and uWSGI
    tells systemd it is ready (``Type=notify``). ``deployed`` was started with the unit's
    ``ExecStart`` and is stopped with SIGTERM at the end of the module."""
    assert b"READY=1" in deployed.notified()[-1]
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(deployed.unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert verify.returncode == 0, verify.stdout + verify.stderr


class HttpsRouter(ServerProcess):
    """``uwsgi-https.ini`` in a copy of ``examples/deploy``: uWSGI's ``--https`` router."""

    def __init__(self, directory: Path, certificate: Certificate) -> None:
        port = free_port()
        self.https_url = f"https://127.0.0.1:{port}"
        self.certificate = certificate
        shutil.copy(DEPLOY / "app.py", directory)
        ini = directory / "uwsgi-https.ini"
        cert, key = certificate
        router = f"127.0.0.1:{port},{cert},{key}"
        ini.write_text(
            deploy_file(
                "uwsgi-https.ini",
                {":8443,/etc/ssl/certs/example.pem,/etc/ssl/private/example.key": router},
            )
        )
        super().__init__([UWSGI, "--ini", str(ini)], port, directory, child_env())

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the app answers over TLS."""
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"uWSGI exited:\n{self.output()}")
            try:
                get_json(self.https_url + "/", self.certificate)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"uWSGI did not answer:\n{self.output()}") from None
                time.sleep(0.1)


def test_uwsgi_https_router(
    tmp_path_factory: pytest.TempPathFactory, certificate: Certificate
) -> None:
    with HttpsRouter(tmp_path_factory.mktemp("srv-app-https"), certificate) as router:
        check_site(router.https_url, certificate)


def test_nginx_closes_idle_websockets_the_apps_pings_keep_them_open(
    gevent_server: AppServer, nginx_dir: Path
) -> None:
    """``proxy_read_timeout`` against ``ping_interval``, scaled down: nginx cuts a WebSocket
    after 1 s without traffic (``/echo``: the default ping_interval, 25 s), not one whose
    server pings every 0.3 s (``/keepalive-echo``). The client itself never pings."""
    changes = {
        "127.0.0.1:8080": gevent_server.address,
        "proxy_read_timeout 60s;": "proxy_read_timeout 1s;",
    }
    with nginx_site("nginx-proxy.conf", nginx_dir, None, changes) as nginx:
        url = f"ws://{nginx.address}"
        with (
            connect(url + "/keepalive-echo", ping_interval=None) as kept,
            connect(url + "/echo", ping_interval=None) as idle,
        ):
            started = time.monotonic()
            with pytest.raises(ConnectionClosed) as cut:
                idle.recv(timeout=15)
            assert cut.value.rcvd is None  # no close frame: nginx dropped the connection
            time.sleep(max(0.0, started + 2.0 - time.monotonic()))  # idle for twice the timeout
            assert echoes(kept)
