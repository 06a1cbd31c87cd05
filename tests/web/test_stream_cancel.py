"""A client that leaves a stream cancels its job: the upstream call stops and what arrived is billed at its bound.

On SQLite and PostgreSQL, since the job's cost and the ledger are recorded by the run that stops.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from decimal import Decimal

import httpx
import openai
import pytest
import redis
from flask import Flask
from sqlalchemy import select

from shared.ledger import call_bound
from shared.store import completion_channel
from shared.store import stream_relay
from shared.store.models import MonthlyBudget
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import run_jobs_soon
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import Slow
from tests.support.fakes import ok
from web.api import chat

QUESTION = "Tell me about Paris."
LONG = " ".join(f"word{n}" for n in range(60))


@pytest.fixture
def relayed(
    app: Flask, catalog, llm: FakeLLMClient, monkeypatch: pytest.MonkeyPatch, publisher: redis.Redis
) -> Iterator[list[str]]:
    """Run each job as a worker would; yield the text of every delta the worker relayed."""
    texts: list[str] = []

    def relay(job_id: str, entry: dict[str, str]) -> bool:
        if entry["type"] == stream_relay.DELTA:
            texts.append(entry["text"])
        return stream_relay.append(publisher, job_id, entry)

    deps = worker_deps(
        app,
        catalog,
        llm,
        on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id),
        relay=relay,
    )
    threads, _ = run_jobs_soon(monkeypatch, deps, delay_s=0.02)
    yield texts
    for thread in threads:
        thread.join()


@pytest.fixture
def sdk(app: Flask) -> Iterator[openai.OpenAI]:
    http_client = httpx.Client(transport=httpx.WSGITransport(app=app), base_url="http://router.test")
    with openai.OpenAI(
        api_key="unused", base_url="http://router.test/v1", http_client=http_client, max_retries=0
    ) as client:
        yield client


def _ended(app: Flask, job_id: str, timeout_s: float = 10.0) -> RequestLog:
    sessions = make_sessionmaker(app.extensions["db_engine"])
    stop = time.monotonic() + timeout_s
    while time.monotonic() < stop:
        with sessions() as session:
            job = session.get(RequestLog, job_id)
            if job is not None and job.status.is_terminal:
                return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not end")


def test_a_client_leaving_mid_stream_stops_the_upstream_and_the_job_is_billed_for_what_arrived(
    sdk: openai.OpenAI, relayed: list[str], llm: FakeLLMClient, app: Flask, catalog
) -> None:
    llm.script("gpt-4", Slow(ok(LONG, completion_tokens=60), every_s=0.05))
    stream = sdk.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": QUESTION}], stream=True, max_tokens=500
    )
    received = []
    for chunk in stream:
        received.append(chunk.choices[0].delta.content)
        if len(received) == 3:
            break
    stream.close()
    job = _ended(app, stream.response.headers["x-router-job-id"])
    # The upstream was stopped at the next token: most of the answer was never produced.
    assert 3 <= len(relayed) < 10
    assert (job.status.value, job.error_code) == ("failed", "cancelled")
    assert job.response == "".join(relayed)
    # Usage comes only at a stream's end, and tokens were on their way when it closed: the call is charged at
    # its bound (the prompt's bound and the max_tokens sent), unconfirmed.
    prompt_bound = call_bound.prompt_tokens_bound(prompt=QUESTION)
    completion_bound = 500
    assert (job.prompt_tokens, job.completion_tokens) == (prompt_bound, completion_bound)
    assert job.cost == catalog.get_model("gpt-4").cost(prompt_bound, completion_bound) > 0
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        (attempt,) = session.scalars(select(RequestAttempt).where(RequestAttempt.job_id == job.id))
        (ledger,) = session.scalars(select(MonthlyBudget))
    assert (attempt.outcome, attempt.error_class, attempt.cost) == ("unconfirmed", "cancelled", job.cost)
    assert job.unconfirmed_cost == job.cost
    assert ledger.total_spent == job.cost and ledger.reserved == Decimal(0)


def test_the_bill_of_a_cancelled_stream_never_passes_its_max_tokens(
    sdk: openai.OpenAI, relayed: list[str], llm: FakeLLMClient, app: Flask
) -> None:
    # Each delta is many bytes; the upstream cannot have produced more than the max_tokens it was sent.
    wide = " ".join("x" * 40 for _ in range(20))
    llm.script("gpt-4", Slow(ok(wide, completion_tokens=20), every_s=0.05))
    stream = sdk.chat.completions.create(
        model="gpt-4", messages=[{"role": "user", "content": QUESTION}], stream=True, max_tokens=8
    )
    for index, _ in enumerate(stream):
        if index == 2:
            break
    stream.close()
    job = _ended(app, stream.response.headers["x-router-job-id"])
    assert job.error_code == "cancelled" and len(job.response.encode()) > 8
    assert job.completion_tokens == 8


def test_a_stream_read_to_its_end_is_not_cancelled(
    sdk: openai.OpenAI, relayed: list[str], llm: FakeLLMClient, app: Flask, publisher: redis.Redis
) -> None:
    llm.script("gpt-4", Slow(ok(LONG, completion_tokens=60)))
    stream = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": QUESTION}], stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream)
    job_id = stream.response.headers["x-router-job-id"]
    job = _ended(app, job_id)
    assert (job.status.value, job.response, text) == ("succeeded", LONG, LONG)
    assert not publisher.exists(stream_relay.cancel_key(job_id))


def test_a_stream_the_router_gives_up_on_at_its_deadline_cancels_its_job(
    sdk: openai.OpenAI, relayed: list[str], llm: FakeLLMClient, app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The request waits for the job's deadline (1 s here) and no longer; an upstream that goes on past it
    # would otherwise be paid for an answer nobody reads.
    monkeypatch.setattr(chat, "WAIT_SLACK_S", 0.0)
    app.extensions["settings"] = app.extensions["settings"].model_copy(update={"default_deadline_s": 1.0})
    llm.script("gpt-4", Slow(ok(LONG, completion_tokens=60), pause_s=2.0, every_s=0.05))
    stream = sdk.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": QUESTION}], stream=True)
    with pytest.raises(openai.APIError, match="did not finish streaming in time"):
        list(stream)
    job = _ended(app, stream.response.headers["x-router-job-id"])
    assert (job.status.value, job.error_code) == ("failed", "cancelled")
    assert len(relayed) == 2 and job.response == "".join(relayed)  # stopped at the first token after the pause
    with make_sessionmaker(app.extensions["db_engine"])() as session:
        (ledger,) = session.scalars(select(MonthlyBudget))
    assert ledger.total_spent == job.cost > 0 and ledger.reserved == Decimal(0)
