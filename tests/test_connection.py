"""The RFC 6455 connection, against real uWSGI in both flavours, with real clients."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed as ClientClosed
from websockets.sync.client import connect

from .helpers import (
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    AppServer,
    RawClient,
    close_payload,
    frame,
    wait_for,
)


def test_text_stays_text_and_binary_stays_binary(server: AppServer) -> None:
    with connect(f"{server.url}/echo") as ws:
        ws.send("héllo")
        assert ws.recv() == "héllo"
        ws.send(b"\x00\xff binary")
        assert ws.recv() == b"\x00\xff binary"
        ws.send("")
        assert ws.recv() == ""
        ws.send(b"")
        assert ws.recv() == b""


@pytest.mark.parametrize("size", [125, 126, 65535, 65536, 1 << 20])
def test_message_sizes_around_length_encodings(server: AppServer, size: int) -> None:
    with connect(f"{server.url}/echo", max_size=None) as ws:
        ws.send(b"x" * size)
        assert ws.recv() == b"x" * size


def test_send_types(server: AppServer) -> None:
    with connect(f"{server.url}/send-types") as ws:
        received = [ws.recv() for _ in range(7)]
    assert received == [
        "text", b"bytes", b"bytearray", b"memoryview", b"send_binary", b"binary=True",
        "TypeError: a message is str or bytes-like, not int",
    ]  # fmt: skip


def test_fragmented_messages_are_reassembled(server: AppServer) -> None:
    raw = RawClient(server.address, "/echo")
    raw.send(frame(TEXT, b"frag", fin=False))
    raw.send(frame(PING, b"in between"))
    raw.send(frame(CONT, "mént".encode()[:4], fin=False))  # splits the two-byte é
    raw.send(frame(CONT, "mént".encode()[4:], fin=True))
    assert raw.recv_frame() == (PONG, b"in between", True)
    assert raw.recv_frame() == (TEXT, "fragmént".encode(), True)
    raw.send(frame(BINARY, b"\x01", fin=False) + frame(CONT, b"\x02", fin=True))
    assert raw.recv_frame() == (BINARY, b"\x01\x02", True)
    raw.close()


def test_url_variables_and_converters(server: AppServer) -> None:
    with connect(f"{server.url}/vars/42/bob") as ws:
        assert json.loads(ws.recv()) == {"number": 42, "name": "bob", "type": "int"}


def test_client_attributes(server: AppServer) -> None:
    ids = set()
    for _ in range(2):
        with connect(f"{server.url}/info?q=1") as ws:
            info = json.loads(ws.recv())
            ids.add(info["id"])
    assert info["path"] == "/info" and info["query"] == "1"
    assert info["connected"] is True and info["subprotocol"] is None
    expected = {"plain": "", "gevent": "Gevent", "asyncio": "Asyncio"}[server.flavour]
    assert info["class"] == expected + "WebSocketClient"
    assert len(ids) == 2 and all(len(i) == 32 and int(i, 16) for i in ids)


def test_invalid_utf8_closes_with_1007(server: AppServer) -> None:
    raw = RawClient(server.address, "/echo")
    raw.send(frame(TEXT, b"\xff\xfe"))
    assert raw.expect_close()[0] == 1007


def test_invalid_utf8_is_detected_in_the_first_fragment(server: AppServer) -> None:
    raw = RawClient(server.address, "/echo")
    raw.send(frame(TEXT, b"ok \xed\xa0\x80", fin=False))  # a surrogate: never valid
    assert raw.expect_close(timeout=5)[0] == 1007  # the final fragment never comes


def test_too_big_message_closes_with_1009(server: AppServer) -> None:
    with connect(f"{server.url}/small") as ws:
        ws.send("x" * 1024)
        assert ws.recv() == "x" * 1024
        ws.send("x" * 1025)
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1009


def test_too_big_fragmented_message_closes_with_1009(server: AppServer) -> None:
    raw = RawClient(server.address, "/small")
    raw.send(frame(TEXT, b"x" * 600, fin=False))
    raw.send(frame(CONT, b"x" * 600, fin=True))
    assert raw.expect_close()[0] == 1009


def test_huge_declared_length_is_refused_at_once(server: AppServer) -> None:
    raw = RawClient(server.address, "/echo")
    raw.send(b"\x82\xff" + (1 << 40).to_bytes(8, "big") + b"mask")  # 1 TiB announced
    assert raw.expect_close()[0] == 1009


@pytest.mark.parametrize(
    "bad",
    [
        frame(TEXT, b"unmasked", mask=False),
        frame(TEXT, b"reserved bit", rsv=4),
        frame(0x3, b"unknown opcode"),
        frame(PING, b"x" * 126),
        frame(PING, b"fragmented ping", fin=False),
        frame(CONT, b"stray continuation"),
        frame(TEXT, b"a", fin=False) + frame(TEXT, b"b"),
    ],
    ids=["unmasked", "rsv", "opcode", "long-ping", "fragmented-ping", "stray-cont", "nested"],
)
def test_protocol_errors_close_with_1002_and_spare_other_connections(
    server: AppServer, bad: bytes
) -> None:
    with connect(f"{server.url}/echo") as bystander:
        raw = RawClient(server.address, "/echo")
        raw.send(bad)
        assert raw.expect_close()[0] == 1002
        raw.wait_eof()
        bystander.send("still fine")
        assert bystander.recv() == "still fine"
    with connect(f"{server.url}/echo") as ws:  # the worker lives on
        ws.send("new connection")
        assert ws.recv() == "new connection"


def test_server_close_sends_code_and_reason(server: AppServer) -> None:
    server.http("/events", "DELETE")
    with connect(f"{server.url}/close/4001") as ws:
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None
    assert (info.value.rcvd.code, info.value.rcvd.reason) == (4001, "server says bye")
    events = wait_for(lambda: server.events("close"))
    assert events[0] == {"route": "close", "connected": False, "code": 4001}
    assert wait_for(lambda: len(server.events("close")) == 2)
    assert server.events("close")[1]["send_after_close"] == 4001


def test_peer_close_code_and_reason_reach_the_handler(server: AppServer) -> None:
    server.http("/events", "DELETE")
    with connect(f"{server.url}/peer-close") as ws:
        ws.close(4002, "client says bye")
    event = wait_for(lambda: server.events("peer-close"))[0]
    assert event == {
        "route": "peer-close", "code": 4002, "reason": "client says bye", "ok": False,
        "close_code": 4002, "close_reason": "client says bye", "connected": False,
    }  # fmt: skip
    assert "Traceback" not in server.output().split("peer-close")[-1]


def test_iteration_ends_cleanly_on_close(server: AppServer) -> None:
    server.http("/events", "DELETE")
    with connect(f"{server.url}/iterate") as ws:
        ws.send("one")
        assert ws.recv() == "one"
    assert wait_for(lambda: server.events("iterate"))[0]["code"] == 1000


def test_peer_going_away_without_close_frame_is_1006(server: AppServer) -> None:
    server.http("/events", "DELETE")
    raw = RawClient(server.address, "/peer-close")
    raw.close()
    event = wait_for(lambda: server.events("peer-close"))[0]
    assert event["code"] == 1006 and event["ok"] is False


def test_handler_return_closes_with_1000(server: AppServer) -> None:
    with connect(f"{server.url}/return") as ws:
        assert ws.recv() == "bye"
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1000


def test_handler_exception_closes_with_1011_and_is_logged(server: AppServer) -> None:
    with connect(f"{server.url}/raise") as ws:
        assert ws.recv() == "about to fail"
        with pytest.raises(ClientClosed) as info:
            ws.recv()
    assert info.value.rcvd is not None and info.value.rcvd.code == 1011
    log = wait_for(lambda: "boom from the handler" in server.output() and server.output())
    assert "Exception in WebSocket handler raises (route /raise) for /raise" in log
    assert "Traceback" in log and "RuntimeError: boom from the handler" in log


def test_connection_closed_escaping_the_handler_is_not_an_error(server: AppServer) -> None:
    before = server.output().count("Traceback")
    for _ in range(3):
        with connect(f"{server.url}/echo") as ws:
            ws.send("x")
            ws.recv()
    with connect(f"{server.url}/info"):
        pass
    assert server.output().count("Traceback") == before


def test_pong_echoes_ping_payload_while_handler_only_sends(server: AppServer) -> None:
    raw = RawClient(server.address, "/push")
    raw.send(frame(PING, b"payload-1"))
    raw.send(frame(PING, b"payload-2"))
    pongs = []
    while len(pongs) < 2:
        opcode, payload, _ = raw.recv_frame()
        if opcode == PONG:
            pongs.append(payload)
    assert pongs == [b"payload-1", b"payload-2"]
    raw.close()


def test_user_ping(server: AppServer) -> None:
    raw = RawClient(server.address, "/ping")
    assert raw.recv_frame() == (PING, b"abc", True)
    raw.send(frame(PONG, b"abc") + frame(TEXT, b"after ping"))
    assert raw.recv_data() == (TEXT, b"after ping")


def test_keepalive_closes_1011_when_no_pong_comes(server: AppServer) -> None:
    raw = RawClient(server.address, "/keepalive-echo")
    started = time.monotonic()
    opcode, payload, _ = raw.recv_frame()
    assert opcode == PING and len(payload) == 4  # after ping_interval (0.3 s)
    code, reason = raw.expect_close()
    elapsed = time.monotonic() - started
    assert code == 1011 and "keepalive" in reason
    assert 0.6 < elapsed < 5  # ping_interval + ping_timeout = 0.9 s


def test_keepalive_holds_while_handler_is_busy_elsewhere(server: AppServer) -> None:
    # The client answers pings (websockets does); the handler neither receives nor sends
    # for 2.5 s, well past ping_timeout: the connection must stay up.
    with connect(f"{server.url}/keepalive-busy", ping_interval=None) as ws:
        assert ws.recv(timeout=10) == "still here"


def test_pings_are_answered_while_a_handler_that_received_is_busy(
    server: AppServer, tmp_path: Path
) -> None:
    flag = tmp_path / "done"
    raw = RawClient(server.address, f"/receive-then-busy?flag={flag}")
    raw.send(frame(TEXT, b"first"))
    assert raw.recv_data() == (TEXT, b"first")
    # At once in the plain flavour too, whose handler's thread read the socket last and
    # lends it until its I/O thread takes it back (threads.LEND: within 0.2 s).
    sent = time.monotonic()
    raw.send(frame(PING, b"busy?") + frame(TEXT, b"two"))
    assert raw.recv_frame() == (PONG, b"busy?", True)  # while the handler waits for the flag
    assert time.monotonic() - sent < 2  # at once (generous: a loaded machine)
    flag.touch()
    raw.send(frame(TEXT, b"three"))
    assert raw.recv_data() == (TEXT, b"two three")
    raw.close()


def test_keepalive_pings_are_sent_to_a_live_client(server: AppServer) -> None:
    raw = RawClient(server.address, "/keepalive-echo")
    for _ in range(4):  # four rounds: well past ping_interval + ping_timeout
        opcode, payload, _ = raw.recv_frame()
        assert opcode == PING
        raw.send(frame(PONG, payload))
    raw.send(frame(TEXT, b"alive"))
    assert raw.recv_data() == (TEXT, b"alive")
    raw.close()


def test_receive_timeout_returns_none(server: AppServer) -> None:
    with connect(f"{server.url}/timeout") as ws:
        result = json.loads(ws.recv())
        assert result["message"] is None and 0.25 < result["waited"] < 3
        ws.send("after timeout")
        assert ws.recv() == "after timeout"


def test_recv_nb(server: AppServer) -> None:
    with connect(f"{server.url}/nonblocking") as ws:
        time.sleep(0.1)
        ws.send("one")
        assert json.loads(ws.recv()) == {"message": "one", "nones": True}
        ws.send("two")
        assert json.loads(ws.recv())["message"] == "two"


def test_send_reaches_the_right_connection_from_another_handler(server: AppServer) -> None:
    with connect(f"{server.url}/relay/alice") as alice, connect(f"{server.url}/relay/bob") as bob:
        time.sleep(0.2)  # both handlers registered
        alice.send("to bob hi bob")
        assert bob.recv(timeout=5) == "hi bob"
        bob.send("to alice hi alice")
        assert alice.recv(timeout=5) == "hi alice"
        with pytest.raises(TimeoutError):
            alice.recv(timeout=0.3)


@pytest.mark.parametrize("size", [10, 100000])
def test_concurrent_sends_never_interleave(server: AppServer, size: int) -> None:
    with connect(f"{server.url}/concurrent-send", max_size=None) as ws:
        ws.send(str(size))
        received = [ws.recv(timeout=30) for _ in range(400)]
        ws.send("done")
    assert isinstance(received[0], str)
    handler = [m for m in received if m.startswith("h")]
    other = [m for m in received if m.startswith("o")]
    assert handler == ["h" * size + f" handler {i}" for i in range(200)]
    assert other == ["o" * size + f" other {i}" for i in range(200)]


def test_sharedarea(server: AppServer) -> None:
    with connect(f"{server.url}/sharedarea") as ws:
        # The area runs to its end (one 4 KiB page): what uWSGI's C functions send too.
        assert ws.recv() == "shared text" + "\0" * (4096 - 11)
        assert ws.recv() == b"text" + b"\0" * (4096 - 11)


def test_many_connections_at_once(server: AppServer) -> None:
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(f"{server.url}/echo")) for _ in range(6)]
        for i, ws in enumerate(sockets):
            ws.send(f"message {i}")
        assert [ws.recv() for ws in sockets] == [f"message {i}" for i in range(6)]


def test_close_frame_between_fragments_is_answered_normally(server: AppServer) -> None:
    raw = RawClient(server.address, "/echo")
    raw.send(frame(TEXT, b"half", fin=False) + frame(CLOSE, close_payload(1000)))
    assert raw.expect_close() == (1000, "")
    assert raw.wait_eof() < 5


def test_close_frame_reaches_a_peer_that_is_still_sending(server: AppServer) -> None:
    # The server fails on the header of a 2 MB message while the rest is in flight. A
    # half-close at once made uWSGI's --http router reset the client's connection, which
    # could destroy the 1009 close frame before the client read it (seen on Python 3.12+).
    for _ in range(5):
        with connect(f"{server.url}/small", max_size=None) as ws:
            ws.send(b"x" * 2_000_000)
            with pytest.raises(ClientClosed) as info:
                ws.recv(timeout=10)
        assert info.value.rcvd is not None and info.value.rcvd.code == 1009
        assert info.value.__cause__ is None  # closed cleanly, not reset


@pytest.mark.parametrize("fixture", ["gevent_server", "asyncio_server"])
def test_fifty_connections_on_one_worker(request: pytest.FixtureRequest, fixture: str) -> None:
    server: AppServer = request.getfixturevalue(fixture)
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(connect(f"{server.url}/echo")) for _ in range(50)]
        for round_ in range(3):
            for i, ws in enumerate(sockets):
                ws.send(f"{round_}:{i}")
            assert [ws.recv(timeout=10) for ws in sockets] == [f"{round_}:{i}" for i in range(50)]
