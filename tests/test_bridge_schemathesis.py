"""Schemathesis against the running bridge's own OpenAPI schema: no server error, whatever the body.

The real bridge, worker (stub) and broker; every operation in /openapi.json gets about 50
generated requests, valid and invalid, checked against the schema's statuses and bodies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from broker_util import start_broker
from support import REPO, BridgeProcess, WorkerProcess, wait_until

MAX_EXAMPLES = 50


@pytest.fixture(scope="module")
def bridge_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("MQTT_TEST_BROKER") == "container":
        pytest.skip("container brokers are set up by tests/test_container_broker.py")
    tmp: Path = tmp_path_factory.mktemp("bridge-schemathesis")
    broker = start_broker((REPO / "mosquitto" / "dev.conf").read_text(), tmp / "broker")
    worker = WorkerProcess(broker.port, log_dir=tmp).start()
    bridge: BridgeProcess | None = None
    try:
        # A generous timeout: a slow CI machine must not turn a late answer into a 504.
        bridge = BridgeProcess(broker.port, log_dir=tmp, bridge_timeout_ms=10_000).start()
        url = bridge.url
        wait_until(lambda: httpx.get(f"{url}/healthz").status_code == 200, 20, "a worker")
        yield url
        assert "Traceback" not in bridge.log(), bridge.log()
    finally:
        if bridge is not None:
            bridge.kill()
        worker.kill()
        broker.stop()


def test_no_server_error_and_answers_match_the_schema(bridge_url: str, tmp_path: Path) -> None:
    # The CLI rather than the pytest plugin: the plugin breaks with each pytest minor release.
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{bridge_url}/openapi.json",
         "--checks", "all", "--max-examples", str(MAX_EXAMPLES), "--seed", "1",
         "--generation-database", "none", "--request-timeout", "15",
         # An event stream never ends: tests/test_page.py reads it.
         "--exclude-path", "/events",
         "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "NO_COLOR": "1"},
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "Tested: 3" in proc.stdout and "No issues found" in proc.stdout, proc.stdout
