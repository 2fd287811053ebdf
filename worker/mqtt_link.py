"""The MQTT link: one paho-mqtt 2.x client (MQTT v5) with what every process here needs.

Credentials and TLS from the settings, a last will, reconnects with backoff (the very first
connection is retried too), subscriptions renewed on every connect, and QoS 1 publishes whose
broker acknowledgement (PUBACK) can be waited on through a callback.

The network thread is ours rather than paho's `loop_start()`: it drives paho through its
external-event-loop API (`loop_read`, `loop_write`, `loop_misc`) and, between passes, calls
the owner's `on_tick` hook, so the owner can batch and answer windows on the thread that reads
them, with no hand-off to another thread for every window (each costs a context switch, which
measured more than all the worker's own computing: bench/README.md). Other threads that
publish wake the loop through a socket pair of ours, once per burst rather than per packet.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from worker.mqtt_client import Client, FrozenProperties, frozen, properties
from worker.settings import CommonSettings

__all__ = ["FrozenProperties", "MqttLink", "frozen", "properties"]
_Client = Client  # the name tests/test_mqtt_link.py knows it by

OnMessage = Callable[[mqtt.Client, Any, mqtt.MQTTMessage], None]
OnTick = Callable[[], float]
Subscription = tuple[str, int | SubscribeOptions]  # a topic filter and its QoS (or options)
RECEIVE_MAXIMUM = 65535  # MQTT v5's largest: the broker may send as many as it likes
RECONNECT_MIN_S = 1
RECONNECT_MAX_S = 30


class MqttLink:
    """A v5 client that keeps itself connected.

    Args:
        settings: broker address, credentials and TLS files.
        client_id: stable for a persistent session (the worker), unique per process otherwise.
        subscriptions: (topic filter, qos or SubscribeOptions) pairs, (re)subscribed in every
            on_connect.
        on_message: called on paho's network thread; it must not block.
        clean_start: False resumes the broker-side session (queued QoS 1 messages survive).
        session_expiry_s: how long the broker keeps the session after a disconnect.
        will: (topic, payload) published retained at QoS 1 by the broker if we vanish.
        manual_ack: QoS 1 messages are acknowledged only by `ack()`, never automatically.
        receive_maximum: MQTT v5 Receive Maximum: the most QoS 1 messages the broker hands us
            unacknowledged (with manual_ack, the broker's half of flow control).
        reading: asked before every packet read; while it says False nothing more is read
            (the half of flow control that holds QoS 0 too; the owner must make it True again
            by itself, since acknowledgements to us wait unread meanwhile).
        on_connected / on_disconnected: hooks run on the network thread.
        on_tick: run on the network thread after every pass of paho's loop (a pass returns on
            traffic, or when the previous tick's answer, in seconds, has elapsed).
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        client_id: str,
        subscriptions: Sequence[Subscription] = (),
        on_message: OnMessage | None = None,
        clean_start: bool = True,
        session_expiry_s: int = 0,
        will: tuple[str, bytes] | None = None,
        manual_ack: bool = False,
        receive_maximum: int = RECEIVE_MAXIMUM,
        reading: Callable[[], bool] | None = None,
        on_connected: Callable[[], None] | None = None,
        on_disconnected: Callable[[str], None] | None = None,
        on_tick: OnTick | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self.log = logger or logging.getLogger("worker.mqtt")
        self.settings = settings
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.receive_maximum = receive_maximum
        self.on_connected = on_connected
        self.on_disconnected = on_disconnected
        self.on_tick = on_tick
        self.connected = threading.Event()
        self.last_error = "not connected yet"
        # Counts successful connects: a received message's id means something only on the
        # connection it came on (the broker may give it to another message after a reconnect).
        self.generation = 0
        self.session_present = False

        # Acks can arrive before publish() has returned the mid to us (paho calls on_publish
        # on its network thread), so a mid acked early is parked until it is registered.
        self._ack_lock = threading.Lock()
        self._waiting: dict[int, Callable[[], None] | None] = {}
        self._early: set[int] = set()
        self._idle = threading.Condition(self._ack_lock)
        # UNSUBACKs by mid; one may arrive before unsubscribe() has registered its mid.
        self._unsub_lock = threading.Lock()
        self._unsubscribing: dict[int, threading.Event] = {}
        self._unsubscribed_early: set[int] = set()

        client = Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=manual_ack,
        )
        self._stopping = False
        self._retry_delay = float(RECONNECT_MIN_S)
        self._thread = threading.Thread(target=self._run, name="mqtt", daemon=True)
        # Written by other threads when they queue a packet (or stop us) while we sleep.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        paho_log = logging.getLogger(f"paho.{client_id}")
        # paho logs every packet at DEBUG, a cost per window even when filtered out, and its
        # errors also surface through our own handlers: let it log only when debugging.
        if paho_log.isEnabledFor(logging.DEBUG):
            client.enable_logger(paho_log)
        # No bound of paho's own on QoS 1 publishes in flight: with one, a publish waits for
        # an earlier one's PUBACK, which waits in the socket behind the windows flow control
        # leaves unread (and paho rescans every unacknowledged message on each PUBACK). A broker
        # that announces a Receive Maximum gets it kept (see _on_connect).
        client.max_inflight_messages_set(0)
        if settings.mqtt_username:
            password = settings.mqtt_password.get_secret_value() if settings.mqtt_password else None
            client.username_pw_set(settings.mqtt_username, password)
        if settings.mqtt_tls:
            client.tls_set(
                ca_certs=str(settings.mqtt_ca_file) if settings.mqtt_ca_file else None,
                certfile=str(settings.mqtt_cert_file) if settings.mqtt_cert_file else None,
                keyfile=str(settings.mqtt_key_file) if settings.mqtt_key_file else None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        if reading is not None:
            client.reading = reading
        if will is not None:
            will_props = Properties(PacketTypes.WILLMESSAGE)  # type: ignore[no-untyped-call]
            will_props.ContentType = "application/json"
            client.will_set(will[0], will[1], qos=1, retain=True, properties=will_props)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_unsubscribe = self._on_unsubscribe
        client.on_socket_open = self._on_socket_open
        # paho calls this from the publishing thread when a packet is queued and none was
        # waiting; with it set, paho never writes from that thread: only our loop does.
        client.on_socket_register_write = self._on_want_write
        if on_message is not None:
            client.on_message = on_message
        self.client = client

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Connect in the background, retrying with backoff until `stop()`."""
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.receive_maximum
        self.client.connect_async(
            self.settings.mqtt_host,
            self.settings.mqtt_port,
            keepalive=self.settings.mqtt_keepalive_s,
            clean_start=self.clean_start,
            properties=props,
        )
        self._thread.start()

    def stop(self) -> None:
        """Disconnect cleanly (no will) and stop the network thread."""
        self._stopping = True
        self.client.disconnect()
        self.wake()
        if self._thread.is_alive():
            self._thread.join(5)
        self.connected.clear()

    def _run(self) -> None:
        client = self.client
        timeout = 0.0
        retry_at = 0.0
        while True:
            try:
                sock = client.socket()
                if sock is not None:
                    self._pass(sock, timeout)
                    if client.socket() is None and not self._stopping:
                        retry_at = self._backoff()
                elif self._stopping:
                    self._wake_r.close()
                    self._wake_w.close()
                    return
                elif time.monotonic() >= retry_at:
                    try:
                        client.reconnect()
                    except OSError as exc:
                        self.last_error = f"cannot reach the broker: {exc}"
                        self.log.warning("%s (%s:%s); retrying in %.0f s", self.last_error,
                                         self.settings.mqtt_host, self.settings.mqtt_port,
                                         self._retry_delay)
                        retry_at = self._backoff()
                else:
                    self._sleep(min(timeout, retry_at - time.monotonic()))
                timeout = self.on_tick() if self.on_tick is not None else 1.0
            except Exception:  # the network thread must outlive any bug in a callback
                self.log.exception("unexpected failure in the network loop")
                timeout = 0.1

    def _pass(self, sock: Any, timeout: float) -> None:
        """One pass over the socket: wait up to `timeout` for traffic, read, write, ping."""
        client = self.client
        # Bytes already read (by us, or decrypted by TLS) are invisible to select.
        reading = client.reading()
        pending = reading and (client.buffered > 0 or (
            getattr(sock, "pending", None) is not None and sock.pending() > 0))
        writing = [sock] if client.want_write() else []
        watched = [sock, self._wake_r] if reading else [self._wake_r]
        readable, _, _ = select.select(watched, writing, [], 0.0 if pending else timeout)
        if self._wake_r in readable:
            self._drain_wake()
        if pending or sock in readable:
            client.loop_read()
        if client.want_write():
            client.loop_write()  # what the socket cannot take now waits for it to be writable
        client.loop_misc()

    def _sleep(self, timeout: float) -> None:
        """Wait while disconnected; a stop cuts it short."""
        readable, _, _ = select.select([self._wake_r], [], [], max(0.0, timeout))
        if readable:
            self._drain_wake()

    def _drain_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            self._wake_r.recv(4096)

    def _on_want_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if threading.current_thread() is not self._thread:
            self.wake()

    def wake(self) -> None:
        """Cut the network thread's wait short, so its `on_tick` runs now (any thread)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _backoff(self) -> float:
        """When to try the next connection: 1, 2, 4 ... 30 s after each failure."""
        retry_at = time.monotonic() + self._retry_delay
        self._retry_delay = min(self._retry_delay * 2, RECONNECT_MAX_S)
        return retry_at

    def wait_connected(self, timeout: float) -> bool:
        return self.connected.wait(timeout)

    def wait_all_acked(self, timeout: float) -> bool:
        """Wait until every tracked QoS 1 publish has been acknowledged by the broker."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._waiting, timeout)

    # -- publishing --------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        props: Properties | None = None,
        on_acked: Callable[[], None] | None = None,
    ) -> bool:
        """Queue a publish. `on_acked` runs on the network thread once the broker has it.

        Returns False when paho refused it outright (its queue is full); a publish made while
        disconnected is kept by paho and sent after the reconnect.
        """
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        queued = info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN and qos > 0
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS and not queued:
            self.log.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
            return False
        # Every publish that paho will report (QoS 0 once written, QoS 1 once acked) is claimed
        # here, so no stale mid is left in _early to be mistaken for a later publish's ack.
        with self._ack_lock:
            if info.mid in self._early:
                self._early.discard(info.mid)
                done = True
            else:
                self._waiting[info.mid] = on_acked
                done = False
        if done and on_acked is not None:
            on_acked()
        return True

    def unsubscribe(self, topic: str, timeout: float) -> bool:
        """Drop a subscription and wait for the broker's UNSUBACK (False: none in time).

        The broker sends every message it routed to us before the UNSUBSCRIBE ahead of the
        UNSUBACK, so once this returns True nothing more is on its way for `topic`.
        """
        self.subscriptions = [(t, q) for t, q in self.subscriptions if t != topic]
        rc, mid = self.client.unsubscribe(topic)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            return False
        done = threading.Event()
        with self._unsub_lock:
            if mid in self._unsubscribed_early:
                self._unsubscribed_early.discard(mid)
                done.set()
            else:
                self._unsubscribing[mid] = done
        acked = done.wait(timeout)
        with self._unsub_lock:
            self._unsubscribing.pop(mid, None)
        return acked

    def _on_unsubscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                        props: Properties | None) -> None:
        with self._unsub_lock:
            done = self._unsubscribing.pop(mid, None)
            if done is None:
                self._unsubscribed_early.add(mid)
        if done is not None:
            done.set()

    def ack(self, mid: int, generation: int) -> bool:
        """Acknowledge a received QoS 1 message (manual_ack mode), if it came on the current
        connection (`generation` as it was on receipt). Returns whether it was acknowledged."""
        if generation != self.generation:
            return False  # the broker redelivers it, if it still has it
        self.client.ack(mid, 1)
        return True

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, reason: ReasonCode, props: Properties
    ) -> None:
        if reason.is_failure:
            self.log.warning("broker refused publish %d: %s", mid, reason)
        with self._ack_lock:
            if mid in self._waiting:
                callback = self._waiting.pop(mid)
                if not self._waiting:
                    self._idle.notify_all()
            else:
                self._early.add(mid)
                callback = None
        if callback is not None:
            callback()

    # -- connection events -------------------------------------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Nagle would hold small results back by tens of milliseconds.
        raw = getattr(sock, "socket", sock)
        with contextlib.suppress(OSError, AttributeError):
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        # A refused CONNECT also arrives here: it must not count as connected (Frigate #342).
        if reason.is_failure:
            self.last_error = f"broker refused the connection: {reason}"
            self.log.error("%s (%s:%s)", self.last_error, self.settings.mqtt_host,
                           self.settings.mqtt_port)
            return
        # paho 2.2 ignores the broker's Receive Maximum; past it a strict broker disconnects.
        # Its setter refuses a connected client, though the count it relies on is kept at any
        # bound (paho 2.2, `publish` and `_do_on_publish`): set the field itself.
        broker_max = getattr(props, "ReceiveMaximum", RECEIVE_MAXIMUM) if props else RECEIVE_MAXIMUM
        client._max_inflight_messages = broker_max if broker_max < RECEIVE_MAXIMUM else 0
        self.generation += 1
        self.session_present = bool(getattr(flags, "session_present", False))
        self.log.info(
            "connected to %s:%s as %s (session present: %s)",
            self.settings.mqtt_host, self.settings.mqtt_port, self.client_id,
            self.session_present,
        )
        if self.subscriptions:
            client.subscribe([(t, q if isinstance(q, SubscribeOptions) else SubscribeOptions(qos=q))
                              for t, q in self.subscriptions])
        self.last_error = ""
        self._retry_delay = float(RECONNECT_MIN_S)
        self.connected.set()
        if self.on_connected is not None:
            self.on_connected()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: Any,
        reason: ReasonCode,
        props: Properties | None,
    ) -> None:
        was_connected = self.connected.is_set()
        self.connected.clear()
        if reason.is_failure or was_connected:
            self.last_error = f"disconnected from the broker: {reason}"
        if was_connected and reason.is_failure:
            self.log.warning("%s; reconnecting with backoff", self.last_error)
        if was_connected and self.on_disconnected is not None:
            self.on_disconnected(self.last_error)
