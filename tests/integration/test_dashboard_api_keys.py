"""/dashboard in headless Chromium when every /api route needs a key (REQUIRE_API_KEY=true, Redis DB 5):
the page asks for one, keeps it for the tab, and shows everything once an admin key is entered.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from shared.ledger import api_keys
from tests.support.browser import Console
from tests.support.stack import Stack
from tests.support.stack import http
from tests.support.stack import migrated_sqlite_url
from tests.support.stack import running_stack

if TYPE_CHECKING:
    from playwright.sync_api import Page

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/5"
# The requests the page makes before it has a key are refused, and Chromium logs each refusal.
REFUSED = "the server responded with a status of 401"


@pytest.fixture(scope="module")
def database_url(tmp_path_factory) -> str:
    return migrated_sqlite_url(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory) -> Iterator[Stack]:
    # Every page opened without a key is refused once per panel: room for those refusals of every test here.
    settings = {"REQUIRE_API_KEY": "true", "WORKER_HEARTBEAT_S": "2", "AUTH_FAILURES_PER_MINUTE": "200"}
    with running_stack(
        database_url=database_url, redis_url=REDIS_URL, log_dir=tmp_path_factory.mktemp("logs"), settings=settings
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def admin_key(database_url: str) -> str:
    engine = create_engine(database_url)
    with Session(engine) as session, session.begin():
        _, key = api_keys.create(session, name="operator", is_admin=True)
    engine.dispose()
    return key


@pytest.fixture(scope="module")
def job_id(stack: Stack, admin_key: str) -> str:
    headers = {"Authorization": f"Bearer {admin_key}"}
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "What is 2 + 2?"}, headers=headers)
    assert (status, job["status"]) == (200, "succeeded"), job
    return job["job_id"]


def test_the_page_asks_for_a_key_and_works_with_an_admin_key(
    page: Page, stack: Stack, admin_key: str, job_id: str, console: Console
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.web}/dashboard")
    expect(page.locator("#key-prompt")).to_be_visible()
    expect(page.locator('[data-panel="jobs"] .unavailable')).to_have_text("Unavailable: an API key is needed")

    page.fill("#key-input", admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-prompt")).to_be_hidden()
    expect(page.locator(f'#job-rows tr[data-job-id="{job_id}"]')).to_be_visible()
    page.wait_for_function("() => Chart.getChart('chart-tier-mix') && Chart.getChart('chart-model-mix')")
    expect(page.locator('[data-panel="budget"] [data-field="scope"]')).to_have_text("global budget")
    assert page.locator(".is-unavailable").count() == 0
    model_mix = page.evaluate("() => Chart.getChart('chart-model-mix').data.datasets[0].data")
    assert model_mix == [1]

    # The key lives in the tab's sessionStorage: a reload needs no new prompt.
    assert page.evaluate("() => sessionStorage.getItem('model-router.api-key')") == admin_key
    page.reload()
    expect(page.locator(f'#job-rows tr[data-job-id="{job_id}"]')).to_be_visible()
    expect(page.locator("#key-prompt")).to_be_hidden()
    assert [error for error in console.errors if REFUSED not in error] == []


def test_a_refused_key_asks_again(page: Page, stack: Stack, console: Console) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.web}/dashboard")
    page.fill("#key-input", "mr_00000000_not-a-key")
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-error")).to_contain_text("the key was refused")
    expect(page.locator("#key-prompt")).to_be_visible()
    assert page.evaluate("() => sessionStorage.getItem('model-router.api-key')") is None
    assert [error for error in console.errors if REFUSED not in error] == []


def test_an_admin_creates_and_revokes_a_key_in_the_keys_panel(
    page: Page, stack: Stack, admin_key: str, console: Console
) -> None:
    from playwright.sync_api import expect

    page.goto(f"{stack.web}/dashboard")
    page.fill("#key-input", admin_key)
    page.click("#key-form button[type=submit]")
    expect(page.locator("#key-rows tr", has_text="operator")).to_be_visible()

    page.fill("#key-name", "analytics")
    page.fill("#key-tpm", "20000")
    page.fill("#key-daily", "2.5")
    page.click("#key-create button[type=submit]")
    expect(page.locator("#key-secret")).to_have_text(re.compile(r"^mr_[0-9a-f]{8}_"))
    created = page.locator("#key-rows tr", has_text="analytics")
    expect(created).to_contain_text("20,000")
    expect(created).to_contain_text("day $2.50")
    secret = page.locator("#key-secret").text_content() or ""
    headers = {"Authorization": f"Bearer {secret}"}
    assert http("GET", f"{stack.web}/api/budget", headers=headers)[0] == 200

    page.once("dialog", lambda dialog: dialog.accept())
    created.locator("button.revoke").click()
    expect(created).to_contain_text("revoked")
    assert http("GET", f"{stack.web}/api/budget", headers=headers)[0] == 401
    assert [error for error in console.errors if REFUSED not in error] == []
