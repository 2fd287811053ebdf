"""The Grafana dashboard and the Compose monitoring files, checked without Grafana.

Grafana is not packaged in Debian and no image registry is reachable, so Grafana itself cannot
run here; these checks hold what its provisioning relies on (tests/test_prometheus.py runs every
query against the real Prometheus). They read the files as Grafana and Compose would.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml
from dashboard_util import (
    COMPOSE_FILES,
    DASHBOARDS,
    GRAFANA,
    PROMETHEUS_YML,
    exported,
    load,
    panels,
    queries,
)

from worker.settings import BridgeSettings, WorkerSettings

METRIC = re.compile(r"\bhailo_[a-z0-9_]+\b")
RANGE_FUNCTION = re.compile(r"\b(?:rate|irate|increase)\(\s*$")
BY_CLAUSE = re.compile(r"\bby\s*\(([^)]*)\)")
GRID_COLUMNS = 24


def _yaml(path: Any) -> Any:
    return yaml.safe_load(path.read_text())


def _services(path: Any) -> dict[str, Any]:
    services: dict[str, Any] = _yaml(path)["services"]  # SafeLoader resolves the `<<` merges
    return services


def _datasource() -> dict[str, Any]:
    (source,) = _yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yml")["datasources"]
    assert isinstance(source, dict)
    return source


def test_there_is_a_dashboard_with_queries() -> None:
    assert DASHBOARDS, "no dashboard JSON in compose/grafana/dashboards"
    assert len(queries()) >= 10


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_is_what_grafana_provisioning_loads(path: Any) -> None:
    """A file provider loads a dashboard by uid; panels need unique ids, a data source that is
    provisioned, targets with unique refIds and a place on the 24-column grid."""
    dashboard = load(path)
    assert dashboard["uid"] and dashboard["title"] and isinstance(dashboard["schemaVersion"], int)
    assert "id" not in dashboard or dashboard["id"] is None  # an id would clash across Grafanas
    source = {"type": _datasource()["type"], "uid": _datasource()["uid"]}
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), f"panel ids repeat: {ids}"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels(dashboard):
        title = panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == source, title
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), f"{title}: refIds {refs}"
        for t in panel["targets"]:
            assert t["datasource"] == source and t["expr"].strip(), f"{title} {t['refId']}"
        g = panel["gridPos"]
        assert g["w"] > 0 and g["h"] > 0 and g["x"] >= 0 and g["x"] + g["w"] <= GRID_COLUMNS
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{title!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = title


def test_provisioning_points_where_compose_mounts_the_files() -> None:
    (provider,) = _yaml(GRAFANA / "provisioning" / "dashboards" / "hailo.yml")["providers"]
    url = urlparse(_datasource()["url"])
    for compose in COMPOSE_FILES:
        services = _services(compose)
        grafana = services["grafana"]["volumes"]
        assert f"./grafana/dashboards:{provider['options']['path']}:ro" in grafana, compose.name
        assert "./grafana/provisioning:/etc/grafana/provisioning:ro" in grafana, compose.name
        # The data source reaches Prometheus by its service name, on Prometheus' own port.
        assert url.hostname in services and url.port == 9090, compose.name
        assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in (
            services["prometheus"]["volumes"]), compose.name


def test_compose_services_listen_where_prometheus_scrapes() -> None:
    """Prometheus reaches the exporters over the Compose network by service name, so the worker
    must bind /metrics beyond its container's loopback (METRICS_HOST defaults to 127.0.0.1)."""
    jobs = {j["job_name"]: j["static_configs"][0]["targets"]
            for j in _yaml(PROMETHEUS_YML)["scrape_configs"]}
    assert set(jobs) == {"hailo-worker", "hailo-bridge"}
    (worker_target,), (bridge_target,) = jobs["hailo-worker"], jobs["hailo-bridge"]
    for compose in COMPOSE_FILES:
        services = _services(compose)
        host, port = worker_target.split(":")
        env = {k: str(v) for k, v in services[host]["environment"].items()}
        assert env.get("METRICS_PORT", str(WorkerSettings.model_fields["metrics_port"].default)
                       ) == port, compose.name
        assert env.get("METRICS_HOST") == "0.0.0.0", compose.name
        host, port = bridge_target.split(":")
        env = {k: str(v) for k, v in services[host]["environment"].items()}
        fields = BridgeSettings.model_fields
        assert env.get("BRIDGE_PORT", str(fields["bridge_port"].default)) == port, compose.name
        assert env.get("BRIDGE_HOST", fields["bridge_host"].default) == "0.0.0.0", compose.name


@pytest.mark.parametrize("query", queries(), ids=lambda q: f"{q.panel}-{q.ref_id}")
def test_query_fits_the_metric_types(query: Any) -> None:
    """Names the processes export; counters and histogram series only under rate() (a raw
    counter drops at every restart), gauges never; buckets only in histogram_quantile,
    aggregated by `le`."""
    types = exported()
    expr = query.expr
    for match in METRIC.finditer(expr):
        name = match.group()
        assert name in types, f"{name} is exported by neither the worker nor the bridge"
        kind = types[name][1]
        under_rate = RANGE_FUNCTION.search(expr[:match.start()]) is not None
        if kind in ("counter", "histogram"):
            assert under_rate, f"{name} ({kind}) outside rate()"
        else:
            assert not under_rate, f"rate() of {name}, a {kind}"
        if name.endswith("_bucket"):
            assert expr.startswith("histogram_quantile("), f"{name} outside histogram_quantile"
            quantile = float(expr[len("histogram_quantile("):].split(",", 1)[0])
            assert 0 < quantile < 1
            clauses = BY_CLAUSE.findall(expr)
            assert clauses and all("le" in re.split(r"\s*,\s*", c.strip()) for c in clauses), (
                "every aggregation under histogram_quantile must keep `le`")


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric no panel shows is one nobody watches: a new metric needs a panel too."""
    shown = {exported()[m][0] for q in queries() for m in METRIC.findall(q.expr)
             if m in exported()}
    families = {family for family, _ in exported().values()}
    assert families - shown == set()
