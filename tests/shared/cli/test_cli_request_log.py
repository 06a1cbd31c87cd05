"""`model-router jobs` and `model-router report costs` against the Flask app, through an in-process transport."""

from __future__ import annotations

import json
from datetime import UTC
from datetime import datetime
from datetime import timedelta
from decimal import Decimal

import httpx
import pytest
from click.testing import CliRunner
from click.testing import Result
from flask import Flask

from shared.cli import main
from shared.store.models import JobStatus
from shared.store.session import make_sessionmaker
from tests.support import request_logs


def _cli(app: Flask, *args: str) -> Result:
    transport = httpx.WSGITransport(app=app)
    return CliRunner().invoke(main, ["--url", "http://router.test", *args], obj={"transport": transport})


@pytest.fixture
def logged(app: Flask) -> list[str]:
    """Five jobs a second apart, newest last: three cheap successes, a failure on gpt-4, one still queued."""
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    rows = [
        {"prompt": "Capital of France?"},
        {"prompt": "Capital of Spain?"},
        {"prompt": "Prove Fermat", "model_used": "gpt-4", "tier": "mid", "status": JobStatus.FAILED,
         "error_code": "upstream_error", "cost": Decimal("0.25")},
        {"prompt": "Capital of Italy?"},
        {"prompt": "Name a colour", "status": JobStatus.QUEUED},
    ]  # fmt: skip
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return [
            request_logs.add_job(session, created_at=start + timedelta(seconds=n), **row).id
            for n, row in enumerate(rows)
        ]


def test_jobs_prints_a_table_of_the_matching_jobs(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "jobs", "-q", "capital", "--status", "succeeded")
    assert result.exit_code == 0, result.output
    shown = [job_id for job_id in logged if job_id in result.stdout]
    assert shown == [logged[0], logged[1], logged[3]]
    assert "3 jobs" in result.stdout


def test_jobs_all_follows_every_page(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "jobs", "--limit", "2", "--all", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert [job["job_id"] for job in body["jobs"]] == logged[::-1]
    assert body["next_cursor"] is None


def test_jobs_without_all_shows_one_page_and_says_there_is_more(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "jobs", "--limit", "2", "--model", "gpt-3.5-turbo")
    assert result.exit_code == 0, result.output
    assert [job_id for job_id in logged if job_id in result.stdout] == [logged[1], logged[3]]
    assert "--all" in result.stderr


def test_jobs_with_a_bad_time_exits_with_the_usage_code(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "jobs", "--since", "last tuesday")
    assert result.exit_code == 2
    assert "since" in result.stderr


def test_report_costs_json_is_the_api_answer(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "report", "costs", "--period", "week", "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["period"] == "week" and len(body["by_day"]) == 7
    assert body["requests"] == 5
    assert body["total_cost"] == pytest.approx(0.25 + 3 * 0.000035)


def test_report_costs_prints_totals_and_breakdowns(app: Flask, logged: list[str]) -> None:
    result = _cli(app, "report", "costs")
    assert result.exit_code == 0, result.output
    for title in ("Costs this month", "By day", "By model", "By tier", "By API key", "savings", "gpt-4", "(no key)"):
        assert title in result.stdout
