"""Run Debian's real Prometheus for tests: a plain process on a free loopback port.

Its storage is a directory of the test's own, so it never touches (nor depends on) a system
Prometheus that the package may have started on :9090.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from broker_util import free_port
from support import wait_until

INSTALL_HINT = "scripts/install_system_deps.sh installs Debian's prometheus package"


def tool(name: str) -> str:
    """The path of `prometheus` or `promtool`, or a failure that says how to get it."""
    path = shutil.which(name)
    if path is None:
        raise AssertionError(f"{name} is not on PATH; {INSTALL_HINT}")
    return path


def with_targets(config: Mapping[str, Any], targets: Mapping[str, Sequence[str]],
                 scrape_interval: str | None = None) -> dict[str, Any]:
    """`config` with each job's static targets replaced, and nothing else but the interval.

    Every job must be given targets: a job added to the file later fails here, loudly, rather
    than being scraped at a Compose host name that does not resolve.
    """
    out = copy.deepcopy(dict(config))
    jobs = {job["job_name"]: job for job in out["scrape_configs"]}
    if set(jobs) != set(targets):
        raise AssertionError(f"jobs in the config {sorted(jobs)} != jobs given {sorted(targets)}")
    for name, job in jobs.items():
        job["static_configs"] = [{"targets": list(targets[name])}]
    if scrape_interval is not None:
        out.setdefault("global", {})["scrape_interval"] = scrape_interval
    return out


class Prometheus:
    """`prometheus --config.file ... --storage.tsdb.path <tmp> --web.listen-address=127.0.0.1:P`."""

    def __init__(self, config: Mapping[str, Any], workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = workdir / "prometheus.yml"
        self.config_path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
        self.data_dir = workdir / "tsdb"
        self.log_path = workdir / "prometheus.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 30) -> Prometheus:
        command = [
            tool("prometheus"),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_until(self._ready, timeout, f"Prometheus to be ready on {self.port}")
        return self

    def _ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited {self.proc.returncode}:\n{self.log()}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.TransportError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def _api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        doc = r.json()
        if r.status_code != 200 or doc.get("status") != "success":
            raise AssertionError(f"{path} {params}: HTTP {r.status_code} {doc}")
        return doc["data"]

    def targets(self) -> list[dict[str, Any]]:
        return list(self._api("targets", state="active")["activeTargets"])

    def query(self, expr: str) -> list[tuple[dict[str, str], float]]:
        """An instant query: (labels, value) per series; a scalar is one series, no labels."""
        data = self._api("query", query=expr)
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        if data["resultType"] != "vector":
            raise AssertionError(f"{expr}: a {data['resultType']}, not an instant vector")
        return [(s["metric"], float(s["value"][1])) for s in data["result"]]

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def has_data(series: list[tuple[dict[str, str], float]]) -> bool:
    """Some series, all finite: NaN is what histogram_quantile and a ratio give without data."""
    return bool(series) and all(math.isfinite(v) for _, v in series)
