"""This worker's figures, per route, and their export to uWSGI's metrics.

:data:`worker_metrics` counts, per route (the URL rule) and in total: the open
connections, those opened, those closed by close code (the peer's; 1006 without a close
frame), the data messages and their payload bytes in and out, the slow consumers closed
with 1013, and the broadcasts made here. The connections count their own messages (two
additions each, nothing on the hot path here); their figures join the route's when they
close, and :meth:`WorkerMetrics.snapshot` adds the open ones'.

Summed over workers: where uWSGI runs with ``--enable-metrics`` and the metrics of
:data:`UWSGI_METRICS` (``--metric name=websocket.opened,type=counter`` ...; ``app.run``
adds them), each worker adds what changed to them as connections open and close, and
while messages flow once a second at most (:data:`PUSH_EVERY`); uWSGI keeps them in
shared memory and shows them in its stats server (``--stats``), where its Prometheus and
other exporters read them.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any, Protocol

from . import uwsgi_api

__all__ = ["PUSH_EVERY", "UWSGI_METRICS", "Counted", "Figures", "WorkerMetrics", "worker_metrics"]

#: The close codes counted on their own; others are counted as ``other``.
CODES = (1000, 1001, 1006, 1008, 1009, 1011, 1013)

#: uWSGI metric name -> type: what ``--metric name=<name>,type=<type>`` declares.
UWSGI_METRICS: dict[str, str] = {
    "websocket.open": "gauge",
    "websocket.opened": "counter",
    "websocket.closed": "counter",
    **{f"websocket.closed.{code}": "counter" for code in (*CODES, "other")},
    "websocket.messages_in": "counter",
    "websocket.bytes_in": "counter",
    "websocket.messages_out": "counter",
    "websocket.bytes_out": "counter",
    "websocket.slow_consumers": "counter",
    "websocket.broadcasts": "counter",
}

#: Seconds between two pushes of a worker's figures to uWSGI's metrics.
PUSH_EVERY = 1.0


class Counted(Protocol):
    """What a connection counts (:class:`~.core.connection.Connection`)."""

    messages_in: int
    bytes_in: int
    messages_out: int
    bytes_out: int
    slow_consumer: bool

    @property
    def close_code(self) -> int | None: ...


class Figures:
    """The figures of a route, or of them all."""

    def __init__(self) -> None:
        self.open = self.opened = 0
        self.closed: dict[int, int] = {}
        self.messages_in = self.bytes_in = self.messages_out = self.bytes_out = 0
        self.slow_consumers = 0

    def add(self, connection: Counted) -> None:
        """Add a connection's messages and bytes."""
        self.messages_in += connection.messages_in
        self.bytes_in += connection.bytes_in
        self.messages_out += connection.messages_out
        self.bytes_out += connection.bytes_out
        self.slow_consumers += connection.slow_consumer

    def merge(self, other: Figures) -> None:
        """Add ``other``'s figures."""
        self.open += other.open
        self.opened += other.opened
        for code, count in other.closed.items():
            self.closed[code] = self.closed.get(code, 0) + count
        self.messages_in += other.messages_in
        self.bytes_in += other.bytes_in
        self.messages_out += other.messages_out
        self.bytes_out += other.bytes_out
        self.slow_consumers += other.slow_consumers

    def as_dict(self) -> dict[str, Any]:
        """The figures as a JSON-able dict."""
        return {
            "open": self.open,
            "opened": self.opened,
            "closed": dict(sorted(self.closed.items())),
            "messages_in": self.messages_in,
            "bytes_in": self.bytes_in,
            "messages_out": self.messages_out,
            "bytes_out": self.bytes_out,
            "slow_consumers": self.slow_consumers,
        }


