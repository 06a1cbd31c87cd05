"""Hostile bodies and headers: each gets the contract's answer and a rejection leaves the ledger untouched."""

from __future__ import annotations

import gzip
import json
from typing import Any

import fakeredis
import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import text
from werkzeug.test import TestResponse

from tests.support.fakes import TimedOutWaiter

JSON = "application/json"
# Both parse and validate the body the same way (web/requests.py, PromptRequest); only /api/prompt records it.
BODY_PATHS = ["/api/prompt", "/api/estimate"]
HUGE_HEADER = "h" * 1_000_000
# JSON's own grammar allows these, Python's json module parses them, and none of them is a usable value.
NON_FINITE_LITERALS = ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"]


@pytest.fixture(autouse=True)
def _no_broker(app: Flask, enqueued: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(app.extensions, "waiter", TimedOutWaiter())
    # Health and stats ask Redis for worker and circuit state: an in-memory one keeps the run broker-free.
    monkeypatch.setattr(redis.Redis, "from_url", lambda *_, **__: fakeredis.FakeRedis())
    _seed(app)


def _seed(app: Flask) -> None:
    """Accept one job, so that the month's budget row exists and its totals are not zero."""
    response = app.test_client().post("/api/prompt", json={"prompt": "Seed", "wait": False})
    assert response.status_code == 202, response.get_data()[:500]


def _ledger(app: Flask) -> tuple[int, ...]:
    """Return the job count and the budget rows' count and totals."""
    with app.extensions["db_engine"].connect() as connection:
        jobs = connection.execute(text("SELECT COUNT(*) FROM request_logs")).scalar_one()
        budgets = connection.execute(
            text(
                "SELECT COUNT(*), COALESCE(SUM(reserved), 0), COALESCE(SUM(total_spent), 0), "
                "COALESCE(SUM(request_count), 0) FROM monthly_budgets"
            )
        ).one()
    return (jobs, *budgets)


def _post(
    app: Flask, body: bytes, *, path: str = "/api/prompt", content_type: str | None = JSON, **headers: str
) -> TestResponse:
    if content_type is not None:
        headers["Content-Type"] = content_type
    return app.test_client().post(path, data=body, headers=headers)


def _error(response: TestResponse, status: int | set[int], code: str | None = None) -> dict[str, Any]:
    statuses = {status} if isinstance(status, int) else status
    assert response.status_code in statuses, (response.status_code, response.get_data()[:500])
    assert response.is_json, response.headers
    body = response.get_json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert code is None or error["code"] == code, body
    assert isinstance(error["code"], str) and error["code"], body
    assert isinstance(error["message"], str) and error["message"].strip(), body
    assert isinstance(error["details"], dict), body
    return error


def _assert_rejected(
    app: Flask, enqueued: list[str], body: bytes, status: int | set[int], code: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    """POST `body`, expect the contract's error, and check that nothing was recorded, reserved or enqueued."""
    before, sent = _ledger(app), len(enqueued)
    error = _error(_post(app, body, **kwargs), status, code)
    assert _ledger(app) == before
    assert len(enqueued) == sent
    return error


def _assert_accepted(app: Flask, enqueued: list[str], body: bytes, **kwargs: Any) -> str:
    """POST `body`, expect 202, and check that exactly one job was recorded and enqueued."""
    jobs_before, sent = _ledger(app)[0], len(enqueued)
    response = _post(app, body, **kwargs)
    assert response.status_code == 202, response.get_data()[:500]
    job_id = response.get_json()["job_id"]
    assert _ledger(app)[0] == jobs_before + 1
    assert enqueued[sent:] == [job_id]
    return job_id


def _body(**fields: Any) -> bytes:
    return json.dumps({"prompt": "Hello", "wait": False, **fields}).encode()


def _stored_prompt(app: Flask, job_id: str) -> str:
    with app.extensions["db_engine"].connect() as connection:
        return connection.execute(text("SELECT prompt FROM request_logs WHERE id = :id"), {"id": job_id}).scalar_one()


# --- sizes -------------------------------------------------------------------------------------------


def test_a_prompt_of_exactly_max_prompt_chars_is_accepted(app: Flask, enqueued: list[str]) -> None:
    limit = app.extensions["settings"].max_prompt_chars
    _assert_accepted(app, enqueued, _body(prompt="x" * limit))


def test_a_prompt_one_character_over_max_prompt_chars_is_400(app: Flask, enqueued: list[str]) -> None:
    limit = app.extensions["settings"].max_prompt_chars
    error = _assert_rejected(app, enqueued, _body(prompt="x" * (limit + 1)), 400, "invalid_request")
    assert error["details"]["field"] == "prompt"


def test_max_prompt_chars_counts_characters_not_bytes(app: Flask, enqueued: list[str]) -> None:
    limit = app.extensions["settings"].max_prompt_chars
    _assert_accepted(app, enqueued, json.dumps({"prompt": "é" * limit, "wait": False}, ensure_ascii=False).encode())


def test_a_body_of_exactly_max_request_bytes_is_accepted(app: Flask, enqueued: list[str]) -> None:
    limit = app.extensions["settings"].max_request_bytes
    body = _body()
    # Whitespace after the value is valid JSON, so the body grows without touching any field's own limit.
    _assert_accepted(app, enqueued, body + b" " * (limit - len(body)))


def test_a_body_one_byte_over_max_request_bytes_is_413(app: Flask, enqueued: list[str]) -> None:
    limit = app.extensions["settings"].max_request_bytes
    body = _body()
    _assert_rejected(app, enqueued, body + b" " * (limit + 1 - len(body)), 413, "payload_too_large")


@pytest.mark.parametrize("path", BODY_PATHS)
@pytest.mark.parametrize(
    ("opening", "innermost", "closing"), [(b'{"a": ', b"1", b"}"), (b"[", b"", b"]")], ids=["objects", "arrays"]
)
def test_metadata_nested_10000_levels_deep_is_rejected(
    app: Flask, enqueued: list[str], opening: bytes, innermost: bytes, closing: bytes, path: str
) -> None:
    nested = opening * 10_000 + innermost + closing * 10_000
    body = b'{"prompt": "Hello", "wait": false, "metadata": {"a": ' + nested + b"}}"
    _assert_rejected(app, enqueued, body, {400, 413}, path=path)


# --- encodings ---------------------------------------------------------------------------------------


def test_invalid_utf8_in_the_body_is_400(app: Flask, enqueued: list[str]) -> None:
    error = _assert_rejected(
        app, enqueued, b'{"prompt": "caf\xc3\x28 \xff\xfe", "wait": false}', 400, "invalid_request"
    )
    assert error["details"]["field"] == "body"


def test_a_leading_utf8_bom_is_ignored(app: Flask, enqueued: list[str]) -> None:
    # RFC 8259 section 8.1 lets a parser ignore a byte order mark rather than reject it; Python's json does,
    # so the prompt must arrive without it.
    job_id = _assert_accepted(app, enqueued, b"\xef\xbb\xbf" + _body(prompt="with a BOM"))
    assert _stored_prompt(app, job_id) == "with a BOM"


def test_a_latin1_charset_does_not_make_latin1_bytes_valid(app: Flask, enqueued: list[str]) -> None:
    # JSON is UTF-8 (RFC 8259 section 8.1): "café" in latin-1 is invalid UTF-8, not a prompt to guess at.
    body = '{"prompt": "café", "wait": false}'.encode("latin-1")
    _assert_rejected(app, enqueued, body, {400, 415}, content_type="application/json; charset=latin-1")


def test_an_empty_body_with_the_json_content_type_is_400(app: Flask, enqueued: list[str]) -> None:
    error = _assert_rejected(app, enqueued, b"", 400, "invalid_request")
    assert error["details"]["field"] == "body"


@pytest.mark.parametrize("compress", [False, True], ids=["plain-body", "gzip-body"])
def test_a_gzip_content_encoding_is_415(app: Flask, enqueued: list[str], compress: bool) -> None:
    body = gzip.compress(_body()) if compress else _body()
    _assert_rejected(app, enqueued, body, 415, "unsupported_media_type", **{"Content-Encoding": "gzip"})


# --- characters the database or a strict JSON parser cannot take ---------------------------------------


def test_a_nul_character_in_the_prompt_is_400(app: Flask, enqueued: list[str]) -> None:
    error = _assert_rejected(app, enqueued, b'{"prompt": "a\\u0000b", "wait": false}', 400, "invalid_request")
    assert error["details"]["field"] == "prompt"


def test_a_nul_character_in_metadata_round_trips(app: Flask, enqueued: list[str]) -> None:
    job_id = _assert_accepted(app, enqueued, b'{"prompt": "Hello", "wait": false, "metadata": {"k": "a\\u0000b"}}')
    assert app.test_client().get(f"/api/jobs/{job_id}").get_json()["metadata"] == {"k": "a\x00b"}


@pytest.mark.parametrize("path", BODY_PATHS)
def test_a_lone_surrogate_in_the_prompt_is_400(app: Flask, enqueued: list[str], path: str) -> None:
    body = b'{"prompt": "a\\ud800b", "wait": false}'
    error = _assert_rejected(app, enqueued, body, 400, "invalid_request", path=path)
    assert error["details"]["field"] == "prompt"


@pytest.mark.parametrize(
    "metadata", [b'{"k": "\\ud800"}', b'{"\\udfff": 1}', b'{"k": ["a\\udc00b"]}'], ids=["value", "key", "nested"]
)
def test_a_lone_surrogate_in_metadata_is_400(app: Flask, enqueued: list[str], metadata: bytes) -> None:
    body = b'{"prompt": "Hello", "wait": false, "metadata": ' + metadata + b"}"
    error = _assert_rejected(app, enqueued, body, 400, "invalid_request")
    assert error["details"]["field"].startswith("metadata")


# --- numbers and types -------------------------------------------------------------------------------


@pytest.mark.parametrize("literal", [*NON_FINITE_LITERALS, "1" + "0" * 400, "1" + "0" * 5000, "1e-400"])
@pytest.mark.parametrize("field", ["max_tokens", "timeout_s", "deadline_s"])
def test_huge_or_non_finite_numbers_in_numeric_fields_are_400(
    app: Flask, enqueued: list[str], field: str, literal: str
) -> None:
    # timeout_s only counts with wait=true; were the body wrongly accepted, the waiter above answers at once.
    body = f'{{"prompt": "Hello", "wait": true, "{field}": {literal}}}'.encode()
    _assert_rejected(app, enqueued, body, 400, "invalid_request")


@pytest.mark.parametrize("literal", NON_FINITE_LITERALS)
def test_non_finite_numbers_in_metadata_are_400(app: Flask, enqueued: list[str], literal: str) -> None:
    body = f'{{"prompt": "Hello", "wait": false, "metadata": {{"x": {literal}}}}}'.encode()
    error = _assert_rejected(app, enqueued, body, 400, "invalid_request")
    # NaN, Infinity and numbers beyond a double are not JSON (RFC 8259): the body is refused as a whole.
    assert error["details"]["field"] == "body"


@pytest.mark.parametrize(
    ("field", "value"), [("max_tokens", "true"), ("max_tokens", "false"), ("timeout_s", "true"), ("metadata", "true")]
)
def test_booleans_where_numbers_or_objects_are_expected_are_400(
    app: Flask, enqueued: list[str], field: str, value: str
) -> None:
    body = f'{{"prompt": "Hello", "wait": true, "{field}": {value}}}'.encode()
    error = _assert_rejected(app, enqueued, body, 400, "invalid_request")
    assert error["details"]["field"] == field


@pytest.mark.parametrize("value", ["0", "1", '"false"', "null"])
def test_non_booleans_where_a_boolean_is_expected_are_400(app: Flask, enqueued: list[str], value: str) -> None:
    error = _assert_rejected(app, enqueued, f'{{"prompt": "Hello", "wait": {value}}}'.encode(), 400, "invalid_request")
    assert error["details"]["field"] == "wait"


@pytest.mark.parametrize(
    "body",
    [b'{"prompt": 5, "prompt": "Hello", "wait": false}', b'{"prompt": "Hello", "wait": true, "wait": false}'],
    ids=["prompt", "wait"],
)
def test_duplicate_keys_are_400(app: Flask, enqueued: list[str], body: bytes) -> None:
    _assert_rejected(app, enqueued, body, 400, "invalid_request")


# --- headers -----------------------------------------------------------------------------------------

MALFORMED_AUTHORIZATION = ["Bearer", "Bearer ", "Bearer a b c", "Basic !!!", "\x00", "Bearer \xff\xfe", "Negotiate ,,,"]


@pytest.mark.parametrize("authorization", MALFORMED_AUTHORIZATION)
def test_a_malformed_authorization_header_is_ignored_while_keys_are_off(
    app: Flask, enqueued: list[str], authorization: str
) -> None:
    _assert_accepted(app, enqueued, _body(), Authorization=authorization)


@pytest.mark.parametrize("path", ["/api/budget", "/api/stats"])
@pytest.mark.parametrize("authorization", MALFORMED_AUTHORIZATION)
def test_a_malformed_authorization_header_is_ignored_on_reads_while_keys_are_off(
    client: FlaskClient, path: str, authorization: str
) -> None:
    assert client.get(path, headers={"Authorization": authorization}).status_code == 200


@pytest.mark.parametrize("header", ["Authorization", "Idempotency-Key", "X-Anything"])
def test_an_extremely_long_header_value_never_causes_a_server_error(
    app: Flask, enqueued: list[str], header: str
) -> None:
    before = _ledger(app)
    response = _post(app, _body(), **{header: HUGE_HEADER})
    if response.status_code == 202:
        assert _ledger(app)[0] == before[0] + 1
    else:
        # A server that caps header sizes may refuse it, but only in the contract's shape and spending nothing.
        _error(response, set(range(400, 500)))
        assert _ledger(app) == before


# --- GET endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hostile_id",
    ["a" * 100_000, "%00", "%ED%A0%80", "%FF", "%C3%BCn%C3%AF", "..%2F..%2Fetc%2Fpasswd", "%20", "1%3B%20DROP"],
)
@pytest.mark.parametrize("path", ["/api/jobs", "/api/batch"])
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_hostile_job_and_batch_ids_are_404(client: FlaskClient, method: str, path: str, hostile_id: str) -> None:
    _error(client.open(f"{path}/{hostile_id}", method=method), 404, "not_found")


@pytest.mark.parametrize(
    "since", ["2026-13-01", "2026-01-01T25:00", "\x00", "1e400", "9" * 5000, "2026-01-01T00:00+24:00"]
)
def test_a_malformed_since_is_400(client: FlaskClient, since: str) -> None:
    error = _error(client.get("/api/stats", query_string={"since": since}), 400, "invalid_request")
    assert error["details"]["field"] == "since"


@pytest.mark.parametrize("since", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"])
def test_a_since_that_overflows_in_utc_is_400(client: FlaskClient, since: str) -> None:
    error = _error(client.get("/api/stats", query_string={"since": since}), 400, "invalid_request")
    assert error["details"]["field"] == "since"
