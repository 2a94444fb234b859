"""Going away: when uWSGI ends or recycles a worker, its connections close with 1001 first.

uWSGI tells a worker with a signal: SIGHUP to finish its requests and go (a graceful
reload, ``--touch-reload``, a chain reload), SIGINT or SIGTERM to go now (a stop, a
brutal reload). A WebSocket request never finishes by itself, so without this module
a graceful reload waits ``--worker-reload-mercy`` (60 s) and then kills the worker,
and every stop cuts the connections: the clients see 1006, no close frame.

Here, the first of those signals makes the worker close each of its open connections
with 1001 (Going Away), which ends their handlers (``ConnectionClosed`` where they
wait; asyncio tasks waiting elsewhere are cancelled), waits for the handlers to end
(:data:`GRACE` at most, teardown included), and only then lets uWSGI do what it does
on that signal. Connections that open meanwhile are closed with 1001 at once.

How the worker hears the signal depends on the flavour:

- plain and asyncio: :func:`watch_signals` puts Python's signal handler in place of
  uWSGI's for the three signals, with a wake-up descriptor that a daemon thread reads
  (a Python-level handler would wait for the main thread to run Python code, which an
  idle threaded worker never does). Once done, the thread puts uWSGI's own handler
  back and sends the signal again.
- gevent: uWSGI's gevent loop handles the signals itself, through the hub; the flavour
  adds its own SIGHUP handler beside uWSGI's (libev calls both) and closes on
  ``uwsgi.atexit`` for the others (see ``gevent.py``).

A worker that reaches ``--max-requests``, ``--reload-on-rss`` or ``--reload-on-as``
recycles itself without a signal: where one of those is set, the worker looks each
:data:`RECYCLE_CHECK` seconds (``uwsgi_api.recycling``).

Not caught: SIGKILL (the master's answer when ``--worker-reload-mercy`` or
``--harakiri`` runs out), a worker killed from outside, a crash.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import select
import signal
import threading
import time
from collections.abc import Callable
from typing import Protocol

from . import uwsgi_api

__all__ = ["GRACE", "SIGNALS", "Closable", "OpenConnections", "connections", "watch_signals"]

logger = logging.getLogger("flask_uwsgi_websocket")

#: The signals by which uWSGI ends or recycles a worker.
SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)

#: Seconds a peer has to answer the 1001 before its connection counts as closed.
CLOSE_TIMEOUT = 1.0

#: Seconds the handlers have, after the 1001s, to end (teardown included).
GRACE = 2.0

#: Seconds between two looks at whether uWSGI recycles the worker (``--max-requests``...).
RECYCLE_CHECK = 1.0

CODE, REASON = 1001, ""  # the code says it all


class Closable(Protocol):
    """An open connection, as seen here: a client (``client.Client``)."""

    def go_away(self, code: int, reason: str, timeout: float) -> None:
        """Close with ``code`` from any thread, giving the peer ``timeout`` seconds."""


class OpenConnections:
    """The connections of this process whose handlers run, and whether it is going away."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._open: set[Closable] = set()
        # Requests serving a connection: until their teardown has run, which is after
        # their connection is closed.
        self._requests = 0
        self._on_first: list[Callable[[], None]] = []
        #: Set once the worker has been told to go.
        self.going_away = False

    def when_first_opened(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when the next connection opens (from its thread), once."""
        with self._lock:
            self._on_first.append(callback)

    def prepare(self) -> None:
        """Call the callbacks waiting for the next connection now, before its 101: what
        they start (a thread, a signal watcher) may be out of reach. Those not done
        then wait for the next connection, and the error is raised."""
        with self._lock:
            pending, self._on_first = self._on_first, []
        while pending:
            try:
                pending[0]()
            except BaseException:
                with self._lock:
                    self._on_first[:0] = pending
                raise
            del pending[0]

    def opened(self, client: Closable) -> None:
        """``client``'s handler starts; closed at once if the worker is going away."""
        self.prepare()
        with self._lock:
            self._open.add(client)
        if self.going_away:
            client.go_away(CODE, REASON, CLOSE_TIMEOUT)

    def closed(self, client: Closable) -> None:
        """``client``'s handler has ended and its socket is released."""
        with self._lock:
            self._open.discard(client)

    def request_started(self) -> None:
        """A request starts serving its connection (the shutdown waits for its end)."""
        with self._lock:
            self._requests += 1

    def request_ended(self) -> None:
        """A request is done: its handler has ended and its teardown has run."""
        with self._lock:
            self._requests -= 1

    def __len__(self) -> int:
        return len(self._open)

    def go_away(self) -> int:
        """Close every open connection with 1001; return how many there were."""
        self.going_away = True
        with self._lock:
            clients = list(self._open)
        for client in clients:
            client.go_away(CODE, REASON, CLOSE_TIMEOUT)
        return len(clients)

    def wait_until_gone(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Wait until every handler has ended and its request's teardown has run,
        :data:`GRACE` seconds at most (``sleep`` is how this flavour waits); log the ones
        left to uWSGI."""
        deadline = time.monotonic() + GRACE
        while (self._open or self._requests) and time.monotonic() < deadline:
            sleep(0.01)
        if self._open or self._requests:
            logger.warning(
                "worker %d: %d WebSocket handler(s) still running %.0f s after their "
                "connections closed with 1001; uWSGI ends them",
                os.getpid(), max(len(self._open), self._requests), GRACE,
            )  # fmt: skip

    def shut_down(self, sleep: Callable[[float], object] = time.sleep) -> None:
        """Go away once: 1001 to each connection, then wait for their handlers. Called
        again meanwhile (the worker ends while its connections close), wait as well."""
        if self.going_away:
            self.wait_until_gone(sleep)
            return
        count = self.go_away()
        if count:
            logger.info(
                "worker %d: closing %d WebSocket connection(s) with 1001", os.getpid(), count
            )
            self.wait_until_gone(sleep)


#: This process's open connections.
connections = OpenConnections()


# uWSGI's handlers are C functions: Python's signal module can replace them but not put
# them back, so their ``struct sigaction`` is kept here as opaque bytes (sizeof is 152
# on x86-64 and arm64 glibc; the buffer is larger for any libc).
_SIGACTION_SIZE = 512
_libc = ctypes.CDLL(None, use_errno=True)


def _saved_handler(signum: int) -> ctypes.Array[ctypes.c_char]:
    saved = ctypes.create_string_buffer(_SIGACTION_SIZE)
    if _libc.sigaction(signum, None, saved) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({signum}) failed")
    return saved


def _restore_handler(signum: int, saved: ctypes.Array[ctypes.c_char]) -> None:
    if _libc.sigaction(signum, saved, None) != 0:
        raise OSError(ctypes.get_errno(), f"sigaction({signum}) failed")


_watching_in: int | None = None  # the pid of the process that watches


def watch_signals() -> None:
    """In a uWSGI worker of the plain or asyncio flavour, from its main thread, as it
    starts: on the first of :data:`SIGNALS`, shut the connections down, then let
    uWSGI's handler run.

    Python's handler can only be set from the main thread, and uWSGI sets its own after
    the fork hooks and the app's loading: so Python's is set here, kept, and put in
    place of uWSGI's by the first connection, from whichever thread it runs in.
    """
    global _watching_in, _main_thread
    if _watching_in == os.getpid():
        return
    _watching_in = os.getpid()
    _main_thread = threading.get_ident()
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # none lost while swapping
    try:
        _before.update((signum, _saved_handler(signum)) for signum in SIGNALS)
        for signum in SIGNALS:
            signal.signal(signum, _noted)
        pythons = {signum: _saved_handler(signum) for signum in SIGNALS}
        for number, saved in _before.items():
            _restore_handler(number, saved)  # until the first connection
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    read_end, write_end = os.pipe()
    os.set_blocking(read_end, False)
    os.set_blocking(write_end, False)
    previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)

    def take_over() -> None:
        global _taken_over
        with contextlib.suppress(BlockingIOError):
            os.read(read_end, 4096)  # a signal from before is not this one's
        uwsgi_handlers = {signum: _saved_handler(signum) for signum in SIGNALS}
        threading.Thread(
            target=_watch, args=(read_end, uwsgi_handlers, previous, _main_thread),
            name="websocket-shutdown", daemon=True,
        ).start()  # fmt: skip
        _taken_over = True
        for signum, saved in pythons.items():
            _restore_handler(signum, saved)

    connections.when_first_opened(take_over)


_before: dict[int, ctypes.Array[ctypes.c_char]] = {}  # the handlers at the fork
_main_thread = 0
_taken_over = False  # Python's handler is in place of uWSGI's


def _noted(signum: int, frame: object) -> None:
    """Python's handler: the work is the watching thread's. Before the first connection,
    a signal another thread caught while Python's was being read goes to the handler of
    the fork, as it would have."""
    if not _taken_over and signum in _before:
        _restore_handler(signum, _before[signum])
        signal.pthread_kill(_main_thread, signum)


def _watch(
    read_end: int,
    uwsgi_handlers: dict[int, ctypes.Array[ctypes.c_char]],
    previous: int,
    main_thread: int,
) -> None:
    """Read the signals' numbers; on each of :data:`SIGNALS`, shut down (once), then give
    uWSGI its handler back and send the signal again."""
    timeout = RECYCLE_CHECK if uwsgi_api.watches_recycling() else None
    while uwsgi_handlers:
        if not select.select([read_end], [], [], timeout)[0]:
            if uwsgi_api.recycling():
                # As uWSGI does on SIGHUP: its asyncio engine ignores its own decision
                # to recycle the worker and goes on accepting; a SIGHUP ends it.
                signal.pthread_kill(main_thread, signal.SIGHUP)
                timeout = None
            continue
        try:
            data = os.read(read_end, 64)
        except BlockingIOError:
            continue
        if previous != -1:  # someone else's wake-up descriptor: pass the signals on
            with contextlib.suppress(OSError):
                os.write(previous, data)
        for signum in data:
            saved = uwsgi_handlers.pop(signum, None)
            if saved is not None:
                connections.shut_down()
                _restore_handler(signum, saved)
                # To the main thread: uWSGI's handler may exit(), whose Python teardown
                # hangs when run by another thread while the main one is in uWSGI's loop.
                signal.pthread_kill(main_thread, signum)
