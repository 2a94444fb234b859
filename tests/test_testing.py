"""The in-process test client (``websocket.test_client()``), in every flavour, without uWSGI.

The apps are ``app_testing.make_app(flavour)``, one new app per test. Leaving a
``with client.connect(...)`` block waits for the server's side of the connection to
end, so what a handler recorded is read after the block.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from flask_uwsgi_websocket import ConnectionClosed
from flask_uwsgi_websocket.core.connection import Connection
from flask_uwsgi_websocket.flask.extension import WebSocketExtension
from flask_uwsgi_websocket.testing import TestClient, TestConnection

from . import app_testing
from .app_testing import TRUSTED, events
from .helpers import SOON, closed, refused

#: What conftest's ``made`` fixture builds, in each flavour.
make_app = app_testing.make_app

pytestmark = pytest.mark.timeout(60)

#: How long to wait for a message that must not come.
QUIET = 0.2
#: Connections at once.
MANY = 20


def recorded(app: Flask, route: str) -> list[dict[str, Any]]:
    return [event for event in events(app) if event.get("route") == route]


def life(app: Flask, tag: str) -> list[str]:
    return [event["event"] for event in events(app) if event.get("tag") == tag]


@contextlib.contextmanager
def connections(client: TestClient, paths: list[str]) -> Iterator[list[TestConnection]]:
    """Connections to ``paths``, all open at once; closed at the end."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(client.connect(path)) for path in paths]


# Messages.


def test_echo_text_and_binary(client: TestClient) -> None:
    with client.connect("/echo") as ws:
        ws.send("hé, text")
        assert ws.receive(timeout=SOON) == "hé, text"
        ws.send(b"\x00\xffbinary")
        assert ws.receive(timeout=SOON) == b"\x00\xffbinary"
        ws.send(bytearray(b"bytearray"))
        assert ws.receive(timeout=SOON) == b"bytearray"
        ws.send("")
        assert ws.receive(timeout=SOON) == ""
        big = "x" * 300_000  # several reads on both sides, compressed on the wire
        ws.send(big)
        assert ws.receive(timeout=SOON) == big
        with pytest.raises(TypeError):
            ws.send(42)  # type: ignore[arg-type]


def test_receive_timeout_returns_none(client: TestClient) -> None:
    with client.connect("/echo") as ws:
        started = time.monotonic()
        assert ws.receive(timeout=QUIET) is None
        assert QUIET <= time.monotonic() - started < QUIET + 2
        assert ws.connected
        ws.send("still there")  # a timeout leaves the connection as it was
        assert ws.receive(timeout=SOON) == "still there"


def test_receive_with_timeout_zero_polls(client: TestClient) -> None:
    with client.connect("/echo") as ws:
        started = time.monotonic()
        assert ws.receive(timeout=0) is None
        assert time.monotonic() - started < 1
        ws.send("arrived")
        deadline = time.monotonic() + SOON
        while (message := ws.receive(timeout=0)) is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert message == "arrived"  # a message already there, without waiting


def test_handler_receive_timeout_returns_none(client: TestClient) -> None:
    with client.connect("/server-timeout") as ws:
        assert ws.receive(timeout=SOON) == "null"  # the handler's receive(timeout=0.05)
        ws.send("then a message")
        assert ws.receive(timeout=SOON) == "then a message"
        assert closed(ws).code == 1000


def test_handler_iterates_until_the_client_closes(app: Flask, client: TestClient) -> None:
    with client.connect("/iterate") as ws:
        for message in ("one", b"two", "three"):
            ws.send(message)
            assert ws.receive(timeout=SOON) == message
    assert ws.close_code == 1000
    assert recorded(app, "iterate") == [{"route": "iterate", "count": 3, "code": 1000}]


def test_client_iterates_until_the_server_closes(client: TestClient) -> None:
    with client.connect("/return") as ws:
        assert list(ws) == ["bye"]
        assert ws.close_code == 1000


# Close codes.


def test_handler_that_returns_closes_with_1000(client: TestClient) -> None:
    with client.connect("/return") as ws:
        assert ws.receive(timeout=SOON) == "bye"
        error = closed(ws)
        assert (error.code, error.reason) == (1000, "")
        assert (ws.close_code, ws.close_reason) == (1000, "")
        assert not ws.connected
        with pytest.raises(ConnectionClosed):
            ws.send("too late")
        with pytest.raises(ConnectionClosed):  # and again
            ws.receive(timeout=QUIET)