class WorkerMetrics:
    """The figures of this process's connections; safe from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._routes: dict[str, Figures] = {}  # of the connections that have closed
        self._live: dict[Counted, str] = {}  # open connection -> route
        self._broadcasts = 0
        self._pusher: int | None = None  # the pid the figures below are of
        self._pushed: dict[str, int] = {}  # uWSGI metric -> what was added to it
        self._pushing = threading.Lock()
        self._next_push = 0.0
        #: Whether uWSGI's metrics are kept (declared), so :meth:`push` has work.
        self.pushing = False

    def opened(self, route: str, connection: Counted) -> None:
        """``connection`` of ``route`` has opened (called where its handler runs)."""
        with self._lock:
            self._live[connection] = route
            self._route(route).opened += 1
            if self._pusher != os.getpid():
                self._pusher = os.getpid()
                self._pushed = {}
                self.pushing = uwsgi_api.metric_declared("websocket.opened")
        if self.pushing:
            self.push()

    def closed(self, connection: Counted) -> None:
        """``connection`` has ended: its figures join its route's."""
        with self._lock:
            route = self._live.pop(connection, None)
            if route is None:
                return
            figures = self._route(route)
            code = connection.close_code or 1006
            figures.closed[code] = figures.closed.get(code, 0) + 1
            figures.add(connection)
        if self.pushing:
            self.push()

    def broadcast(self) -> None:
        """A broadcast was made in this process."""
        self._broadcasts += 1

    def _route(self, route: str) -> Figures:
        figures = self._routes.get(route)
        if figures is None:
            figures = self._routes[route] = Figures()
        return figures

    def snapshot(self) -> dict[str, Any]:
        """This worker's figures: ``{"pid", "worker", "broadcasts", "total", "routes":
        {rule: figures}}``, each figures a dict of ``open``, ``opened``, ``closed`` (close
        code -> count), ``messages_in``, ``bytes_in``, ``messages_out``, ``bytes_out``,
        ``slow_consumers``."""
        routes, total = self._figures()
        return {
            "pid": os.getpid(),
            "worker": uwsgi_api.worker_id(),
            "broadcasts": self._broadcasts,
            "total": total.as_dict(),
            "routes": {route: figures.as_dict() for route, figures in sorted(routes.items())},
        }

    def _figures(self) -> tuple[dict[str, Figures], Figures]:
        with self._lock:
            routes: dict[str, Figures] = {}
            for route, done in self._routes.items():
                routes[route] = Figures()
                routes[route].merge(done)
            for connection, route in self._live.items():
                figures = routes[route]
                figures.open += 1
                figures.add(connection)
        total = Figures()
        for figures in routes.values():
            total.merge(figures)
        return routes, total

    # uWSGI's metrics.

    def push_if_due(self) -> None:
        """:meth:`push` if the last was :data:`PUSH_EVERY` seconds ago or more."""
        if time.monotonic() >= self._next_push:
            self.push()

    def push(self) -> None:
        """Add to uWSGI's metrics what changed here since the last push; called where a
        handler runs (uWSGI's API crashes a gevent worker when called from the hub or a
        thread of our own), so it is done as connections open and close, and by their
        clients' ``receive`` and ``send`` once a second at most."""
        if not self._pushing.acquire(blocking=False):
            return  # another thread is at it
        try:
            self._next_push = time.monotonic() + PUSH_EVERY
            self._push()
        finally:
            self._pushing.release()

    def _push(self) -> None:
        _, total = self._figures()
        closed = total.closed
        values = {
            "websocket.open": total.open,
            "websocket.opened": total.opened,
            "websocket.closed": sum(closed.values()),
            **{f"websocket.closed.{code}": closed.get(code, 0) for code in CODES},
            "websocket.closed.other": sum(n for code, n in closed.items() if code not in CODES),
            "websocket.messages_in": total.messages_in,
            "websocket.bytes_in": total.bytes_in,
            "websocket.messages_out": total.messages_out,
            "websocket.bytes_out": total.bytes_out,
            "websocket.slow_consumers": total.slow_consumers,
            "websocket.broadcasts": self._broadcasts,
        }
        for name, value in values.items():
            change = value - self._pushed.get(name, 0)
            if change and uwsgi_api.metric_add(name, change):
                self._pushed[name] = value


#: This process's figures.
worker_metrics = WorkerMetrics()


def uwsgi_options() -> list[str]:
    """The values of ``--metric`` that declare :data:`UWSGI_METRICS`."""
    return [f"name={name},type={kind}" for name, kind in UWSGI_METRICS.items()]


def ini_lines() -> list[str]:
    """The lines of a uWSGI ini file that keep :data:`UWSGI_METRICS`."""
    return ["enable-metrics = true", *(f"metric = {value}" for value in uwsgi_options())]
