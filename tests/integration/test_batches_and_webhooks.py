"""Batches, Idempotency-Key races and webhooks on the real stack: gunicorn, Celery, Redis, the simulator.

One stack on SQLite, the default DATABASE_URL and the database `make run` serves. It is also the
pessimistic case for these checks: every write (500 claims and settlements, 20 racing key claims)
goes through SQLite's one write lock. Its workers are split as in production: one consumes only
"prompts" (single prompts and webhook deliveries), the other only "batch".
"""

from __future__ import annotations

import hashlib
import hmac
import json
import statistics
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlalchemy import create_engine
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.store import migrate
from shared.store.models import Batch
from shared.store.models import IdempotencyKey
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.store.models import WebhookDelivery
from tests.support.stack import QUICK_RETRIES
from tests.support.stack import Stack
from tests.support.stack import free_port
from tests.support.stack import http
from tests.support.stack import running_stack
from tests.support.stack import upstream_calls

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/8"
SECRET = "test-webhook-secret"
SIM_LATENCY_MS = 50
BATCH_SIZE = 500
SINGLE_PROMPTS = 10
RACERS = 20
# Attempts come 1 s and 2 s after the first, so a third is at ~3 s; the next would wait 4 s more, past
# this window. Long enough for the fail-twice receiver, short enough that a dead one is dropped in ~3 s.
WEBHOOK_RETRY_FOR_S = 5
TERMINAL = {"succeeded", "failed"}


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver got."""

    path: str
    headers: dict[str, str]
    body: bytes

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    def is_signed_with(self, secret: str) -> bool:
        expected = "sha256=" + hmac.new(secret.encode(), self.body, hashlib.sha256).hexdigest()
        return hmac.compare_digest(self.headers.get("x-router-signature", ""), expected)


class Receiver:
    """A webhook receiver on a loopback port: records every POST and answers scripted statuses per path."""

    def __init__(self) -> None:
        self._arrived = threading.Condition()
        self._deliveries: list[Delivery] = []
        self._scripts: dict[str, list[int]] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.1})

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_port}{path}"

    def script(self, path: str, statuses: list[int]) -> None:
        """Answer POSTs to `path` with `statuses` in order, then 200."""
        with self._arrived:
            self._scripts[path] = list(statuses)

    def received(self, path: str) -> list[Delivery]:
        with self._arrived:
            return [delivery for delivery in self._deliveries if delivery.path == path]

    def wait_for(self, path: str, count: int, *, timeout_s: float = 20) -> list[Delivery]:
        """Wait until `count` POSTs to `path` arrived (or `timeout_s` passes); return those that did."""
        deadline = time.monotonic() + timeout_s
        with self._arrived:
            while (remaining := deadline - time.monotonic()) > 0:
                if sum(delivery.path == path for delivery in self._deliveries) >= count:
                    break
                self._arrived.wait(remaining)
        return self.received(path)

    def _record(self, delivery: Delivery) -> int:
        with self._arrived:
            self._deliveries.append(delivery)
            self._arrived.notify_all()
            script = self._scripts.get(delivery.path)
            return script.pop(0) if script else 200

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._record(Delivery(path=self.path, headers=headers, body=body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)


@pytest.fixture(scope="module")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db')}/router.db"


@pytest.fixture(scope="module")
def stack(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    migrate.upgrade("head", database_url=database_url)
    settings = {
        **QUICK_RETRIES,
        "MONTHLY_BUDGET_LIMIT": "1000",
        "SIM_LATENCY_MS": str(SIM_LATENCY_MS),
        "WEBHOOK_SECRET": SECRET,
        # The receiver listens on loopback, which callbacks may reach only when allowed.
        "WEBHOOK_ALLOWED_HOSTS": '["127.0.0.1"]',
        "WEBHOOK_RETRY_FOR_S": str(WEBHOOK_RETRY_FOR_S),
        "WEBHOOK_TIMEOUT_S": "2",
    }
    with running_stack(
        database_url=database_url,
        redis_url=REDIS_URL,
        log_dir=tmp_path_factory.mktemp("logs"),
        settings=settings,
        worker_queues=("prompts", "batch"),
    ) as stack:
        yield stack


@pytest.fixture(scope="module")
def engine(database_url: str) -> Iterator[Engine]:
    engine = create_engine(database_url)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    with Receiver() as receiver:
        yield receiver


def _wait_until(predicate: Callable[[], Any], *, timeout_s: float, interval_s: float = 0.2) -> Any:
    """Return the predicate's first truthy value, or its last value once `timeout_s` has passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval_s)


