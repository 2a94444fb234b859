"""Everything this package asks of the running uWSGI: the one module that imports ``uwsgi``.

``uwsgi`` is the module uWSGI's Python plugin makes importable inside its
processes; elsewhere (tests, scripts, ``flask`` commands) it does not exist, and
each function here says what it answers then.
"""

from __future__ import annotations

import functools
import ipaddress
import socket
import time
from collections.abc import Callable
from typing import Any

try:
    import uwsgi
except ImportError:
    uwsgi = None

__all__ = [
    "TLS_SOCKET_OPTIONS",
    "at_exit",
    "connection_fd",
    "connections_may_outlive_requests",
    "in_each_worker",
    "listens_on",
    "loop_engine",
    "metric_add",
    "metric_declared",
    "option",
    "recycling",
    "router_relays_websockets",
    "running",
    "sharedarea_read",
    "tls_in_worker",
    "watches_recycling",
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


def _number(name: str, default: int = 0) -> int:
    value = option(name)
    if value is None or value is True:
        return default
    if isinstance(value, list):
        value = value[-1]
    return int(value.decode() if isinstance(value, bytes) else value)


#: The options under which a worker recycles itself, telling nobody.
RECYCLING_OPTIONS = ("max-requests", "reload-on-rss", "reload-on-as")


def recycling() -> bool:
    """Whether uWSGI is recycling this worker by its own choice: ``--max-requests``,
    ``--reload-on-rss`` or ``--reload-on-as`` reached (past ``--min-worker-lifetime``).

    uWSGI decides that as a request ends and then only stops accepting: no signal, so
    a worker with WebSocket connections waits ``--worker-reload-mercy``. The figures
    read here are the ones uWSGI compared (the worker's shared-memory record).
    """
    if not watches_recycling():
        return False
    me = uwsgi.workers()[worker_id() - 1]
    if time.time() - me["last_spawn"] < _number("min-worker-lifetime", 10):
        return False
    max_requests = _number("max-requests")
    if max_requests and me["delta_requests"] >= (
        max_requests + (worker_id() - 1) * _number("max-requests-delta")
    ):
        return True
    megabytes = 1024 * 1024
    for name, key in (("reload-on-rss", "rss"), ("reload-on-as", "vsz")):
        limit = _number(name)
        if limit and me[key] >= limit * megabytes:
            return True
    return False


def watches_recycling() -> bool:
    """Whether this worker may recycle itself (see :func:`recycling`)."""
    return uwsgi is not None and any(option(name) for name in RECYCLING_OPTIONS)


def metric_declared(name: str) -> bool:
    """Whether uWSGI keeps the metric ``name`` (``--enable-metrics --metric name=...``)."""
    return uwsgi is not None and uwsgi.metric_inc(name, 0) is True


def metric_add(name: str, value: int) -> bool:
    """Add ``value`` (may be negative) to uWSGI's metric ``name``; whether it exists."""
    return uwsgi is not None and uwsgi.metric_inc(name, value) is True


#: The uWSGI options whose sockets run TLS in the worker itself.
TLS_SOCKET_OPTIONS = ("https-socket", "ssl-socket", "suwsgi-socket")


def tls_in_worker() -> bool:
    """Whether the current request came in on a socket where the worker itself runs TLS
    (``--https-socket``, ``--ssl-socket``, ``--suwsgi-socket``).

    The bytes of such a connection go through uWSGI's TLS layer, which Python cannot
    reach (see README.rst, *Deployment*). Known by the connection's local address: the
    address one of those options gave. ``False`` outside uWSGI, and when no such
    option is set (the ``--https`` router and nginx end TLS before the worker).

    One limit: uWSGI 2.0 under Python 3 keeps only the last value of a repeated option
    in ``uwsgi.opt``, so of several ``--https-socket`` only the last is recognized.
    """
    if uwsgi is None or not _tls_listen_addresses():
        return False
    sock = socket.socket(fileno=connection_fd())
    try:
        local = sock.getsockname()
    finally:
        sock.detach()  # the fd stays uWSGI's
    return any(listens_on(address, local) for address in _tls_listen_addresses())


@functools.cache
def _tls_listen_addresses() -> tuple[str, ...]:
    """The addresses of this uWSGI's TLS sockets (``=N`` resolved to the shared socket)."""
    shared = _values("shared-socket")
    addresses = []
    for name in TLS_SOCKET_OPTIONS:
        for value in _values(name):
            address = value.split(",", 1)[0]
            if address.startswith("=") and address[1:].isdigit():
                index = int(address[1:])
                address = shared[index] if index < len(shared) else address
            addresses.append(address)
    return tuple(addresses)


def _values(name: str) -> list[str]:
    """The values of option ``name`` as ``str``: none, one, or a list of them."""
    value = option(name)
    values = value if isinstance(value, list) else [] if value is None else [value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in values]


def listens_on(address: str, local: Any) -> bool:
    """Whether a socket bound by uWSGI to ``address`` (``host:port``, ``:port``,
    ``[v6]:port``, a path, ``@abstract``) accepted a connection whose local address
    (``getsockname()``) is ``local``. A host name (not an IP) matches any IP."""
    if isinstance(local, tuple):
        host, sep, port = address.rpartition(":")
        if not sep or not port.isdigit() or int(port) != local[1]:
            return False
        host = host.strip("[]")
        if host in ("", "*", "0.0.0.0", "::"):
            return True
        try:
            wanted = ipaddress.ip_address(host)
            got = ipaddress.ip_address(local[0].split("%", 1)[0])
        except ValueError:
            return True  # a name: the port decides
        if isinstance(got, ipaddress.IPv6Address) and got.ipv4_mapped is not None:
            got = got.ipv4_mapped
        return wanted == got
    if isinstance(local, bytes):  # an abstract unix socket: b"\0name"
        return address.startswith("@") and local == b"\0" + address[1:].encode()
    return bool(local) and local == address


#: The uWSGI options whose sockets uWSGI reads again once a request has ended.
KEEPALIVE_SOCKET_OPTIONS = ("http11-socket",)


def connections_may_outlive_requests() -> bool:
    """Whether a connection may go on, on a duplicate of its socket, once its request
    has ended: uWSGI then closes its own descriptor and never touches the socket again.
    Not where a socket keeps its connections alive between requests (``--http11-socket``:
    uWSGI reads the socket again, and the worker aborts when another reader is there),
    and not outside uWSGI."""
    return uwsgi is not None and not any(option(name) for name in KEEPALIVE_SOCKET_OPTIONS)


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


_exit_callbacks: list[Callable[[], None]] = []


def at_exit(callback: Callable[[], None]) -> None:
    """Call ``callback`` when this uWSGI process exits through ``uwsgi.atexit`` (a worker
    of the gevent loop engine calls it in its main greenlet, the hub still running, once
    told to stop); outside uWSGI, never. Any ``uwsgi.atexit`` set before is called first;
    each callback once, however often given."""
    if uwsgi is None or callback in _exit_callbacks:
        return
    if not _exit_callbacks:
        previous = getattr(uwsgi, "atexit", None)
        if previous is not None:
            _exit_callbacks.append(previous)
        uwsgi.atexit = _at_exit
    _exit_callbacks.append(callback)


def _at_exit() -> None:
    for function in _exit_callbacks:
        function()
