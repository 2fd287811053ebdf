"""The bare relay: the ceiling the worker is measured against.

    python bench/relay.py --port PORT [--max-inflight N] [--ack-after-answer]

One paho client (MQTT v5, TCP_NODELAY, the worker's in-flight limit) that subscribes to
`imu/+/window` at QoS 1 and republishes each payload unchanged to `infer/<sensor>/result` at
QoS 1. It does what any MQTT service must do per window and nothing else, so its CPU time per
window is what paho and the broker cost before the worker does any work of its own.

By default the broker's window is acknowledged on receipt (paho's automatic ack), the
cheapest correct relay. `--ack-after-answer` acknowledges it only once the broker has the
answer, as the worker's contract requires, to price that bookkeeping separately.
Prints `ready` on stdout once subscribed; stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import uuid
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

WINDOW_TOPIC = "imu/+/window"
# The worker's MqttLink limit: the same paho code path (its per-ack rescan included).
WORKER_MAX_INFLIGHT = 200


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--max-inflight", type=int, default=WORKER_MAX_INFLIGHT,
                   help="paho's in-flight limit for the answers (0: none; default "
                   f"{WORKER_MAX_INFLIGHT}, the worker's)")
    p.add_argument("--ack-after-answer", action="store_true",
                   help="acknowledge a window only after the broker acknowledged its answer")
    return p


class Relay:
    def __init__(self, args: argparse.Namespace) -> None:
        self.ack_after = bool(args.ack_after_answer)
        client = mqtt.Client(CallbackAPIVersion.VERSION2,
                             client_id=f"bench-relay-{uuid.uuid4().hex[:8]}",
                             protocol=mqtt.MQTTv5, manual_ack=self.ack_after)
        client.max_inflight_messages_set(args.max_inflight)
        client.on_socket_open = self._on_socket_open
        client.on_connect = self._on_connect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self.client = client
        # answer mid -> window mid, for --ack-after-answer (all on paho's one thread)
        self.pending: dict[int, int] = {}
        # The worker sets ContentType on every answer: so does the relay, for equal bytes.
        self.props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        self.props.ContentType = "application/msgpack"

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any,
                    props: Any) -> None:
        client.subscribe(WINDOW_TOPIC, qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any,
                      props: Any) -> None:
        print("ready", flush=True)

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        sensor = msg.topic.split("/", 2)[1]
        info = client.publish(f"infer/{sensor}/result", msg.payload, qos=1,
                              properties=self.props)
        if self.ack_after:
            # The answer's PUBACK cannot have been handled yet: this callback runs on the
            # same thread that would handle it.
            self.pending[info.mid] = msg.mid

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any,
                    props: Any) -> None:
        window_mid = self.pending.pop(mid, None)
        if window_mid is not None:
            client.ack(window_mid, 1)

    def run(self, host: str, port: int) -> None:
        self.client.connect(host, port, keepalive=30)
        self.client.loop_forever()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    relay = Relay(args)

    def stop(signum: int, frame: FrameType | None) -> None:
        relay.client.disconnect()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    relay.run(args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
