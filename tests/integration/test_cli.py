"""The `model-router` command line against the real stack: gunicorn, a Celery worker, Redis and the simulator.

Runs once on SQLite and once on PostgreSQL, the production database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.engine import Engine

from shared.cli import main
from shared.store.models import RequestLog
from tests.support.stack import BIN
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import migrated_database
from tests.support.stack import running_stack

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("clean_simulator")]

REDIS_URL = "redis://127.0.0.1:6379/10"


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = QUICK_RETRIES
    with running_stack(
        database_url=database_url, redis_url=REDIS_URL, log_dir=tmp_path_factory.mktemp("logs"), settings=settings
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield engine
    engine.dispose()


def _cli(stack: Stack, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(main, ["--url", stack.web, *args], input=input, catch_exceptions=False)


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _write_items(path: Path, label: str, count: int) -> None:
    path.write_text("".join(json.dumps({"prompt": f"{label} {n}: name a prime number."}) + "\n" for n in range(count)))


def _jobs_with_prompt(engine: Engine, label: str) -> int:
    with engine.connect() as connection:
        query = select(func.count()).select_from(RequestLog).where(RequestLog.prompt.like(f"{label} %"))
        return connection.scalar(query)


def test_health_budget_and_stats(stack: Stack) -> None:
    health = _cli(stack, "health", "--json")
    assert health.exit_code == 0, health.stderr
    assert json.loads(health.stdout)["checks"]["workers"] >= 1
    budget = _cli(stack, "budget")
    assert budget.exit_code == 0 and "remaining" in budget.stdout
    assert json.loads(_cli(stack, "budget", "--json").stdout)["monthly_limit"] == 100.0
    stats = _cli(stack, "stats")
    assert stats.exit_code == 0 and "success rate" in stats.stdout
    assert "total_requests" in json.loads(_cli(stack, "stats", "--json").stdout)


def test_prompt_prints_the_routed_answer(stack: Stack) -> None:
    result = _cli(stack, "prompt", "What is the capital of France?")
    assert result.exit_code == 0, result.stderr
    assert "gpt-3.5-turbo (cheap tier)" in result.stdout and "$0." in result.stdout and " ms" in result.stdout


def test_prompt_json_is_the_job_as_the_api_answers_it(stack: Stack) -> None:
    result = _cli(stack, "prompt", "What is the capital of France?", "--json", "--metadata", '{"from": "cli"}')
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["status"], job["success"], job["metadata"]) == ("succeeded", True, {"from": "cli"})
    status, _, stored = http("GET", f"{stack.web}/api/jobs/{job['job_id']}")
    assert status == 200 and stored["response"] == job["response"]


def test_submit_then_job_wait(stack: Stack) -> None:
    submitted = _cli(stack, "submit", "Summarize the plot of Hamlet.")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = _cli(stack, "job", job_id, "--wait", "--json")
    assert waited.exit_code == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "succeeded"


def test_an_unknown_job_exits_7(stack: Stack) -> None:
    result = _cli(stack, "job", "0" * 32)
    assert result.exit_code == 7 and "404 not_found" in result.stderr


def test_batch_runs_a_file_to_completion(stack: Stack, engine: Engine, tmp_path: Path) -> None:
    source, out = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    _write_items(source, "Whole batch", 30)
    result = _cli(stack, "batch", str(source), "--out", str(out), "--poll-interval", "0.2")
    assert result.exit_code == 0, result.stderr
    lines = _lines(out)
    assert sorted(line["index"] for line in lines) == list(range(30))
    assert all(line["status"] == "succeeded" and line["response"] for line in lines)
    assert "30 items, 30 succeeded, 0 failed" in result.stderr
    assert _jobs_with_prompt(engine, "Whole batch") == 30


def test_an_interrupted_batch_resumes_without_resubmitting(stack: Stack, engine: Engine, tmp_path: Path) -> None:
    total = 40
    source, out = tmp_path / "prompts.jsonl", tmp_path / "results.jsonl"
    _write_items(source, "Resumed batch", total)
    # Slow answers, so that the run can be killed part way through.
    http("POST", f"{stack.sim}/sim/config", {"latency_ms": 400})
    command = [str(BIN / "model-router"), "batch", str(source), "--out", str(out), "--poll-interval", "0.1"]
    env = {**os.environ, "MODEL_ROUTER_URL": stack.web}
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and first.poll() is None:
        if out.exists() and out.read_text().count("\n") >= 5:
            break
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=10)
    written = out.read_text().count("\n")  # whole lines: a kill may cut the last one short
    assert 0 < written < total, f"the first run wrote {written} lines; the kill must land part way"

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60, check=False)
    assert second.returncode == 0, second.stderr
    assert f"resuming: {written} of {total}" in second.stderr
    indexes = [line["index"] for line in _lines(out)]
    assert sorted(indexes) == list(range(total))  # every item exactly once
    assert _jobs_with_prompt(engine, "Resumed batch") == total  # nothing was submitted twice
