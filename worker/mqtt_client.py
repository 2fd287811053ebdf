"""paho's MQTT client made cheap per packet, and the publish properties the processes share.

`Client` is paho's client with one system call for many packets each way, and reads that stop at
a packet boundary when the owner's flow control says so (worker/flow.py). `MqttLink`
(worker/mqtt_link.py) drives it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

READ_PACKETS_MAX = 1024  # packets per pass before the owner's tick runs again


class FrozenProperties(Properties):
    """Publish properties that never change, packed once instead of on every publish."""

    def pack(self) -> bytes:
        packed: bytes | None = self.__dict__.get("_packed")
        if packed is None:
            packed = super().pack()  # type: ignore[no-untyped-call]
            # Properties.__setattr__ admits only MQTT property names: bypass it for the cache.
            self.__dict__["_packed"] = packed
        return packed


class Client(mqtt.Client):
    """paho's client, with one system call for many packets each way.

    paho reads every packet with three or more `recv()` calls (its type byte, each byte of its
    length, then the rest) and writes every packet with its own `send()`: per window that is
    nine system calls (strace), and as many TCP segments for the broker. Here reads are served
    from one 64 KiB `recv()`, and the packets of one `loop_write()` go out in one `send()`.
    paho 2.x does all its socket I/O through `_sock_recv`, `_sock_send` and `_sock_close`
    (private names, checked on paho 2.2: pyproject.toml keeps paho-mqtt below 2.3);
    only our network thread calls `loop_read` and `loop_write` (paho never writes itself while
    `on_socket_register_write` is set). Both buffers belong to one socket and are dropped with
    it, so nothing read from or meant for an old connection reaches a new one.
    """

    READ_SIZE = 65536

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._rsock: Any = None  # the socket the read buffer came from
        self._rbuf = b""
        self._rpos = 0
        self._wsock: Any = None  # the socket the write buffer is for
        self._wbuf: list[bytes | bytearray] = []
        # Whether to read more packets now: the owner's flow control (see `MqttLink`).
        self.reading: Callable[[], bool] = lambda: True

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        # paho's own reads up to len(out + in messages) packets a call, whatever the owner
        # holds; this stops at a packet boundary as soon as the owner will take no more.
        for _ in range(READ_PACKETS_MAX):
            if self._sock is None:
                return MQTTErrorCode.MQTT_ERR_NO_CONN
            if not self.reading():
                break
            rc = self._packet_read()
            if rc > 0:
                return self._loop_rc_handle(rc)
            if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                break
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    @property
    def buffered(self) -> int:
        """Bytes read from the socket that paho has not taken yet."""
        return len(self._rbuf) - self._rpos if self._rsock is self._sock else 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rsock is not self._sock:  # a new connection: nothing carries over
            self._rsock, self._rbuf, self._rpos = self._sock, b"", 0
        buf, pos = self._rbuf, self._rpos
        if pos == len(buf):
            buf = self._rbuf = super()._sock_recv(max(bufsize, self.READ_SIZE))
            pos = 0  # an empty read (the broker closed the connection) goes to paho as it is
        end = self._rpos = min(pos + bufsize, len(buf))
        return buf[pos:end]

    def _sock_send(self, buf: bytes | bytearray) -> int:
        if self._wsock is not self._sock:
            self._wsock, self._wbuf = self._sock, []
        self._wbuf.append(buf)
        return len(buf)  # to paho it is sent; loop_write sends it with the rest

    def want_write(self) -> bool:
        return super().want_write() or bool(self._wbuf and self._wsock is self._sock)

    def _packet_write(self) -> MQTTErrorCode:
        # Sent before loop_write() asks want_write(): paho keeps a write registered only while
        # that says True, and asks to be woken for the next packet only when none is.
        rc: MQTTErrorCode = super()._packet_write()
        self._flush()
        return rc

    def _flush(self) -> None:
        if not self._wbuf or self._wsock is not self._sock:
            return
        data = b"".join(self._wbuf)
        try:
            sent = super()._sock_send(data)
        except BlockingIOError:  # no room: the loop waits until the socket is writable
            sent = 0
        except OSError:  # the connection is gone; reading finds out and paho reconnects
            sent = len(data)
        self._wbuf = [data[sent:]] if sent < len(data) else []

    def _sock_close(self) -> None:
        self._flush()  # a DISCONNECT is written just before paho closes the socket
        super()._sock_close()


def frozen(content_type: str) -> Properties:
    props = FrozenProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ContentType = content_type
    return props


def properties(
    content_type: str | None = None,
    response_topic: str | None = None,
    correlation_data: bytes | None = None,
    expiry_s: int | None = None,
) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    if expiry_s is not None:
        props.MessageExpiryInterval = expiry_s
    if content_type is not None:
        props.ContentType = content_type
    if response_topic is not None:
        props.ResponseTopic = response_topic
    if correlation_data is not None:
        props.CorrelationData = correlation_data
    return props
