"""Each Celery worker serves its own counters on WORKER_METRICS_PORT, without a directory shared by processes.

The real stack on PostgreSQL with no PROMETHEUS_MULTIPROC_DIR, as across Kubernetes pods: gunicorn, one gevent
worker serving its metrics on a port of its own, the simulator. After a prompt, the worker's port shows the job
and its upstream call; web's /metrics does not (it cannot see another process's counters), and serves the
shared-state gauges, the queue depth of each queue among them.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.store import migrate
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import free_port
from tests.support.stack import http
from tests.support.stack import running_stack

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[tuple[Stack, int]]:
    port = free_port()
    redis_server = PrivateRedis(work_dir=tmp_path)
    redis_server.start()
    try:
        with temporary_postgres_database("model_router_worker_metrics") as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {**QUICK_RETRIES, "WORKER_METRICS_PORT": str(port), "REQUIRE_API_KEY": "false"}
            with running_stack(
                database_url=database_url, redis_url=redis_server.url, log_dir=tmp_path, settings=settings,
                worker_pool="gevent", metrics_dir=False,
            ) as running:  # fmt: skip
                yield running, port
    finally:
        redis_server.close()


def _samples(text: str) -> Samples:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _sum(samples: Samples, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, found), value in samples.items() if sample == name and wanted <= found)


def test_a_worker_serves_its_own_counters_and_web_the_queue_depths(stack: tuple[Stack, int]) -> None:
    running, port = stack
    status, _, body = http("POST", f"{running.web}/api/prompt", {"prompt": "Name a colour.", "wait": True})
    assert status == 200, body

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        worker = _samples(response.read().decode())
    assert _sum(worker, "model_router_jobs_finished_total", outcome="succeeded", model=body["model_used"]) == 1
    assert _sum(worker, "model_router_upstream_call_duration_seconds_count", outcome="ok") >= 1

    with urllib.request.urlopen(f"{running.web}/metrics", timeout=10) as response:
        web = _samples(response.read().decode())
    assert _sum(web, "model_router_jobs_finished_total") == 0
    depths = {
        dict(labels)["queue"]: value for (name, labels), value in web.items() if name == "model_router_queue_depth"
    }
    assert depths == {"prompts": 0.0, "batch": 0.0}
