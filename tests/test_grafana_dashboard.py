"""The Grafana dashboard and the Prometheus scrape config under deploy/ query only metrics /metrics serves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
DASHBOARD = DEPLOY / "grafana" / "model-router.json"
METRIC_NAME = re.compile(r"\bmodel_router_[a-z_]+\b")
SERIES_BY_TYPE = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "gauge": ("",)}


def _expressions(panels: list[dict]) -> list[str]:
    found = []
    for panel in panels:
        found += [target["expr"] for target in panel.get("targets", [])]
        found += _expressions(panel.get("panels", []))
    return found


def _served_series(client: FlaskClient) -> set[str]:
    response = client.get("/metrics")
    assert response.status_code == 200
    return {
        family.name + suffix
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for suffix in SERIES_BY_TYPE.get(family.type, ("",))
    }


def test_the_dashboard_is_valid_json_with_one_query_per_target() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["panels"]
    assert all(expression.strip() for expression in _expressions(dashboard["panels"]))


def test_every_metric_the_dashboard_queries_is_served(client: FlaskClient) -> None:
    queried = {
        name for expr in _expressions(json.loads(DASHBOARD.read_text())["panels"]) for name in METRIC_NAME.findall(expr)
    }
    served = _served_series(client)
    assert len(queried) >= 10
    assert queried <= served, sorted(queried - served)


def test_the_scrape_config_points_at_metrics() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"]


# A metric read inside an aggregation: sum/max/min/avg, optionally by labels, of the series or of their rate.
AGGREGATED = re.compile(r"\b(?:sum|max|min|avg)(?:\s+by\s*\(([^)]*)\))?\s*\((?:rate\()?(model_router_[a-z_]+)")


def test_every_query_sums_across_pods() -> None:
    """Every series is aggregated away from its pod: workers and web pods each serve their own counters, and
    every web pod serves the same shared-state gauges, so a panel must not show one line per pod."""
    for expression in _expressions(json.loads(DASHBOARD.read_text())["panels"]):
        aggregated = AGGREGATED.findall(expression)
        assert sorted(name for _, name in aggregated) == sorted(METRIC_NAME.findall(expression)), expression
        for by, _ in aggregated:
            kept = {label.strip() for label in by.split(",")}
            assert not kept & {"instance", "pod", "kubernetes_pod_name"}, expression
