"""The opening handshake (RFC 6455, section 4.2), as pure functions of the WSGI environ."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit

from websockets.exceptions import InvalidHandshake
from websockets.extensions.base import Extension
from websockets.headers import parse_subprotocol

from ..exceptions import HandshakeError
from . import compression

__all__ = [
    "Handshake",
    "HandshakeError",
    "accept_key",
    "check_origin",
    "is_upgrade_attempt",
    "negotiate",
    "normalize_origin",
    "select_subprotocol",
    "validate",
]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Headers = list[tuple[str, str]]


def accept_key(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` value that answers ``Sec-WebSocket-Key: key``."""
    digest = hashlib.sha1((key + GUID).encode("ascii")).digest()
    return base64.b64encode(digest).decode("ascii")


def _tokens(value: str) -> set[str]:
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def is_upgrade_attempt(environ: Mapping[str, Any]) -> bool:
    """Whether the request tries to open a WebSocket, well-formed or not.

    Any of ``Upgrade``, ``Sec-WebSocket-Key`` or ``Sec-WebSocket-Version`` makes
    it one; a request with none of them is ordinary HTTP and goes to Flask.
    """
    return any(
        name in environ
        for name in ("HTTP_UPGRADE", "HTTP_SEC_WEBSOCKET_KEY", "HTTP_SEC_WEBSOCKET_VERSION")
    )


def validate(environ: Mapping[str, Any]) -> str:
    """Check an upgrade request; return its ``Sec-WebSocket-Key`` or raise ``HandshakeError``.

    Malformed requests get 400; a ``Sec-WebSocket-Version`` other than 13 gets
    426 with ``Sec-WebSocket-Version: 13``, as section 4.4 asks.
    """
    if environ.get("REQUEST_METHOD") != "GET":
        raise HandshakeError("400 Bad Request", "a WebSocket handshake must use GET")
    if "websocket" not in _tokens(environ.get("HTTP_UPGRADE", "")):
        raise HandshakeError("400 Bad Request", "missing or invalid header: Upgrade: websocket")
    if "upgrade" not in _tokens(environ.get("HTTP_CONNECTION", "")):
        raise HandshakeError("400 Bad Request", "missing or invalid header: Connection: Upgrade")
    version = environ.get("HTTP_SEC_WEBSOCKET_VERSION")
    if version is None:
        raise HandshakeError("400 Bad Request", "missing header: Sec-WebSocket-Version")
    if version.strip() != "13":
        raise HandshakeError(
            "426 Upgrade Required",
            f"unsupported Sec-WebSocket-Version: {version!r}; this server speaks 13",
            [("Sec-WebSocket-Version", "13")],
        )
    key = str(environ.get("HTTP_SEC_WEBSOCKET_KEY", "")).strip()
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(
            "400 Bad Request", "missing or invalid header: Sec-WebSocket-Key (16 bytes, base64)"
        )
    return key


_DEFAULT_PORTS = {"http": "80", "ws": "80", "https": "443", "wss": "443"}


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or ``None`` if malformed."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if not parts.scheme or not parts.hostname or parts.path not in ("", "/"):
        return None
    if parts.query or parts.fragment or parts.username is not None:
        return None
    netloc = parts.netloc.rsplit("@", 1)[-1]
    if port is not None and str(port) == _DEFAULT_PORTS.get(parts.scheme):
        netloc = netloc.rsplit(":", 1)[0]
    return f"{parts.scheme}://{netloc}"


def _without_default_port(netloc: str) -> str:
    host, _, port = netloc.rpartition(":")
    return host if host and port in ("80", "443") else netloc


def check_origin(environ: Mapping[str, Any], allowed: str | Sequence[str]) -> None:
    """Refuse a browser's cross-site upgrade (cross-site WebSocket hijacking) with 403.

    A request without ``Origin`` (not a browser) passes. A browser's ``Origin``
    passes when its host and port are the ``Host`` header's (whatever the
    scheme: TLS may end at a proxy), when it is one of ``allowed`` (normalized
    origins, see :func:`normalize_origin`), or when ``allowed`` is ``"*"``.
    """
    origin = environ.get("HTTP_ORIGIN")
    if origin is None or allowed == "*":
        return
    normalized = normalize_origin(origin)
    if normalized is not None:
        netloc = normalized.split("://", 1)[1]
        host = str(environ.get("HTTP_HOST", "")).strip().lower()
        if host and _without_default_port(netloc) == _without_default_port(host):
            return
        if normalized in allowed:
            return
    raise HandshakeError(
        "403 Forbidden",
        f"WebSocket connections from origin {origin[:200]!r} are not allowed"
        " (see the allowed_origins option)",
    )


def select_subprotocol(
    header: str | None, subprotocols: Sequence[str] | Callable[[list[str]], str | None] | None
) -> str | None:
    """The subprotocol agreed for a ``Sec-WebSocket-Protocol`` request header, or ``None``.

    ``subprotocols`` is the server's list, most preferred first (the first one the
    client offers wins), or a callable that picks from the client's list. A
    malformed header raises ``InvalidHandshake``; a callable's answer that the
    client did not offer raises ``ValueError``.
    """
    if not header or subprotocols is None:
        return None
    offered = [str(name) for name in parse_subprotocol(header)]
    if callable(subprotocols):
        chosen = subprotocols(offered)
        if chosen is not None and chosen not in offered:
            raise ValueError(
                f"the subprotocol selector returned {chosen!r}, which the client did not"
                f" offer (it offered {offered!r}); return one of them or None"
            )
        return chosen
    return next((name for name in subprotocols if name in offered), None)


class Terms(Protocol):
    """What the server offers in a handshake (:class:`~.options.Options` has both)."""

    @property
    def subprotocols(self) -> Sequence[str] | Callable[[list[str]], str | None] | None:
        """The subprotocols the server speaks, or a callable that picks one."""

    @property
    def deflate(self) -> Mapping[str, Any] | None:
        """The permessage-deflate settings, or ``None`` when compression is off."""


@dataclasses.dataclass
class Handshake:
    """What the server agreed in an opening handshake."""

    #: The ``Sec-WebSocket-Key`` of the request.
    key: str
    #: The subprotocol agreed, or ``None``.
    subprotocol: str | None
    #: The extensions agreed (permessage-deflate or none), to apply to frames.
    extensions: list[Extension]
    #: The headers of the ``101 Switching Protocols`` response.
    headers: Headers


def negotiate(environ: Mapping[str, Any], options: Terms) -> Handshake:
    """Validate an upgrade request and agree its subprotocol and extensions.

    Raises ``HandshakeError`` with 400 or 426 for a bad request (see :func:`validate`
    and malformed ``Sec-WebSocket-Protocol`` or ``Sec-WebSocket-Extensions`` headers).
    """
    key = validate(environ)
    try:
        subprotocol = select_subprotocol(
            environ.get("HTTP_SEC_WEBSOCKET_PROTOCOL"), options.subprotocols
        )
    except InvalidHandshake as exc:
        raise HandshakeError("400 Bad Request", f"invalid Sec-WebSocket-Protocol: {exc}") from None
    try:
        extensions_header, extensions = compression.negotiate(
            environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS"), options.deflate
        )
    except InvalidHandshake as exc:
        raise HandshakeError(
            "400 Bad Request", f"invalid Sec-WebSocket-Extensions: {exc}"
        ) from None
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
    if subprotocol is not None:
        headers.append(("Sec-WebSocket-Protocol", subprotocol))
    if extensions_header is not None:
        headers.append(("Sec-WebSocket-Extensions", extensions_header))
    return Handshake(key, subprotocol, extensions, headers)
