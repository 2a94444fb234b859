"""The opening handshake (RFC 6455, section 4.2), as pure functions of the WSGI environ."""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any

__all__ = ["HandshakeError", "accept_key", "is_upgrade_attempt", "validate"]

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
Headers = list[tuple[str, str]]


class HandshakeError(Exception):
    """A refused upgrade: the HTTP status, a one-line reason and extra headers."""

    def __init__(self, status: str, reason: str, headers: Headers | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []


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


def response_headers(key: str) -> Headers:
    """The headers of the ``101 Switching Protocols`` answer to ``key``."""
    return [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", accept_key(key)),
    ]
