"""Start and stop real uWSGI processes on free loopback ports, for the tests and the benchmarks."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

ROOT = Path(__file__).resolve().parent.parent
UWSGI = str(Path(sys.executable).parent / "uwsgi")

#: uWSGI options of each flavour, as the README documents them.
FLAVOUR_ARGS = {
    "plain": ["--threads", "8"],
    "gevent": ["--gevent", "100"],
    "asyncio": ["--asyncio", "100", "--greenlet"],
}


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
    output: Callable[[], str] = lambda: "",
) -> None:
    """Wait until ``process`` (called ``name`` in errors) answers ``request`` on ``port``
    with ``answer`` first."""
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


class ServerProcess:
    """A server process (``uwsgi``, or ``python script`` that becomes uWSGI) on ``port``.

    Its output goes to a temporary file; ``env`` is its whole environment (default:
    this process's).
    """

    def __init__(
        self,
        args: Sequence[str],
        port: int,
        cwd: str | Path = ROOT,
        env: dict[str, str] | None = None,
    ) -> None:
        self.args = list(args)
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"ws://{self.address}"
        self.log = tempfile.NamedTemporaryFile("w+", prefix="server-", suffix=".log", delete=False)
        self.process = subprocess.Popen(
            self.args, stdout=self.log, stderr=subprocess.STDOUT, cwd=str(cwd), env=env
        )
        self.pid = self.process.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until the app answers HTTP (so the worker has loaded it)."""
        request = b"GET /__ready__ HTTP/1.0\r\nHost: localhost\r\n\r\n"
        wait_for_answer(self.process, self.port, request, b"HTTP/", timeout, "uWSGI", self.output)

    def output(self) -> str:
        """What the server has logged so far."""
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def stop(self) -> int:
        """Stop it with SIGINT (SIGTERM would make uWSGI reload); return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
                raise AssertionError(f"did not exit on SIGINT:\n{self.output()}") from None
        return self.process.returncode

    def close(self) -> None:
        """Stop it and delete its log."""
        try:
            self.stop()
        finally:
            self.log.close()
            os.unlink(self.log.name)

    def __enter__(self) -> Self:
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class UwsgiServer(ServerProcess):
    """A uWSGI master serving ``app_args`` on a free loopback port.

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
        port = free_port()
        address = f"127.0.0.1:{port}"
        if mode == "http":
            listen = ["--http", address, "--http-websockets"]
        elif mode == "http-socket":
            listen = ["--http-socket", address]
        elif mode == "http-socket-websockets":
            listen = ["--http-socket", address, "--http-websockets"]
        else:
            raise ValueError(mode)
        args = [
            UWSGI, "--master", *listen, "--virtualenv", sys.prefix, "--pythonpath", str(ROOT),
            "--need-app", *app_args, *extra_args,
        ]  # fmt: skip
        super().__init__(args, port, cwd, {**os.environ, **(env or {})})
