"""What a flavour's event loop does for one connection: the :class:`Reactor` protocol.

A reactor watches one socket and runs timers; it calls the connection's callbacks
(:meth:`~.connection.Connection.on_readable`, ``on_writable`` and timer callbacks)
where that flavour's callbacks run: an I/O thread, the gevent hub, the asyncio loop.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

__all__ = ["Reactor", "Timer", "call_threadsafe"]


class Timer(Protocol):
    """A pending call made by :meth:`Reactor.call_later`."""

    def cancel(self) -> None:
        """Do not make the call."""


class Reactor(Protocol):
    """What a flavour's event loop does for one connection's socket."""

    def watch_read(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` whenever the socket is readable; ``None`` stops."""

    def watch_write(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` whenever the socket is writable; ``None`` stops."""

    def call_later(self, delay: float, callback: Callable[[], None]) -> Timer:
        """Call ``callback`` once after ``delay`` seconds."""

    def call_soon_threadsafe(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` where the callbacks run, from any thread: now if this is it."""

    def close(self) -> None:
        """Stop every watcher; the socket itself is closed by its owner after."""


def call_threadsafe(
    thread: int, schedule: Callable[[Callable[[], None]], Any], callback: Callable[[], None]
) -> None:
    """Call ``callback`` now if this is thread ``thread`` (``threading.get_ident()``), else
    hand it to ``schedule``, the thread-safe ``call_soon`` of the loop that thread runs."""
    if threading.get_ident() == thread:
        callback()
    else:
        schedule(callback)
