"""The opening handshake: the pure functions, then the answers of real uWSGI to raw requests."""

from __future__ import annotations

import base64
import dataclasses
import socket
from collections.abc import Mapping

import pytest
from websockets.utils import accept_key as websockets_accept_key

from flask_uwsgi_websocket.core.handshake import (
    HandshakeError,
    accept_key,
    is_upgrade_attempt,
    negotiate,
    validate,
)
from flask_uwsgi_websocket.core.options import Options

from .helpers import (
    CLOSE,
    RFC_KEY,
    TEXT,
    AppServer,
    RawClient,
    close_payload,
    frame,
    upgrade_environ,
)

#: The example of RFC 6455, section 1.3.
RFC_ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def refusal(**changes: str | None) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        validate(upgrade_environ(**changes))
    return info.value


# -- accept_key, negotiate -----------------------------------------------------------------


def test_accept_key_rfc_example() -> None:
    assert accept_key(RFC_KEY) == RFC_ACCEPT


@pytest.mark.parametrize("seed", range(5))
def test_accept_key_agrees_with_websockets(seed: int) -> None:
    key = base64.b64encode(bytes((seed * 37 + i) % 256 for i in range(16))).decode()
    assert accept_key(key) == websockets_accept_key(key)


def test_response_headers() -> None:
    assert negotiate(upgrade_environ(), Options()).headers == [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Accept", RFC_ACCEPT),
    ]


# -- validate ----------------------------------------------------------------------------------


def test_valid_request_returns_its_key() -> None:
    assert validate(upgrade_environ()) == RFC_KEY


@pytest.mark.parametrize(
    "changes",
    [
        {"HTTP_CONNECTION": "keep-alive, Upgrade"},
        {"HTTP_CONNECTION": "Upgrade,keep-alive"},
        {"HTTP_CONNECTION": "upgrade"},
        {"HTTP_UPGRADE": "WebSocket"},
        {"HTTP_SEC_WEBSOCKET_VERSION": " 13 "},
        {"HTTP_SEC_WEBSOCKET_KEY": f" {RFC_KEY} "},
    ],
    ids=["keep-alive-upgrade", "upgrade-keep-alive", "lowercase", "mixed-case", "spaces", "key-ws"],
)
def test_valid_variants(changes: dict[str, str]) -> None:
    assert validate(upgrade_environ(**changes)) == RFC_KEY


@pytest.mark.parametrize("method", ["POST", "PUT", "HEAD", "OPTIONS", "get"])
def test_method_other_than_get_is_400(method: str) -> None:
    error = refusal(REQUEST_METHOD=method)
    assert error.status == "400 Bad Request"
    assert error.reason == "a WebSocket handshake must use GET"
    assert error.headers == []


@pytest.mark.parametrize("upgrade", [None, "", "h2c", "websockets", "web socket"])
def test_missing_or_invalid_upgrade_is_400(upgrade: str | None) -> None:
    error = refusal(HTTP_UPGRADE=upgrade)
    assert error.status == "400 Bad Request"
    assert "Upgrade: websocket" in error.reason


@pytest.mark.parametrize(
    "connection", [None, "", "keep-alive", "close", "Upgraded", "keep-alive;Upgrade"]
)
def test_connection_without_upgrade_token_is_400(connection: str | None) -> None:
    error = refusal(HTTP_CONNECTION=connection)
    assert error.status == "400 Bad Request"
    assert "Connection: Upgrade" in error.reason


def test_missing_version_is_400() -> None:
    error = refusal(HTTP_SEC_WEBSOCKET_VERSION=None)
    assert error.status == "400 Bad Request"
    assert "Sec-WebSocket-Version" in error.reason
    assert error.headers == []


@pytest.mark.parametrize("version", ["8", "12", "14", "", "13, 8", "thirteen"])
def test_other_version_is_426_with_version_13(version: str) -> None:
    error = refusal(HTTP_SEC_WEBSOCKET_VERSION=version)
    assert error.status == "426 Upgrade Required"
    assert error.headers == [("Sec-WebSocket-Version", "13")]
    assert repr(version) in error.reason


