"""Alert webhooks: signed POSTs, retried until the receiver takes them."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from decimal import Decimal

import pytest

from shared.jobs import runs
from shared.jobs import webhooks
from shared.ledger import alerts
from shared.ledger import budget
from shared.ledger import call_bound
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient
from worker import runtime
from worker import tasks


class _Receiver(http.server.BaseHTTPRequestHandler):
    failures_left = 0
    received: list[tuple[bytes, str | None]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        if _Receiver.failures_left > 0:
            _Receiver.failures_left -= 1
            self.send_response(503)
        else:
            _Receiver.received.append((body, self.headers.get(webhooks.SIGNATURE_HEADER)))
            self.send_response(204)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Receiver.received = []
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def webhook_settings(receiver: str, database_url: str, sessions, catalog, monkeypatch: pytest.MonkeyPatch):
    settings = make_test_settings(
        database_url, alert_webhook_url=receiver, alert_webhook_secret="s3cret", webhook_allowed_hosts=["127.0.0.1"]
    )
    deps = runs.RunDeps(sessions=sessions, catalog=catalog, settings=settings, client=FakeLLMClient())
    monkeypatch.setattr(runtime, "get_deps", lambda: deps)
    return settings


PAYLOAD = alerts.Alert("global", 2026, 11, 80, Decimal("80.5"), Decimal("100")).as_payload()


def test_an_alert_is_posted_signed(webhook_settings) -> None:
    _Receiver.failures_left = 0
    result = tasks.deliver_alert.apply(args=[PAYLOAD])
    assert result.result == 204
    [(body, signature)] = _Receiver.received
    assert body == webhooks.encode(PAYLOAD)
    assert signature == webhooks.sign(body, "s3cret")


def test_a_failing_receiver_is_retried_until_it_accepts(webhook_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    _Receiver.failures_left = 2
    result = tasks.deliver_alert.apply(args=[PAYLOAD])
    assert result.result == 204
    assert len(_Receiver.received) == 1


def test_a_usage_over_bound_alert_is_posted_like_the_others(webhook_settings) -> None:
    overrun = call_bound.Overrun(attempts=(), cost=Decimal("1.8"), reserved=Decimal("0.5"))
    alert = alerts.UsageOverBound.of(overrun, job_id="j1", scopes=["global", "key:3"], period=budget.Period(2026, 12))
    _Receiver.failures_left = 0
    assert tasks.deliver_alert.apply(args=[alert.as_payload()]).result == 204
    [(body, _)] = _Receiver.received
    sent = json.loads(body)
    assert (sent["event"], sent["job_id"], sent["scopes"], sent["cost"], sent["reserved"]) == (
        "usage_over_bound", "j1", ["global", "key:3"], "1.8", "0.5",
    )  # fmt: skip
