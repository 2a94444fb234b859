"""Subprotocols (RFC 6455, section 4.2.2): selection as a pure function, then real uWSGI."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidHandshake, InvalidStatus
from websockets.sync.client import connect

from flask_uwsgi_websocket import WebSocket
from flask_uwsgi_websocket.core.handshake import HandshakeError, negotiate, select_subprotocol
from flask_uwsgi_websocket.core.options import Options

from .app_common import pick_last
from .helpers import AppServer, upgrade_environ

SERVER = ["chat.v2", "chat.v1"]


@pytest.mark.parametrize(
    ("header", "chosen"),
    [
        (None, None),
        ("", None),
        ("chat.v1", "chat.v1"),
        ("chat.v1, chat.v2", "chat.v2"),  # the server's preference, not the client's order
        ("chat.v1,chat.v2", "chat.v2"),
        ("mqtt, chat.v1", "chat.v1"),
        ("mqtt", None),
        ("CHAT.V1", None),  # tokens are compared exactly
    ],
)
def test_the_servers_first_choice_that_the_client_offers(
    header: str | None, chosen: str | None
) -> None:
    assert select_subprotocol(header, SERVER) == chosen


def test_no_server_list_agrees_nothing() -> None:
    assert select_subprotocol("chat.v1", None) is None
    assert select_subprotocol("chat.v1", []) is None


def test_a_callable_decides() -> None:
    assert select_subprotocol("a, b, c", pick_last) == "c"
    assert select_subprotocol("a, none", pick_last) is None
    assert select_subprotocol(None, pick_last) is None  # not called without an offer
    with pytest.raises(ValueError, match="did not offer"):
        select_subprotocol("a", lambda offered: "b")


def test_malformed_header_is_400() -> None:
    with pytest.raises(InvalidHandshake):
        select_subprotocol("chat v1", SERVER)
    with pytest.raises(HandshakeError) as info:
        negotiate(upgrade_environ(HTTP_SEC_WEBSOCKET_PROTOCOL="a b"), Options(subprotocols=SERVER))
    assert info.value.status == "400 Bad Request"


def test_agreed_subprotocol_is_in_the_response_headers() -> None:
    environ = upgrade_environ(HTTP_SEC_WEBSOCKET_PROTOCOL="x, chat.v1")
    handshake = negotiate(environ, Options(subprotocols=SERVER))
    assert handshake.subprotocol == "chat.v1"
    assert ("Sec-WebSocket-Protocol", "chat.v1") in handshake.headers
    handshake = negotiate(environ, Options())
    assert handshake.subprotocol is None
    assert all(name != "Sec-WebSocket-Protocol" for name, _ in handshake.headers)


def test_option_validation() -> None:
    with pytest.raises(ValueError, match="list of names or a callable"):
        WebSocket(subprotocols="chat")
    with pytest.raises(ValueError, match="list of names or a callable"):
        WebSocket().route("/x", subprotocols=[1])(lambda ws: None)
    assert WebSocket(subprotocols=["a", "b"]).options.subprotocols == ("a", "b")


# -- real uWSGI --------------------------------------------------------------------------------


def agreed(server: AppServer, path: str, offer: list[str] | None) -> tuple[str | None, object]:
    """The response's subprotocol header and what the handler saw as ``ws.subprotocol``."""
    with connect(f"{server.url}{path}", subprotocols=offer) as ws:  # type: ignore[arg-type]
        seen = json.loads(ws.recv())
        return ws.response.headers.get("Sec-WebSocket-Protocol"), (
            seen["subprotocol"] if isinstance(seen, dict) else seen
        )


def test_route_list(server: AppServer) -> None:
    assert agreed(server, "/subprotocol", ["chat.v1", "chat.v2"]) == ("chat.v2", "chat.v2")
    assert agreed(server, "/subprotocol", ["mqtt", "chat.v1"]) == ("chat.v1", "chat.v1")
    assert agreed(server, "/subprotocol", None) == (None, None)


def test_no_match_means_no_header(server: AppServer) -> None:
    # The handshake goes on without the header; the client decides whether that will do.
    assert agreed(server, "/subprotocol", ["mqtt"]) == (None, None)


def test_config_list_applies_to_every_route(server: AppServer) -> None:
    # tests/app_common.py sets WEBSOCKET_SUBPROTOCOLS = ["echo.v1"].
    assert agreed(server, "/info", ["other", "echo.v1"]) == ("echo.v1", "echo.v1")
    assert agreed(server, "/info", None) == (None, None)
    # A route's own list replaces the config's.
    assert agreed(server, "/subprotocol", ["echo.v1"]) == (None, None)


def test_route_callable(server: AppServer) -> None:
    assert agreed(server, "/subprotocol-pick", ["a", "b", "c"]) == ("c", "c")
    assert agreed(server, "/subprotocol-pick", ["a", "none"]) == (None, None)


def test_a_failing_selector_is_500_and_logged(server: AppServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        with connect(f"{server.url}/subprotocol-bad", subprotocols=["a"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 500
    assert "did not offer" in server.output()
