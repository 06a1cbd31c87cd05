"""GET /api/jobs: filters, text search, keyset pagination and key scoping, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient

from shared.ledger import api_keys
from shared.store.models import JobStatus
from shared.store.session import make_sessionmaker
from tests.support import request_logs

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _add(app: Flask, *rows: dict) -> list[str]:
    with make_sessionmaker(app.extensions["db_engine"]).begin() as session:
        return [request_logs.add_job(session, **row).id for row in rows]


def _ids(client: FlaskClient, query: str = "", **headers: str) -> list[str]:
    response = client.get(f"/api/jobs?{query}", headers=headers)
    assert response.status_code == 200, response.get_json()
    return [job["job_id"] for job in response.get_json()["jobs"]]


def test_jobs_come_newest_first_with_the_agreed_fields(app: Flask, client: FlaskClient) -> None:
    older, newer, queued = _add(
        app,
        {"created_at": T0, "prompt": "x" * 300},
        {"created_at": T0 + timedelta(minutes=1), "status": JobStatus.FAILED, "error_code": "upstream_error"},
        {"created_at": T0 + timedelta(minutes=2), "status": JobStatus.QUEUED},
    )
    body = client.get("/api/jobs").get_json()
    assert [job["job_id"] for job in body["jobs"]] == [queued, newer, older]
    assert body["next_cursor"] is None
    pending, failed, succeeded = body["jobs"]
    assert succeeded["prompt_preview"] == "x" * 120
    assert (succeeded["success"], succeeded["model_used"], succeeded["cost"]) == (True, "gpt-3.5-turbo", 0.000035)
    assert (failed["success"], failed["error_code"]) == (False, "upstream_error")
    assert {key for key, value in pending.items() if value is None} == {
        "finished_at", "model_used", "tier", "difficulty_level", "cost", "latency_ms", "escalated", "success",
        "error_code",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("status=failed", {"failed"}),
        ("model=gpt-4", {"strong"}),
        ("tier=mid", {"mid"}),
        ("since=2026-03-10T12:02:00Z", {"mid", "strong"}),
        ("until=2026-03-10T12:02:00%2B00:00", {"plain", "failed"}),
        ("since=2026-03-10T13:01:30%2B01:00&until=2026-03-10T12:03:00", {"mid"}),
        ("status=succeeded&tier=cheap", {"plain"}),
        ("status=&model=&tier=&q=", {"plain", "failed", "mid", "strong"}),
    ],
)
def test_each_filter_narrows_the_jobs(app: Flask, client: FlaskClient, query: str, expected: set[str]) -> None:
    rows = {
        "plain": {"created_at": T0},
        "failed": {"created_at": T0 + timedelta(minutes=1), "status": JobStatus.FAILED, "error_code": "x"},
        "mid": {"created_at": T0 + timedelta(minutes=2), "model_used": "gpt-4o-mini", "tier": "mid"},
        "strong": {"created_at": T0 + timedelta(minutes=3), "model_used": "gpt-4", "tier": "high"},
    }
    names = dict(zip(_add(app, *rows.values()), rows, strict=True))
    assert {names[job_id] for job_id in _ids(client, query)} == expected


def test_q_matches_a_prompt_substring_in_any_case_or_an_exact_id(app: Flask, client: FlaskClient) -> None:
    capital, percent, other = _add(
        app,
        {"created_at": T0, "prompt": "What is the Capital of France?"},
        {"created_at": T0, "prompt": "Give 100% of the answer"},
        {"created_at": T0, "prompt": "Name a prime number"},
    )
    window = "&until=2026-03-11"  # a search no index serves reads at most 31 days before `until`
    assert _ids(client, "q=capital%20OF" + window) == [capital]
    assert _ids(client, "q=CAPITAL" + window) == [capital]
    assert _ids(client, "q=0%25" + window) == [percent]  # a LIKE wildcard in q matches only itself
    assert _ids(client, "q=_" + window) == []
    assert _ids(client, f"q={other}" + window) == [other]


def test_a_search_no_index_serves_reads_only_its_time_window(app: Flask, client: FlaskClient) -> None:
    now = datetime.now(UTC)
    recent, old = _add(
        app,
        {"created_at": now - timedelta(days=2), "prompt": "ab recent"},
        {"created_at": now - timedelta(days=40), "prompt": "ab old"},
    )
    # "ab" has no trigram: on either database it reads the 31 days before `until` (now when not given).
    assert _ids(client, "q=ab") == [recent]
    assert _ids(client, "q=ab&until=" + (now - timedelta(days=30)).date().isoformat()) == [old]
    response = client.get("/api/jobs?q=ab&since=" + (now - timedelta(days=60)).date().isoformat())
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]["field"] == "since"


def test_pages_return_every_job_once_in_order_even_with_equal_timestamps(app: Flask, client: FlaskClient) -> None:
    # Three timestamps shared by several jobs each, so that page boundaries fall inside a tie.
    _add(app, *({"created_at": T0 + timedelta(seconds=n % 3)} for n in range(11)))
    expected = _ids(client, "limit=200")
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        query = "limit=4" + (f"&cursor={cursor}" if cursor else "")
        body = client.get(f"/api/jobs?{query}").get_json()
        seen += [job["job_id"] for job in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == expected
    assert len(set(seen)) == 11
    created = [(job["created_at"], job["job_id"]) for job in client.get("/api/jobs").get_json()["jobs"]]
    assert created == sorted(created, reverse=True)


def test_pagination_keeps_the_filters(app: Flask, client: FlaskClient) -> None:
    _add(app, *({"created_at": T0, "tier": "mid" if n % 2 else "cheap"} for n in range(6)))
    first = client.get("/api/jobs?tier=mid&limit=2").get_json()
    second = client.get(f"/api/jobs?tier=mid&limit=2&cursor={first['next_cursor']}").get_json()
    assert len(first["jobs"]) == 2 and len(second["jobs"]) == 1
    assert second["next_cursor"] is None
    assert {job["tier"] for job in first["jobs"] + second["jobs"]} == {"mid"}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("limit=0", "limit"),
        ("limit=201", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("until=2026-13-01", "until"),
        ("cursor=not-a-cursor", "cursor"),
        ("q=a%00b", "q"),
    ],
)
def test_bad_parameters_are_a_400_naming_the_field(client: FlaskClient, query: str, field: str) -> None:
    response = client.get(f"/api/jobs?{query}")
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert (error["code"], error["details"]["field"]) == ("invalid_request", field)


def test_the_job_carries_its_prompt_cache_flag_and_request_id(app: Flask, client: FlaskClient) -> None:
    (job_id,) = _add(app, {"created_at": T0, "prompt": "Hello there", "cached": True, "request_id": "req-1"})
    body = client.get(f"/api/jobs/{job_id}").get_json()
    assert (body["prompt"], body["cached"], body["request_id"]) == ("Hello there", True, "req-1")


def test_a_key_sees_only_its_own_jobs_and_an_admin_sees_all(keyed_app: Flask) -> None:
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        (alice, alice_key), (_, admin_key) = (
            api_keys.create(session, name="alice"),
            api_keys.create(session, name="ops", is_admin=True),
        )
        alice_id = alice.id
    mine, others, anonymous = _add(
        keyed_app,
        {"created_at": T0, "api_key_id": alice_id},
        {"created_at": T0, "api_key_id": None},
        {"created_at": T0 + timedelta(seconds=1)},
    )
    client = keyed_app.test_client()
    assert _ids(client, Authorization=f"Bearer {alice_key}") == [mine]
    assert _ids(client, f"q={others}", Authorization=f"Bearer {alice_key}") == []
    assert set(_ids(client, Authorization=f"Bearer {admin_key}")) == {mine, others, anonymous}
    assert client.get("/api/jobs").status_code == 401
