"""``WebSocketBlueprint``: a Flask blueprint whose routes are WebSocket handlers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Blueprint
from flask.blueprints import BlueprintSetupState

from .views import WebSocketView, add_websocket_rule, split_options

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["WebSocketBlueprint", "register_handler_blueprint"]


class WebSocketBlueprint(Blueprint):
    """A Flask :class:`~flask.Blueprint` whose ``route`` declares WebSocket handlers.

    Everything else is Flask's: register it with ``app.register_blueprint``
    (or the extension's :meth:`~flask_uwsgi_websocket.WebSocket.register_blueprint`),
    nest it in another blueprint, give it ``url_prefix``, ``before_request``,
    ``url_value_preprocessor``, ``teardown_request``... Endpoints are
    ``"name.handler"``; ``url_for`` builds ``ws://`` (``wss://``) URLs for them.
    Handlers must suit the extension of the app (``async def`` for asyncio),
    checked when the blueprint and the extension meet.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._views: dict[str, WebSocketView] = {}

    def add_url_rule(
        self,
        rule: str,
        endpoint: str | None = None,
        view_func: Callable[..., Any] | None = None,
        provide_automatic_options: bool | None = None,
        **options: Any,
    ) -> None:
        """Declare ``view_func`` the WebSocket handler of ``rule`` (``route`` calls this).

        ``options``: Werkzeug ``Rule`` arguments and per-route connection options.
        """
        endpoint, rule_args, connection_options = split_options(rule, endpoint, view_func, options)
        assert view_func is not None  # split_options checked it
        if "." in endpoint:
            raise ValueError("'endpoint' may not contain a dot '.' character.")
        view = self._views.setdefault(endpoint, WebSocketView(view_func))
        if view.handler is not view_func:
            raise AssertionError(
                f"WebSocket endpoint {endpoint!r} is already taken by another handler"
            )

        def register(state: BlueprintSetupState) -> None:
            websocket = state.app.extensions.get("uwsgi_websocket")
            if websocket is not None:
                websocket.check_handler(view_func)
            add_websocket_rule(
                state.add_url_rule, state.app.url_map, rule, endpoint, view, rule_args,
                connection_options,
            )  # fmt: skip

        self.record(register)


class _HandlerSetupState(BlueprintSetupState):
    """Registers the routes of a plain blueprint as WebSocket routes (0.6.1's blueprints)."""

    def add_url_rule(
        self,
        rule: str,
        endpoint: str | None = None,
        view_func: Callable[..., Any] | None = None,
        **options: Any,
    ) -> None:
        endpoint, rule_args, connection_options = split_options(rule, endpoint, view_func, options)
        assert view_func is not None  # split_options checked it
        self.app.extensions["uwsgi_websocket"].check_handler(view_func)
        add_websocket_rule(
            super().add_url_rule, self.app.url_map, rule, endpoint, WebSocketView(view_func),
            rule_args, connection_options,
        )  # fmt: skip


def register_handler_blueprint(app: Flask, blueprint: Blueprint, options: dict[str, Any]) -> None:
    """Register a plain Flask blueprint whose routes are all WebSocket handlers.

    This is how 0.6.1 code declares them (``@bp.route`` on a ``Blueprint``, then
    ``websocket.register_blueprint(bp)``); the blueprint's own nested blueprints
    stay ordinary ones.
    """

    def make_setup_state(
        app: Flask, options: dict[str, Any], first_registration: bool = False
    ) -> BlueprintSetupState:
        return _HandlerSetupState(blueprint, app, options, first_registration)

    blueprint.make_setup_state = make_setup_state  # type: ignore[method-assign, assignment, unused-ignore]
    try:
        app.register_blueprint(blueprint, **options)
    finally:
        del blueprint.make_setup_state  # the class's method again
