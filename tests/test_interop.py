"""Interoperability with real client libraries at their default settings, in every flavour.

``websockets`` (compression on, keepalive pings with a payload, close codes both ways)
and ``websocket-client`` (text, binary, ping, close), against the test app under uWSGI.
"""

from __future__ import annotations

import struct
import time

import pytest
import websocket  # websocket-client
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from .helpers import AppServer, wait_for

# -- websockets ----------------------------------------------------------------------------


def test_websockets_compressed_echo(server: AppServer) -> None:
    with connect(f"{server.url}/echo") as ws:
        assert "permessage-deflate" in ws.response.headers["Sec-WebSocket-Extensions"]
        messages = ["héllo", b"\x00\xff" * 5000, "a" * 200_000, b"", "{}" * 10]
        for message in messages:
            ws.send(message)
        assert [ws.recv() for _ in messages] == messages


def test_websockets_keepalive_pings_with_payload_are_answered(server: AppServer) -> None:
    # Only the timing differs from the defaults (20 s), so the test sees several pings:
    # the client pings with a 4-byte random payload and fails with 1011 if no pong matches.
    with connect(f"{server.url}/echo", ping_interval=0.2, ping_timeout=1) as ws:
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            ws.send("tick")
            assert ws.recv(timeout=5) == "tick"
            time.sleep(0.1)
        assert ws.latency > 0  # set when a pong answered a keepalive ping
        pong = ws.ping(b"explicit payload")
        assert pong.wait(5)


def test_websockets_server_keepalive_is_answered(server: AppServer) -> None:
    # /keepalive-echo pings every 0.3 s and gives up after 0.6 s: the client's pongs
    # keep it open for 2 s.
    with connect(f"{server.url}/keepalive-echo") as ws:
        time.sleep(2)
        ws.send("alive")
        assert ws.recv(timeout=5) == "alive"


def test_websockets_close_codes_both_ways(server: AppServer) -> None:
    server.http("/events", "DELETE")
    with connect(f"{server.url}/peer-close") as ws:
        ws.close(4003, "client leaves")
    event = wait_for(lambda: server.events("peer-close"))[0]
    assert (event["code"], event["reason"]) == (4003, "client leaves")
    with connect(f"{server.url}/close/4001") as ws:
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server says bye")
    with connect(f"{server.url}/iterate") as ws:
        pass  # leaving the block closes with 1000
    assert wait_for(lambda: server.events("iterate"))[0]["code"] == 1000


# -- websocket-client ----------------------------------------------------------------------


def open_client(server: AppServer, path: str) -> websocket.WebSocket:
    return websocket.create_connection(f"{server.url}{path}", timeout=10)


def test_websocket_client_text_and_binary(server: AppServer) -> None:
    ws = open_client(server, "/echo")
    try:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send_binary(b"\x00\xff binary")
        assert ws.recv() == b"\x00\xff binary"
        ws.send("x" * 100_000)
        assert ws.recv() == "x" * 100_000
    finally:
        ws.close()


def test_websocket_client_ping(server: AppServer) -> None:
    ws = open_client(server, "/echo")
    try:
        ws.ping("are you there")
        opcode, frame = ws.recv_data_frame(control_frame=True)
        assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"are you there")
        ws.send("after ping")
        assert ws.recv() == "after ping"
    finally:
        ws.close()


def test_websocket_client_close_both_ways(server: AppServer) -> None:
    server.http("/events", "DELETE")
    ws = open_client(server, "/peer-close")
    ws.close(status=4004, reason=b"done")
    event = wait_for(lambda: server.events("peer-close"))[0]
    assert (event["code"], event["reason"]) == (4004, "done")

    ws = open_client(server, "/close/4001")
    try:
        opcode, data = ws.recv_data(control_frame=True)
        assert opcode == websocket.ABNF.OPCODE_CLOSE
        assert (struct.unpack("!H", data[:2])[0], data[2:]) == (4001, b"server says bye")
    finally:
        ws.close()
