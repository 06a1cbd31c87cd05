"""A worker serves its own counters on WORKER_METRICS_PORT; unset, 0 or taken, it serves none and runs on."""

from __future__ import annotations

import urllib.request

from shared.observability import metrics
from tests.support.stack import free_port
from worker import metrics_server


def test_no_port_serves_nothing() -> None:
    assert metrics_server.serve(None) is None
    assert metrics_server.serve(0) is None


def test_the_worker_serves_its_counters_on_its_port_and_a_taken_port_is_not_fatal() -> None:
    port = free_port()
    server = metrics_server.serve(port, addr="127.0.0.1")
    assert server is not None
    try:
        metrics.record_job_finished(tier="cheap", model="served-here", outcome="succeeded", error_code=None)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert 'model_router_jobs_finished_total{error_code="none",model="served-here"' in text
        assert metrics_server.serve(port, addr="127.0.0.1") is None
    finally:
        server.shutdown()
        server.server_close()
