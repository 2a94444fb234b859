"""Everything this package asks of the running uWSGI: the one module that imports ``uwsgi``.

``uwsgi`` is the module uWSGI's Python plugin makes importable inside its
processes; elsewhere (tests, scripts, ``flask`` commands) it does not exist, and
each function here says what it answers then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    import uwsgi
except ImportError:
    uwsgi = None

__all__ = [
    "connection_fd",
    "in_each_worker",
    "loop_engine",
    "option",
    "router_relays_websockets",
    "running",
    "sharedarea_read",
    "worker_count",
    "worker_id",
]


def running() -> bool:
    """Whether this process is uWSGI's (a master or a worker)."""
    return uwsgi is not None


def _api() -> Any:
    if uwsgi is None:
        raise RuntimeError("not running under uWSGI")
    return uwsgi


def loop_engine() -> str | None:
    """The loop engine uWSGI runs (``"gevent"``, ``"asyncio"``), ``None`` for its default."""
    loop = getattr(_api(), "loop", None)
    return loop.decode() if isinstance(loop, bytes) else loop


def option(name: str) -> Any:
    """The value of uWSGI option ``name`` (``True`` for a flag), or ``None`` when not given."""
    return _api().opt.get(name)


def worker_id() -> int:
    """This worker's number (from 1), or 0 in the master or outside uWSGI."""
    return int(uwsgi.worker_id()) if uwsgi is not None else 0


def worker_count() -> int:
    """How many worker processes uWSGI runs; 1 outside uWSGI."""
    return int(uwsgi.numproc) if uwsgi is not None else 1


def router_relays_websockets(environ: dict[str, Any] | None = None) -> bool:
    """Whether uWSGI's ``--http``/``--https`` router relays WebSocket frames: it does only
    with ``--http-websockets`` (or ``--http-raw-body``); without, the 101 goes out and no
    frame ever comes. With ``environ``, only for a request that came through the router.
    ``True`` when there is no router."""
    if uwsgi is None:
        return True
    if environ is not None and environ.get("UWSGI_ROUTER") not in ("http", "https"):
        return True
    if environ is None and not (option("http") or option("https")):
        return True
    return bool(option("http-websockets") or option("http-raw-body"))


def connection_fd() -> int:
    """The socket of the current request: after a ``101``, the WebSocket's."""
    fd: int = _api().connection_fd()
    return fd


def sharedarea_read(id: int, pos: int) -> bytes:
    """uWSGI shared area ``id`` from byte ``pos`` to its end."""
    data: bytes = _api().sharedarea_read(id, pos)
    return data


_fork_callbacks: list[Callable[[], None]] = []


def in_each_worker(callback: Callable[[], None]) -> None:
    """Call ``callback`` in each uWSGI worker as it starts; in mules, the spooler and
    outside uWSGI, never.

    In a worker (the app loaded after the fork, ``--lazy-apps``) that is now. In
    the master, it is in every worker right after the fork, through one
    ``uwsgi.post_fork_hook`` installed once, which calls any hook set before it
    first, then the callbacks in the order given (each once, however often given).
    uWSGI calls that hook after forking a mule or the spooler too: there it calls
    the earlier hook only.
    """
    if uwsgi is None:
        return
    if worker_id() > 0:
        callback()
        return
    if callback not in _fork_callbacks:
        _fork_callbacks.append(callback)
    if not _chained:
        previous = getattr(uwsgi, "post_fork_hook", None)
        _chained.append(previous if previous is not None else _nothing)
        uwsgi.post_fork_hook = _post_fork


_chained: list[Callable[[], None]] = []  # the hook set before ours, once ours is installed


def _nothing() -> None:
    pass


def _post_fork() -> None:
    for function in (*_chained, *(_fork_callbacks if worker_id() > 0 else ())):
        function()