@pytest.mark.parametrize(
    "key",
    [
        None,
        "",
        "not base64!",
        base64.b64encode(b"x" * 15).decode(),
        base64.b64encode(b"x" * 17).decode(),
        RFC_KEY.rstrip("="),  # 16 bytes, padding missing
        "dGhlIHNhbXBsZSBub25jZQ==\u00e9",
    ],
    ids=["missing", "empty", "not-base64", "15-bytes", "17-bytes", "no-padding", "non-ascii"],
)
def test_key_not_base64_of_16_bytes_is_400(key: str | None) -> None:
    error = refusal(HTTP_SEC_WEBSOCKET_KEY=key)
    assert error.status == "400 Bad Request"
    assert "Sec-WebSocket-Key" in error.reason


def test_rules_apply_in_order() -> None:
    """Several faults: the first rule broken is the one reported."""
    error = refusal(REQUEST_METHOD="POST", HTTP_SEC_WEBSOCKET_VERSION="8")
    assert error.status == "400 Bad Request" and "GET" in error.reason
    error = refusal(HTTP_SEC_WEBSOCKET_VERSION="8", HTTP_SEC_WEBSOCKET_KEY="bad")
    assert error.status.startswith("426")


# -- is_upgrade_attempt -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"HTTP_UPGRADE": "websocket"},
        {"HTTP_UPGRADE": "h2c"},
        {"HTTP_SEC_WEBSOCKET_KEY": RFC_KEY},
        {"HTTP_SEC_WEBSOCKET_VERSION": "13"},
    ],
)
def test_any_websocket_header_makes_an_upgrade_attempt(headers: dict[str, str]) -> None:
    assert is_upgrade_attempt({"REQUEST_METHOD": "GET", "PATH_INFO": "/", **headers}) is True


def test_plain_request_is_not_an_upgrade_attempt() -> None:
    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/echo", "HTTP_CONNECTION": "Upgrade"}
    assert is_upgrade_attempt(environ) is False
    assert is_upgrade_attempt(upgrade_environ()) is True


# -- against real uWSGI -----------------------------------------------------------------------


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def exchange(address: str, lines: list[str]) -> Response:
    """Send one raw HTTP/1.1 request; read the answer's head and its body (Content-Length)."""
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("utf-8"))
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError(f"closed before the end of the head: {buffer!r}")
            buffer += data
        head, body = buffer.split(b"\r\n\r\n", 1)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {
            name.strip().lower(): value.strip()
            for name, value in (line.split(":", 1) for line in header_lines)
        }
        _, code, reason = status_line.split(" ", 2)
        if code == "101":
            sock.sendall(frame(CLOSE, close_payload(1000)))
            return Response(101, reason, headers, body)
        length = int(headers["content-length"])
        while len(body) < length:
            data = sock.recv(4096)
            if not data:
                break
            body += data
        return Response(int(code), reason, headers, body)


def upgrade_lines(
    address: str, changes: Mapping[str, str | None] | None = None, path: str = "/echo"
) -> list[str]:
    """A valid upgrade request's lines; a header changed to ``None`` is dropped, ``method``..."""
    changes = dict(changes or {})
    method = changes.pop("method", None) or "GET"
    headers: dict[str, str | None] = {
        "Host": address,
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": RFC_KEY,
        "Sec-WebSocket-Version": "13",
    }
    headers.update({name.replace("_", "-"): value for name, value in changes.items()})
    if method != "GET":
        headers["Content-Length"] = "0"
    return [f"{method} {path} HTTP/1.1"] + [
        f"{k}: {v}" for k, v in headers.items() if v is not None
    ]


#: (id, header changes, expected status, a phrase of the reason)
BAD_HANDSHAKES: list[tuple[str, dict[str, str | None], int, str]] = [
    ("post", {"method": "POST"}, 400, "must use GET"),
    ("put", {"method": "PUT"}, 400, "must use GET"),
    ("no-upgrade", {"Upgrade": None}, 400, "Upgrade: websocket"),
    ("upgrade-h2c", {"Upgrade": "h2c"}, 400, "Upgrade: websocket"),
    ("no-connection", {"Connection": None}, 400, "Connection: Upgrade"),
    ("connection-keep-alive", {"Connection": "keep-alive"}, 400, "Connection: Upgrade"),
    ("no-version", {"Sec-WebSocket-Version": None}, 400, "Sec-WebSocket-Version"),
    ("version-8", {"Sec-WebSocket-Version": "8"}, 426, "speaks 13"),
    ("no-key", {"Sec-WebSocket-Key": None}, 400, "Sec-WebSocket-Key"),
    ("key-not-base64", {"Sec-WebSocket-Key": "not base64!"}, 400, "Sec-WebSocket-Key"),
    ("key-15-bytes", {"Sec-WebSocket-Key": base64.b64encode(b"x" * 15).decode()}, 400, "16 bytes"),
]


