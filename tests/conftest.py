"""Fixtures: a real Mosquitto on a free port, a collector client, and worker processes."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from broker_util import Broker, rewrite_config, start_broker
from support import REPO, Collector, WorkerProcess, wait_until

DEV_CONF = REPO / "mosquitto" / "dev.conf"


class ContainerBroker:
    """mosquitto/dev.conf in a Mosquitto container (MQTT_TEST_BROKER=container).

    testcontainers with host networking, so the broker still listens on loopback only;
    MQTT_TEST_IMAGE names the image (default eclipse-mosquitto:2, or one built locally).
    """

    def __init__(self, workdir: Path) -> None:
        from testcontainers.core.container import DockerContainer

        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        text, ports = rewrite_config(DEV_CONF.read_text())
        self.port = next(iter(ports.values()))
        (workdir / "mosquitto.conf").write_text(text)
        image = os.environ.get("MQTT_TEST_IMAGE", "eclipse-mosquitto:2")
        self.container = (
            DockerContainer(image)
            .with_kwargs(network_mode="host")
            .with_volume_mapping(str(workdir), "/mosquitto/config", "rw")
            .with_command("mosquitto -c /mosquitto/config/mosquitto.conf")
        )
        self.container.start()
        wait_until(self._accepts, 30, "the Mosquitto container to listen")

    def _accepts(self) -> bool:
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        self.container.stop()

    def restart(self) -> None:
        self.container.get_wrapped_container().restart()
        wait_until(self._accepts, 30, "the Mosquitto container to listen again")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker | ContainerBroker]:
    """A fresh broker with mosquitto/dev.conf on a free loopback port, for one test."""
    b: Broker | ContainerBroker
    if os.environ.get("MQTT_TEST_BROKER") == "container":
        b = ContainerBroker(tmp_path)
    else:
        b = start_broker(DEV_CONF.read_text(), tmp_path)
    yield b
    b.stop()


@pytest.fixture
def collector(broker: Broker | ContainerBroker) -> Iterator[Collector]:
    c = Collector(broker.port)
    yield c
    c.close()


@pytest.fixture
def start_worker(broker: Broker | ContainerBroker, collector: Collector, tmp_path: Path
                 ) -> Iterator[Callable[..., WorkerProcess]]:
    """Start `python -m worker` against the test broker and wait until it says `online`."""
    started: list[WorkerProcess] = []

    def start(wait_state: str | None = "online", **settings: Any) -> WorkerProcess:
        w = WorkerProcess(broker.port, log_dir=tmp_path, **settings).start()
        started.append(w)
        if wait_state:
            try:
                collector.wait_state(w.worker_id, wait_state, timeout=20)
            except AssertionError:
                raise AssertionError(f"worker never became {wait_state}:\n{w.log()}") from None
        return w

    yield start
    for w in started:
        w.kill()
