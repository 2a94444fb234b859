"""A raw-socket WebSocket client for the tests that send what real clients never would.

It frames by hand on purpose: malformed frames are its job. It is test code only.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import time

from flask_uwsgi_websocket.handshake import accept_key

TEXT, BINARY, CONT, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(
    opcode: int, payload: bytes = b"", fin: bool = True, mask: bool = True, rsv: int = 0
) -> bytes:
    """A client frame; ``mask=False`` and ``rsv`` make malformed ones."""
    head = bytes([(0x80 if fin else 0) | rsv << 4 | opcode])
    length = len(payload)
    bit = 0x80 if mask else 0
    if length < 126:
        head += bytes([bit | length])
    elif length < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", length)
    if not mask:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: str = "") -> bytes:
    return struct.pack("!H", code) + reason.encode()


class RawClient:
    """One WebSocket connection over a plain socket."""

    def __init__(self, address: str, path: str, headers: dict[str, str] | None = None) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        key = base64.b64encode(os.urandom(16)).decode()
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {address}",
            "Upgrade: websocket",
            "Connection: Upgrade",
            f"Sec-WebSocket-Key: {key}",
            "Sec-WebSocket-Version: 13",
        ] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.buffer = b""
        while b"\r\n\r\n" not in self.buffer:
            data = self.sock.recv(4096)
            if not data:
                raise ConnectionError("closed during the handshake")
            self.buffer += data
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        self.status_line, *header_lines = head.decode().split("\r\n")
        self.headers = {
            k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)
        }
        assert self.status_line.startswith("HTTP/1.1 101"), self.status_line
        assert self.headers["sec-websocket-accept"] == accept_key(key)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read(self, n: int) -> bytes:
        while len(self.buffer) < n:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buffer += data
        out, self.buffer = self.buffer[:n], self.buffer[n:]
        return out

    def recv_frame(self) -> tuple[int, bytes, bool]:
        """The next server frame: (opcode, payload, fin); its RSV bits go to ``self.rsv``."""
        b0, b1 = self._read(2)
        self.rsv = (b0 >> 4) & 0x7
        assert not b1 & 0x80, "server frames are not masked"
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x0F, self._read(length), bool(b0 & 0x80)

    def recv_data(self) -> tuple[int, bytes]:
        """The next non-ping, non-pong frame."""
        while True:
            opcode, payload, _ = self.recv_frame()
            if opcode not in (PING, PONG):
                return opcode, payload

    def expect_close(self, timeout: float = 10.0) -> tuple[int, str]:
        """Read until the server's close frame; return its code and reason."""
        self.sock.settimeout(timeout)
        while True:
            opcode, payload, _ = self.recv_frame()
            if opcode == CLOSE:
                code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return code, payload[2:].decode()

    def wait_eof(self, timeout: float = 10.0) -> float:
        """Wait until the server closes TCP; return how long it took."""
        started = time.monotonic()
        self.sock.settimeout(timeout)
        while True:
            if not self.sock.recv(65536):
                return time.monotonic() - started

    def close(self) -> None:
        self.sock.close()
