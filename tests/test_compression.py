"""permessage-deflate (RFC 7692): the negotiation as pure functions, then real uWSGI."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest
from websockets.exceptions import InvalidHandshake, PayloadTooBig, ProtocolError
from websockets.extensions.permessage_deflate import (
    ClientPerMessageDeflateFactory,
    PerMessageDeflate,
)
from websockets.frames import Frame, Opcode
from websockets.headers import parse_extension
from websockets.sync.client import connect

from flask_uwsgi_websocket.core.compression import (
    DEFAULTS,
    Deflate,
    deflate_settings,
    negotiate,
)
from flask_uwsgi_websocket.core.handshake import HandshakeError
from flask_uwsgi_websocket.core.handshake import negotiate as negotiate_handshake
from flask_uwsgi_websocket.core.options import Options

from .app_common import TUNED_DEFLATE
from .helpers import BINARY, TEXT, AppServer, RawClient, frame, upgrade_environ

# -- settings ----------------------------------------------------------------------------------


def test_deflate_means_the_defaults_and_none_means_off() -> None:
    assert deflate_settings("deflate") == dict(DEFAULTS)
    assert deflate_settings(None) is None
    assert deflate_settings({"server_max_window_bits": 15}) == {
        **DEFAULTS,
        "server_max_window_bits": 15,
    }
    assert Options().compression == "deflate" and Options().deflate == dict(DEFAULTS)
    assert Options(compression=None).deflate is None


@pytest.mark.parametrize(
    ("compression", "message"),
    [
        ("gzip", "compression is 'deflate'"),
        ({"window_bits": 10}, "unknown compression setting"),
        ({"server_max_window_bits": 8}, "server_max_window_bits must be an int from 9 to 15"),
        ({"client_max_window_bits": 16}, "client_max_window_bits must be an int from 8 to 15"),
        ({"mem_level": 0}, "mem_level"),
        ({"level": "best"}, "level"),
        ({"min_size": -1}, "min_size must be an int from 0"),
        ({"server_no_context_takeover": 1}, "True or False"),
    ],
)
def test_invalid_settings_are_refused_when_given(compression: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Options().replace(compression=compression)


# -- negotiation -------------------------------------------------------------------------------


def response(offer: str | None, **settings: object) -> str | None:
    header, extensions = negotiate(offer, {**DEFAULTS, **settings})
    assert len(extensions) == (header is not None)
    return header


def test_no_offer_no_extension() -> None:
    assert negotiate(None, dict(DEFAULTS)) == (None, [])
    assert negotiate("x-webkit-deflate-frame", dict(DEFAULTS)) == (None, [])
    assert negotiate("permessage-deflate", None) == (None, [])


def test_default_offer_gets_the_default_server_window() -> None:
    header, [extension] = negotiate("permessage-deflate", dict(DEFAULTS))
    # The client did not say it can use a smaller window than 2**15: it keeps no context,
    # so its inflater need not outlive a message.
    assert header == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=12"
    )
    assert isinstance(extension, Deflate)
    assert (extension.local_max_window_bits, extension.remote_max_window_bits) == (12, 15)
    assert extension.local_no_context_takeover and extension.remote_no_context_takeover


def test_client_max_window_bits_is_limited_when_offered() -> None:
    header, [extension] = negotiate("permessage-deflate; client_max_window_bits", dict(DEFAULTS))
    assert header == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12;"
        " client_max_window_bits=12"
    )
    assert isinstance(extension, Deflate)
    assert extension.remote_max_window_bits == 12
    assert not extension.remote_no_context_takeover  # its context fits the window asked
    assert response("permessage-deflate; client_max_window_bits=10") == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12;"
        " client_max_window_bits=10"
    )


def test_a_larger_client_window_is_kept_with_its_context_when_allowed() -> None:
    assert response("permessage-deflate", client_max_window_bits=15) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    )


def test_client_requests_are_honoured() -> None:
    keep = {"server_no_context_takeover": False, "client_max_window_bits": 15}
    assert response("permessage-deflate; server_no_context_takeover", **keep) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    )
    assert response("permessage-deflate; client_no_context_takeover", **keep) == (
        "permessage-deflate; client_no_context_takeover; server_max_window_bits=12"
    )
    assert response("permessage-deflate; server_max_window_bits=10", **keep) == (
        "permessage-deflate; server_max_window_bits=10"
    )
    # A larger window than the server's setting is lowered to it.
    assert response("permessage-deflate; server_max_window_bits=15", **keep) == (
        "permessage-deflate; server_max_window_bits=12"
    )


def test_server_settings_are_imposed() -> None:
    assert response(
        "permessage-deflate; client_max_window_bits",
        server_max_window_bits=15,
        client_max_window_bits=9,
        server_no_context_takeover=True,
        client_no_context_takeover=True,
    ) == (
        "permessage-deflate; server_no_context_takeover; client_no_context_takeover;"
        " server_max_window_bits=15; client_max_window_bits=9"
    )


def test_an_unacceptable_offer_falls_back_to_the_next() -> None:
    # zlib cannot compress with a 2**8 window: that offer is declined, the next taken.
    offers = "permessage-deflate; server_max_window_bits=8, permessage-deflate"
    assert response(offers, client_max_window_bits=15) == (
        "permessage-deflate; server_no_context_takeover; server_max_window_bits=12"
    )
    assert response("permessage-deflate; server_max_window_bits=8") is None
    assert response("permessage-deflate; unknown_parameter") is None


@pytest.mark.parametrize("header", ["permessage-deflate; =", "permessage-deflate;;", "a b"])
def test_malformed_header_is_400(header: str) -> None:
    with pytest.raises(InvalidHandshake):
        negotiate(header, dict(DEFAULTS))
    with pytest.raises(HandshakeError) as info:
        negotiate_handshake(upgrade_environ(HTTP_SEC_WEBSOCKET_EXTENSIONS=header), Options())
    assert info.value.status == "400 Bad Request"
    assert "Sec-WebSocket-Extensions" in info.value.reason


def test_a_bad_parameter_value_declines_the_offer() -> None:
    assert response("permessage-deflate; server_max_window_bits=x") is None
    assert response("permessage-deflate; client_max_window_bits=16") is None


# -- the compression itself: zlib against websockets' extension ------------------------------

#: JSON-like messages that repeat each other: context takeover matters.
RECORDS = [f'{{"id": {i}, "user": "user-{i % 7}", "tags": ["alpha", "bravo"]}}' for i in range(20)]


def agreed(offer: str, **settings: object) -> tuple[Deflate, PerMessageDeflate]:
    """The server's :class:`Deflate` and the client's extension, as agreed for ``offer``."""
    header, [server] = negotiate(offer, {**DEFAULTS, **settings})
    assert isinstance(server, Deflate) and header is not None
    [(_, params)] = parse_extension(header)
    factory = ClientPerMessageDeflateFactory(
        client_max_window_bits=True if "client_max_window_bits" in offer else None
    )
    return server, factory.process_response_params(params, [])


@pytest.mark.parametrize(
    ("offer", "settings"),
    [
        ("permessage-deflate; client_max_window_bits", {}),
        ("permessage-deflate", {}),
        ("permessage-deflate; client_max_window_bits", {"server_no_context_takeover": False}),
        ("permessage-deflate", {"client_max_window_bits": 15, "level": 1, "mem_level": 9}),
    ],
)
def test_messages_both_ways_agree_with_websockets(offer: str, settings: dict[str, Any]) -> None:
    server, client = agreed(offer, **settings)
    for i, record in enumerate(RECORDS):
        data = record.encode() * (1 + i % 3 * 200)  # a few over 2,044 bytes compressed
        # Client to server: whole, or in two fragments through the protocol's interface.
        if i % 2:
            sent = client.encode(Frame(Opcode.TEXT, data))
            assert sent.rsv1
            assert server.inflate(bytes(sent.data), True, None) == data
        else:
            first = client.encode(Frame(Opcode.TEXT, data[:10], fin=False))
            rest = client.encode(Frame(Opcode.CONT, data[10:]))
            received = [server.decode(first), server.decode(rest)]
            assert b"".join(bytes(f.data) for f in received) == data
            assert not received[0].rsv1
        # Server to client: websockets' extension inflates what the server compressed.
        compressed = server.deflate(data)
        assert client.decode(Frame(Opcode.TEXT, compressed, rsv1=True)).data == data
    # Between messages, a stream is held only where context must be kept.
    assert server.streams == (not server.remote_no_context_takeover) + (
        not server.local_no_context_takeover
    )


def test_streams_are_made_on_first_use_and_released_after_each_message() -> None:
    server, client = agreed("permessage-deflate")  # neither side keeps context
    assert server.streams == 0
    server.deflate(b"x" * 100, fin=False)
    assert server.streams == 1  # a message being sent keeps its compressor to its end
    server.deflate(b"y" * 100)
    assert server.streams == 0
    server.inflate(bytes(client.encode(Frame(Opcode.BINARY, b"z" * 100)).data))
    assert server.streams == 0
    server, client = agreed("permessage-deflate; client_max_window_bits")
    server.inflate(bytes(client.encode(Frame(Opcode.BINARY, b"z" * 100)).data))
    assert server.streams == 1  # the client keeps its context: so does the inflater


def test_smaller_context_free_messages_compress_less_well() -> None:
    """What ``server_no_context_takeover`` costs: each small message compressed alone."""
    alone, _ = agreed("permessage-deflate; client_max_window_bits")
    kept, _ = agreed("permessage-deflate; client_max_window_bits", server_no_context_takeover=False)
    sizes = [(len(alone.deflate(r.encode())), len(kept.deflate(r.encode()))) for r in RECORDS[1:]]
    assert sum(k for _, k in sizes) < sum(a for a, _ in sizes) / 2


def test_corrupt_and_oversized_data_is_refused() -> None:
    server, _ = agreed("permessage-deflate")
    with pytest.raises(ProtocolError):
        server.inflate(b"\xff\xff\xff")
    with pytest.raises(PayloadTooBig):
        server.inflate(deflate(b"\x00" * 5000), True, 4999)
    assert server.inflate(deflate(b"\x00" * 5000), True, 5000) == b"\x00" * 5000
    big = os.urandom(3000)  # compressed, over 2,044 bytes: inflated without the copy
    with pytest.raises(PayloadTooBig):
        server.inflate(deflate(big), True, 2999)
    assert server.inflate(deflate(big), True, 3000) == big


# -- real uWSGI --------------------------------------------------------------------------------

#: A text that compresses well, with repeats farther apart than a 2**10 window.
BLOCK = os.urandom(1500).hex()


def test_compression_is_on_by_default(server: AppServer) -> None:
    with connect(f"{server.url}/echo") as ws:  # the client offers permessage-deflate
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover; server_max_window_bits=12;"
            " client_max_window_bits=12"
        )
        assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
        for message in ("small", BLOCK * 20, b"\x00" * 100_000, "é" * 50_000, b"", ""):
            ws.send(message)
            assert ws.recv() == message


def test_a_client_with_a_larger_window_keeps_no_context(server: AppServer) -> None:
    factory = ClientPerMessageDeflateFactory(client_max_window_bits=None)
    with connect(f"{server.url}/echo", extensions=[factory], compression=None) as ws:
        assert "client_no_context_takeover" in ws.response.headers["Sec-WebSocket-Extensions"]
        for record in RECORDS:  # each compressed alone by the client, inflated alone
            ws.send(record)
            assert ws.recv() == record


def test_compression_none_turns_it_off(server: AppServer) -> None:
    with connect(f"{server.url}/uncompressed") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response.headers
        assert ws.protocol.extensions == []
        ws.send(BLOCK)
        assert ws.recv() == BLOCK


def test_tuned_settings_are_negotiated_and_used(server: AppServer) -> None:
    assert TUNED_DEFLATE["server_max_window_bits"] == 10
    with connect(f"{server.url}/deflate-tuned") as ws:
        assert ws.response.headers["Sec-WebSocket-Extensions"] == (
            "permessage-deflate; server_no_context_takeover;"
            " server_max_window_bits=10; client_max_window_bits=9"
        )
        for _ in range(3):
            ws.send(BLOCK * 20)
            assert ws.recv() == BLOCK * 20


def test_server_frames_respect_the_negotiated_window(server: AppServer) -> None:
    """Each server message inflates alone, with a 2**10 window: no context, no far match."""
    client = RawClient(
        server.address,
        "/deflate-tuned",
        {"Sec-WebSocket-Extensions": "permessage-deflate; client_max_window_bits"},
    )
    try:
        assert "server_max_window_bits=10" in client.headers["sec-websocket-extensions"]
        message = (BLOCK * 20).encode()
        for _ in range(2):
            client.send(frame(TEXT, deflate(message, wbits=9), rsv=4))
            opcode, payload, fin = client.recv_frame()
            assert (opcode, fin, client.rsv) == (TEXT, True, 4)
            assert len(payload) < len(message) * 0.6  # hex digits: Huffman codes, no matches
            inflater = zlib.decompressobj(wbits=-10)  # raises on a distance over 2**10
            assert inflater.decompress(payload + b"\x00\x00\xff\xff") == message
    finally:
        client.close()


def test_uncompressed_frames_are_accepted_in_a_compressed_connection(server: AppServer) -> None:
    client = RawClient(server.address, "/echo", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    plain, deflated, short = b"plain bytes" * 20, b"deflated text" * 20, b"short"
    try:
        client.send(frame(BINARY, plain))  # RSV1 clear: not compressed
        client.send(frame(TEXT, deflate(deflated), rsv=4))
        client.send(frame(TEXT, deflate(short), rsv=4))
        replies = []
        for _ in range(3):
            opcode, payload, _ = client.recv_frame()
            replies.append((opcode, client.rsv, payload))
        # Each reply inflated alone (server_no_context_takeover); under min_size, as it is.
        data = [
            zlib.decompressobj(wbits=-12).decompress(payload + b"\x00\x00\xff\xff")
            if rsv
            else payload
            for _, rsv, payload in replies
        ]
        assert data == [plain, deflated, short]
        assert [(opcode, rsv) for opcode, rsv, _ in replies] == [(BINARY, 4), (TEXT, 4), (TEXT, 0)]
    finally:
        client.close()


def test_a_deflate_bomb_is_refused_with_1009_without_inflating_it(server: AppServer) -> None:
    """A 260 KB frame that inflates to 256 MiB, under a 1.5 MB limit: 1009, memory flat."""
    bomb = deflate_zeros(256 << 20)
    assert len(bomb) < 1_500_000
    before = server.http("/memory")
    client = RawClient(server.address, "/echo", {"Sec-WebSocket-Extensions": "permessage-deflate"})
    try:
        client.send(frame(BINARY, bomb, rsv=4))
        assert client.expect_close() == (1009, "frame exceeds limit of 1500000 bytes")
    finally:
        client.close()
    after = server.http("/memory")
    assert after["VmHWM"] - before["VmHWM"] < 32 * 1024  # KiB: far below 256 MiB
    with connect(f"{server.url}/echo") as ws:  # the worker serves on
        ws.send("still fine")
        assert ws.recv() == "still fine"


def deflate(data: bytes, wbits: int = 15) -> bytes:
    """``data`` as one compressed message (RFC 7692, section 7.2.1)."""
    compressor = zlib.compressobj(wbits=-wbits)
    compressed = compressor.compress(data) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert compressed.endswith(b"\x00\x00\xff\xff")
    return compressed[:-4]


def deflate_zeros(size: int) -> bytes:
    compressor = zlib.compressobj(9, wbits=-15)
    chunk = bytes(1 << 20)
    parts = [compressor.compress(chunk) for _ in range(size >> 20)]
    parts.append(compressor.flush(zlib.Z_SYNC_FLUSH))
    return b"".join(parts)[:-4]
