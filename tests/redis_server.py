"""A real ``redis-server`` on a free loopback port, for the tests and the benchmarks."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from typing import TYPE_CHECKING

from .uwsgi_server import free_port, wait_for_answer

if TYPE_CHECKING:
    from typing_extensions import Self


def redis_binary() -> str:
    """The system's ``redis-server`` (``scripts/install.sh --test`` installs it)."""
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("redis-server not found: run scripts/install.sh --test")
    return found


class RedisServer:
    """``redis-server`` on 127.0.0.1 with no persistence; :meth:`kill` and :meth:`start`
    again on the same port simulate an outage."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tempfile.TemporaryDirectory(prefix="redis-")
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        """Start it and wait until it answers ``PING``."""
        self.process = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir.name, "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_answer(self.process, self.port, b"PING\r\n", b"+PONG", timeout, "redis-server")

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def stop(self) -> None:
        """Stop it (SIGTERM: redis-server exits)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.dir.cleanup()
