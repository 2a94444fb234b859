"""Start and stop real uWSGI processes on free loopback ports, for the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UWSGI = str(Path(sys.executable).parent / "uwsgi")

#: uWSGI options of each flavour, as the README documents them.
FLAVOUR_ARGS = {
    "plain": ["--threads", "8"],
    "gevent": ["--gevent", "100"],
}


def free_port() -> int:
    """A TCP port nobody listens on at 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class UwsgiServer:
    """A uWSGI master process with its log in a temporary file.

    ``mode`` is how clients reach the worker: ``"http"`` (the ``--http`` router
    with ``--http-websockets``), ``"http-socket"`` (the worker speaks HTTP), or
    ``"http-socket-websockets"`` (both ``--http-socket`` and ``--http-websockets``).
    """

    def __init__(
        self,
        app_args: Sequence[str],
        extra_args: Sequence[str] = (),
        mode: str = "http",
        env: dict[str, str] | None = None,
        cwd: str | Path = ROOT,
    ) -> None:
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        if mode == "http":
            listen = ["--http", self.address, "--http-websockets"]
        elif mode == "http-socket":
            listen = ["--http-socket", self.address]
        elif mode == "http-socket-websockets":
            listen = ["--http-socket", self.address, "--http-websockets"]
        else:
            raise ValueError(mode)
        self.args = [
            UWSGI, "--master", *listen, "--virtualenv", sys.prefix, "--pythonpath", str(ROOT),
            "--need-app", *app_args, *extra_args,
        ]  # fmt: skip
        self.log = tempfile.NamedTemporaryFile("w+", prefix="uwsgi-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            self.args,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=str(cwd),
            env={**os.environ, **(env or {})},
        )
        self.url = f"ws://{self.address}"

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the app answers HTTP (so the worker has loaded it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"uWSGI exited with {self.process.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                    sock.sendall(b"GET /__ready__ HTTP/1.0\r\nHost: localhost\r\n\r\n")
                    if sock.recv(64).startswith(b"HTTP/"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"uWSGI did not answer within {timeout} s:\n{self.output()}")

    def output(self) -> str:
        """What uWSGI has logged so far."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        """Stop uWSGI with SIGINT (SIGTERM would reload it) and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.log.close()
        return self.process.returncode

    def __enter__(self) -> UwsgiServer:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.unlink(self.log.name)
