"""Connection options: their defaults, and how they are read from a config mapping and routes."""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from .compression import deflate_settings
from .handshake import normalize_origin

__all__ = ["Options"]


@dataclasses.dataclass(frozen=True)
class Options:
    """Options of WebSocket connections.

    Each can be given to the extension (``GeventWebSocket(app, ping_interval=10)``),
    set in ``app.config`` as ``WEBSOCKET_<NAME>`` (``WEBSOCKET_PING_INTERVAL``), or
    given per route (``@websocket.route("/x", max_message_size=2**16)``). A route's
    option wins over the config, which wins over the extension's argument.
    """

    #: Seconds between keepalive pings the server sends; ``None`` turns keepalive off.
    #: The default stays below the 60 s after which uWSGI's ``--http`` router and nginx
    #: cut idle connections.
    ping_interval: float | None = 25.0
    #: Seconds to wait for the pong before closing with 1011; ``None``: wait forever.
    ping_timeout: float | None = 20.0
    #: Largest incoming message, in bytes, counted across fragments; larger: close 1009.
    max_message_size: int | None = 2**20
    #: Default timeout of ``receive()`` in seconds; ``None`` waits until a message comes.
    receive_timeout: float | None = None
    #: Incoming messages kept while the handler does not receive; beyond it the server
    #: stops reading the socket, so TCP flow control slows the peer down.
    max_queue: int = 16
    #: Bytes of outgoing data buffered before ``send()`` waits for the peer to read.
    write_limit: int = 2**20
    #: Bytes of outgoing data a connection may hold when a broadcast comes: a recipient
    #: with more waiting (a slow consumer) is closed with 1013 (Try Again Later) instead,
    #: so the buffer holds this much, or one message when larger. ``send()`` waits at
    #: ``write_limit`` instead.
    max_send_buffer: int = 2**20
    #: Seconds to wait for the peer to finish the closing handshake.
    close_timeout: float = 10.0
    #: permessage-deflate (RFC 7692), used when the client offers it: ``"deflate"``
    #: (the settings of :data:`~flask_uwsgi_websocket.core.compression.DEFAULTS`), a dict
    #: overriding some of them (``{"server_max_window_bits": 15}``), or ``None``: off.
    compression: str | Mapping[str, Any] | None = "deflate"
    #: Subprotocols the server speaks, most preferred first: the first one the client
    #: offers is agreed (``ws.subprotocol``); none offered, none agreed, and the
    #: handshake goes on without one. Or a callable that gets the client's list and
    #: returns one of its items or ``None``.
    subprotocols: Sequence[str] | Callable[[list[str]], str | None] | None = None
    #: Browser origins allowed besides the request's own host (``Origin`` whose host and
    #: port are the ``Host`` header's): full origins such as ``"https://example.com"``,
    #: or ``"*"`` for any. Others get 403, against cross-site WebSocket hijacking;
    #: requests without ``Origin`` (not from a browser) always pass.
    allowed_origins: str | Sequence[str] = ()

    @classmethod
    def names(cls) -> frozenset[str]:
        """The option names."""
        return frozenset(field.name for field in dataclasses.fields(cls))

    def replace(self, **changes: Any) -> Options:
        """A copy with ``changes`` applied; unknown names raise ``TypeError``."""
        return dataclasses.replace(self, **self.check(changes))

    @classmethod
    def check(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        """Validate option names, translating the 0.6.1 ``timeout`` argument."""
        options = dict(options)
        if "timeout" in options:
            warnings.warn(
                "'timeout' is deprecated, use 'receive_timeout'", DeprecationWarning, stacklevel=4
            )
            options.setdefault("receive_timeout", options.pop("timeout"))
        names = {field.name for field in dataclasses.fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            known = ", ".join(sorted(names))
            raise TypeError(f"unknown WebSocket option(s): {', '.join(unknown)}; known: {known}")
        if "compression" in options:
            deflate_settings(options["compression"])  # raises ValueError when invalid
        subprotocols = options.get("subprotocols")
        if subprotocols is not None and not callable(subprotocols):
            if isinstance(subprotocols, (str, bytes)) or not all(
                isinstance(name, str) for name in subprotocols
            ):
                raise ValueError(
                    f"subprotocols is a list of names or a callable, not {subprotocols!r}"
                )
            options["subprotocols"] = tuple(subprotocols)
        if "allowed_origins" in options:
            options["allowed_origins"] = cls._check_origins(options["allowed_origins"])
        return options

    @staticmethod
    def _check_origins(allowed: Any) -> str | tuple[str, ...]:
        if allowed is None:
            return ()
        if allowed == "*":
            return "*"
        if isinstance(allowed, (str, bytes)) or not all(isinstance(o, str) for o in allowed):
            raise ValueError(
                f'allowed_origins is "*" or a list of origins such as ["https://example.com"],'
                f" not {allowed!r}"
            )
        origins = []
        for origin in allowed:
            normalized = normalize_origin(origin)
            if normalized is None:
                raise ValueError(
                    f"allowed_origins: {origin!r} is not an origin (scheme://host[:port])"
                )
            origins.append(normalized)
        return tuple(origins)

    @property
    def deflate(self) -> dict[str, Any] | None:
        """The full permessage-deflate settings, or ``None`` when compression is off."""
        return deflate_settings(self.compression)

    def from_config(self, config: Mapping[str, Any]) -> Options:
        """A copy with the ``WEBSOCKET_<NAME>`` keys of ``config`` applied."""
        changes = {}
        for field in dataclasses.fields(self):
            key = "WEBSOCKET_" + field.name.upper()
            if key in config:
                changes[field.name] = config[key]
        return self.replace(**changes)
