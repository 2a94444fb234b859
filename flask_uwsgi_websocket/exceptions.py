"""Exceptions raised by Flask-uWSGI-WebSocket."""

from __future__ import annotations

__all__ = ["ConnectionClosed", "HandshakeError", "WebSocketError"]

#: Close codes that mean the connection ended normally (RFC 6455, section 7.4.1).
NORMAL_CLOSE_CODES = frozenset({1000, 1001})


class WebSocketError(Exception):
    """Base class of the errors this package raises."""


class ConnectionClosed(WebSocketError):
    """The WebSocket connection is closed: raised by ``receive`` and ``send``.

    ``code`` and ``reason`` are those of the close frame the peer sent, or 1006
    and ``""`` when the connection ended without one. A handler that lets this
    exception escape ends normally.
    """

    def __init__(self, code: int = 1006, reason: str = "") -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def ok(self) -> bool:
        """True when the peer closed normally (codes 1000 and 1001)."""
        return self.code in NORMAL_CLOSE_CODES

    def __str__(self) -> str:
        return f"connection closed: {self.code} {self.reason}".rstrip()


class HandshakeError(WebSocketError):
    """A refused upgrade: the HTTP status, a one-line reason and extra headers."""

    def __init__(
        self, status: str, reason: str, headers: list[tuple[str, str]] | None = None
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or []
