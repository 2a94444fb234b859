"""The app under real uWSGI for a test: :class:`LiveServer`.

For what the in-process test client cannot show (the flavour's uWSGI engine,
several worker processes, the ``--http`` router), a test starts the app as
``app.run()`` would, on a free loopback port, talks to it with any WebSocket
client, and stops it::

    with LiveServer(app, processes=2) as server:
        with websockets.sync.client.connect(server.url + "/echo") as ws:
            ...

The pytest plugin's ``websocket_live_server`` fixture does this for a test.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .runner import checked_command

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["LiveServer", "free_port", "wait_for_answer"]


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for_answer(
    process: subprocess.Popen[Any],
    port: int,
    request: bytes,
    answer: bytes,
    timeout: float,
    name: str,
    output: Any = lambda: "",
) -> None:
    """Wait until ``process`` (called ``name`` in errors) answers ``request`` on
    127.0.0.1:``port`` with ``answer`` first; ``RuntimeError`` if it exits or is late."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited with {process.returncode}:\n{output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.sendall(request)
                if sock.recv(64).startswith(answer):
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not answer within {timeout} s:\n{output()}")


class LiveServer:
    """``app`` served by a uWSGI master on a free port of 127.0.0.1, as ``app.run`` does.

    ``options`` are ``app.run``'s keywords (uWSGI options: ``processes=2``,
    ``gevent=10``...); the flavour's engine is the default. The app must be a
    module-level variable of an importable module (uWSGI imports it anew).
    ``url`` is the ``ws://`` base URL, ``http_url`` the ``http://`` one.
    """

    def __init__(self, app: Flask, timeout: float = 30.0, **options: Any) -> None:
        websocket = app.extensions.get("uwsgi_websocket")
        if websocket is None:
            raise RuntimeError(f"the app {app.name!r} has no WebSocket extension: init_app() it")
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.http_url = f"http://127.0.0.1:{self.port}"
        options.setdefault("use_reloader", False)
        options.setdefault("load_dotenv", False)
        argv, env = checked_command(
            app, websocket.run_defaults, websocket.plugins, host="127.0.0.1", port=self.port,
            **options,
        )  # fmt: skip
        env.pop("VIRTUAL_ENV", None)  # uWSGI is told the virtualenv itself
        self._log = tempfile.NamedTemporaryFile("w+", prefix="uwsgi-", suffix=".log", delete=False)
        self.process = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        #: The uWSGI master's process id.
        self.pid = self.process.pid
        try:
            wait_for_answer(
                self.process, self.port, b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n",
                b"HTTP/", timeout, "uWSGI", self.output,
            )  # fmt: skip
        except BaseException:
            self.close()
            raise

    def output(self) -> str:
        """What uWSGI has logged so far."""
        self._log.flush()
        return Path(self._log.name).read_text(errors="replace")

    def stop(self) -> int | None:
        """Stop uWSGI with SIGINT (its master stops; SIGTERM would reload it); its status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode

    def close(self) -> None:
        """Stop uWSGI and delete its log."""
        try:
            self.stop()
        finally:
            self._log.close()
            os.unlink(self._log.name)

    def __enter__(self) -> LiveServer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
