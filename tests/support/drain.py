"""The drain scenario: a burst of async jobs against an upstream that admits a few requests per second per model.

`run_drain` starts the real stack on PostgreSQL (a private redis-server, a throw-away database, the simulator
enforcing SIM_RPM, gunicorn, a gevent worker per queue and beat), submits `jobs` async prompts at once, waits
until every job is terminal or the deadline has passed, and returns the figures: the share of jobs that
succeeded, the share of upstream calls answered 429, and the busiest model's drain rate against its allowed
rate (its answered calls after the first, over the time between the first and the last). Shared by
bench/drain.py and tests/integration/test_drain.py.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine
from sqlalchemy import select

from shared.store import migrate
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from tests.support.chaos import PrivateRedis
from tests.support.databases import temporary_postgres_database
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import http
from tests.support.stack import running_stack

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def run_drain(
    *, jobs: int, rps: float, deadline_s: float, work_dir: Path, slots: int = 16, escalation: bool = False
) -> dict[str, Any]:
    """Run the scenario and return its figures (see the module's docstring)."""
    redis_server = PrivateRedis(work_dir=work_dir)
    redis_server.start()
    try:
        with temporary_postgres_database("model_router_drain") as database_url:
            migrate.upgrade("head", database_url=database_url)
            settings = {
                **QUICK_RETRIES,
                "MONTHLY_BUDGET_LIMIT": "100000",
                "SIM_RPM": str(round(rps * 60)),
                "DEFAULT_DEADLINE_S": str(deadline_s),
                "RESPONSE_CACHE_ENABLED": "false",
                "ESCALATION_ENABLED": str(escalation).lower(),
                "REQUIRE_API_KEY": "false",
            }
            with running_stack(
                database_url=database_url,
                redis_url=redis_server.url,
                log_dir=work_dir,
                settings=settings,
                worker_queues=("prompts", "batch"),
                worker_concurrency=(slots, 2),
                worker_pool="gevent",
                beat=True,
            ) as stack:
                figures = _drain(stack.web, stack.sim, jobs=jobs, deadline_s=deadline_s)
                figures["stored"] = _stored(database_url, figures.pop("job_ids"))
    finally:
        redis_server.close()
    return _summarised(figures, rps=rps, jobs=jobs, deadline_s=deadline_s)


def _drain(web: str, sim: str, *, jobs: int, deadline_s: float) -> dict[str, Any]:
    def submit(number: int) -> str:
        body = {"prompt": f"Drain {number}: name a colour.", "wait": False, "tier": "cheap"}
        status, _, accepted = http("POST", f"{web}/api/prompt", body)
        assert status == 202, (status, accepted)
        return accepted["job_id"]

    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=32) as pool:
        job_ids = list(pool.map(submit, range(jobs)))
    submitted_s = time.monotonic() - started
    pending = set(job_ids)
    statuses: dict[str, str] = {}
    while pending and time.monotonic() - started < deadline_s + 30:
        for job_id in list(pending):
            body = http("GET", f"{web}/api/jobs/{job_id}")[2]
            if body["status"] in TERMINAL:
                statuses[job_id] = body["status"]
                pending.discard(job_id)
        time.sleep(0.5)
    stats = http("GET", f"{sim}/sim/stats")[2]["models"]
    return {
        "job_ids": job_ids,
        "submitted_s": round(submitted_s, 2),
        "drained_s": round(time.monotonic() - started, 2),
        "statuses": dict(Counter(statuses.values())),
        "not_terminal": len(pending),
        "upstream": {model: row for model, row in stats.items() if row["calls"]},
    }


def _stored(database_url: str, job_ids: list[str]) -> dict[str, Any]:
    """Read from the database when each model's answered calls started, and why the failed jobs failed."""
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.connect() as connection:
            calls = connection.execute(
                select(RequestAttempt.model, RequestAttempt.started_at).where(
                    RequestAttempt.job_id.in_(job_ids), RequestAttempt.outcome == "ok"
                )
            ).all()
            failures = connection.execute(
                select(RequestLog.error_code, RequestLog.error_message).where(
                    RequestLog.id.in_(job_ids), RequestLog.status == "failed"
                )
            ).all()
    finally:
        engine.dispose()
    starts: dict[str, list[float]] = {}
    for model, started_at in calls:
        starts.setdefault(model, []).append(started_at.timestamp())
    return {
        "answered_calls": {model: sorted(times) for model, times in starts.items()},
        "failed_by_error": dict(Counter(code for code, _ in failures)),
        "failure_examples": sorted({message for _, message in failures})[:5],
    }


def _summarised(figures: dict[str, Any], *, rps: float, jobs: int, deadline_s: float) -> dict[str, Any]:
    stored = figures.pop("stored")
    answered = stored.pop("answered_calls")
    upstream = figures["upstream"]
    calls = sum(row["calls"] for row in upstream.values())
    throttled = sum(row["throttled"] for row in upstream.values())
    busiest = max(answered, key=lambda model: len(answered[model]), default=None)
    drain_rate = 0.0
    if busiest is not None and len(answered[busiest]) > 1:
        times = answered[busiest]
        drain_rate = (len(times) - 1) / max(times[-1] - times[0], 1e-9)
    succeeded = figures["statuses"].get("succeeded", 0)
    return {
        "settings": {"jobs": jobs, "requests_per_second_per_model": rps, "deadline_s": deadline_s},
        **figures,
        **stored,
        "succeeded_share": round(succeeded / jobs, 4),
        "upstream_calls": calls,
        "answered_429": throttled,
        "share_429": round(throttled / calls, 4) if calls else 0.0,
        "busiest_model": busiest,
        "drain_rate_per_s": round(drain_rate, 3),
        "allowed_rate_per_s": rps,
        "drain_share_of_allowed": round(drain_rate / rps, 4),
    }
