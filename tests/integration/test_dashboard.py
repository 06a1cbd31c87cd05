"""/dashboard in headless Chromium over a seeded run on the real stack (gunicorn, Celery, Redis DB 5,
the simulator over HTTP): charts carry the run's numbers, the job table filters, the detail view shows
the job, and the page refreshes itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC
from datetime import datetime
from typing import TYPE_CHECKING
from typing import Any

import pytest

from tests.support.browser import Console
from tests.support.browser import save_screenshot
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import migrated_sqlite_url
from tests.support.stack import reset_simulator
from tests.support.stack import running_stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/5"
# Small enough that the run's spend shows beside the budget line, large enough to reserve every seed.
BUDGET_LIMIT = 0.2
# label: (simulator settings while it runs, the /api/prompt body)
SEEDS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "cheap": ({}, {"prompt": "What is 2 + 2?"}),
    "mid": ({}, {"prompt": "What is the capital of France?", "tier": "mid"}),
    "high": ({}, {"prompt": "Prove that there are infinitely many primes.", "tier": "high"}),
    "escalated": ({"faults": "hedge=1.0"}, {"prompt": "Name a primary colour."}),
    "failed": ({"down": "gpt-4-turbo", "retry_after_s": 0.05}, {"prompt": "Summarise Hamlet.", "model": "gpt-4-turbo"}),
}
CHART_DATA = """id => {
  const chart = Chart.getChart(id);
  return chart && {labels: chart.data.labels, datasets: chart.data.datasets.map(d => ({label: d.label, data: d.data}))};
}"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    database_url = migrated_sqlite_url(tmp_path_factory.mktemp("db"))
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": str(BUDGET_LIMIT),
    }
    with running_stack(
        database_url=database_url, redis_url=REDIS_URL, log_dir=tmp_path_factory.mktemp("logs"), settings=settings
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def jobs(stack: Stack) -> dict[str, dict[str, Any]]:
    """Run the seed prompts through the stack; return each finished job as GET /api/jobs/<id> answers it."""
    finished = {}
    for label, (simulator, body) in SEEDS.items():
        reset_simulator(stack)
        if simulator:
            http("POST", f"{stack.sim}/sim/config", simulator)
        status, _, job = http("POST", f"{stack.web}/api/prompt", body)
        assert status == 200, job
        finished[label] = http("GET", f"{stack.web}/api/jobs/{job['job_id']}")[2]
    reset_simulator(stack)
    assert [job["status"] for job in finished.values()] == ["succeeded"] * 4 + ["failed"]
    assert finished["escalated"]["escalated"] is True
    return finished


def _open(page: Page, stack: Stack, jobs: dict[str, dict[str, Any]], query: str = "") -> None:
    """Open the dashboard and wait until the table and the charts hold the seeded run."""
    from playwright.sync_api import expect

    page.goto(f"{stack.web}/dashboard{query}")
    expect(page.locator("#job-rows tr")).to_have_count(len(jobs))
    page.wait_for_function("() => ['chart-spend-month', 'chart-tier-mix'].every(id => Chart.getChart(id))")


def _row(page: Page, job: dict[str, Any]):
    return page.locator(f'#job-rows tr[data-job-id="{job["job_id"]}"]')


def test_the_charts_and_panels_show_the_seeded_run_without_console_errors(
    page: Page, stack: Stack, jobs: dict[str, dict[str, Any]], console: Console
) -> None:
    _open(page, stack, jobs)
    report = http("GET", f"{stack.web}/api/reports/costs?period=month")[2]
    spent = sum(job["cost"] for job in jobs.values())

    model_mix = page.evaluate(CHART_DATA, "chart-model-mix")
    served = [job["model_used"] for job in jobs.values() if job["model_used"]]
    assert dict(zip(model_mix["labels"], model_mix["datasets"][0]["data"], strict=True)) == {
        model: served.count(model) for model in set(served)
    }
    tier_mix = page.evaluate(CHART_DATA, "chart-tier-mix")
    assert {"cheap", "mid", "high"} <= set(tier_mix["labels"])
    assert tier_mix["datasets"][0]["data"] == [row["requests"] for row in report["by_tier"]]

    # Every day of the month is on the axis; the seeded run is today's.
    spend_month = page.evaluate(CHART_DATA, "chart-spend-month")
    today = spend_month["labels"].index(datetime.now(UTC).date().isoformat())
    assert spend_month["labels"] == [row["date"] for row in report["by_day"]]
    cumulative, budget_line = (dataset["data"] for dataset in spend_month["datasets"])
    assert cumulative[today] == pytest.approx(spent)
    assert set(cumulative[today + 1 :]) <= {None}
    assert set(budget_line) == {BUDGET_LIMIT}
    spend_day = page.evaluate(CHART_DATA, "chart-spend-day")
    spent_per_day, baseline_per_day = (dataset["data"] for dataset in spend_day["datasets"])
    assert spent_per_day[today] == pytest.approx(spent)
    assert baseline_per_day[today] == pytest.approx(report["baseline_cost"])

    p50, p95, p99 = page.evaluate(CHART_DATA, "chart-latency")["datasets"][0]["data"]
    assert 0 < p50 <= p95 <= p99

    outcomes = page.locator('[data-panel="outcomes"]')
    assert outcomes.locator('[data-field="failure-rate"]').inner_text() == "20.0 %"
    assert outcomes.locator('[data-field="escalation-rate"]').inner_text() == "20.0 %"
    assert outcomes.locator('[data-field="requests"]').inner_text() == "5"
    assert page.locator('[data-panel="circuits"] li').count() == 3
    assert page.locator(".is-unavailable").count() == 0

    save_screenshot(page, "dashboard.png")
    assert console.errors == []


def test_the_search_box_and_status_filter_narrow_the_job_table(
    page: Page, stack: Stack, jobs: dict[str, dict[str, Any]], console: Console
) -> None:
    from playwright.sync_api import expect

    _open(page, stack, jobs)
    rows = page.locator("#job-rows tr")

    page.fill("#job-search", "capital of")
    expect(rows).to_have_count(1)
    expect(_row(page, jobs["mid"])).to_be_visible()

    page.fill("#job-search", "")
    expect(rows).to_have_count(len(jobs))
    page.select_option("#job-status", "failed")
    expect(rows).to_have_count(1)
    expect(_row(page, jobs["failed"])).to_contain_text("upstream_unavailable")

    page.select_option("#job-status", "succeeded")
    expect(rows).to_have_count(len(jobs) - 1)
    expect(_row(page, jobs["failed"])).to_have_count(0)
    assert console.errors == []


def test_the_detail_view_shows_prompt_response_and_attempts(
    page: Page, stack: Stack, jobs: dict[str, dict[str, Any]], console: Console
) -> None:
    from playwright.sync_api import expect

    _open(page, stack, jobs)
    escalated = jobs["escalated"]
    _row(page, escalated).click()
    dialog = page.locator("#job-detail")
    expect(dialog).to_be_visible()
    expect(page.locator("#job-prompt")).to_have_text(escalated["prompt"])
    expect(page.locator("#job-response")).to_have_text(escalated["response"])
    attempts = page.locator("#job-attempts tr")
    expect(attempts).to_have_count(len(escalated["attempts"]))
    cells = attempts.evaluate_all("rows => rows.map(row => [...row.cells].slice(1, 5).map(cell => cell.textContent))")
    assert cells == [[a["model"], a["tier"], a["purpose"], a["outcome"]] for a in escalated["attempts"]]
    save_screenshot(page, "dashboard-detail.png", full_page=False)

    page.click("#job-detail-close")
    expect(dialog).to_be_hidden()
    failed = jobs["failed"]
    _row(page, failed).click()
    expect(page.locator("#job-prompt")).to_have_text(failed["prompt"])
    expect(page.locator("#job-error")).to_contain_text("upstream_unavailable")
    expect(attempts).to_have_count(len(failed["attempts"]))
    assert console.errors == []


def test_the_page_refreshes_itself(page: Page, stack: Stack, jobs: dict[str, dict[str, Any]], console: Console) -> None:
    from playwright.sync_api import expect

    _open(page, stack, jobs, query="?refresh=2")
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "What colour is the sky?"})
    assert status == 200, job

    # No reload: the page's own timer fetches the new job and the new totals.
    expect(_row(page, job)).to_be_visible(timeout=15_000)
    expect(page.locator('[data-panel="outcomes"] [data-field="requests"]')).to_have_text(str(len(jobs) + 1))
    assert console.errors == []
