"""The response cache: keys, what may be cached, Redis as a miss when down, kept answers and cached jobs."""

from __future__ import annotations

import dataclasses
from decimal import Decimal
from typing import Any

import fakeredis
import pytest
from sqlalchemy import select
from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.errors import PermanentLLMError
from shared.jobs import lifecycle
from shared.jobs import response_cache
from shared.jobs import runs
from shared.ledger import api_keys
from shared.routing.catalog import Catalog
from shared.store import redis_clients
from shared.store.models import JobStatus
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok

QUESTION = "What is the capital of France?"
HEDGE = "I'm not sure, maybe Paris."
SCOPE = "key:1"
ANSWER = response_cache.Answer(
    response="Paris.",
    model_used="gpt-3.5-turbo",
    tier="cheap",
    finish_reason="stop",
    difficulty_score=0.05,
    difficulty_level="easy",
    confidence=0.9,
    prompt_tokens=12,
    completion_tokens=24,
)


def _key(request: lifecycle.JobRequest, *, scope: str = SCOPE, estimator: str = "heuristic") -> str:
    return response_cache.key_for(request, scope=scope, difficulty_estimator=estimator, routing="routing")


BASE = lifecycle.JobRequest(prompt=QUESTION)


def test_the_same_request_has_the_same_key() -> None:
    assert _key(BASE) == _key(lifecycle.JobRequest(prompt=QUESTION))
    assert len(_key(BASE)) == 64


def test_a_changed_catalog_or_escalation_policy_changes_the_key(catalog: Catalog, settings: Settings) -> None:
    request = lifecycle.JobRequest(prompt="What is 2 + 2?")
    before = response_cache.routing_fingerprint(catalog, settings)
    assert response_cache.routing_fingerprint(catalog, settings) == before
    other_catalog = dataclasses.replace(catalog, models=tuple(reversed(catalog.models)))
    stricter = settings.model_copy(update={"escalation_confidence_threshold": 0.9})
    changed = {
        response_cache.routing_fingerprint(other_catalog, settings),
        response_cache.routing_fingerprint(catalog, stricter),
    }
    assert before not in changed
    keys = {
        response_cache.key_for(request, scope=SCOPE, difficulty_estimator="heuristic", routing=routing)
        for routing in (before, *changed)
    }
    assert len(keys) == 3


def test_what_does_not_change_the_answer_does_not_change_the_key() -> None:
    other = dataclasses.replace(
        BASE, metadata={"team": "a"}, deadline_s=5.0, callback_url="https://hooks.example.com/x"
    )
    assert _key(other) == _key(BASE)


def test_option_spellings_the_upstream_reads_alike_share_a_key() -> None:
    chat = dataclasses.replace(BASE, options={"temperature": 0, "stop": "\n", "top_p": 1})
    same = dataclasses.replace(BASE, options={"top_p": 1.0, "stop": ["\n"], "temperature": 0.0, "seed": None})
    assert _key(chat) == _key(same)


@pytest.mark.parametrize(
    "change",
    [
        {"prompt": QUESTION + " "},
        {"prompt": QUESTION.replace(" ", "  ")},
        {"prompt": QUESTION.lower()},
        {"messages": [{"role": "user", "content": QUESTION}]},
        {"max_tokens": 999},
        {"preference": "quality"},
        {"model": "gpt-4"},
        {"tier": "mid"},
        {"on_budget_pressure": "downgrade"},
        {"options": {"temperature": 0.0}},
        {"options": {"top_p": 0.5}},
        {"options": {"stop": ["END"]}},
        {"options": {"seed": 7}},
        {"options": {"presence_penalty": 0.5}},
        {"options": {"frequency_penalty": 0.5}},
        {"options": {"user": "someone"}},
    ],
    ids=lambda change: next(iter(change)) + "=" + repr(next(iter(change.values())))[:20],
)
def test_each_answer_changing_field_changes_the_key(change: dict[str, Any]) -> None:
    assert _key(dataclasses.replace(BASE, **change)) != _key(BASE)


def test_the_difficulty_estimator_and_the_scope_change_the_key() -> None:
    assert _key(BASE, estimator="learned") != _key(BASE)
    assert _key(BASE, scope="key:2") != _key(BASE)


