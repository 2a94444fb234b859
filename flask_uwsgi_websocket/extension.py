"""The Flask extension: routes, options, ``init_app`` and ``run``."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from werkzeug.routing import WebsocketMismatch

from .blueprints import WebSocketBlueprint, register_handler_blueprint
from .middleware import WebSocketMiddleware
from .options import Options
from .runner import INSTALL_HINT, run_uwsgi
from .views import WebSocketView, add_websocket_rule, not_an_upgrade, split_options

if TYPE_CHECKING:
    from flask import Blueprint, Flask

__all__ = ["WebSocket"]

Handler = TypeVar("Handler", bound=Callable[..., Any])
ErrorHandler = TypeVar("ErrorHandler", bound=Callable[..., Any])


class WebSocket:
    """The Flask extension, plain flavour: handlers run in the request's thread.

    ``WebSocket(app, **options)`` or ``WebSocket(**options)`` then
    ``init_app(app)``; the options are those of :class:`Options`, each also
    read from ``app.config`` as ``WEBSOCKET_<NAME>``. One extension object
    may serve several apps: its routes, blueprints and error handlers go to
    every app it is given.
    """

    #: The middleware that wraps ``app.wsgi_app``.
    middleware_class: ClassVar[type[WebSocketMiddleware]] = WebSocketMiddleware
    #: uWSGI options :meth:`run` adds unless given.
    run_defaults: ClassVar[dict[str, Any]] = {"enable_threads": True, "threads": 8}
    #: The uWSGI loop engine the flavour needs (``None``: the default one).
    engine: ClassVar[str | None] = None
    #: The uWSGI plugins ``run`` checks the binary for.
    plugins: ClassVar[tuple[str, ...]] = ()

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        #: The options given to the extension; each app adds its config.
        self.options = Options().replace(**options)
        #: endpoint -> handler, for the routes declared on the extension.
        self.view_functions: dict[str, Callable[..., Any]] = {}
        #: exception class -> ``handler(ws, error)``; see :meth:`errorhandler`.
        self.error_handlers: dict[type[BaseException], Callable[..., Any]] = {}
        self._routes: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = []
        self._views: dict[str, WebSocketView] = {}
        self._blueprints: list[tuple[Blueprint, dict[str, Any]]] = []
        self._apps: weakref.WeakKeyDictionary[Flask, Options] = weakref.WeakKeyDictionary()
        self.app = app
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Serve this extension's routes in ``app``; ``app.run`` then starts uWSGI.

        Under uWSGI, a loop engine that does not fit the flavour is an error here,
        at start-up, rather than a stuck worker at the first connection.
        """
        self.check_engine()
        options = self.options.from_config(app.config)
        app.extensions["uwsgi_websocket"] = self
        self._apps[app] = options
        app.wsgi_app = self.middleware_class(app.wsgi_app, self, app)  # type: ignore[method-assign]
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
        return self._apps[app]

    def route(self, rule: str, **options: Any) -> Callable[[Handler], Handler]:
        """Decorate a handler ``f(ws, **url_variables)`` for the URL rule ``rule``.

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
        try:
            import uwsgi
        except ImportError:
            return  # not under uWSGI: app.run() will start it with the right engine
        loop = getattr(uwsgi, "loop", None)
        if isinstance(loop, bytes):
            loop = loop.decode()
        if loop != self.engine:
            wanted = f"--{self.engine} N" if self.engine else "--threads N or --processes N"
            raise RuntimeError(
                f"{type(self).__name__} needs uWSGI started with {wanted}, but its loop "
                f"engine is {loop or 'the default one'}: pick the extension of that engine "
                f"(WebSocket: threads/processes, GeventWebSocket: --gevent, AsyncioWebSocket: "
                f"--asyncio N --greenlet); a uWSGI without the engine? {INSTALL_HINT}"
            )

    def check_handler(self, handler: Callable[..., Any]) -> None:
        """Refuse, when it is registered, a handler this flavour cannot run."""
        if inspect.iscoroutinefunction(handler):
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
        run_uwsgi(app, defaults=self.run_defaults, plugins=self.plugins, **kwargs)
