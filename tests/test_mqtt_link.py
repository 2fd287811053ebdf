"""The MQTT link's buffered reads: paho's small reads served from one larger one."""

from __future__ import annotations

import socket

from paho.mqtt.enums import CallbackAPIVersion

from worker.mqtt_link import _Client


def test_reads_are_served_from_one_recv_and_never_cross_connections() -> None:
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")
    ours, broker = socket.socketpair()
    other, other_broker = socket.socketpair()
    try:
        client._sock = ours
        broker.sendall(b"\x40\x02\x00\x01" + b"\x30\x05hello")  # a PUBACK, then a PUBLISH
        assert [client._sock_recv(n) for n in (1, 1, 2)] == [b"\x40", b"\x02", b"\x00\x01"]
        assert client.buffered == 7  # the rest came with the first read
        broker.sendall(b"later")
        assert client._sock_recv(1) == b"\x30" and client._sock_recv(1) == b"\x05"
        assert client._sock_recv(100) == b"hello"  # no more than was buffered
        assert client.buffered == 0 and client._sock_recv(100) == b"later"
        broker.sendall(b"stale")
        assert client._sock_recv(1) == b"s"
        client._sock = other  # a reconnect: what the old socket held must not leak into it
        assert client.buffered == 0
        other_broker.sendall(b"\x20")
        assert client._sock_recv(1) == b"\x20"
        other_broker.close()
        assert client._sock_recv(1) == b""  # the broker's close reaches paho as EOF
    finally:
        client._sock = None
        for s in (ours, broker, other, other_broker):
            s.close()
