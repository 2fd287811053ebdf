"""Reliability fixtures: the exactly-once ledger and publishing sensors, on the test broker.

`broker`, `collector` and `start_worker` come from tests/conftest.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support import BridgeProcess

from reliability.accounting import Ledger, Sensors
from reliability.double import make_hef


@pytest.fixture
def ledger(broker: Any) -> Iterator[Ledger]:
    led = Ledger(broker.port, ignore=["bridge"])  # the HTTP bridge's own sensor id
    yield led
    led.close()


@pytest.fixture
def sensors(broker: Any, ledger: Ledger) -> Iterator[Callable[..., Sensors]]:
    """`sensors(names, protocol=...)` -> a Sensors publisher, closed at the end of the test."""
    made: list[Sensors] = []

    def make(names: list[str], **kwargs: Any) -> Sensors:
        s = Sensors(broker.port, ledger, names, **kwargs)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def hef(tmp_path: Path) -> Path:
    """A HEF of the reference model for the HailoRT test double."""
    return make_hef(tmp_path / "tcn_encoder.hef")


@pytest.fixture
def bridge(broker: Any, tmp_path: Path) -> Iterator[BridgeProcess]:
    """The real `hailo-bridge` on the test broker."""
    b = BridgeProcess(broker.port, log_dir=tmp_path).start()
    yield b
    b.kill()