def check_bad_handshake(
    srv: AppServer, changes: dict[str, str | None], status: int, phrase: str
) -> None:
    response = exchange(srv.address, upgrade_lines(srv.address, changes))
    assert response.status == status, response
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert int(response.headers["content-length"]) == len(response.body)
    text = response.body.decode("utf-8")
    assert text.endswith("\n") and text.count("\n") == 1, text
    assert phrase in text
    assert "sec-websocket-accept" not in response.headers
    if status == 426:
        assert response.reason == "Upgrade Required"
        assert response.headers["sec-websocket-version"] == "13"
    else:
        assert response.reason == "Bad Request"
        assert "sec-websocket-version" not in response.headers


def check_plain_get_reaches_flask(srv: AppServer) -> None:
    response = exchange(srv.address, ["GET /echo HTTP/1.1", f"Host: {srv.address}"])
    assert response.status == 200
    assert response.body == b"HTTP view at the same URL"


def check_upgrade_without_route_reaches_flask(srv: AppServer) -> None:
    response = exchange(srv.address, upgrade_lines(srv.address, path="/no-such-route"))
    assert response.status == 404
    assert response.headers["content-type"].startswith("text/html")
    assert b"Not Found" in response.body


def check_good_handshake(srv: AppServer) -> None:
    raw = RawClient(srv.address, "/echo")  # checks 101 and Sec-WebSocket-Accept
    try:
        assert raw.headers["upgrade"].lower() == "websocket"
        assert raw.headers["connection"].lower() == "upgrade"
        raw.send(frame(TEXT, b"after the handshake"))
        assert raw.recv_data() == (TEXT, b"after the handshake")
        raw.send(frame(CLOSE, close_payload(1000)))
        assert raw.expect_close() == (1000, "")
    finally:
        raw.close()


def check_rfc_key_and_connection_list(srv: AppServer) -> None:
    lines = upgrade_lines(
        srv.address, {"Connection": "keep-alive, Upgrade", "Upgrade": "WebSocket"}
    )
    response = exchange(srv.address, lines)
    assert response.status == 101
    assert response.reason == "Switching Protocols"
    assert response.headers["sec-websocket-accept"] == RFC_ACCEPT
    assert response.headers["upgrade"] == "websocket"
    assert response.headers["connection"] == "Upgrade"


BAD_IDS = [case[0] for case in BAD_HANDSHAKES]
BAD_PARAMS = [case[1:] for case in BAD_HANDSHAKES]


@pytest.mark.parametrize(("changes", "status", "phrase"), BAD_PARAMS, ids=BAD_IDS)
def test_bad_handshake(
    server: AppServer, changes: dict[str, str | None], status: int, phrase: str
) -> None:
    check_bad_handshake(server, changes, status, phrase)


def test_plain_get_reaches_flask_view(server: AppServer) -> None:
    check_plain_get_reaches_flask(server)


def test_upgrade_without_route_is_flask_404(server: AppServer) -> None:
    check_upgrade_without_route_reaches_flask(server)


def test_good_handshake(server: AppServer) -> None:
    check_good_handshake(server)


def test_rfc_key_and_connection_list(server: AppServer) -> None:
    check_rfc_key_and_connection_list(server)


def test_refused_handshakes_leave_the_server_serving(server: AppServer) -> None:
    """A burst of bad requests, then a good one on the same server still works."""
    logged = len(server.output())
    for _, changes, status, _ in BAD_HANDSHAKES:
        assert exchange(server.address, upgrade_lines(server.address, changes)).status == status
    check_good_handshake(server)
    assert "Traceback" not in server.output()[logged:]