def _wait_for_batch(stack: Stack, batch_id: str, *, timeout_s: float) -> dict[str, Any]:
    def completed() -> dict[str, Any] | None:
        body = http("GET", f"{stack.web}/api/batch/{batch_id}")[2]
        return body if body["status"] == "completed" else None

    body = _wait_until(completed, timeout_s=timeout_s, interval_s=0.25)
    assert body is not None, f"batch {batch_id} did not complete in {timeout_s}s"
    return body


def _sim_calls(stack: Stack) -> int:
    return sum(upstream_calls(stack).values())


def _deliveries(engine: Engine, resource_id: str) -> list[WebhookDelivery]:
    with Session(engine) as session:
        return list(
            session.scalars(
                select(WebhookDelivery)
                .where(WebhookDelivery.resource_id == resource_id)
                .order_by(WebhookDelivery.attempt)
            )
        )


# --- A 500-item batch beside single prompts -------------------------------------------------------------


@dataclass(frozen=True)
class BigBatch:
    """What a 500-item batch run showed, and the single prompts timed before and during it."""

    items: list[str | dict[str, Any]]
    accepted: dict[str, Any]
    final: dict[str, Any]
    wall_s: float
    baseline_ms: list[float]
    during_ms: list[float]
    running_after_singles: bool
    figures_path: Path

    @property
    def prompts(self) -> list[str]:
        return [item if isinstance(item, str) else item["prompt"] for item in self.items]


def _batch_items() -> list[str | dict[str, Any]]:
    """Return strings and objects, mixed, each prompt unique so that its row can be matched to its place."""
    items: list[str | dict[str, Any]] = []
    for index in range(BATCH_SIZE):
        prompt = f"Item {index}: what is {index} plus {index * 7 % 13}?"
        if index % 3 == 0:
            items.append(prompt)
        elif index % 3 == 1:
            items.append({"prompt": prompt, "max_tokens": 200, "metadata": {"index": index}})
        else:
            items.append({"prompt": prompt, "tier": "cheap", "preference": "cost"})
    return items


def _time_single_prompts(stack: Stack) -> list[float]:
    """Send SINGLE_PROMPTS synchronous prompts one after another; return each one's latency in ms."""
    latencies = []
    for number in range(SINGLE_PROMPTS):
        started = time.perf_counter()
        status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": f"Single {number}: name a colour."})
        latencies.append((time.perf_counter() - started) * 1000)
        assert (status, body["status"]) == (200, "succeeded"), body
    return latencies


def _get_lines(url: str) -> tuple[int, list[str]]:
    """GET `url`; return the status and the body's lines."""
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            return response.status, response.read().decode().splitlines()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode(errors="replace").splitlines()


