"""The Flask extension every flavour shares: routes, options, ``init_app``, broadcast, ``run``.

Each flavour's extension (``threads.WebSocket``, ``gevent.GeventWebSocket``,
``asyncio.AsyncioWebSocket``) is this class with its client class, loop engine
and ``run`` defaults.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, Protocol, TypeVar

from flask import current_app, has_app_context, has_request_context, request
from websockets.frames import Opcode
from werkzeug.routing import WebsocketMismatch

from .. import callbacks, uwsgi_api
from ..broadcast.brokers import EXIT_TIMEOUT, Broker, LocalBroker, make_broker
from ..broadcast.message import Broadcast
from ..broadcast.registry import Rooms
from ..core.framing import build_frame
from ..core.options import Options
from ..metrics import uwsgi_options, worker_metrics
from ..resources import short_of_descriptors, shortages
from ..runner import DEBUG_ENV, INSTALL_HINT, run_uwsgi
from ..runtimes import socket_fd
from ..shutdown import connections
from .blueprints import WebSocketBlueprint, register_handler_blueprint
from .middleware import WebSocketMiddleware
from .views import (
    ROUTER_WITHOUT_WEBSOCKETS,
    Detached,
    WebSocketView,
    add_websocket_rule,
    not_an_upgrade,
    split_options,
)

if TYPE_CHECKING:
    from flask import Blueprint, Flask
    from flask.testing import FlaskClient

    from ..core.handshake import Handshake
    from ..testing import TestClient
    from .serving import ErrorHandlers

__all__ = ["WebSocketExtension"]

logger = logging.getLogger("flask_uwsgi_websocket")

Handler = TypeVar("Handler", bound=Callable[..., Any])
AnyClient = TypeVar("AnyClient", bound="Client")
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[..., Any])


#: The close frame of a connection that could not start (1011, internal error).
CLOSE_1011 = build_frame(Opcode.CLOSE, (1011).to_bytes(2, "big") + b"internal error")


class Client(Protocol):
    """A flavour's client class, as the extension makes and runs it."""

    #: The route's URL rule.
    route: str

    def __init__(
        self,
        fd: int,
        environ: dict[str, Any],
        options: Options,
        handshake: Handshake | None = None,
        rooms: Rooms | None = None,
    ) -> None: ...

    @property
    def connected(self) -> bool:
        """Whether messages can still be sent: the closing handshake has not begun."""

    def start(self) -> None:
        """Start the connection; on failure, undo what was done and raise."""

    def serve(
        self,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        websocket: ErrorHandlers,
        app: Flask,
    ) -> Exception | None:
        """Run ``handler`` on the connection, then close it; the exception left unhandled."""


class _AppState(NamedTuple):
    options: Options
    broker: Broker


