"""A finished job corrects its key's tokens-per-minute window from its bound to the tokens it really used."""

from __future__ import annotations

import pytest
import redis
from flask import Flask

from shared.ledger import api_keys
from shared.ledger import token_rate
from shared.routing.catalog import Catalog
from shared.store.session import make_sessionmaker
from tests.conftest import UNIT_REDIS_URL
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient
from tests.support.fakes import ok
from worker import runtime
from worker import tasks


def test_a_finished_job_leaves_its_real_tokens_in_the_window(
    keyed_app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch
) -> None:
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        row, key = api_keys.create(session, name="metered", tpm=2000)
        key_id = row.id
    # One fixed minute: the job is accepted and settled in it whatever the clock says.
    windows = token_rate.TokenWindows(redis.Redis.from_url(UNIT_REDIS_URL), clock=lambda: 60.0 * 1_000_000)
    keyed_app.extensions["token_windows"] = windows
    fake = FakeLLMClient()
    fake.script("gpt-3.5-turbo", ok(prompt_tokens=12, completion_tokens=30))
    monkeypatch.setattr(runtime, "_deps", worker_deps(keyed_app, catalog, fake))
    monkeypatch.setattr(runtime, "_token_windows", windows)

    accepted = keyed_app.test_client().post(
        "/api/prompt",
        json={"prompt": "What is 2 + 2?", "wait": False, "max_tokens": 1500, "model": "gpt-3.5-turbo"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert accepted.status_code == 202
    assert windows.used(key_id) > 1500  # the bound: max_tokens and the prompt's

    assert tasks.run_job.apply(args=[accepted.get_json()["job_id"]]).result == "succeeded"
    assert windows.used(key_id) == 42