@pytest.fixture(scope="module")
def big_batch(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> BigBatch:
    baseline = _time_single_prompts(stack)
    items = _batch_items()
    started = time.monotonic()
    status, _, accepted = http("POST", f"{stack.web}/api/batch", {"prompts": items})
    assert status == 202, accepted
    during = _time_single_prompts(stack)
    running = http("GET", f"{stack.web}/api/batch/{accepted['batch_id']}")[2]["pending"] > 0
    final = _wait_for_batch(stack, accepted["batch_id"], timeout_s=120)
    wall_s = time.monotonic() - started
    path = tmp_path_factory.mktemp("figures") / "batch_figures.json"
    return BigBatch(
        items=items, accepted=accepted, final=final, wall_s=wall_s, baseline_ms=baseline,
        during_ms=during, running_after_singles=running, figures_path=path,
    )  # fmt: skip


def test_batch_items_all_finish_in_submission_order(big_batch: BigBatch, engine: Engine) -> None:
    jobs = big_batch.final["jobs"]
    assert [job["job_id"] for job in jobs] == big_batch.accepted["job_ids"]
    assert [job["batch_index"] for job in jobs] == list(range(BATCH_SIZE))
    assert all(job["status"] in TERMINAL for job in jobs)
    with Session(engine) as session:
        rows = list(
            session.scalars(
                select(RequestLog)
                .where(RequestLog.batch_id == big_batch.accepted["batch_id"])
                .order_by(RequestLog.batch_index)
            )
        )
    assert [row.id for row in rows] == big_batch.accepted["job_ids"]
    assert [row.prompt for row in rows] == big_batch.prompts
    assert [job["metadata"] for job in jobs[1::3]] == [{"index": index} for index in range(1, BATCH_SIZE, 3)]


def test_batch_counts_add_up(big_batch: BigBatch) -> None:
    final = big_batch.final
    assert (final["status"], final["total"], final["pending"]) == ("completed", BATCH_SIZE, 0)
    assert final["succeeded"] + final["failed"] == BATCH_SIZE
    assert final["succeeded"] == sum(job["status"] == "succeeded" for job in final["jobs"])


def test_batch_cost_is_the_sum_of_its_jobs(big_batch: BigBatch, engine: Engine) -> None:
    with Session(engine) as session:
        costs = list(
            session.scalars(select(RequestLog.cost).where(RequestLog.batch_id == big_batch.accepted["batch_id"]))
        )
    assert len(costs) == BATCH_SIZE
    total = sum(costs, Decimal(0))
    assert total > 0
    assert Decimal(str(big_batch.final["cost"])) == total
    assert big_batch.final["cost"] == pytest.approx(sum(job["cost"] for job in big_batch.final["jobs"]))


def test_batch_jsonl_lists_every_job_in_order(stack: Stack, big_batch: BigBatch) -> None:
    status, raw = _get_lines(f"{stack.web}/api/batch/{big_batch.accepted['batch_id']}?format=jsonl")
    assert status == 200, raw
    lines = [json.loads(line) for line in raw]
    assert [line["job_id"] for line in lines] == big_batch.accepted["job_ids"]
    assert [line["batch_index"] for line in lines] == list(range(BATCH_SIZE))
    assert all(line["status"] in TERMINAL for line in lines)


def test_single_prompts_keep_their_latency_during_a_batch(
    big_batch: BigBatch, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline, during = statistics.median(big_batch.baseline_ms), statistics.median(big_batch.during_ms)
    figures = {
        "items": BATCH_SIZE,
        "sim_latency_ms": SIM_LATENCY_MS,
        "batch_wall_s": round(big_batch.wall_s, 2),
        "single_prompt_median_ms_before": round(baseline, 1),
        "single_prompt_median_ms_during": round(during, 1),
        "single_prompt_ms_before": [round(ms, 1) for ms in big_batch.baseline_ms],
        "single_prompt_ms_during": [round(ms, 1) for ms in big_batch.during_ms],
        "batch_still_running_after_singles": big_batch.running_after_singles,
    }
    big_batch.figures_path.write_text(json.dumps(figures, indent=2) + "\n")
    with capsys.disabled():
        print(f"\nbatch figures ({big_batch.figures_path}): {json.dumps(figures)}")
    # The batch runs on its own queue and worker; single prompts share only the web tier, Redis and the
    # database with it. The bound is generous: it catches single prompts queued behind batch items.
    assert big_batch.running_after_singles, "the batch finished before the single prompts were timed"
    assert during < 5 * baseline + 1000, (baseline, big_batch.during_ms)
    assert max(big_batch.during_ms) < 10_000, big_batch.during_ms


# --- Idempotency-Key races ----------------------------------------------------------------------------


def _race(url: str, body: dict[str, Any], *, key: str, count: int) -> list[tuple[int, dict[str, Any], float]]:
    """Send `count` identical POSTs at once (released by a barrier); return each status, body and seconds."""
    barrier = threading.Barrier(count, timeout=10)

    def send(_: int) -> tuple[int, dict[str, Any], float]:
        barrier.wait()
        started = time.monotonic()
        status, _, answer = http("POST", url, body, headers={"Idempotency-Key": key})
        return status, answer, time.monotonic() - started

    with ThreadPoolExecutor(max_workers=count) as pool:
        return list(pool.map(send, range(count)))


def test_racing_requests_with_one_key_make_one_job_and_one_upstream_call(stack: Stack, engine: Engine) -> None:
    http("POST", f"{stack.sim}/sim/reset")
    prompt = f"What is the capital of France? ({uuid.uuid4().hex[:8]})"
    key = uuid.uuid4().hex
    results = _race(f"{stack.web}/api/prompt", {"prompt": prompt, "timeout_s": 10}, key=key, count=RACERS)
    # The job takes ~0.1 s, far below timeout_s: every racer waits for it and gets the finished job.
    assert [(status, body["status"]) for status, body, _ in results] == [(200, "succeeded")] * RACERS, results
    assert len({body["job_id"] for _, body, _ in results}) == 1, results
    job_id = results[0][1]["job_id"]
    with Session(engine) as session:
        assert session.scalar(select(func.count()).where(RequestLog.prompt == prompt)) == 1
        assert session.scalar(select(func.count()).where(IdempotencyKey.key == key)) == 1
        attempts = session.scalar(select(func.count()).where(RequestAttempt.job_id == job_id))
    assert _sim_calls(stack) == attempts == 1


def test_a_key_reused_with_another_prompt_answers_409(stack: Stack) -> None:
    key = uuid.uuid4().hex
    first = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a prime."}, headers={"Idempotency-Key": key})
    status, _, body = http(
        "POST", f"{stack.web}/api/prompt", {"prompt": "Name a planet."}, headers={"Idempotency-Key": key}
    )
    assert first[0] == 200
    assert status == 409
    assert body["error"]["code"] == "idempotency_conflict"


def test_a_repeated_request_for_a_finished_job_answers_at_once(stack: Stack) -> None:
    key = uuid.uuid4().hex
    body = {"prompt": "Name a river.", "timeout_s": 5}
    first = http("POST", f"{stack.web}/api/prompt", body, headers={"Idempotency-Key": key})
    assert (first[0], first[2]["status"]) == (200, "succeeded")
    started = time.monotonic()
    status, _, again = http("POST", f"{stack.web}/api/prompt", body, headers={"Idempotency-Key": key})
    elapsed = time.monotonic() - started
    assert (status, again["job_id"], again["status"]) == (200, first[2]["job_id"], "succeeded")
    assert elapsed < 2, f"the finished job's answer took {elapsed:.1f}s"


def test_a_batch_sent_twice_with_one_key_makes_one_batch(stack: Stack, engine: Engine) -> None:
    http("POST", f"{stack.sim}/sim/reset")
    key = uuid.uuid4().hex
    body = {"prompts": ["Name a bird.", {"prompt": "Name a tree.", "max_tokens": 50}, "Name a fish."]}
    with Session(engine) as session:
        batches_before = session.scalar(select(func.count()).select_from(Batch))
    first = http("POST", f"{stack.web}/api/batch", body, headers={"Idempotency-Key": key})
    second = http("POST", f"{stack.web}/api/batch", body, headers={"Idempotency-Key": key})
    assert (first[0], second[0]) == (202, 202)
    assert second[2]["batch_id"] == first[2]["batch_id"]
    assert second[2]["job_ids"] == first[2]["job_ids"]
    _wait_for_batch(stack, first[2]["batch_id"], timeout_s=30)
    with Session(engine) as session:
        assert session.scalar(select(func.count()).select_from(Batch)) == batches_before + 1
        job_ids = session.scalars(select(RequestLog.id).where(RequestLog.batch_id == first[2]["batch_id"])).all()
        attempts = session.scalar(select(func.count()).where(RequestAttempt.job_id.in_(job_ids)))
    assert sorted(job_ids) == sorted(first[2]["job_ids"])
    # Each job ran once: upstream saw exactly the calls the three jobs recorded.
    assert _sim_calls(stack) == attempts >= 3


def test_a_batch_key_reused_with_another_body_answers_409(stack: Stack) -> None:
    key = uuid.uuid4().hex
    first = http("POST", f"{stack.web}/api/batch", {"prompts": ["Name a city."]}, headers={"Idempotency-Key": key})
    status, _, body = http(
        "POST", f"{stack.web}/api/batch", {"prompts": ["Name a town."]}, headers={"Idempotency-Key": key}
    )
    assert first[0] == 202
    assert status == 409
    assert body["error"]["code"] == "idempotency_conflict"


# --- Webhooks -----------------------------------------------------------------------------------------


def test_a_job_callback_is_signed_over_the_exact_body(stack: Stack, receiver: Receiver) -> None:
    url = receiver.url("/job-ok")
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a metal.", "callback_url": url})
    assert (status, job["status"]) == (200, "succeeded"), job
    [delivery] = receiver.wait_for("/job-ok", 1)
    assert delivery.is_signed_with(SECRET)
    assert not delivery.is_signed_with("another secret")
    payload = delivery.payload
    assert (payload["event"], payload["job_id"], payload["status"]) == ("job.finished", job["job_id"], "succeeded")
    assert (payload["response"], payload["model_used"], payload["tokens_used"]) == (
        job["response"], job["model_used"], job["tokens_used"],
    )  # fmt: skip


def test_a_job_callback_body_is_the_job_as_the_api_shows_it(stack: Stack, receiver: Receiver) -> None:
    url = receiver.url("/job-body")
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name an ocean.", "callback_url": url})
    assert status == 200, job
    [delivery] = receiver.wait_for("/job-body", 1)
    payload = delivery.payload
    assert payload.pop("event") == "job.finished"
    assert payload == http("GET", f"{stack.web}/api/jobs/{job['job_id']}")[2]


def test_callbacks_reach_only_allowed_or_public_hosts(stack: Stack, engine: Engine) -> None:
    # 127.0.0.1 is allowed for the receiver; every other non-public address stays out of reach.
    for url in ("http://127.0.0.2:6379/", "http://localhost:6379/", "http://169.254.169.254/", "http://2130706433/"):
        status, _, body = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a tree.", "callback_url": url})
        assert (status, body["error"]["details"]) == (400, {"field": "callback_url"}), (url, body)


def test_a_callback_url_is_stored_encrypted_and_recorded_masked(
    stack: Stack, receiver: Receiver, engine: Engine
) -> None:
    url = receiver.url("/job-secret") + "?token=callback-token-5e"
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a river.", "callback_url": url})
    assert status == 200, job
    receiver.wait_for("/job-secret?token=callback-token-5e", 1)
    assert _wait_until(lambda: len(_deliveries(engine, job["job_id"])) == 1, timeout_s=10)
    with engine.connect() as connection:
        stored = connection.execute(select(RequestLog.callback_url).where(RequestLog.id == job["job_id"])).scalar_one()
    assert "callback-token-5e" not in stored and "127.0.0.1" not in stored
    [delivery] = _deliveries(engine, job["job_id"])
    assert delivery.url == f"http://127.0.0.1:{receiver.server.server_port}/…?token=***"


def test_a_failing_receiver_gets_the_callback_on_the_third_attempt(
    stack: Stack, receiver: Receiver, engine: Engine
) -> None:
    receiver.script("/flaky", [500, 500])
    body = {"prompt": "Name a gas.", "callback_url": receiver.url("/flaky")}
    status, _, job = http("POST", f"{stack.web}/api/prompt", body)
    assert status == 200, job
    deliveries = receiver.wait_for("/flaky", 3, timeout_s=20)
    assert len(deliveries) == 3
    assert all(delivery.is_signed_with(SECRET) for delivery in deliveries)
    assert {delivery.payload["job_id"] for delivery in deliveries} == {job["job_id"]}
    recorded = _wait_until(lambda: len(rows := _deliveries(engine, job["job_id"])) >= 3 and rows, timeout_s=10)
    assert [(row.attempt, row.delivered, row.status_code) for row in recorded] == [
        (1, False, 500), (2, False, 500), (3, True, 200),
    ]  # fmt: skip


def _gave_up(stack: Stack, job_id: str) -> bool:
    # Giving up leaves no row of its own (the last attempt looks like any failed one): the worker logs it.
    logs = (path.read_text(errors="replace") for path in Path(stack.log_dir).glob("worker*.log"))
    return any(f"giving up on job {job_id} webhook" in log for log in logs)


def test_a_dead_receiver_leaves_the_job_succeeded_and_records_failed_attempts(stack: Stack, engine: Engine) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/gone"  # nothing listens there
    status, _, job = http("POST", f"{stack.web}/api/prompt", {"prompt": "Name a stone.", "callback_url": dead_url})
    assert (status, job["status"]) == (200, "succeeded"), job
    assert _wait_until(lambda: _gave_up(stack, job["job_id"]), timeout_s=WEBHOOK_RETRY_FOR_S + 10)
    recorded = _deliveries(engine, job["job_id"])
    assert [row.attempt for row in recorded] == list(range(1, len(recorded) + 1))
    assert len(recorded) >= 2
    assert all(not row.delivered and row.status_code is None and row.error for row in recorded)
    status, _, polled = http("GET", f"{stack.web}/api/jobs/{job['job_id']}")
    assert (status, polled["status"], polled["success"]) == (200, "succeeded", True)


def test_a_batch_callback_arrives_once_with_its_counts(stack: Stack, receiver: Receiver, engine: Engine) -> None:
    items = ["Name a fruit.", {"prompt": "Name a vegetable."}, "Name a grain.", "Name a nut."]
    body = {"prompts": items, "callback_url": receiver.url("/batch")}
    status, _, accepted = http("POST", f"{stack.web}/api/batch", body)
    assert status == 202, accepted
    [delivery] = receiver.wait_for("/batch", 1, timeout_s=30)
    payload = delivery.payload
    assert delivery.is_signed_with(SECRET)
    assert (payload["event"], payload["batch_id"], payload["status"]) == (
        "batch.completed", accepted["batch_id"], "completed",
    )  # fmt: skip
    assert (payload["total"], payload["succeeded"], payload["failed"], payload["pending"]) == (4, 4, 0, 0)
    assert [job["job_id"] for job in payload["jobs"]] == accepted["job_ids"]
    time.sleep(1)  # a second completion (two last items racing) would have arrived by now
    assert len(receiver.received("/batch")) == 1
    assert [(row.attempt, row.delivered) for row in _deliveries(engine, accepted["batch_id"])] == [(1, True)]
