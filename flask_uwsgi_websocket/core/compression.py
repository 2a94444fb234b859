"""permessage-deflate (RFC 7692): its settings and its negotiation in the handshake.

The compression itself is ``websockets``' :class:`PerMessageDeflate` extension,
which the connection's protocol applies to every data frame; decompression is
bounded by ``max_message_size``, so a small frame that would inflate past it is
refused with 1009 after inflating at most that many bytes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from websockets.exceptions import NegotiationError
from websockets.extensions.base import Extension
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.headers import build_extension, parse_extension

__all__ = ["DEFAULTS", "deflate_settings", "negotiate"]

#: The settings ``compression="deflate"`` stands for. The server's window (2**12 bytes)
#: and zlib's ``mem_level`` 5 keep a connection's compressor to about 42 KiB; a client
#: that offers ``client_max_window_bits`` is held to 2**12 too, so the decompressor
#: takes about 10 KiB (41 KiB when the client keeps its 2**15 window). See README.rst.
DEFAULTS: Mapping[str, Any] = {
    "server_max_window_bits": 12,
    "client_max_window_bits": 12,
    "server_no_context_takeover": False,
    "client_no_context_takeover": False,
    "mem_level": 5,
    "level": 6,
}


def deflate_settings(compression: object) -> dict[str, Any] | None:
    """Check the ``compression`` option; return its full settings, or ``None`` for off.

    ``"deflate"`` means :data:`DEFAULTS`; a mapping overrides some of them, with the
    names of RFC 7692's parameters (``server_max_window_bits`` 9-15,
    ``client_max_window_bits`` 8-15, ``server_no_context_takeover``,
    ``client_no_context_takeover``) and zlib's ``mem_level`` (1-9) and ``level`` (0-9).
    """
    if compression is None:
        return None
    if compression == "deflate":
        return dict(DEFAULTS)
    if not isinstance(compression, Mapping):
        raise ValueError(
            f"compression is 'deflate', a dict of its settings or None, not {compression!r}"
        )
    unknown = sorted(set(compression) - set(DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown compression setting(s): {', '.join(unknown)}; known: {', '.join(DEFAULTS)}"
        )
    settings = {**DEFAULTS, **compression}
    ranges = {
        "server_max_window_bits": (9, 15),  # zlib cannot compress raw deflate with 8
        "client_max_window_bits": (8, 15),
        "mem_level": (1, 9),
        "level": (0, 9),
    }
    for name, (low, high) in ranges.items():
        value = settings[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ValueError(f"compression setting {name} must be an int from {low} to {high}")
    for name in ("server_no_context_takeover", "client_no_context_takeover"):
        if not isinstance(settings[name], bool):
            raise ValueError(f"compression setting {name} must be True or False")
    return settings


def negotiate(
    header: str | None, settings: Mapping[str, Any] | None
) -> tuple[str | None, list[Extension]]:
    """Answer a ``Sec-WebSocket-Extensions`` request header.

    Returns the response header (``None``: no extension) and the extensions to
    apply. Of the client's offers, the first permessage-deflate offer the
    settings can accept is taken (RFC 7692, section 5); other extensions are
    ignored. A malformed header raises ``InvalidHandshake``.
    """
    if not header or settings is None:
        return None, []
    offers = parse_extension(header)
    factory = ServerPerMessageDeflateFactory(
        server_no_context_takeover=settings["server_no_context_takeover"],
        client_no_context_takeover=settings["client_no_context_takeover"],
        server_max_window_bits=settings["server_max_window_bits"],
        client_max_window_bits=settings["client_max_window_bits"],
        compress_settings={"memLevel": settings["mem_level"], "level": settings["level"]},
    )
    for name, params in offers:
        if name != factory.name:
            continue
        try:
            response_params, extension = factory.process_request_params(params, [])
        except NegotiationError:
            continue  # not acceptable as offered: try the client's next offer
        except ValueError:
            # The same for websockets < 17, which leaves server_max_window_bits=8 to zlib,
            # and zlib refuses to compress with a 2**8 window.
            continue
        return build_extension([(name, response_params)]), [extension]
    return None, []
