"""A Mosquitto that keeps its state across restarts (on the same port every time)."""

from __future__ import annotations

import re
from pathlib import Path

from broker_util import Broker, start_broker
from support import REPO

DEV_CONF = REPO / "mosquitto" / "dev.conf"


def start_persistent_broker(workdir: Path) -> Broker:
    """mosquitto/dev.conf with persistence in `workdir`.

    Mosquitto writes its database (sessions, queued QoS 1 messages, retained messages) on a
    clean shutdown (SIGTERM, which `Broker.restart` sends); `autosave_interval 1` also saves it
    every second, so that even a kill -9 would lose at most the last second.
    """
    db_dir = workdir / "mosquitto-db"
    db_dir.mkdir(parents=True, exist_ok=True)
    text = re.sub(r"^persistence false$", "", DEV_CONF.read_text(), flags=re.M)
    text += f"\npersistence true\npersistence_location {db_dir}/\nautosave_interval 1\n"
    return start_broker(text, workdir)