def test_handler_that_raises_closes_with_1011_and_is_logged(
    app: Flask, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with client.connect("/raise") as ws:
        assert ws.receive(timeout=SOON) == "about to fail"
        assert closed(ws).code == 1011
    assert ws.close_code == 1011
    errors = [r for r in caplog.records if r.name == app.logger.name]
    assert len(errors) == 1
    assert errors[0].levelno == logging.ERROR
    assert "/raise" in errors[0].getMessage()
    assert errors[0].exc_info is not None
    assert isinstance(errors[0].exc_info[1], RuntimeError)
    assert "Traceback" in caplog.text and "RuntimeError: boom from the handler" in caplog.text


def test_client_close_code_and_reason_reach_the_handler(app: Flask, client: TestClient) -> None:
    with client.connect("/peer-close") as ws:
        ws.send("hello")
        ws.close(4005, "see you")
        assert not ws.connected
    assert ws.close_code == 4005  # the server echoes the client's code
    assert recorded(app, "peer-close") == [
        {"route": "peer-close", "code": 4005, "reason": "see you",
         "close_code": 4005, "close_reason": "see you"},
    ]  # fmt: skip


def test_error_handler_chooses_the_close_code(
    app: Flask, client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with client.connect("/lookup") as ws:
        assert ws.receive(timeout=SOON) == "handled KeyError('missing')"
        error = closed(ws)
        assert (error.code, error.reason) == (4001, "lookup failed")
    assert (ws.close_code, ws.close_reason) == (4001, "lookup failed")
    assert not [r for r in caplog.records if r.name == app.logger.name]  # handled: not logged


# Options.


def test_max_message_size_closes_with_1009(client: TestClient) -> None:
    with client.connect("/options") as ws:
        assert ws.receive(timeout=SOON) == '{"subprotocol": null}'
        ws.send("x" * 16)
        assert ws.receive(timeout=SOON) == "x" * 16
        ws.send(b"x" * 17)
        assert closed(ws).code == 1009
    assert ws.close_code == 1009


@pytest.mark.parametrize(
    ("offered", "agreed"),
    [(["v1", "v2"], "v2"), (["v1", "v0"], "v1"), (["v0"], None), (None, None)],
    ids=["server-preference", "the-one-in-common", "none-in-common", "none-offered"],
)
def test_subprotocol_agreed(client: TestClient, offered: list[str] | None, agreed: str) -> None:
    with client.connect("/options", subprotocols=offered) as ws:
        assert ws.subprotocol == agreed
        assert ws.response_headers.get("Sec-WebSocket-Protocol") == agreed
        assert json.loads(ws.receive(timeout=SOON)) == {"subprotocol": agreed}  # type: ignore[arg-type]


def test_compression_agreed_by_default(client: TestClient) -> None:
    with client.connect("/echo") as ws:
        assert ws.response_headers["Sec-WebSocket-Extensions"].startswith("permessage-deflate")
        message = "compressible " * 10_000
        ws.send(message)
        assert ws.receive(timeout=SOON) == message


def test_compression_off_on_the_route(client: TestClient) -> None:
    with client.connect("/uncompressed") as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response_headers
        assert ws.receive(timeout=SOON) == '{"subprotocol": null}'
        ws.send("plain " * 1000)
        assert ws.receive(timeout=SOON) == "plain " * 1000


def test_compression_off_when_the_client_does_not_offer_it(client: TestClient) -> None:
    with client.connect("/echo", compression=None) as ws:
        assert "Sec-WebSocket-Extensions" not in ws.response_headers
        ws.send("plain " * 1000)
        assert ws.receive(timeout=SOON) == "plain " * 1000


# Refusals.


def test_before_request_abort_refuses_the_upgrade(app: Flask, client: TestClient) -> None:
    response = refused(client, "/echo?deny=abort")
    assert response.status_code == 403
    assert b"Forbidden" in response.get_data()


def test_before_request_response_refuses_the_upgrade(client: TestClient) -> None:
    response = refused(client, "/echo?deny=response")
    assert response.status_code == 401
    assert response.get_data(as_text=True) == "log in first"
    assert response.headers["X-Reason"] == "no token"


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_app_error_during_the_upgrade(
    app: Flask,
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # TESTING: the exception reaches the test, as from Flask's test client, and only the test.
    with pytest.raises(RuntimeError, match="before_request crashed"):
        client.connect("/echo?deny=crash")
    time.sleep(QUIET)  # the request's thread, greenlet or task has ended
    assert "before_request crashed" not in capfd.readouterr().err
    assert "before_request crashed" not in caplog.text
    # Not TESTING: Flask answers 500 and logs the exception.
    app.config["TESTING"] = False
    assert refused(client, "/echo?deny=crash").status_code == 500
    errors = [r for r in caplog.records if r.name == app.logger.name]
    assert len(errors) == 1 and isinstance(errors[0].exc_info[1], RuntimeError)  # type: ignore[index]


def test_origin_policy(client: TestClient) -> None:
    response = refused(client, "/echo", headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "https://evil.example" in response.get_data(as_text=True)
    assert refused(client, "/origin", headers={"Origin": "https://evil.example"}).status_code == 403
    with client.connect("/echo", headers={"Origin": "http://localhost"}) as ws:  # its own host
        ws.send("same host")
        assert ws.receive(timeout=SOON) == "same host"
    with client.connect("/origin", headers={"Origin": TRUSTED}) as ws:  # the route's list
        assert ws.receive(timeout=SOON) == '{"subprotocol": null}'


def test_url_with_only_an_http_view_refuses_the_upgrade(client: TestClient) -> None:
    response = refused(client, "/page")
    assert response.status_code == 400
    assert response.get_data() == b"this URL has no WebSocket endpoint\n"
    assert client.flask_client.get("/page").get_data() == b"an HTTP view only"


def test_unknown_url_refuses_the_upgrade(client: TestClient) -> None:
    assert refused(client, "/no-such-route").status_code == 404


def test_malformed_upgrade_is_refused(client: TestClient) -> None:
    # A header given replaces the client's own of that name, rather than joining it.
    response = refused(client, "/echo", headers={"Sec-WebSocket-Version": "8"})
    assert response.status_code == 426
    assert response.headers["Sec-WebSocket-Version"] == "13"
    assert "'8'" in response.get_data(as_text=True)
    response = refused(client, "/echo", headers={"Connection": "keep-alive"})
    assert response.status_code == 400
    assert "Connection: Upgrade" in response.get_data(as_text=True)
    assert refused(client, "/echo", headers={"Sec-WebSocket-Key": "short"}).status_code == 400


# The Flask lifecycle.


def test_lifecycle_hooks_run_once_per_connection(app: Flask, client: TestClient) -> None:
    with client.connect("/en/life?tag=one") as ws:
        json.loads(ws.receive(timeout=SOON))  # type: ignore[arg-type]
        assert life(app, "one") == [
            "request_started", "url_value_preprocessor", "before_request",
            "after_request", "request_finished", "handler",
        ]  # fmt: skip
        ws.send("the connection goes on")
        assert ws.receive(timeout=QUIET) is None
        assert "teardown_request" not in life(app, "one")
    assert life(app, "one") == [
        "request_started", "url_value_preprocessor", "before_request",
        "after_request", "request_finished", "handler", "handler_end", "teardown_request",
    ]  # fmt: skip
    tagged = [e for e in events(app) if e.get("tag") == "one"]
    assert {"tag": "one", "event": "url_value_preprocessor", "lang": "en"} in tagged
    assert {"tag": "one", "event": "before_request", "endpoint": "lifecycle"} in tagged
    assert {"tag": "one", "event": "after_request", "status": 101} in tagged
    assert {"tag": "one", "event": "handler", "lang": "en"} in tagged


def test_lifecycle_when_the_handler_closes(app: Flask, client: TestClient) -> None:
    with client.connect("/en/life?tag=two") as ws:
        ws.receive(timeout=SOON)
    assert life(app, "two").count("teardown_request") == 1
    assert life(app, "two")[-2:] == ["handler_end", "teardown_request"]


def test_refused_upgrade_runs_no_handler(app: Flask, client: TestClient) -> None:
    refused(client, "/en/life?tag=three&deny=abort")
    assert life(app, "three") == [
        "request_started", "url_value_preprocessor", "before_request",
        "after_request", "request_finished", "teardown_request",
    ]  # fmt: skip


def test_url_for_the_websocket_endpoint_in_the_handler(client: TestClient) -> None:
    with client.connect("/en/life?tag=url") as ws:
        report = json.loads(ws.receive(timeout=SOON))  # type: ignore[arg-type]
    assert report == {
        "url": "ws://localhost/de/life",  # WebSocket URLs are absolute
        "external": "ws://localhost/fr/life",
        "endpoint": "lifecycle",
    }


def test_session_set_over_http_reaches_the_handler(
    app: Flask, websocket: WebSocketExtension
) -> None:
    flask_client = app.test_client()
    assert flask_client.get("/login/alice").get_data() == b"hello alice"
    with websocket.test_client(flask_client=flask_client).connect("/whoami") as ws:
        assert json.loads(ws.receive(timeout=SOON)) == "alice"  # type: ignore[arg-type]
    with websocket.test_client().connect("/whoami") as ws:  # a client of its own: no cookie
        assert json.loads(ws.receive(timeout=SOON)) is None  # type: ignore[arg-type]


def test_url_variables_query_string_and_headers_reach_the_handler(client: TestClient) -> None:
    headers = {"X-Token": "secret", "User-Agent": "pytest/1"}
    with client.connect("/vars/42/bob?q=x&q=y&page=2", headers=headers) as ws:
        report = json.loads(ws.receive(timeout=SOON))  # type: ignore[arg-type]
        assert closed(ws).code == 1000
    assert report["number"] == 42 and report["type"] == "int" and report["name"] == "bob"
    assert report["view_args"] == {"number": 42, "name": "bob"}
    assert report["args"] == {"q": ["x", "y"], "page": ["2"]}
    assert report["token"] == "secret"
    assert report["user_agent"] == "pytest/1"
    assert report["path"] == "/vars/42/bob"


# Broadcast and many connections.


@pytest.mark.parametrize("in_app_context", [False, True], ids=["no-context", "app-context"])
def test_broadcast_reaches_each_connection_of_the_room_once(
    app: Flask, client: TestClient, websocket: WebSocketExtension, in_app_context: bool
) -> None:
    with connections(client, ["/room/news"] * MANY + ["/room/other"]) as all_of_them:
        *members, outsider = all_of_them
        for ws in members:
            assert ws.receive(timeout=SOON) == "joined news"
        assert outsider.receive(timeout=SOON) == "joined other"
        with app.app_context() if in_app_context else contextlib.nullcontext():
            websocket.broadcast("extra, extra", room="news")
            websocket.broadcast(b"\x01binary")  # every connection of the app
        for ws in members:
            assert ws.receive(timeout=SOON) == "extra, extra"
            assert ws.receive(timeout=SOON) == b"\x01binary"
        assert outsider.receive(timeout=SOON) == b"\x01binary"
        for ws in all_of_them:
            assert ws.receive(timeout=QUIET / 10) is None  # nothing twice
        assert outsider.receive(timeout=QUIET) is None


def test_chat_relays_to_the_room(client: TestClient) -> None:
    nicks = [f"n{i}" for i in range(MANY)]
    with connections(client, [f"/chat/lobby/{nick}" for nick in nicks]) as members:
        for ws in members:
            assert ws.receive(timeout=SOON) == "joined"
        for nick, ws in zip(nicks, members, strict=True):
            ws.send(f"hi from {nick}")
        expected = {f"{nick}: hi from {nick}" for nick in nicks}
        for ws in members:
            got = [ws.receive(timeout=SOON) for _ in nicks]
            assert set(got) == expected  # each message once, in every member's order
            assert ws.receive(timeout=QUIET / 10) is None


def test_many_connections_at_once(client: TestClient) -> None:
    with connections(client, ["/echo"] * MANY) as all_of_them:
        for round in range(3):
            for i, ws in enumerate(all_of_them):
                ws.send(f"{i}.{round}")
            for i, ws in enumerate(all_of_them):
                assert ws.receive(timeout=SOON) == f"{i}.{round}"
        assert all(ws.connected for ws in all_of_them)
    assert all(ws.close_code == 1000 for ws in all_of_them)


def test_a_connection_that_cannot_start_is_closed_with_1011(
    app: Flask,
    client: TestClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Out of a resource after the 101 (here: no more file descriptors): 1011, logged."""

    def out_of_descriptors(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(Connection, "__init__", out_of_descriptors)
    caplog.set_level(logging.ERROR)
    with client.connect("/echo") as ws:
        assert closed(ws).code == 1011
    assert ws.close_reason == "internal error"
    (record,) = [r for r in caplog.records if r.name == app.logger.name]
    assert re.fullmatch(
        r"WebSocket connection to /echo failed outside its handler; closed with 1011"
        r" \(\d+ in this worker\)",
        record.getMessage(),
    )
    assert record.exc_info is not None and record.exc_info[1].errno == errno.EMFILE
