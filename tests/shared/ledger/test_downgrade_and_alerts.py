"""Budget pressure: downgrading instead of failing, and threshold alerts that fire once."""

from __future__ import annotations

from decimal import Decimal

import pytest
from sqlalchemy import select

from shared.errors import BudgetExceeded
from shared.jobs import lifecycle
from shared.jobs import runs
from shared.jobs import webhooks
from shared.ledger import alerts
from shared.ledger import api_keys
from shared.ledger import budget
from shared.store.models import BudgetAlert
from shared.store.models import RequestLog
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from tests.support.prompts import HARD


def _limit_between(catalog, *, prompt: str, max_tokens: int, below: str) -> Decimal:
    """A budget that covers the full bound capped at `below`'s tier but not the uncapped bound."""
    capped = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt=prompt, max_tokens=max_tokens, escalation=True, max_tier=below
    )
    full = budget.reservation_bound(
        catalog=catalog, tiers=catalog.tiers, prompt=prompt, max_tokens=max_tokens, escalation=True
    )
    assert capped < full
    return capped


def test_downgrade_caps_a_hard_prompt_at_the_tier_the_budget_covers(sessions, catalog, database_url) -> None:
    limit = _limit_between(catalog, prompt=HARD, max_tokens=1000, below="cheap")
    settings = make_test_settings(database_url, monthly_budget_limit=limit)
    fake = FakeLLMClient()
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    with sessions.begin() as session:
        job_id = lifecycle.create(
            session,
            request=lifecycle.JobRequest(prompt=HARD, on_budget_pressure="downgrade"),
            catalog=catalog,
            settings=settings,
        ).id
    runs.run(job_id, deps=deps)
    with sessions() as session:
        job = session.get(RequestLog, job_id)
        assert (job.max_tier, job.tier, job.downgraded_from) == ("cheap", "cheap", "high")
        assert job.cost <= job.reserved_cost <= limit
    assert fake.calls == ["gpt-3.5-turbo"]


def test_without_downgrade_the_same_request_is_refused(sessions, catalog, database_url) -> None:
    limit = _limit_between(catalog, prompt=HARD, max_tokens=1000, below="cheap")
    settings = make_test_settings(database_url, monthly_budget_limit=limit)
    with pytest.raises(BudgetExceeded), sessions.begin() as session:
        lifecycle.create(session, request=lifecycle.JobRequest(prompt=HARD), catalog=catalog, settings=settings)


def test_downgraded_jobs_never_escalate_past_the_cap(sessions, catalog, database_url) -> None:
    prompt = "What is the capital of France?"
    limit = _limit_between(catalog, prompt=prompt, max_tokens=1000, below="cheap")
    settings = make_test_settings(database_url, monthly_budget_limit=limit)
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok("I'm not sure."))
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None)
    with sessions.begin() as session:
        job_id = lifecycle.create(
            session,
            request=lifecycle.JobRequest(prompt=prompt, on_budget_pressure="downgrade"),
            catalog=catalog,
            settings=settings,
        ).id
    runs.run(job_id, deps=deps)
    assert fake.calls == ["gpt-3.5-turbo"]


def test_a_keys_own_budget_refusal_leaves_the_global_ledger_untouched(sessions, catalog, settings) -> None:
    with sessions.begin() as session:
        key, _ = api_keys.create(session, name="alice", monthly_budget=Decimal("0.001"))
        requester = lifecycle.Requester(key.id, key.monthly_budget)
    with pytest.raises(BudgetExceeded) as refused, sessions.begin() as session:
        lifecycle.create(session, request=lifecycle.JobRequest(prompt="hi"), catalog=catalog, settings=settings,
                    requester=requester)  # fmt: skip
    assert refused.value.details["scope"] == budget.key_scope(requester.api_key_id)
    with sessions() as session:
        view = budget.get_view(session, scope=budget.GLOBAL_SCOPE, period=budget.Period(2026, 11), limit=Decimal(1))
    assert (view.reserved, view.request_count) == (Decimal(0), 0)


def test_thresholds_fire_once_per_scope_and_month(sessions, catalog, database_url) -> None:
    settings = make_test_settings(database_url, monthly_budget_limit=Decimal("1"))
    fired: list[alerts.Alert] = []
    fake = FakeLLMClient()
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=fake,
                        sleep=lambda _: None, on_alert=fired.append)  # fmt: skip
    # gpt-4 at 6000 completion tokens would be $0.36; 1000 tokens cost $0.06 + prompt: about 6% per job.
    for _ in range(10):
        fake.script("gpt-4", ok(completion_tokens=1000, prompt_tokens=10))
        with sessions.begin() as session:
            job_id = lifecycle.create(session, request=lifecycle.JobRequest(prompt="hi", tier="mid"), catalog=catalog,
                                 settings=settings).id  # fmt: skip
        runs.run(job_id, deps=deps)
    assert [(alert.scope, alert.threshold) for alert in fired] == [("global", 50)]
    with sessions() as session:
        rows = session.scalars(select(BudgetAlert)).all()
    assert [(row.scope, row.threshold) for row in rows] == [("global", 50)]
    assert rows[0].spent >= Decimal("0.5")


def test_alert_signature_is_hmac_sha256_of_the_exact_body() -> None:
    import hashlib
    import hmac

    alert = alerts.Alert("global", 2026, 11, 80, Decimal("80.5"), Decimal("100"))
    body = webhooks.encode(alert.as_payload())
    expected = hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert webhooks.sign(body, "s3cret") == f"sha256={expected}"
    assert b'"spent":"80.5"' in body and b'"threshold":80' in body
