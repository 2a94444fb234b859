"""Whether a worker can take one more connection, and the count of those it could not.

A connection costs its worker one file descriptor, and nothing else that can run out
but memory. The descriptors are what runs out first: at the open-file limit
(``ulimit -n``, uWSGI's ``--max-fd``) uWSGI's ``accept()`` fails, and the next clients
wait in the listen backlog, unanswered, until a descriptor is free again. So an
upgrade is refused with ``503 Service Unavailable`` (and ``Retry-After``) while fewer
than :func:`reserve` descriptors would be left under the limit: the worker keeps
accepting, and answering, and the app keeps descriptors for its own files and
sockets.

The check costs one ``getrlimit`` call: a new descriptor is the lowest free number
(POSIX), so a connection on descriptor ``fd`` means that descriptors ``0`` to ``fd``
are all open.

A failure after the ``101`` (out of memory, a thread or a descriptor a flavour needed)
closes the connection with 1011. Both are logged with their count in this worker
(:class:`Shortages`).
"""

from __future__ import annotations

import logging
import resource
import threading

__all__ = ["Shortages", "reserve", "short_of_descriptors", "shortages"]


def reserve(limit: int) -> int:
    """Descriptors kept free under the open-file limit ``limit``: 16, or 1/64 of a large
    limit (1,024: 16; 20,000: 312), for the requests in flight and the app's own use."""
    return max(16, limit // 64)


def short_of_descriptors(fd: int) -> bool:
    """Whether the connection on ``fd`` leaves fewer than :func:`reserve` descriptors."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return False
    return soft - fd - 1 < reserve(soft)


class Shortages:
    """The connections this process refused (503) or closed at once (1011) for want of a
    resource, counted and logged."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: Upgrades refused with 503.
        self.refused = 0
        #: Connections closed with 1011 after the 101.
        self.failed = 0

    def refuse(self, log: logging.Logger, path: str, why: str) -> None:
        """Count an upgrade to ``path`` refused with 503 because of ``why``; log it on ``log``."""
        with self._lock:
            self.refused += 1
            count = self.refused
        log.error(
            "WebSocket upgrade to %s refused with 503: %s (%d refused in this worker)",
            path, why, count,
        )  # fmt: skip

    def fail(self, log: logging.Logger, path: str, error: BaseException) -> None:
        """Count a connection to ``path`` closed with 1011 after the 101 because of ``error``
        (raised by the flavour, not the handler); log it on ``log``, with the traceback."""
        with self._lock:
            self.failed += 1
            count = self.failed
        log.error(
            "WebSocket connection to %s failed outside its handler; closed with 1011 "
            "(%d in this worker)",
            path, count, exc_info=error,
        )  # fmt: skip


#: This process's refusals and failures.
shortages = Shortages()
