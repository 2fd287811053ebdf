"""The monitoring files in compose/ as the tests read them: the dashboards' PromQL, and the
metric families the worker and the bridge export (from their own registries, so a renamed
metric shows up here without a list to keep in step)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from support import REPO

from worker.bridge.metrics import BridgeMetrics
from worker.metrics import WorkerMetrics

COMPOSE = REPO / "compose"
PROMETHEUS_YML = COMPOSE / "prometheus.yml"
GRAFANA = COMPOSE / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
COMPOSE_FILES = sorted(COMPOSE.glob("docker-compose.*.yaml"))

# The sample names each family type puts on the wire (text format, which is what both scrape).
SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref_id: str
    expr: str

    def __str__(self) -> str:
        return f"{self.dashboard} / {self.panel!r} / {self.ref_id}: {self.expr}"


def load(path: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(path.read_text())
    return doc


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside collapsed rows (which Grafana nests)."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def queries() -> list[Query]:
    return [Query(path.name, p.get("title", ""), t.get("refId", ""), t.get("expr", ""))
            for path in DASHBOARDS for p in panels(load(path)) for t in p.get("targets", [])]


def exported() -> dict[str, tuple[str, str]]:
    """Sample name -> (family name, family type) for everything the worker and bridge export.

    Families are read from the registries' `describe()`/`collect()`, not from samples: a
    labelled counter that has not counted yet (errors by code) has a family but no sample.
    """
    out: dict[str, tuple[str, str]] = {}
    for registry in (WorkerMetrics().registry, BridgeMetrics().registry):
        for family in registry.collect():
            for suffix in SUFFIXES.get(family.type, ()):
                out[family.name + suffix] = (family.name, family.type)
    return out
