"""The Flask extension: routes, options, ``init_app`` and ``run``."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from werkzeug.routing import Map, Rule

from .middleware import WebSocketMiddleware
from .options import Options
from .runner import INSTALL_HINT, run_uwsgi

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["WebSocket"]

Handler = TypeVar("Handler", bound=Callable[..., Any])
_OPTION_NAMES = frozenset(field.name for field in dataclasses.fields(Options)) | {"timeout"}


class WebSocket:
    """The Flask extension, plain flavour: handlers run in the request's thread.

    ``WebSocket(app, **options)`` or ``WebSocket(**options)`` then
    ``init_app(app)``; the options are those of :class:`Options`, each also
    read from ``app.config`` as ``WEBSOCKET_<NAME>``. One extension object
    may serve several apps.
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
        #: The WebSocket routes, separate from the app's, so one URL can be both.
        self.url_map = Map()
        #: endpoint -> handler; each rule of ``url_map`` carries its own connection
        #: options as ``rule.websocket_options``.
        self.view_functions: dict[str, Callable[..., Any]] = {}
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
        app.wsgi_app = self.middleware_class(app.wsgi_app, self, app, options)  # type: ignore[method-assign]

        def run(**kwargs: Any) -> None:
            self.run(app, **kwargs)

        run.__doc__ = self.run.__doc__
        app.run = run  # type: ignore[method-assign, assignment]

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
        """Register ``view_func`` as the handler of ``rule``, like ``Flask.add_url_rule``."""
        if view_func is None:
            raise TypeError("add_url_rule() needs view_func, the handler")
        self.check_handler(view_func)
        endpoint = endpoint or view_func.__name__
        existing = self.view_functions.get(endpoint)
        if existing is not None and existing is not view_func:
            raise AssertionError(
                f"WebSocket endpoint {endpoint!r} is already taken by another handler"
            )
        connection_options = {k: options.pop(k) for k in list(options) if k in _OPTION_NAMES}
        connection_options = Options.check(connection_options)
        options.pop("methods", None)  # the handshake is a GET; others get 400
        try:
            url_rule = Rule(rule, endpoint=endpoint, websocket=True, **options)
        except TypeError:
            known = ", ".join(sorted(_OPTION_NAMES - {"timeout"}))
            raise TypeError(
                f"unknown WebSocket option(s) or Rule argument(s): {', '.join(sorted(options))};"
                f" WebSocket options: {known}"
            ) from None
        url_rule.websocket_options = connection_options  # type: ignore[attr-defined]
        self.url_map.add(url_rule)
        self.view_functions[endpoint] = view_func

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
