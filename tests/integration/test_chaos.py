"""Chaos on the real stack: upstream faults, a hard-down model, a SIGKILLed worker and a Redis restart.

One run of `tests.support.chaos.run_chaos` (gunicorn web, 2 Celery workers and beat, a private Redis, a
PostgreSQL database of its own, the simulator); `bench/chaos.py` is the long form of the same scenario.
"""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from tests.support.chaos import run_chaos

pytestmark = pytest.mark.integration

REQUESTS = 300
# Client threads: enough to keep both workers' 16 threads busy with a queue behind them, few enough that
# two cores also run the web tier, the simulator and Postgres.
CONCURRENCY = 24


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict:
    work_dir = tmp_path_factory.mktemp("chaos")
    result = run_chaos(requests=REQUESTS, concurrency=CONCURRENCY, work_dir=work_dir / "stack")
    (work_dir / "chaos.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def test_chaos_run_keeps_every_job_and_every_cent(figures: dict, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        print(f"\nchaos figures: {json.dumps(figures)}")
        print(
            f"chaos: accepted={figures['accepted']} succeeded={figures['succeeded']} failed={figures['failed']} "
            f"rejected={figures['rejected']} success_rate={figures['success_rate']}% "
            f"retries={figures['retries']} fallbacks={figures['fallback_attempts']} "
            f"escalations={figures['escalations']} spent={figures['ledger']['total_spent']} "
            f"billed={figures['upstream']['billed_cost']}"
        )

    # Every request got an answer; the only refusals are 503s while Redis was down.
    rejected = figures["rejected"]
    assert rejected["client_errors"] == 0, figures["answers"]
    assert rejected["other_status"] == 0 and rejected["402"] == 0, figures["answers"]
    assert rejected["503_outside_outage"] == 0, figures["answers"]
    answers = figures["answers"]
    assert answers.get("200", 0) + answers.get("202", 0) + rejected["503"] == REQUESTS

    # Every accepted job is in the database, terminal and settled; nothing a client was told is missing.
    assert figures["answered_ids_without_row"] == 0
    assert figures["rows_without_answer"] == 0
    assert figures["accepted"] == answers.get("200", 0) + answers.get("202", 0)
    assert figures["not_terminal"] == 0 and figures["unsettled"] == 0
    assert figures["accepted"] == figures["succeeded"] + figures["failed"]
    assert figures["answers_disagreeing_with_row"] == 0
    assert figures["stats"]["total_requests"] == figures["accepted"]
    assert figures["stats"]["successful_requests"] == figures["succeeded"]


def test_chaos_run_finishes_the_jobs_the_redis_restart_lost(figures: dict) -> None:
    # Redis keeps no data across the restart: job messages queued at that moment are gone. Their jobs stay
    # queued in the database until the reaper re-enqueues them after a lease, and then they finish.
    restart = figures["redis_restart"]
    assert restart["queued_jobs_lost"] >= 1, "Redis was restarted with no job message queued"
    assert restart["lost_jobs_requeued"] == restart["queued_jobs_lost"]
    assert restart["lost_jobs_terminal"] == restart["queued_jobs_lost"]


def test_chaos_run_charges_each_job_once_and_exactly_what_was_recorded(figures: dict) -> None:
    ledger = figures["ledger"]
    assert Decimal(ledger["reserved"]) == 0
    assert ledger["request_count"] == figures["accepted"]
    # One settlement per job: its attempts numbered 1..n, its cost their sum, the ledger the sum of jobs.
    assert figures["jobs_with_gapped_attempt_seq"] == 0
    assert figures["jobs_cost_not_sum_of_attempts"] == 0
    assert Decimal(ledger["total_spent"]) == Decimal(figures["jobs_cost"]) == Decimal(figures["attempts_cost"])


def test_chaos_run_records_at_least_what_upstream_billed_the_killed_workers_calls_at_their_bound(
    figures: dict,
) -> None:
    # The simulator bills a call when it decides the answer. A worker SIGKILLed while a job's call was out
    # takes the answer with it; the call was noted on the job, at its bound, before it started, so the job's
    # next run charges it at that bound (an `unconfirmed` worker_lost attempt). The ledger therefore never
    # holds less than the upstream billed, and holds more by at most those unconfirmed charges.
    kill, upstream = figures["kill"], figures["upstream"]
    assert kill["running_at_kill"] >= 1, "the kill hit an idle worker"
    assert kill["rerun_jobs_not_running_at_kill"] == 0
    assert kill["worker_lost_attempts"] >= kill["rerun_jobs"]
    unrecorded = Decimal(upstream["billed_but_unrecorded_cost"])
    unconfirmed = Decimal(upstream["unconfirmed_cost"])
    assert -unconfirmed <= unrecorded <= 0
    assert unconfirmed <= Decimal(kill["rerun_reserved_bound"])
    assert 0 <= upstream["billed_but_unrecorded_calls"] <= 2 * kill["rerun_jobs"]
    if kill["rerun_jobs"] == 0:
        assert unconfirmed == 0 and Decimal(upstream["billed_cost"]) == Decimal(figures["ledger"]["total_spent"])
    for model, billed in upstream["by_model"].items():
        recorded = upstream["recorded_by_model"][model]
        assert recorded["ok_calls"] <= billed["calls"] - billed["faults"], model
        assert recorded["prompt_tokens"] <= billed["prompt_tokens"], model
        assert recorded["completion_tokens"] <= billed["completion_tokens"], model


def test_chaos_run_opens_the_down_models_circuit_and_falls_back(figures: dict) -> None:
    down = figures["down_model"]
    name = down["name"]
    circuits = figures["circuits"]
    assert (
        circuits["seen_in_health"].get(name, {}).get("open", 0) > 0
        or circuits["stats_after"].get(name) == "open"
        or down["circuit_open_skips"] > 0
    ), circuits
    assert down["upstream_calls"] == down["upstream_faults"] and down["upstream_billed_tokens"] == 0
    assert down["routed_jobs"] > 0
    # Its traffic was answered by its fallbacks, never by itself.
    assert sum(down["routed_succeeded_on"].values()) > 0
    assert name not in down["routed_succeeded_on"]
    assert name not in figures["answered_by_model"]


def test_chaos_run_leaves_web_and_workers_connected(figures: dict) -> None:
    assert all(figures["alive_after"].values()), figures["alive_after"]
    assert figures["health_after"]["status"] == 200
    assert figures["health_after"]["workers"] >= 2