def test_answers_are_scoped_per_api_key_unless_shared() -> None:
    assert response_cache.scope_of(1, shared=False) != response_cache.scope_of(2, shared=False)
    assert response_cache.scope_of(None, shared=False) not in (
        response_cache.scope_of(1, shared=False),
        response_cache.scope_of(1, shared=True),
    )
    assert (
        response_cache.scope_of(1, shared=True)
        == response_cache.scope_of(2, shared=True)
        == response_cache.scope_of(None, shared=True)
    )


@pytest.mark.parametrize(
    ("options", "stream", "overrides", "cacheable"),
    [
        (None, False, {}, True),
        ({"temperature": 0.0}, False, {}, True),
        ({"temperature": 0.7}, False, {}, False),
        ({"temperature": 0.7}, False, {"response_cache_sampled": True}, True),
        (None, True, {}, False),
        (None, False, {"response_cache_enabled": False}, False),
    ],
    ids=["no-temperature", "temperature-0", "sampled", "sampled-allowed", "stream", "disabled"],
)
def test_what_may_be_cached(tmp_path, options, stream: bool, overrides: dict[str, Any], cacheable: bool) -> None:
    settings = make_test_settings(f"sqlite:///{tmp_path}/router.db", **overrides)
    request = dataclasses.replace(BASE, options=options, stream=stream)
    assert response_cache.is_cacheable(request, settings=settings) is cacheable


def test_a_kept_answer_is_found_under_its_key_until_its_ttl() -> None:
    client = fakeredis.FakeRedis()
    assert response_cache.get(client, "k") is None
    response_cache.put(client, "k", ANSWER, ttl_s=60)
    assert response_cache.get(client, "k") == ANSWER
    assert 0 < client.ttl(response_cache.KEY_PREFIX + "k") <= 60


def test_an_unreachable_cache_is_a_miss_and_loses_only_the_entry() -> None:
    # Nothing listens on port 1: every command fails at once.
    down = redis_clients.fast_failing("redis://127.0.0.1:1/0")
    response_cache.put(down, "k", ANSWER, ttl_s=60)
    assert response_cache.get(down, "k") is None


def test_an_unreadable_entry_is_a_miss() -> None:
    client = fakeredis.FakeRedis()
    client.set(response_cache.KEY_PREFIX + "k", b'{"response": "from an older format"}')
    assert response_cache.get(client, "k") is None


@pytest.fixture
def store() -> fakeredis.FakeRedis:
    return fakeredis.FakeRedis()


@pytest.fixture
def fake() -> FakeLLMClient:
    return FakeLLMClient()


@pytest.fixture
def deps(sessions, catalog, settings, fake, store) -> runs.RunDeps:
    return runs.RunDeps(
        sessions=sessions, catalog=catalog, settings=settings, client=fake, sleep=lambda _: None, response_cache=store
    )


def _submit(
    sessions: sessionmaker[Session], catalog: Catalog, settings: Settings, *, cache_key: str | None, **fields: Any
) -> str:
    with sessions.begin() as session:
        request = lifecycle.JobRequest(**fields)
        return lifecycle.create(session, request=request, catalog=catalog, settings=settings, cache_key=cache_key).id


def test_a_succeeded_job_keeps_its_answer_under_its_key(deps, sessions, catalog, settings, store) -> None:
    job_id = _submit(sessions, catalog, settings, cache_key="k", prompt=QUESTION)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    kept = response_cache.get(store, "k")
    with sessions() as session:
        job = session.get(RequestLog, job_id)
        assert job is not None
        assert kept is not None
        assert (kept.response, kept.model_used, kept.tier) == (job.response, job.model_used, job.tier)
        assert (kept.prompt_tokens, kept.completion_tokens) == (job.prompt_tokens, job.completion_tokens)
    assert store.ttl(response_cache.KEY_PREFIX + "k") <= settings.response_cache_ttl_s


def test_a_job_without_a_key_keeps_nothing(deps, sessions, catalog, settings, store) -> None:
    job_id = _submit(sessions, catalog, settings, cache_key=None, prompt=QUESTION)
    runs.run(job_id, deps=deps)
    assert store.keys() == []


