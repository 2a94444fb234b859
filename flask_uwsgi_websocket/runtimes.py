"""Where a request runs outside uWSGI: each flavour's way, in threads of their own.

The in-process test client and Werkzeug's development server run WebSocket
requests here, as uWSGI's engines would: the plain flavour in a thread, the
gevent flavour in a greenlet on a gevent hub, the asyncio flavour in a greenlet
whose parent runs an asyncio loop (so the handler is a task on that loop). One
runtime per flavour and process, made on first use; nothing is monkey-patched.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any, Protocol

from . import uwsgi_api

__all__ = ["SOCKET", "Runtime", "runtime", "socket_fd"]

#: The environ key of the connected socket that a server other than uWSGI gives (the test
#: client, the middleware under Werkzeug's development server).
SOCKET = "flask_uwsgi_websocket.socket"


def socket_fd(environ: dict[str, Any]) -> int:
    """The upgraded connection's socket: the one in ``environ[SOCKET]``, else uWSGI's."""
    sock = environ.get(SOCKET)
    return sock.fileno() if sock is not None else uwsgi_api.connection_fd()


class Runtime(Protocol):
    """Runs requests the way one flavour's uWSGI engine does."""

    def spawn(self, function: Callable[[], None]) -> None:
        """Start ``function`` (a request) there, and return at once."""

    def run(self, function: Callable[[], None]) -> None:
        """Run ``function`` there and wait until it returns; its exception is raised here."""


class _Runtime:
    def spawn(self, function: Callable[[], None]) -> None:
        raise NotImplementedError

    def run(self, function: Callable[[], None]) -> None:
        done = threading.Event()
        failure: list[BaseException] = []

        def call() -> None:
            try:
                function()
            except BaseException as exc:
                failure.append(exc)
                if not isinstance(exc, Exception):
                    raise
            finally:
                done.set()

        self.spawn(call)
        done.wait()
        if failure:
            raise failure[0]


class _Threads(_Runtime):
    """Plain flavour: each request in a thread, as uWSGI's ``--threads``."""

    def spawn(self, function: Callable[[], None]) -> None:
        threading.Thread(target=function, name="websocket-request", daemon=True).start()

    def run(self, function: Callable[[], None]) -> None:
        function()  # this thread is as good as a new one


class _Gevent(_Runtime):
    """Gevent flavour: each request in a greenlet on a hub that runs in a thread of its own."""

    def __init__(self) -> None:
        started = threading.Event()
        hub: list[Any] = []

        def run() -> None:
            import gevent

            hub.append(gevent.get_hub())
            started.set()
            while True:  # keep the hub running for the greenlets it is given
                gevent.sleep(3600)

        threading.Thread(target=run, name="websocket-gevent", daemon=True).start()
        started.wait()
        self._hub = hub[0]

    def spawn(self, function: Callable[[], None]) -> None:
        import gevent

        self._hub.loop.run_callback_threadsafe(gevent.spawn, function)


class _Asyncio(_Runtime):
    """Asyncio flavour: each request in a greenlet whose parent runs an asyncio loop in a
    thread of its own, as uWSGI's ``--asyncio N --greenlet``."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            self._loop.run_forever()

        threading.Thread(target=run, name="websocket-asyncio", daemon=True).start()

    def spawn(self, function: Callable[[], None]) -> None:
        import greenlet

        self._loop.call_soon_threadsafe(lambda: greenlet.greenlet(function).switch())


_runtimes: dict[str | None, Runtime] = {}
_runtimes_lock = threading.Lock()


def runtime(engine: str | None) -> Runtime:
    """This process's runtime for the uWSGI loop engine ``engine`` (``None``: threads)."""
    with _runtimes_lock:
        found = _runtimes.get(engine)
        if found is None:
            kinds: dict[str | None, type[_Runtime]] = {
                None: _Threads, "gevent": _Gevent, "asyncio": _Asyncio,
            }  # fmt: skip
            found = _runtimes[engine] = kinds[engine]()
        return found
