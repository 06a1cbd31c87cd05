"""What each recording function adds to the metrics (read back from this process's registry)."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal
from types import SimpleNamespace

from prometheus_client import REGISTRY

from shared.observability import metrics
from shared.store.types import utcnow
from shared.upstream.attempts import AttemptRecord
from web import gunicorn_conf


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _attempt(model: str, outcome: str = "ok", error_class: str | None = None, **values: object) -> AttemptRecord:
    return AttemptRecord(
        model=model, tier="cheap", outcome=outcome, latency_ms=120.0, started_at=utcnow(), error_class=error_class,
        **values,
    )  # fmt: skip


def test_a_cache_hit_is_counted_by_model_and_tier() -> None:
    before = _value("model_router_cache_hits_total", model="gpt-4", tier="mid")
    metrics.record_cache_hit(model="gpt-4", tier="mid")
    metrics.record_cache_hit(model="gpt-4", tier="mid")
    assert _value("model_router_cache_hits_total", model="gpt-4", tier="mid") == before + 2


def test_a_job_without_model_or_error_is_labelled_none() -> None:
    labels = {"tier": "none", "model": "none", "outcome": "failed", "error_code": "cancelled"}
    before = _value("model_router_jobs_finished_total", **labels)
    metrics.record_job_finished(tier=None, model=None, outcome="failed", error_code="cancelled")
    assert _value("model_router_jobs_finished_total", **labels) == before + 1


def test_repeated_calls_to_one_model_count_as_retries_and_bill_tokens_and_cost() -> None:
    model = "metrics-test-retry"
    metrics.record_attempts(
        [
            ("primary", _attempt(model, "error", "rate_limited", status_code=429)),
            ("primary", _attempt(model, prompt_tokens=10, completion_tokens=20, cost=Decimal("0.0015"))),
        ]
    )
    assert _value("model_router_upstream_retries_total", model=model) == 1
    assert _value("model_router_fallbacks_total", model=model) == 0
    assert _value("model_router_tokens_total", model=model, kind="prompt") == 10
    assert _value("model_router_tokens_total", model=model, kind="completion") == 20
    assert _value("model_router_cost_dollars_total", model=model) == 0.0015
    assert _value("model_router_upstream_call_duration_seconds_count", model=model, outcome="rate_limited") == 1
    assert _value("model_router_upstream_call_duration_seconds_count", model=model, outcome="ok") == 1
    assert _value("model_router_upstream_call_duration_seconds_sum", model=model, outcome="ok") == 0.12


def test_a_hand_off_past_an_open_circuit_is_a_fallback_and_the_skip_is_no_call() -> None:
    first, second = "metrics-test-open", "metrics-test-fallback"
    metrics.record_attempts(
        [("primary", _attempt(first, "skipped", "circuit_open")), ("fallback", _attempt(second, prompt_tokens=5))]
    )
    assert _value("model_router_fallbacks_total", model=second) == 1
    assert _value("model_router_upstream_call_duration_seconds_count", model=first, outcome="circuit_open") == 0
    assert _value("model_router_upstream_retries_total", model=second) == 0


def test_the_first_call_after_a_lost_run_is_not_a_retry() -> None:
    model = "metrics-test-lost"
    metrics.record_attempts([("primary", _attempt(model, "error", "worker_lost")), ("primary", _attempt(model))])
    assert _value("model_router_upstream_retries_total", model=model) == 0
    assert _value("model_router_upstream_call_duration_seconds_count", model=model, outcome="ok") == 1
    assert _value("model_router_upstream_call_duration_seconds_count", model=model, outcome="worker_lost") == 0


def test_a_lost_call_charged_at_its_bound_counts_as_spent_and_as_unconfirmed() -> None:
    model = "metrics-test-unconfirmed"
    metrics.record_attempts(
        [
            ("primary", _attempt(model, "unconfirmed", "worker_lost", cost=Decimal("0.004"))),
            ("primary", _attempt(model, cost=Decimal("0.001"))),
        ]
    )
    assert _value("model_router_cost_dollars_total", model=model) == 0.005
    assert _value("model_router_unconfirmed_cost_dollars_total", model=model) == 0.004
    assert _value("model_router_upstream_retries_total", model=model) == 0
    assert _value("model_router_upstream_call_duration_seconds_count", model=model, outcome="worker_lost") == 0


def test_a_job_the_reaper_failed_counts_its_lost_calls_charge() -> None:
    from shared.jobs.endings import Finished
    from shared.observability import job_events
    from shared.store.models import JobStatus

    model = "metrics-test-reaped"
    job_events.finished(Finished(status=JobStatus.FAILED, job_id="j", model=model, error_code="worker_lost",
                                 unconfirmed_cost=Decimal("0.25")))  # fmt: skip
    assert _value("model_router_unconfirmed_cost_dollars_total", model=model) == 0.25
    assert _value("model_router_cost_dollars_total", model=model) == 0.25


def test_gunicorn_forgets_the_live_gauges_of_a_worker_that_exited(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(metrics.MULTIPROC_ENV, str(tmp_path))
    worker = metrics.process_identifier(4242)
    (tmp_path / f"gauge_livesum_{worker}.db").write_bytes(b"")
    (tmp_path / f"counter_{worker}.db").write_bytes(b"")
    gunicorn_conf.child_exit(None, SimpleNamespace(pid=4242))
    assert sorted(path.name for path in tmp_path.iterdir()) == [f"counter_{worker}.db"]


def test_metric_files_are_named_by_host_and_pid(tmp_path) -> None:
    """Containers sharing one metrics volume reuse pids: the host name must keep their files apart."""
    script = (
        "import os, socket; from shared.observability import metrics; "
        "metrics.record_http_request(route='/x', method='GET', status=200, seconds=0.01); "
        "print(socket.gethostname().replace('_', '-') + '-' + str(os.getpid()))"
    )
    env = {**os.environ, metrics.MULTIPROC_ENV: str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    identifier = done.stdout.strip()
    assert {path.name for path in tmp_path.iterdir()} >= {f"counter_{identifier}.db", f"histogram_{identifier}.db"}
