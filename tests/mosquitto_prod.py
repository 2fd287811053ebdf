"""The production broker of mosquitto/ for tests: a deployment made by add-user.sh, the broker
started by start.sh, and a paho v5 client that records every reason code.

Mosquitto runs with exactly the repo's files: mosquitto.conf and conf.d/tls.conf.in, started by
start.sh; passwd, roles and acl made by add-user.sh. Only ports (free loopback ones) and paths
(tmp dirs) are rewritten.

The production broker binds each client id to its user (use_username_as_clientid), so two
connections of one user take each other's session: a test that needs two clients at once logs
them in as two users.
"""

from __future__ import annotations

import os
import queue
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from broker_util import Broker, start_broker
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

MOSQ = Path(__file__).resolve().parent.parent / "mosquitto"
ADD_USER = MOSQ / "add-user.sh"
START = MOSQ / "start.sh"
GEN_CERTS = MOSQ / "gen-test-certs.sh"
SUCCESS, NO_SUBSCRIBERS, NOT_AUTHORIZED = 0x00, 0x10, 0x87
MQTT_PORT, WS_PORT, TLS_PORT = 1883, 9001, 8883

SESSION_TAKEN_OVER = 0x8E
# Users the deployment gets through add-user.sh (a worker's user name is its WORKER_ID, a
# bridge's its client id); s3 is only in the password file.
ROLES = {
    "worker": "worker",
    "worker-pi1": "worker",
    "observer": "worker",
    "bridge": "bridge",
    "bridge-2": "bridge",
    "dashboard": "dashboard",
    "s1": "sensor",
    "s2": "sensor",
}
PASSWORDS = {name: secrets.token_urlsafe(12) for name in [*ROLES, "s3"]}


# --- deployment and broker -------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config"

    @property
    def certs(self) -> Path:
        return self.root / "certs"

    def env(self) -> dict[str, str]:
        return {**os.environ, "MOSQUITTO_PASSWD_FILE": str(self.config / "passwd")}


def add_user(env: dict[str, str], name: str, role: str, password: str) -> None:
    subprocess.run(
        [str(ADD_USER), name, role], input=f"{password}\n", env=env, check=True,
        capture_output=True, text=True,
    )


def make_deployment(root: Path) -> Deployment:
    dep = Deployment(root)
    dep.config.mkdir(parents=True)
    for name, role in ROLES.items():
        add_user(dep.env(), name, role, PASSWORDS[name])
    subprocess.run(
        ["mosquitto_passwd", str(dep.config / "passwd"), "s3"],
        input=f"{PASSWORDS['s3']}\n{PASSWORDS['s3']}\n", check=True, capture_output=True,
        text=True,
    )
    subprocess.run([str(GEN_CERTS), str(dep.certs)], check=True, capture_output=True)
    return dep


def run_broker(dep: Deployment, workdir: Path) -> Broker:
    """The production config through start.sh, paths moved under ``dep.root``/``workdir``."""
    (workdir / "data").mkdir(parents=True, exist_ok=True)
    return start_broker(
        (MOSQ / "mosquitto.conf").read_text(),
        workdir / "config",
        substitutions={
            "/mosquitto/config/passwd": str(dep.config / "passwd"),
            "/mosquitto/config/acl": str(dep.config / "acl"),
            "/mosquitto/data/": f"{workdir}/data/",
            "/mosquitto/run/": f"{workdir}/run/",
        },
        conf_d={"tls.conf.in": (MOSQ / "conf.d" / "tls.conf.in").read_text()},
        command=["sh", str(START)],
        env={"MOSQUITTO_CERT_DIR": str(dep.certs)},
    )


# --- clients ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    kind: str  # "tcp", "tls" or "ws"
    port: int
    ca: Path | None = None

    def on(self, broker: Broker) -> Endpoint:
        configured = {"tcp": MQTT_PORT, "tls": TLS_PORT, "ws": WS_PORT}[self.kind]
        return replace(self, port=broker.port_for(configured))


class Peer:
    """A paho v5 client that records CONNACK, SUBACK and PUBACK reason codes and messages."""

    def __init__(
        self, ep: Endpoint, user: str | None, *, password: str | None = None,
        client_id: str | None = None, session_expiry: int = 0, clean_start: bool = True,
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
        receive_maximum: int | None = None,
    ) -> None:
        """``client_id`` is what the client asks for; the production broker replaces it with
        the user name, so it defaults to that."""
        self.ep, self.clean_start, self.session_expiry = ep, clean_start, session_expiry
        self.receive_maximum = receive_maximum
        self.client_id = client_id or user or f"t-{uuid.uuid4().hex[:10]}"
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
            transport="websockets" if ep.kind == "ws" else "tcp",
        )
        if ep.ca is not None:
            self.client.tls_set(ca_certs=str(ep.ca))
        if user is not None:
            self.client.username_pw_set(user, PASSWORDS.get(user) if password is None else password)
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connacks: queue.Queue[tuple[int, bool, Any]] = queue.Queue()
        self.subacks: dict[int, list[int]] = {}
        self.pubacks: dict[int, int] = {}
        self.disconnects: queue.Queue[int] = queue.Queue()
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda c, u, m: self.inbox.put((m.topic, bytes(m.payload)))
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = lambda c, u, mid, rc, p: self.pubacks.__setitem__(mid, rc.value)
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.put(rc.value)

    def _on_connect(self, c: mqtt.Client, u: Any, flags: Any, rc: Any, props: Any) -> None:
        if rc.is_failure:
            c.disconnect()  # or paho's loop keeps reconnecting, with a back-off that slows close()
        self.connacks.put((rc.value, bool(flags.session_present), props))

    def _on_subscribe(self, c: mqtt.Client, u: Any, mid: int, rcs: Any, p: Any) -> None:
        self.subacks[mid] = [r.value for r in rcs]

    def connect(self) -> int:
        """Connect and return the CONNACK reason code (the client is closed on a refusal)."""
        if self.client.protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = self.session_expiry
            if self.receive_maximum is not None:
                props.ReceiveMaximum = self.receive_maximum
            self.client.connect(
                "127.0.0.1", self.ep.port, clean_start=self.clean_start, properties=props
            )
        else:
            self.client.connect("127.0.0.1", self.ep.port)
        self.client.loop_start()
        code, self.session_present, self.connack_props = self.connacks.get(timeout=5)
        if code != SUCCESS:
            self.close()
        return code

    def subscribe(self, *topics: str) -> list[int]:
        _, mid = self.client.subscribe([(t, 1) for t in topics])
        assert mid is not None, "not connected"
        wait_for(lambda: mid in self.subacks, f"SUBACK for {topics}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        """Publish and return the PUBACK reason code (SUCCESS for QoS 0, which has none)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(5)
        return self.pubacks.get(info.mid, SUCCESS) if qos else SUCCESS

    def until(self, marker: bytes, timeout: float = 5.0) -> list[tuple[str, bytes]]:
        """Messages received up to and including the one whose payload is ``marker``."""
        got: list[tuple[str, bytes]] = []
        deadline = time.monotonic() + timeout
        while not got or got[-1][1] != marker:
            try:
                got.append(self.inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                raise AssertionError(f"marker {marker!r} never came; got {got}") from None
        return got

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_for(cond: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def marker() -> bytes:
    return uuid.uuid4().hex.encode()

