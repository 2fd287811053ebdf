"""The MQTT link's client: many packets per system call, each way, and never across connections."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest
from paho.mqtt.enums import CallbackAPIVersion

from worker.mqtt_link import MqttLink, _Client
from worker.settings import CommonSettings


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


def test_packets_of_one_loop_write_go_out_together_and_only_on_their_socket() -> None:
    client = _Client(CallbackAPIVersion.VERSION2, client_id="t")
    ours, broker = socket.socketpair()
    other, other_broker = socket.socketpair()
    pair: tuple[socket.socket, ...] = ()
    for s in (broker, other_broker):
        s.setblocking(False)
    try:
        client._sock = ours
        assert not client.want_write()
        assert client._sock_send(b"\x30\x03abc") == 5  # a PUBLISH
        assert client._sock_send(b"\x40\x02\x00\x07") == 4  # a PUBACK
        assert client.want_write()  # held, not sent: nothing has reached the broker yet
        with pytest.raises(BlockingIOError):
            broker.recv(100)
        client.loop_write()
        assert broker.recv(100) == b"\x30\x03abc\x40\x02\x00\x07" and not client.want_write()
        client._sock_send(b"\xe0\x00")  # a DISCONNECT, then paho closes the socket
        client._sock_close()
        assert broker.recv(100) == b"\xe0\x00"
        assert client._sock is None
        dying, _ = pair = socket.socketpair()
        client._sock = dying  # a connection that dies with a packet still held for it
        client._sock_send(b"stale")  # queued for it, never flushed
        client._sock = other  # the reconnect: a new socket, whose first bytes must be CONNECT
        assert not client.want_write()
        client._sock_send(b"\x10connect")
        client.loop_write()
        assert other_broker.recv(100) == b"\x10connect"
    finally:
        client._sock = None
        for s in (ours, broker, other, other_broker, *pair):
            s.close()


def test_a_publish_from_another_thread_wakes_the_sleeping_loop_every_time(broker: Any) -> None:
    """The loop sleeps as long as its tick says (here 30 s); each publish from another thread
    (the bridge's HTTP handlers, the worker's status) must wake it, not only the first."""
    settings = CommonSettings(_env_file=None, mqtt_host="127.0.0.1",  # type: ignore[call-arg]
                              mqtt_port=broker.port)
    link = MqttLink(settings, client_id="waker", on_tick=lambda: 30.0)
    link.start()
    try:
        assert link.wait_connected(5)
        for n in range(3):
            acked = threading.Event()
            started = time.monotonic()
            assert link.publish(f"test/{n}", b"x", qos=1, on_acked=acked.set)
            assert acked.wait(5), f"publish {n} was not sent"
            assert time.monotonic() - started < 1.0, f"publish {n} waited for the loop's tick"
    finally:
        link.stop()


def _settings(port: int) -> CommonSettings:
    return CommonSettings(_env_file=None, mqtt_host="127.0.0.1",  # type: ignore[call-arg]
                          mqtt_port=port)


def test_nothing_is_read_while_the_owner_will_take_no_more(broker: Any) -> None:
    """The half of flow control that holds QoS 0 too: while `reading` says False, no packet is
    read (the broker's messages wait in TCP); once it says True, they all arrive."""
    got: list[bytes] = []
    reading = threading.Event()
    link = MqttLink(_settings(broker.port), client_id="gated", subscriptions=[("gate/#", 0)],
                    on_message=lambda c, u, m: got.append(m.payload), reading=reading.is_set,
                    on_tick=lambda: 0.05)
    sender = MqttLink(_settings(broker.port), client_id="sender")
    link.start()
    sender.start()
    try:
        reading.set()
        assert link.wait_connected(5) and sender.wait_connected(5)
        time.sleep(0.3)  # the SUBACK
        reading.clear()
        for n in range(20):
            sender.publish("gate/x", str(n).encode(), qos=0)
        time.sleep(1.0)
        assert got == []
        reading.set()
        link.wake()
        deadline = time.monotonic() + 5
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got == [str(n).encode() for n in range(20)]
    finally:
        link.stop()
        sender.stop()


def test_an_ack_is_sent_only_on_the_connection_its_message_came_on(broker: Any) -> None:
    link = MqttLink(_settings(broker.port), client_id="acker", manual_ack=True)
    link.start()
    try:
        assert link.wait_connected(5)
        assert link.generation == 1
        assert not link.ack(7, generation=0)  # a message of a connection that is gone
        assert link.ack(7, generation=1)
    finally:
        link.stop()


def test_the_brokers_receive_maximum_bounds_our_publishes_in_flight(tmp_path: Any) -> None:
    from broker_util import start_broker
    from conftest import DEV_CONF

    strict = start_broker(DEV_CONF.read_text().replace("max_inflight_messages 0",
                                                       "max_inflight_messages 5"), tmp_path)
    link = MqttLink(_settings(strict.port), client_id="polite")
    link.start()
    try:
        assert link.wait_connected(5)
        assert link.client._max_inflight_messages == 5  # paho alone would ignore it
        acked = threading.Semaphore(0)
        for n in range(50):
            assert link.publish(f"polite/{n}", b"x", qos=1, on_acked=acked.release)
        assert all(acked.acquire(timeout=5) for _ in range(50))
    finally:
        link.stop()
        strict.stop()
