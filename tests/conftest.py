"""Fixtures: a real Mosquitto on a free port, a collector client, and worker processes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import REPO, Collector, WorkerProcess, free_port, wait_until

DEV_CONF = REPO / "mosquitto" / "dev.conf"


class DevBroker:
    """mosquitto/dev.conf with its port rewritten to a free one."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        text = re.sub(r"^listener \d+", f"listener {self.port}", DEV_CONF.read_text(), flags=re.M)
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(text + "\nuser root\n")
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.proc = subprocess.Popen([exe, "-c", str(self.conf)], stdout=log, stderr=log)
        wait_until(self._accepts, 10, "mosquitto to listen")

    def _accepts(self) -> bool:
        import socket

        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


class ContainerBroker(DevBroker):
    """The same configuration in a Mosquitto container (MQTT_TEST_BROKER=container).

    Uses testcontainers with host networking, so the broker still listens on loopback only;
    MQTT_TEST_IMAGE names the image (default eclipse-mosquitto:2, or one built locally).
    """

    def start(self) -> None:
        from testcontainers.core.container import DockerContainer

        os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
        image = os.environ.get("MQTT_TEST_IMAGE", "eclipse-mosquitto:2")
        self.container = (
            DockerContainer(image)
            .with_kwargs(network_mode="host")
            .with_volume_mapping(str(self.workdir), "/mosquitto/config", "rw")
            .with_command("mosquitto -c /mosquitto/config/mosquitto.conf")
        )
        self.container.start()
        wait_until(self._accepts, 30, "the Mosquitto container to listen")

    def stop(self) -> None:
        self.container.stop()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[DevBroker]:
    kind = ContainerBroker if os.environ.get("MQTT_TEST_BROKER") == "container" else DevBroker
    b = kind(tmp_path)
    yield b
    b.stop()


@pytest.fixture
def collector(broker: DevBroker) -> Iterator[Collector]:
    c = Collector(broker.port)
    yield c
    c.close()


@pytest.fixture
def start_worker(broker: DevBroker, collector: Collector, tmp_path: Path
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
