"""Log lines: JSON or text, carrying the bound request and job ids and each line's own fields."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from shared.config import Settings
from shared.observability import logs
from tests.conftest import make_test_settings


@pytest.fixture
def capture(settings: Settings) -> Iterator[tuple[logging.Logger, io.StringIO]]:
    stream = io.StringIO()
    logger = logging.getLogger("tests.logs")
    handler = logs.make_handler(make_test_settings(settings.database_url, log_format="json"), stream=stream)
    logger.addHandler(handler)
    logger.propagate = False
    logger.setLevel(logging.INFO)
    yield logger, stream
    logger.removeHandler(handler)
    logger.propagate = True


def _lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_a_json_line_carries_the_bound_ids_and_its_own_fields(capture) -> None:
    logger, stream = capture
    with logs.bound(request_id="req-1"), logs.bound(job_id="job-1"):
        logger.info("job %s", "finished", extra=logs.fields(status="succeeded", cost="0.01"))
    (line,) = _lines(stream)
    assert line["message"] == "job finished" and line["level"] == "INFO" and line["logger"] == "tests.logs"
    assert (line["request_id"], line["job_id"], line["status"], line["cost"]) == ("req-1", "job-1", "succeeded", "0.01")
    assert line["ts"].endswith("+00:00")


def test_bound_ids_end_with_their_block(capture) -> None:
    logger, stream = capture
    with logs.bound(request_id="req-2"):
        pass
    logger.info("later")
    assert "request_id" not in _lines(stream)[0]
    assert logs.current("request_id") is None


def test_an_exception_stays_inside_its_json_line(capture) -> None:
    logger, stream = capture
    try:
        raise ValueError("boom")
    except ValueError:
        logger.exception("failed")
    (line,) = _lines(stream)
    assert "ValueError: boom" in line["exc_info"]


def test_text_lines_append_the_fields_as_key_value(settings: Settings) -> None:
    stream = io.StringIO()
    handler = logs.make_handler(make_test_settings(settings.database_url, log_format="text"), stream=stream)
    record = logging.LogRecord("tests.logs", logging.INFO, __file__, 1, "job finished", None, None)
    record.fields = {"status": "failed", "error_code": None}
    handler.handle(record)
    assert stream.getvalue().rstrip().endswith("tests.logs: job finished status=failed")


@pytest.mark.parametrize(
    ("environment", "chosen", "expected"),
    [
        ("development", None, "text"),
        ("production", None, "json"),
        ("test", None, "json"),
        ("production", "text", "text"),
    ],
)
def test_the_format_defaults_to_json_outside_development(settings, environment, chosen, expected) -> None:
    configured = make_test_settings(settings.database_url, environment=environment, log_format=chosen)
    assert logs.resolve_format(configured) == expected
