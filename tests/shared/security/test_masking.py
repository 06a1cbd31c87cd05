"""URLs as shown: user info and every query value redacted, a webhook's path elided, the rest kept."""

from __future__ import annotations

import io
import logging

import pytest

from shared.observability import logs
from shared.security.masking import mask_url
from shared.security.masking import mask_urls_in
from tests.conftest import make_test_settings


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql+psycopg://router:pw@db:5432/app?sslmode=require", "postgresql+psycopg://***@db:5432/app?sslmode=***"),
        ("redis://:pw@127.0.0.1:6379/0", "redis://***@127.0.0.1:6379/0"),
        ("rediss://default:pw@cache.example.com:6380/1", "rediss://***@cache.example.com:6380/1"),
        ("unix:///run/redis.sock?db=0&password=pw", "unix:///run/redis.sock?db=***&password=***"),
        ("sqlite:///./model_router.db", "sqlite:///./model_router.db"),
        ("https://llm.example.com/v1?api-key=k&api-version=2024", "https://llm.example.com/v1?api-key=***&api-version=***"),
        ("https://hooks.example.com/x?sig=a&token=b&key=c&secret=d#frag", "https://hooks.example.com/x?sig=***&token=***&key=***&secret=***"),
        ("http://[::1]:8080/path", "http://[::1]:8080/path"),
        ("not a url", "***"),
        ("http://host:99999/", "***"),
    ],
)  # fmt: skip
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown


def test_a_webhook_path_is_elided() -> None:
    assert (
        mask_url("https://hooks.example.com/services/T0/B0/tok?x=1", path=False) == "https://hooks.example.com/…?x=***"
    )
    assert mask_url("https://hooks.example.com", path=False) == "https://hooks.example.com"


def test_urls_in_text_are_masked() -> None:
    text = "Client error '404 Not Found' for url 'https://u:p@h.example.com/a?token=s3'\nFor more information"
    assert (
        mask_urls_in(text)
        == "Client error '404 Not Found' for url 'https://***@h.example.com/a?token=***'\nFor more information"
    )


@pytest.mark.parametrize("log_format", ["json", "text"])
def test_every_url_a_log_line_holds_is_masked(log_format: str) -> None:
    stream = io.StringIO()
    handler = logs.make_handler(make_test_settings("sqlite://", log_format=log_format), stream=stream)
    logger = logging.getLogger("httpx-like")
    logger.addHandler(handler)
    try:
        logger.warning('HTTP Request: POST %s "HTTP/1.1 200 OK"', "https://api.example.com/v1/chat?api-key=sk-live")
        logger.warning("failed", extra=logs.fields(url="https://hooks.example.com/T/B/path-token"))
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "sk-live" not in written and "path-token" not in written
    assert "https://api.example.com/…?api-key=***" in written