class WebSocketExtension:
    """The Flask extension; each flavour's sets :attr:`client_class` and its engine.

    ``WebSocket(app, **options)`` or ``WebSocket(**options)`` then
    ``init_app(app)``; the options are those of :class:`Options`, each also
    read from ``app.config`` as ``WEBSOCKET_<NAME>``. One extension object
    may serve several apps: its routes, blueprints and error handlers go to
    every app it is given.

    ``broker`` carries :meth:`broadcast` to the app's connections: ``None``
    (in-process, the default) or a Redis URL, ``"redis://host:port/db"``, for
    every worker and host that uses the same Redis; ``app.config`` may set it as
    ``WEBSOCKET_BROKER_URL``, and the Redis channel as ``WEBSOCKET_BROKER_CHANNEL``
    (default ``"flask-uwsgi-websocket"``).
    """

    #: The middleware that wraps ``app.wsgi_app``.
    middleware_class: ClassVar[type[WebSocketMiddleware]] = WebSocketMiddleware
    #: The client class handlers receive.
    client_class: ClassVar[type[Client]]
    #: uWSGI options :meth:`run` adds unless given.
    run_defaults: ClassVar[dict[str, Any]] = {}
    #: The uWSGI loop engine the flavour needs (``None``: the default one).
    engine: ClassVar[str | None] = None
    #: The uWSGI plugins ``run`` checks the binary for.
    plugins: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def watch_worker_end() -> None:
        """Called in each uWSGI worker as it starts: make the worker close its connections
        with 1001 when uWSGI ends or recycles it (see ``shutdown``)."""

    def __init__(self, app: Flask | None = None, broker: str | None = None, **options: Any) -> None:
        #: The options given to the extension; each app adds its config.
        self.options = Options().replace(**options)
        #: The broker URL given to the extension; ``WEBSOCKET_BROKER_URL`` wins.
        self.broker_url = broker
        #: endpoint -> handler, for the routes declared on the extension.
        self.view_functions: dict[str, Callable[..., Any]] = {}
        #: exception class -> ``handler(ws, error)``; see :meth:`errorhandler`.
        self.error_handlers: dict[type[BaseException], Callable[..., Any]] = {}
        self._routes: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        self._views: dict[str, WebSocketView] = {}
        self._blueprints: list[tuple[Blueprint, dict[str, Any]]] = []
        self._apps: weakref.WeakKeyDictionary[Flask, _AppState] = weakref.WeakKeyDictionary()
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Serve this extension's routes in ``app``; ``app.run`` then starts uWSGI.

        Under uWSGI, a loop engine that does not fit the flavour is an error here,
        at start-up, rather than a stuck worker at the first connection.
        """
        if "uwsgi_websocket" in app.extensions:
            raise RuntimeError(
                f"a WebSocket extension is already registered on the app {app.name!r}: call"
                f" init_app() once per app, and give one app one extension"
            )
        self.check_engine()
        options = self.options.from_config(app.config)
        url = app.config.get("WEBSOCKET_BROKER_URL", self.broker_url)
        channel = app.config.get("WEBSOCKET_BROKER_CHANNEL")
        broker = make_broker(url, channel, app.logger)
        app.extensions["uwsgi_websocket"] = self
        self._apps[app] = _AppState(options, broker)
        _warn_about_the_setup(app, broker)
        if not isinstance(broker, LocalBroker):
            # Subscribed before the worker's first connection.
            uwsgi_api.in_each_worker(broker.start)
        uwsgi_api.in_each_worker(self.watch_worker_end)
        app.wsgi_app = self.middleware_class(app.wsgi_app, self, app)  # type: ignore[method-assign]
        if uwsgi_api.running() and os.environ.get(DEBUG_ENV) == "1":
            _serve_the_debugger(app)
        # Plain HTTP to a WebSocket-only URL: 426, unless the app has its own handler.
        if WebsocketMismatch not in app.error_handler_spec[None][WebsocketMismatch.code]:
            app.register_error_handler(WebsocketMismatch, not_an_upgrade)
        for view in app.view_functions.values():  # blueprints registered before init_app
            if isinstance(view, WebSocketView):
                self.check_handler(view.handler)
        for route in self._routes:
            self._add_route(app, *route)
        for blueprint, blueprint_options in self._blueprints:
            self._register_blueprint(app, blueprint, blueprint_options)

        def run(**kwargs: Any) -> None:
            self.run(app, **kwargs)

        run.__doc__ = self.run.__doc__
        app.run = run  # type: ignore[method-assign, assignment]

    def app_options(self, app: Flask) -> Options:
        """The options of ``app``: the extension's, then its ``WEBSOCKET_*`` config."""
        return self._apps[app].options

    def serve(
        self,
        app: Flask,
        handler: Callable[..., Any],
        kwargs: dict[str, Any],
        environ: dict[str, Any],
        options: Options,
        handshake: Handshake,
        end: Callable[[BaseException | None], None],
    ) -> Exception | Detached | None:
        """Serve the connection the view has just upgraded: run ``handler`` on it.

        Called by the route's view (see ``views``) after the ``101``; returns the
        exception no error handler took. (A flavour whose connections may outlive their
        request returns ``DETACHED`` instead, and calls ``end`` when one has ended.)
        """
        if isinstance(handler, type):
            handler = self.callback_handler(handler)
        fd = socket_fd(environ)
        client = self.open_client(app, self.client_class, fd, environ, options, handshake)
        if isinstance(client, Exception):
            return client
        return client.serve(handler, kwargs, self, app)

    def open_client(
        self,
        app: Flask,
        client_class: type[AnyClient],
        fd: int,
        environ: dict[str, Any],
        options: Options,
        handshake: Handshake,
    ) -> AnyClient | Exception:
        """A started ``client_class`` on socket ``fd``, in the app's broker's registry; or
        the exception that kept it from starting (out of memory...), after a close frame
        (1011) and a log line."""
        broker = self.broker(app)
        broker.start()  # started at fork already, unless something replaced uWSGI's fork hook
        client: AnyClient | None = None
        try:
            client = client_class(fd, environ, options, handshake, broker.rooms)
            if has_request_context() and request.url_rule is not None:
                client.route = request.url_rule.rule
            client.start()
            return client
        except Exception as exc:  # out of memory, say: a close frame, not a silent drop
            shortages.fail(app.logger, environ.get("PATH_INFO", ""), exc)
            if client is None or client.connected:  # no close frame sent yet
                with contextlib.suppress(OSError):
                    os.write(fd, CLOSE_1011)
            return exc

    def cannot_serve(self, environ: dict[str, Any]) -> str | None:
        """Why this worker cannot take the connection of ``environ`` now, or ``None``.

        Called before the 101, which is then a 503: what the worker needs for its
        connections is made now (see :meth:`prepare_worker`), and the connection must
        leave some file descriptors free (see ``resources``). Logged with a count.
        """
        why = None
        try:
            connections.prepare()
            self.prepare_worker()
        except (OSError, MemoryError, RuntimeError) as exc:  # no thread, descriptor, memory
            why = f"out of a resource: {exc}"
        else:
            if short_of_descriptors(socket_fd(environ)):
                why = "too few file descriptors left under the open-file limit (ulimit -n)"
        if why is not None:
            shortages.refuse(logger, environ.get("PATH_INFO", ""), why)
        return why

    def prepare_worker(self) -> None:
        """Make what this flavour's connections share in a worker, if not made yet;
        raise when out of a resource for it."""

    def test_client(
        self, app: Flask | None = None, flask_client: FlaskClient | None = None
    ) -> TestClient:
        """A test client of ``app`` (default: the extension's app, or ``flask_client``'s):
        WebSocket connections in process, without uWSGI; see ``testing``.

        ``flask_client`` (default: ``app.test_client()``) shares its cookies, so a test
        that logged in with it connects logged in.
        """
        from ..testing import TestClient

        if app is None:
            app = flask_client.application if flask_client is not None else self._current_app()
        if app not in self._apps:
            raise RuntimeError(f"the app {app.name!r} does not use this extension")
        return TestClient(self.engine, app, flask_client)

    def broker(self, app: Flask | None = None) -> Broker:
        """The broker of ``app`` (default: the current app)."""
        return self._apps[app or self._current_app()].broker

    def broadcast(self, message: Any, room: str | None = None, exclude: Any = None) -> None:
        """Send ``message`` to every connection of the app in ``room`` (``None``: all).

        ``str`` goes as a text message, bytes-like as a binary one, framed once
        for all recipients. ``exclude`` is a connection, a connection's ``id``,
        or an iterable of them. Callable from handlers, HTTP views and other
        threads or greenlets; it never waits: each recipient's connection
        queues the message, and one holding more than ``max_send_buffer``
        unsent bytes is closed with 1013 instead. Which connections it reaches
        is the broker's matter: this process's, or every process's on the same
        Redis, from any process that creates the app with that broker (a
        Celery worker, a ``flask`` command, a script; see :meth:`flush`).
        Outside an app context, the app is the one given to the extension, or
        its only one.
        """
        self.broker().publish(Broadcast.of(message, room, exclude))
        worker_metrics.broadcast()

    def metrics(self) -> dict[str, Any]:
        """This worker's figures: connections open, opened and closed by close code,
        messages and bytes in and out, slow consumers, broadcasts; in total and per
        route (see ``metrics``). uWSGI's metrics have them summed over workers."""
        return worker_metrics.snapshot()

    def flush(self, timeout: float | None = EXIT_TIMEOUT) -> bool:
        """Wait until the broadcasts this process has made have left it: published to
        Redis, or dropped (and logged). ``timeout`` seconds at most; ``None``: no limit.

        ``True`` when every broadcast made since the previous ``flush`` was
        published; ``False`` when some were dropped or time ran out first. A
        process that exits does this by itself (``EXIT_TIMEOUT``, 5 s at most);
        call it to know, or before an exit that skips ``atexit`` (``os._exit``).
        Blocks the calling thread (a coroutine: ``await asyncio.to_thread(
        websocket.flush)``). With the in-process broker, ``True`` at once.
        """
        return self.broker().flush(timeout)

    def _current_app(self) -> Flask:
        if has_app_context():
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
            if app not in self._apps:
                raise RuntimeError(f"the app {app.name!r} does not use this extension")
            return app
        if self.app is not None:
            return self.app
        apps = list(self._apps)
        if len(apps) == 1:
            return apps[0]
        raise RuntimeError(
            f"outside an app context the extension cannot tell which of its {len(apps)} "
            f"apps is meant: push one with 'with app.app_context():'"
        )

    def route(self, rule: str, **options: Any) -> Callable[[Handler], Handler]:
        """Decorate a handler ``f(ws, **url_variables)`` for the URL rule ``rule``, or a
        callback handler class (see :class:`~flask_uwsgi_websocket.WebSocketHandler`).

        ``options`` are Werkzeug ``Rule`` arguments (``endpoint``, ``defaults``,
        ``strict_slashes``...) and per-route connection options.
        """

        def decorator(handler: Handler) -> Handler:
            self.add_url_rule(rule, view_func=handler, **options)
            return handler

        return decorator

    def add_url_rule(
        self,
        rule: str,
        endpoint: str | None = None,
        view_func: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        """Register ``view_func`` as the handler of ``rule``, like ``Flask.add_url_rule``.

        The rule goes to ``app.url_map`` with ``websocket=True`` (in every app of
        the extension), so ``url_for(endpoint)`` builds its ``ws://`` URL; an HTTP
        view may have the same URL, but not the same endpoint.
        """
        endpoint, rule_args, connection_options = split_options(rule, endpoint, view_func, options)
        assert view_func is not None  # split_options checked it
        self.check_handler(view_func)
        existing = self.view_functions.get(endpoint)
        if existing is not None and existing is not view_func:
            raise AssertionError(
                f"WebSocket endpoint {endpoint!r} is already taken by another handler"
            )
        self._views.setdefault(endpoint, WebSocketView(view_func))
        self.view_functions[endpoint] = view_func
        route = (rule, endpoint, rule_args, connection_options)
        self._routes.append(route)
        for app in list(self._apps):
            self._add_route(app, *route)

    def _add_route(
        self, app: Flask, rule: str, endpoint: str, rule_args: dict[str, Any],
        connection_options: dict[str, Any],
    ) -> None:  # fmt: skip
        view = self._views[endpoint]
        add_websocket_rule(
            app.add_url_rule, app.url_map, rule, endpoint, view, rule_args, connection_options
        )

    def register_blueprint(self, blueprint: Blueprint, **options: Any) -> None:
        """Register ``blueprint`` in every app of the extension, as ``app.register_blueprint``.

        ``options`` are those of ``app.register_blueprint`` (``url_prefix``,
        ``name``...). A :class:`WebSocketBlueprint` may as well be registered with
        ``app.register_blueprint``. A plain Flask ``Blueprint`` given here is
        0.6.1's way: every route declared on it is a WebSocket handler.
        """
        self._blueprints.append((blueprint, options))
        for app in list(self._apps):
            self._register_blueprint(app, blueprint, options)

    @staticmethod
    def _register_blueprint(app: Flask, blueprint: Blueprint, options: dict[str, Any]) -> None:
        if isinstance(blueprint, WebSocketBlueprint):
            app.register_blueprint(blueprint, **options)
        else:
            register_handler_blueprint(app, blueprint, options)

    def errorhandler(
        self, exception: type[BaseException]
    ) -> Callable[[ErrorHandler], ErrorHandler]:
        """Decorate ``f(ws, error)``, called when a handler raises ``exception`` (or a subclass).

        It runs in the handler's context, may still send, and returns the close
        code, a ``(code, reason)`` pair, or ``None`` for 1011; it may also close
        the connection itself. A handled error is not logged. In the asyncio
        flavour it may be ``async def``.
        """

        def decorator(handler: ErrorHandler) -> ErrorHandler:
            self.error_handlers[exception] = handler
            return handler

        return decorator

    def error_handler_for(self, error: BaseException) -> Callable[..., Any] | None:
        """The error handler registered for the class of ``error`` or its nearest base."""
        for cls in type(error).__mro__:
            handler = self.error_handlers.get(cls)
            if handler is not None:
                return handler
        return None

    def check_engine(self) -> None:
        """Raise ``RuntimeError`` when uWSGI runs a loop engine this flavour cannot use."""
        if not uwsgi_api.running():
            return  # not under uWSGI: app.run() will start it with the right engine
        loop = uwsgi_api.loop_engine()
        if loop != self.engine:
            wanted = f"--{self.engine} N" if self.engine else "--threads N or --processes N"
            raise RuntimeError(
                f"{type(self).__name__} needs uWSGI started with {wanted}, but its loop "
                f"engine is {loop or 'the default one'}: pick the extension of that engine "
                f"(WebSocket: threads/processes, GeventWebSocket: --gevent, AsyncioWebSocket: "
                f"--asyncio N --greenlet); a uWSGI without the engine? {INSTALL_HINT}"
            )

    def callback_handler(self, cls: type) -> Callable[..., Any]:
        """The handler function that runs the callback handler class ``cls``."""
        return callbacks.blocking(cls)

    def check_handler(self, handler: Callable[..., Any]) -> None:
        """Refuse, when it is registered, a handler this flavour cannot run."""
        if isinstance(handler, type):
            callbacks.check(handler, asynchronous=False)
        elif inspect.iscoroutinefunction(handler):
            raise TypeError(
                f"{handler.__name__} is a coroutine function: use AsyncioWebSocket "
                f"for async handlers, or write it with def"
            )

    def run(self, app: Flask | None = None, **kwargs: Any) -> None:
        """Start uWSGI serving ``app`` (also reachable as ``app.run``).

        ``host`` and ``port`` (defaults: ``FLASK_RUN_HOST`` and ``FLASK_RUN_PORT`` from the
        environment, as ``flask run`` reads them, else ``localhost`` and 5000), ``uwsgi_binary`` and
        Flask's ``debug``, ``use_reloader``, ``threaded``, ``load_dotenv``; every
        other keyword is a uWSGI option: ``gevent=100`` is ``--gevent 100``,
        ``True`` a bare flag, ``False``/``None`` left out, a list repeated.
        The process becomes uWSGI, so its exit status is uWSGI's.
        """
        app = app or self.app
        if app is None:
            raise RuntimeError("run() needs an app: pass it, or call init_app(app) first")
        kwargs.setdefault("enable_metrics", True)
        if kwargs["enable_metrics"]:
            given = kwargs.get("metric") or []
            kwargs["metric"] = [*([given] if isinstance(given, str) else given), *uwsgi_options()]
        run_uwsgi(app, self.run_defaults, self.plugins, type(self).__name__, **kwargs)


def _serve_the_debugger(app: Flask) -> None:
    """Wrap ``app.wsgi_app`` in Werkzeug's interactive debugger, PIN and all, as
    ``flask run --debug`` does; WebSocket handlers still close with 1011 and log."""
    from werkzeug.debug import DebuggedApplication

    if uwsgi_api.worker_count() > 1:
        raise RuntimeError(
            f"{DEBUG_ENV}=1 needs one uWSGI worker process (--processes 1): the interactive "
            f"debugger keeps its tracebacks and consoles in the process that showed them"
        )
    app.debug = True  # Flask lets the exceptions of HTTP views through to the debugger
    debugger = DebuggedApplication(app.wsgi_app, evalex=True)
    app.wsgi_app = debugger  # type: ignore[method-assign]
    if debugger.pin is None:
        app.logger.warning(" * Debugger is active! Debugger PIN disabled. DEBUGGER UNSECURED!")
    else:
        app.logger.warning(" * Debugger is active! Debugger PIN: %s", debugger.pin)


def _warn_about_the_setup(app: Flask, broker: Broker) -> None:
    """Warn, once per uWSGI instance, of what will not work as meant: a router that relays
    no WebSocket frame, in-process broadcasts that stay in one of several workers."""
    workers = uwsgi_api.worker_count()
    if not uwsgi_api.router_relays_websockets() and uwsgi_api.worker_id() <= 1:
        app.logger.warning("WebSocket upgrades will be refused: %s", ROUTER_WITHOUT_WEBSOCKETS)
    if isinstance(broker, LocalBroker) and workers > 1 and uwsgi_api.worker_id() <= 1:
        app.logger.warning(
            "uWSGI runs %d worker processes and the WebSocket broker is in-process: a "
            "broadcast reaches only the connections of the worker that makes it. Set "
            "WEBSOCKET_BROKER_URL = 'redis://host:port/db' to reach them all.",
            workers,
        )