def test_a_failed_job_keeps_nothing(deps, sessions, catalog, settings, fake, store) -> None:
    for model in catalog.model_names:
        fake.script(model, PermanentLLMError("no", status_code=400))
    job_id = _submit(sessions, catalog, settings, cache_key="k", prompt=QUESTION)
    assert runs.run(job_id, deps=deps) is JobStatus.FAILED
    assert response_cache.get(store, "k") is None


def test_an_escalated_answer_is_kept(deps, sessions, catalog, settings, fake, store) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    job_id = _submit(sessions, catalog, settings, cache_key="k", prompt=QUESTION)
    runs.run(job_id, deps=deps)
    kept = response_cache.get(store, "k")
    assert kept is not None and kept.model_used == "gpt-4"


def test_an_answer_whose_escalation_failed_is_not_kept(deps, sessions, catalog, settings, fake, store) -> None:
    fake.script("gpt-3.5-turbo", ok(HEDGE))
    fake.script("gpt-4", PermanentLLMError("no", status_code=400))
    fake.script("gpt-4-turbo", PermanentLLMError("no", status_code=400))
    job_id = _submit(sessions, catalog, settings, cache_key="k", prompt=QUESTION)
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert response_cache.get(store, "k") is None


def test_an_answer_under_a_budget_pressure_cap_is_not_kept(deps, sessions, catalog, settings, store) -> None:
    job_id = _submit(sessions, catalog, settings, cache_key="k", prompt=QUESTION, on_budget_pressure="downgrade")
    with sessions.begin() as session:
        # As lifecycle.create records a job whose full bound did not fit the budget.
        session.execute(update(RequestLog).where(RequestLog.id == job_id).values(max_tier="mid"))
    assert runs.run(job_id, deps=deps) is JobStatus.SUCCEEDED
    assert response_cache.get(store, "k") is None


def _ledgers(session: Session) -> list[tuple[str, Decimal, Decimal, int]]:
    rows = session.scalars(select(MonthlyBudget).order_by(MonthlyBudget.scope))
    return [(row.scope, row.total_spent, row.reserved, row.request_count) for row in rows]


def test_a_hit_records_a_finished_cached_job_at_no_cost_and_leaves_the_ledger_alone(
    sessions, catalog, settings
) -> None:
    with sessions.begin() as session:
        key, _ = api_keys.create(session, name="tenant")
        requester = lifecycle.Requester(api_key_id=key.id)
        # Both ledgers (global and the key's) with money held.
        lifecycle.create(session, request=BASE, catalog=catalog, settings=settings, requester=requester)
    with sessions() as session:
        before = _ledgers(session)
    with sessions.begin() as session:
        finished = response_cache.create_job(
            session,
            request=dataclasses.replace(BASE, metadata={"run": 2}),
            answer=ANSWER,
            cache_key="k",
            settings=settings,
            requester=requester,
            job_id="cachedjob",
        )
    assert (finished.status, finished.job_id, finished.callbacks) == (JobStatus.SUCCEEDED, "cachedjob", [])
    with sessions() as session:
        assert _ledgers(session) == before
        job = session.get(RequestLog, "cachedjob")
        assert job is not None
        assert (job.status, job.cached, job.cache_key, job.settled) == (JobStatus.SUCCEEDED, True, "k", True)
        assert (job.cost, job.reserved_cost, job.attempts, job.enqueued_at) == (Decimal(0), Decimal(0), [], None)
        assert (job.response, job.model_used, job.tier, job.finish_reason) == (
            "Paris.",
            "gpt-3.5-turbo",
            "cheap",
            "stop",
        )
        assert (job.prompt_tokens, job.completion_tokens, job.tokens_used) == (12, 24, 36)
        assert (job.metadata_json, job.api_key_id) == ({"run": 2}, requester.api_key_id)
        assert job.finished_at is not None


@pytest.mark.parametrize(("finish_reason", "truncated"), [("length", True), ("stop", False)])
def test_a_cached_answer_cut_at_max_tokens_is_reported_as_truncated(
    sessions, settings, finish_reason: str, truncated: bool
) -> None:
    with sessions.begin() as session:
        response_cache.create_job(
            session,
            request=BASE,
            answer=dataclasses.replace(ANSWER, finish_reason=finish_reason),
            cache_key="k",
            settings=settings,
            requester=None,
            job_id="cachedcut",
        )
    with sessions() as session:
        assert session.get(RequestLog, "cachedcut").truncated is truncated
