"""A minimal MQTT v5 client for the load generator: QoS 1 publish and subscribe, nothing else.

The load generator shares two cores with the broker and the process under test, so every
microsecond it spends is taken from what it measures. paho costs about as much per window as
the relay it drives (it reads each packet with several one-byte `recv` calls, builds a message
object per packet, and takes locks for every callback). This client writes pre-framed packets
and parses whole `recv` buffers: a few microseconds per window.

No keep-alive (0: the broker never expects a ping), no reconnect, no QoS 2, no properties
sent: a benchmark that loses its broker should stop, not carry on.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 0x10, 0x20, 0x30, 0x40, 0x82, 0x90
_U16 = struct.Struct(">H")


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = n >> 7, n & 0x7F
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _string(s: str) -> bytes:
    raw = s.encode()
    return _U16.pack(len(raw)) + raw


class MqttError(Exception):
    """The broker refused us, or the stream is not MQTT."""


class RawClient:
    """One TCP connection speaking MQTT v5; the caller drives it with `select`."""

    def __init__(self, host: str, port: int, client_id: str) -> None:
        self.sock = socket.create_connection((host, port), timeout=10)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._in = bytearray()
        self._out = bytearray()
        self._mid = 0
        self.acked = 0  # PUBACKs received for our publishes
        body = (_string("MQTT") + bytes([5, 0x02]) + _U16.pack(0) + varint(0)
                + _string(client_id))
        self.sock.sendall(bytes([CONNECT]) + varint(len(body)) + body)
        kind, packet = self._blocking_packet()
        if kind != CONNACK or packet[1] != 0:
            raise MqttError(f"CONNECT refused: packet {kind:#x}, reason {packet[1:2].hex()}")

    def fileno(self) -> int:
        return self.sock.fileno()

    def subscribe(self, filters: list[str], qos: int = 1) -> None:
        body = _U16.pack(self._next_mid()) + varint(0)
        body += b"".join(_string(f) + bytes([qos]) for f in filters)
        self.sock.sendall(bytes([SUBSCRIBE]) + varint(len(body)) + body)
        kind, packet = self._blocking_packet()
        if kind != SUBACK or any(code >= 0x80 for code in packet[3:]):
            raise MqttError(f"SUBSCRIBE refused: {packet.hex()}")
        self.sock.setblocking(False)

    def _blocking_packet(self) -> tuple[int, bytes]:
        while True:
            for kind, end, body in self._frames():
                del self._in[:end]
                return kind, body
            data = self.sock.recv(65536)
            if not data:
                raise MqttError("the broker closed the connection")
            self._in += data

    def _next_mid(self) -> int:
        self._mid = self._mid % 0xFFFF + 1
        return self._mid

    # -- publishing ---------------------------------------------------------------------------

    def publish(self, topic: bytes, payload: bytes) -> None:
        """Queue a QoS 1 PUBLISH (`topic` already length-prefixed: see `topic_field`)."""
        rest = len(topic) + 3 + len(payload)  # + packet id, empty properties
        self._out += b"".join((b"\x32", varint(rest), topic, _U16.pack(self._next_mid()),
                               b"\x00", payload))

    @staticmethod
    def topic_field(topic: str) -> bytes:
        return _string(topic)

    def want_write(self) -> bool:
        return bool(self._out)

    def flush(self) -> None:
        if self._out:
            try:
                sent = self.sock.send(self._out)
            except BlockingIOError:
                return
            del self._out[:sent]

    # -- receiving ----------------------------------------------------------------------------

    def read(self) -> list[tuple[bytes, memoryview]]:
        """Everything readable now: the (topic, payload) of each PUBLISH; PUBACKs are queued
        for them and PUBACKs for our own publishes are counted."""
        try:
            data = self.sock.recv(1 << 20)
        except BlockingIOError:
            return []
        if not data:
            raise MqttError("the broker closed the connection")
        self._in += data
        messages: list[tuple[bytes, memoryview]] = []
        acks = []
        consumed = 0
        for kind, end, body in self._frames():
            consumed = end
            if kind & 0xF0 == PUBLISH:
                view = memoryview(body)
                n = _U16.unpack_from(view)[0]
                topic = bytes(view[2:2 + n])
                at = 2 + n
                if kind & 0x06:  # QoS 1 (2 is never subscribed to)
                    acks.append(b"\x40\x02" + bytes(view[at:at + 2]))
                    at += 2
                props, at = _read_varint(view, at)
                messages.append((topic, view[at + props:]))
            elif kind == PUBACK:
                self.acked += 1
        if consumed:
            del self._in[:consumed]
        if acks:
            self._out += b"".join(acks)
        return messages

    def _frames(self) -> Iterator[tuple[int, int, bytes]]:
        """Complete packets at the head of the input: (first byte, end offset, body)."""
        buf, pos = self._in, 0
        while len(buf) - pos >= 2:
            length, at = _read_varint(buf, pos + 1, partial=True)
            if length < 0 or at + length > len(buf):
                return
            yield buf[pos], at + length, bytes(buf[at:at + length])
            pos = at + length

    def close(self) -> None:
        try:
            self.sock.setblocking(True)
            self.sock.sendall(b"\xe0\x00")  # DISCONNECT, normal
        except OSError:
            pass
        self.sock.close()


def _read_varint(buf: bytes | bytearray | memoryview, at: int,
                 partial: bool = False) -> tuple[int, int]:
    """(value, offset after it); with `partial`, (-1, at) when the buffer ends inside it."""
    value, shift = 0, 0
    while True:
        if at >= len(buf):
            if partial:
                return -1, at
            raise MqttError("truncated variable-length integer")
        byte = buf[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 21:
            raise MqttError("malformed variable-length integer")
