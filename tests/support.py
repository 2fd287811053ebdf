"""Real processes and real MQTT clients for the tests: a worker launcher and a collector.

The broker itself comes from `broker_util` (Mosquitto on a free loopback port).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from worker import wire

REPO = Path(__file__).resolve().parent.parent
HAILO_DOUBLE = REPO / "tests" / "hailo_double"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool
    properties: Any

    def doc(self) -> Any:
        return wire.decode(self.payload)


@dataclass
class Collector:
    """A v5 client that records everything on its subscriptions, and can publish."""

    port: int
    topics: Iterable[str] = ("infer/#", "hailo/+/status", "reply/#")
    client_id: str = field(default_factory=lambda: f"test-{uuid.uuid4().hex[:8]}")
    messages: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id,
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(t, 1) for t in self.topics])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self._subscribed.set()
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise AssertionError("collector could not subscribe")

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, msg.payload, bool(msg.retain),
                                          getattr(msg, "properties", None)))

    def on(self, topic_prefix: str) -> list[Received]:
        with self._lock:
            return [m for m in self.messages if m.topic.startswith(topic_prefix)]

    def answers(self) -> list[Received]:
        return [m for m in self.on("infer/") if m.topic.endswith(("/result", "/error"))]

    def wait_answers(self, n: int, timeout: float = 10) -> list[Received]:
        wait_until(lambda: len(self.answers()) >= n, timeout, f"{n} answers")
        return self.answers()

    def statuses(self, worker_id: str) -> list[dict[str, Any]]:
        return [json.loads(m.payload) for m in self.on(f"hailo/{worker_id}/status")]

    def wait_state(self, worker_id: str, state: str, timeout: float = 15) -> dict[str, Any]:
        def seen() -> bool:
            docs = self.statuses(worker_id)
            return bool(docs) and docs[-1]["state"] == state

        wait_until(seen, timeout, f"{worker_id} to be {state}")
        return self.statuses(worker_id)[-1]

    def publish(self, topic: str, payload: bytes, qos: int = 1, *,
                response_topic: str | None = None, correlation: bytes | None = None) -> None:
        props = None
        if response_topic is not None or correlation is not None:
            props = Properties(PacketTypes.PUBLISH)
            if response_topic is not None:
                props.ResponseTopic = response_topic
            if correlation is not None:
                props.CorrelationData = correlation
        self.client.publish(topic, payload, qos=qos, properties=props).wait_for_publish(5)

    def clear(self) -> None:
        with self._lock:
            self.messages.clear()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class ChildProcess:
    """A process of ours under test: its log, and the ways to end it.

    ``prefix`` goes before the command line: `NetNamespace.command` puts the process in a
    network namespace (tests/netfault.py) with `ip netns exec`, which execs it (same pid).
    """

    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    prefix: Sequence[str] = ()

    def _popen(self, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        with open(self.log_path, "ab") as log:
            return subprocess.Popen([*self.prefix, *argv], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, cwd=REPO)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


class WorkerProcess(ChildProcess):
    """The real `hailo-worker` as a child process (`python -m worker`)."""

    def __init__(self, port: int, worker_id: str | None = None, log_dir: Path | None = None,
                 *, prefix: Sequence[str] = (), **settings: Any) -> None:
        self.worker_id = worker_id or f"w-{uuid.uuid4().hex[:6]}"
        self.prefix = list(prefix)
        self.env = {
            **os.environ,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(port),
            "WORKER_ID": self.worker_id,
            "METRICS_PORT": "0",
            "STATUS_INTERVAL_S": "1",
            "PYTHONUNBUFFERED": "1",
        }
        if settings.get("infer_mode") == "hailo":
            self.env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(HAILO_DOUBLE), os.environ.get("PYTHONPATH")) if p)
        self.env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log_path = (log_dir or Path("/tmp")) / f"{self.worker_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        self.proc = self._popen([sys.executable, "-m", "worker"], self.env)
        return self


class BridgeProcess(ChildProcess):
    """The real `hailo-bridge` as a child process, on a free port of `http_host` (loopback, or
    a network namespace's veth address when `prefix` puts it in one)."""

    def __init__(self, mqtt_port: int, log_dir: Path | None = None, *,
                 http_host: str = "127.0.0.1", prefix: Sequence[str] = (),
                 **settings: Any) -> None:
        from broker_util import free_port

        self.port = free_port()
        self.http_host = http_host
        self.prefix = list(prefix)
        self.url = f"http://{http_host}:{self.port}"
        self.client_id = str(settings.pop("bridge_client_id", f"bridge-{uuid.uuid4().hex[:6]}"))
        self.env = {
            **os.environ,
            "MQTT_HOST": "127.0.0.1",
            "MQTT_PORT": str(mqtt_port),
            "BRIDGE_HOST": http_host,
            "BRIDGE_PORT": str(self.port),
            "BRIDGE_CLIENT_ID": self.client_id,
            "STATUS_INTERVAL_S": "1",  # as WorkerProcess
            "PYTHONUNBUFFERED": "1",
        }
        self.env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log_path = (log_dir or Path("/tmp")) / f"{self.client_id}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> BridgeProcess:
        self.proc = self._popen([sys.executable, "-m", "worker.bridge.cli"], self.env)
        try:
            wait_until(self._answers, timeout, f"the bridge to listen on {self.port}")
        except AssertionError:
            self.kill()
            raise AssertionError(f"bridge never answered:\n{self.log()}") from None
        return self

    def _answers(self) -> bool:
        import socket

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"bridge exited {self.proc.returncode}:\n{self.log()}")
        with socket.socket() as s:
            return s.connect_ex((self.http_host, self.port)) == 0


class SimProcess(ChildProcess):
    """The real `hailo-sim` as a child process; `args` are its flags (`--sensors`, `--rate`...)."""

    def __init__(self, mqtt_port: int, args: Iterable[str], log_dir: Path | None = None, *,
                 prefix: Sequence[str] = (), name: str | None = None,
                 **settings: Any) -> None:
        self.args = list(args)
        self.prefix = list(prefix)
        self.name = name or f"sim-{uuid.uuid4().hex[:6]}"
        self.env = {**os.environ, "MQTT_HOST": "127.0.0.1", "MQTT_PORT": str(mqtt_port),
                    "PYTHONUNBUFFERED": "1"}
        self.env.update({k.upper(): str(v) for k, v in settings.items()})
        self.log_path = (log_dir or Path("/tmp")) / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> SimProcess:
        self.proc = self._popen([sys.executable, "-m", "worker.sim", *self.args], self.env)
        return self

