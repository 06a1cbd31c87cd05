"""The `model-router` client commands against the real Flask app served on a loopback port.

Jobs are run by a fake worker (a thread running `runs.run` with a scripted LLM client) or held queued;
error statuses the app cannot easily be made to answer (429, 503) come from an httpx.MockTransport.
"""

from __future__ import annotations

import json
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import click
import httpx
import pytest
import redis
from click.testing import CliRunner
from click.testing import Result
from flask import Flask
from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy import update
from werkzeug.serving import make_server

from shared.cli import batch as batch_cli
from shared.cli import inputs
from shared.cli import main
from shared.cli import ops
from shared.jobs import runs
from shared.ledger import api_keys
from shared.store import completion_channel
from shared.store.base import Base
from shared.store.models import MonthlyBudget
from shared.store.models import RequestLog
from shared.store.session import make_sessionmaker
from tests.conftest import make_test_settings
from tests.support.fakes import FakeLLMClient


class FakeWorker:
    """Runs enqueued jobs one at a time in a thread, as a Celery worker would; `hold` keeps them queued."""

    def __init__(self, app: Flask, catalog: Any) -> None:
        settings = app.extensions["settings"]
        self.publisher = redis.Redis.from_url(settings.redis_url)
        self.deps = runs.RunDeps(
            sessions=make_sessionmaker(app.extensions["db_engine"]),
            catalog=catalog,
            settings=settings,
            client=FakeLLMClient(),
            on_finished=lambda job_id: completion_channel.publish_job_done(self.publisher, job_id),
            sleep=lambda _: None,
        )
        self.hold = False
        self.held: list[str] = []
        self.enqueued: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="fake-worker", daemon=True)
        self._thread.start()

    def enqueue(self, args: list[str], **_: object) -> None:
        self.enqueued.append(args[0])
        if self.hold:
            self.held.append(args[0])
        else:
            self._queue.put(args[0])

    def release(self) -> None:
        """Run the held jobs."""
        self.hold = False
        for job_id in self.held:
            self._queue.put(job_id)
        self.held.clear()

    def drain(self) -> None:
        self._queue.join()

    def stop(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)
        self.publisher.close()

    def _work(self) -> None:
        while True:
            job_id = self._queue.get()
            try:
                if job_id is None:
                    return
                runs.run(job_id, deps=self.deps)
            finally:
                self._queue.task_done()


class Served:
    """The app on a loopback port, with its fake worker."""

    def __init__(self, app: Flask, worker: FakeWorker) -> None:
        self.app = app
        self.worker = worker
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="cli-test-server", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def cli(self, *args: str, input: str | None = None, key: str | None = None) -> Result:
        """Run `model-router --url <this server> ARGS`."""
        options = ["--url", self.url, *(["--key", key] if key else [])]
        return CliRunner().invoke(main, [*options, *args], input=input, catch_exceptions=False)

    def job_count(self) -> int:
        with make_sessionmaker(self.app.extensions["db_engine"])() as session:
            return session.scalar(select(func.count()).select_from(RequestLog))


def _serve(app: Flask, catalog: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    from worker import tasks

    worker = FakeWorker(app, catalog)
    monkeypatch.setattr(tasks.run_job, "apply_async", worker.enqueue)
    served = Served(app, worker)
    try:
        yield served
    finally:
        served.stop()
        worker.stop()


@pytest.fixture
def server(app: Flask, catalog: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    yield from _serve(app, catalog, monkeypatch)


@pytest.fixture
def keyed_server(database_url: str, catalog: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[Served]:
    from web.app import create_app

    app = create_app(make_test_settings(database_url, require_api_key=True))
    Base.metadata.create_all(app.extensions["db_engine"])
    yield from _serve(app, catalog, monkeypatch)
    app.extensions["db_engine"].dispose()


def _mocked(handler: Callable[[httpx.Request], httpx.Response], *args: str) -> Result:
    transport = httpx.MockTransport(handler)
    return CliRunner().invoke(main, list(args), obj={"transport": transport}, catch_exceptions=False)


def _error(status: int, code: str, message: str, **headers: str) -> Callable[[httpx.Request], httpx.Response]:
    body = {"error": {"code": code, "message": message, "details": {}}}
    return lambda request: httpx.Response(status, json=body, headers=headers)


def _one_line(result: Result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --- errors and exit codes -----------------------------------------------------------------------


def test_an_unreachable_server_exits_3_with_one_line() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = CliRunner().invoke(main, ["--url", url, "budget"])
    assert result.exit_code == 3
    line = _one_line(result)
    assert "cannot reach" in line and url in line
    assert result.stdout == ""


def test_the_url_comes_from_the_environment() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    result = CliRunner(env={"MODEL_ROUTER_URL": url}).invoke(main, ["health"])
    assert result.exit_code == 3 and url in _one_line(result)


def test_401_exits_4_and_a_valid_key_gets_through(keyed_server: Served) -> None:
    refused = keyed_server.cli("budget")
    assert refused.exit_code == 4
    assert "401 unauthorized" in _one_line(refused) and "MODEL_ROUTER_API_KEY" in refused.stderr
    assert keyed_server.cli("budget", key="mr_wrong").exit_code == 4
    with make_sessionmaker(keyed_server.app.extensions["db_engine"]).begin() as session:
        _, key = api_keys.create(session, name="cli", is_admin=True)
    assert keyed_server.cli("budget", key=key).exit_code == 0
    env_key = CliRunner(env={"MODEL_ROUTER_API_KEY": key}).invoke(main, ["--url", keyed_server.url, "budget"])
    assert env_key.exit_code == 0


def test_402_exits_5_and_nothing_is_enqueued(server: Served) -> None:
    settings = server.app.extensions["settings"]
    server.app.extensions["settings"] = settings.model_copy(update={"monthly_budget_limit": Decimal("0")})
    result = server.cli("prompt", "What is 2 + 2?")
    assert result.exit_code == 5
    assert "402 budget_exceeded" in _one_line(result)
    assert server.worker.enqueued == []


def test_404_exits_7(server: Served) -> None:
    result = server.cli("job", "no-such-job")
    assert result.exit_code == 7 and "404 not_found" in _one_line(result)


def test_400_exits_2_naming_the_field(server: Served) -> None:
    result = server.cli("prompt", "Hello", "--model", "gpt-9")
    assert result.exit_code == 2 and "400 invalid_request" in _one_line(result)


def test_429_exits_6_with_the_retry_after() -> None:
    result = _mocked(_error(429, "rate_limited", "too many requests", **{"Retry-After": "7"}), "stats")
    assert result.exit_code == 6
    assert "429 rate_limited" in _one_line(result) and "retry after 7 s" in result.stderr


def test_a_multi_line_server_message_is_printed_on_one_line() -> None:
    result = _mocked(_error(500, "internal_error", "first\nsecond"), "budget")
    assert result.exit_code == 1 and "first second" in _one_line(result)


def test_an_unavailable_server_makes_health_exit_3() -> None:
    body = {"status": "unavailable", "checks": {"database": "unreachable", "broker": "ok", "workers": 1}}
    result = _mocked(lambda request: httpx.Response(503, json=body), "health")
    assert result.exit_code == 3
    assert "unreachable" in result.stdout


def test_a_server_that_is_not_model_router_is_named() -> None:
    result = _mocked(lambda request: httpx.Response(200, text="<html>hello</html>"), "budget")
    assert result.exit_code == 1 and "model-router server" in _one_line(result)


def test_a_bad_url_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["--url", "ftp://example.invalid", "budget"])
    assert result.exit_code == 2 and "--url" in _one_line(result)


def test_the_key_is_sent_as_a_bearer_token() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"status": "ok", "checks": {"database": "ok", "broker": "ok", "workers": 1}})

    result = _mocked(handler, "--key", "mr_secret", "health")
    assert result.exit_code == 0
    assert seen[0].headers["Authorization"] == "Bearer mr_secret"


# --- prompt, submit, job -------------------------------------------------------------------------


def test_prompt_prints_the_answer_with_model_tier_difficulty_cost_and_latency(server: Served) -> None:
    result = server.cli("prompt", "What is the capital of France?")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "Paris" in out and "gpt-3.5-turbo" in out and "cheap tier" in out
    for label in ("difficulty", "cost", "latency", "tokens"):
        assert label in out
    assert "$0." in out and " ms" in out


def test_prompt_json_prints_the_raw_job(server: Served) -> None:
    result = server.cli(
        "prompt", "What is the capital of France?", "--json", "--preference", "cost", "--max-tokens", "50"
    )
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["status"], job["success"], job["model_used"]) == ("succeeded", True, "gpt-3.5-turbo")
    assert {"job_id", "tier", "difficulty_score", "cost", "latency_ms", "attempts"} <= job.keys()


def test_prompt_reads_stdin_and_sends_the_options(server: Served) -> None:
    result = server.cli("prompt", "-", "--tier", "mid", "--metadata", '{"ticket": 7}', "--json", input="Hello there")
    assert result.exit_code == 0, result.stderr
    job = json.loads(result.stdout)
    assert (job["tier"], job["metadata"]) == ("mid", {"ticket": 7})


def test_prompt_metadata_must_be_a_json_object(server: Served) -> None:
    result = server.cli("prompt", "Hi", "--metadata", "[1]")
    assert result.exit_code == 2 and "--metadata" in result.stderr


def test_prompt_polls_when_the_server_stops_waiting(server: Served) -> None:
    server.worker.hold = True
    result = server.cli("prompt", "Hello", "--json", "--timeout", "0.2")
    # The server gave up at 0.2 s; so did the CLI's own wait: the job goes on.
    assert result.exit_code == 1 and "model-router job" in result.stderr
    server.worker.release()
    job_id = server.worker.enqueued[0]
    waited = server.cli("job", job_id, "--wait", "--json")
    assert waited.exit_code == 0, waited.stderr
    assert json.loads(waited.stdout)["status"] == "succeeded"


def test_submit_prints_a_job_id_and_job_shows_it(server: Served) -> None:
    server.worker.hold = True
    submitted = server.cli("submit", "Name a prime.")
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert job_id == server.worker.enqueued[0]
    queued = server.cli("job", job_id)
    assert queued.exit_code == 0 and f"job {job_id} is queued" in queued.stdout
    server.worker.release()
    done = server.cli("job", job_id, "--wait")
    assert done.exit_code == 0 and "gpt-3.5-turbo" in done.stdout


def test_a_failed_job_exits_1(server: Served) -> None:
    server.worker.hold = True
    job_id = server.cli("submit", "Name a prime.").stdout.strip()
    cancelled = server.cli("job", job_id, "--cancel", "--json")
    assert cancelled.exit_code == 1
    assert json.loads(cancelled.stdout)["error"]["code"] == "cancelled"
    shown = server.cli("job", job_id)
    assert shown.exit_code == 1 and "cancelled" in shown.stdout


# --- budget, stats, health -----------------------------------------------------------------------


def test_budget_stats_and_health_print_tables(server: Served) -> None:
    assert server.cli("prompt", "What is 2 + 2?").exit_code == 0
    budget = server.cli("budget")
    assert budget.exit_code == 0 and "remaining" in budget.stdout and "$100.00" in budget.stdout
    stats = server.cli("stats")
    assert stats.exit_code == 0 and "success rate" in stats.stdout and "gpt-3.5-turbo" in stats.stdout
    health = server.cli("health")
    assert health.exit_code == 0 and "database" in health.stdout and "broker" in health.stdout


def test_budget_stats_and_health_print_raw_json(server: Served) -> None:
    assert json.loads(server.cli("budget", "--json").stdout)["monthly_limit"] == 100.0
    assert json.loads(server.cli("stats", "--json").stdout)["total_requests"] == 0
    assert json.loads(server.cli("health", "--json").stdout)["status"] == "ok"


def test_budget_shows_a_hold_and_clears_it(server: Served) -> None:
    from shared.ledger import budget as ledger

    assert server.cli("prompt", "What is 2 + 2?").exit_code == 0
    with make_sessionmaker(server.app.extensions["db_engine"]).begin() as session:
        session.execute(update(MonthlyBudget).values(held_by_job="job-over-its-bound"))
    assert "held: job job-over-its-bound" in server.cli("budget").stderr
    refused = server.cli("prompt", "hi")
    assert refused.exit_code == 5 and "job-over-its-bound was billed more than its bound" in _one_line(refused)
    cleared = server.cli("budget", "--clear-hold", "--scope", ledger.GLOBAL_SCOPE, "--json")
    assert cleared.exit_code == 0 and json.loads(cleared.stdout)["held_by_job"] is None
    assert server.cli("prompt", "hi").exit_code == 0


def test_stats_since_must_be_a_date(server: Served) -> None:
    result = server.cli("stats", "--since", "yesterday")
    assert result.exit_code == 2 and "since" in _one_line(result)


# --- the batch readers ---------------------------------------------------------------------------


def test_jsonl_items_are_objects_or_strings_and_blank_lines_are_skipped() -> None:
    text = '{"prompt": "a", "max_tokens": 5}\n\n"b"\n{"prompt": "c", "metadata": {"id": 3}, "tier": "mid"}\n'
    assert inputs.read_items(text, fmt="auto", source="in.jsonl") == [
        {"prompt": "a", "max_tokens": 5},
        {"prompt": "b"},
        {"prompt": "c", "metadata": {"id": 3}, "tier": "mid"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"prompt": "a"}\n{"prompt": "b", "wait": true}\n', "line 2: unknown field(s) wait"),
        ('{"prompt": "a"}\n{"prompt": "b"\n', "line 2: not JSON"),
        ('{"text": "a"}\n', "line 1: unknown field(s) text"),
        ('{"prompt": "  "}\n', "line 1: 'prompt' must be a non-empty string"),
        ('{"prompt": "a", "max_tokens": "5"}\n', "line 1: 'max_tokens' must be an integer"),
        ('{"prompt": "a", "preference": "fast"}\n', "line 1: 'preference' must be one of"),
        ("[1, 2]\n", "line 1: expected an object"),
        ("\n\n", "no prompts"),
    ],
)
def test_a_bad_jsonl_line_is_named(text: str, message: str) -> None:
    with pytest.raises(inputs.BadInput, match=message.replace("(", r"\(").replace(")", r"\)")):
        inputs.read_items(text, fmt="jsonl", source="in.jsonl")


def test_csv_items_come_from_the_prompt_column_with_typed_fields() -> None:
    text = 'prompt,max_tokens,metadata,preference\n"Hello, world",5,"{""id"": 1}",\n"two\nlines",,,cost\n'
    assert inputs.read_items(text, fmt="auto", source="in.csv") == [
        {"prompt": "Hello, world", "max_tokens": 5, "metadata": {"id": 1}},
        {"prompt": "two\nlines", "preference": "cost"},
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("question\nHi\n", "needs a header row with a 'prompt' column"),
        ("prompt,id\nHi,1\n", "unknown column"),
        ("prompt,max_tokens\nHi,many\n", "line 2"),
    ],
)
def test_a_bad_csv_is_named(text: str, message: str) -> None:
    with pytest.raises(inputs.BadInput, match=message):
        inputs.read_items(text, fmt="csv", source="in.csv")


def test_a_csv_with_a_byte_order_mark_reads(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.csv"
    source.write_text("prompt\nWhat is 2 + 2?\nName a colour.\n", encoding="utf-8-sig")
    out = tmp_path / "out.jsonl"
    result = server.cli("batch", str(source), "--out", str(out), "--poll-interval", "0.05")
    assert result.exit_code == 0, result.stderr
    assert sorted(line["index"] for line in _lines(out)) == [0, 1]


def test_batch_reads_stdin_and_prints_results_without_out(server: Served) -> None:
    result = server.cli("batch", "-", "--poll-interval", "0.05", input='{"prompt": "a"}\n{"prompt": "b"}\n')
    assert result.exit_code == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(line["index"] for line in lines) == [0, 1]
    assert all(line["status"] == "succeeded" for line in lines)
    assert "2 items" in result.stderr and "2 succeeded" in result.stderr


def test_stdin_csv_is_detected(server: Served) -> None:
    result = server.cli("batch", "-", "--poll-interval", "0.05", input="prompt\nHello\n")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["index"] == 0


# --- chunks and the Idempotency-Key --------------------------------------------------------------


def test_the_idempotency_key_is_deterministic_per_chunk_content_and_position() -> None:
    items = [{"prompt": "a"}, {"prompt": "b"}]
    key = batch_cli.idempotency_key(items, start=0)
    assert key == batch_cli.idempotency_key([{"prompt": "a"}, {"prompt": "b"}], start=0)
    assert key == batch_cli.idempotency_key([{"prompt": "a"}, {"prompt": "b"}][:], start=0, salt="")
    others = {
        batch_cli.idempotency_key(items, start=1000),
        batch_cli.idempotency_key([{"prompt": "a"}, {"prompt": "c"}], start=0),
        batch_cli.idempotency_key([{"prompt": "a", "max_tokens": 5}, {"prompt": "b"}], start=0),
        batch_cli.idempotency_key(items, start=0, salt="fresh"),
    }
    assert key not in others and len(others) == 4
    assert key.isprintable() and len(key) <= 255


def test_chunks_split_the_input_at_most_size_long() -> None:
    assert batch_cli.chunk_ranges(2500, size=1000) == [range(0, 1000), range(1000, 2000), range(2000, 2500)]
    assert batch_cli.chunk_ranges(3, size=1000) == [range(0, 3)]


def test_the_same_chunk_is_sent_with_the_same_key_every_run() -> None:
    keys: list[str] = []
    bodies: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            keys.append(request.headers["Idempotency-Key"])
            bodies.append(json.loads(request.content))
            return httpx.Response(202, json={"batch_id": "b1", "job_ids": ["j0", "j1"], "poll_url": "/api/batch/b1"})
        jobs_ = [{"job_id": f"j{i}", "status": "succeeded", "batch_index": i, "cost": 0.001} for i in range(2)]
        return httpx.Response(200, json={"batch_id": "b1", "status": "completed", "jobs": jobs_})

    transport = httpx.MockTransport(handler)
    for _ in range(2):
        result = CliRunner().invoke(
            main, ["batch", "-", "--poll-interval", "0.05"], input='"a"\n"b"\n', obj={"transport": transport}
        )
        assert result.exit_code == 0, result.stderr
    assert len(keys) == 2 and keys[0] == keys[1] == batch_cli.idempotency_key(bodies[0]["prompts"], start=0)
    assert bodies[-1] == {"prompts": [{"prompt": "a"}, {"prompt": "b"}]}


def test_a_rerun_of_the_same_input_gets_the_same_batch_back(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Question {n}?"}) + "\n" for n in range(5)))
    first = server.cli("batch", str(source), "--poll-interval", "0.05")
    again = server.cli("batch", str(source), "--poll-interval", "0.05")
    assert first.exit_code == again.exit_code == 0
    assert {json.loads(line)["batch_id"] for line in first.stdout.splitlines()} == {
        json.loads(line)["batch_id"] for line in again.stdout.splitlines()
    }
    assert server.job_count() == 5
    fresh = server.cli("batch", str(source), "--poll-interval", "0.05", "--fresh")
    assert fresh.exit_code == 0 and server.job_count() == 10


def test_a_batch_of_more_than_one_chunk_numbers_items_by_input_position(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Question {n}?", "metadata": {"n": n}}) + "\n" for n in range(7)))
    out = tmp_path / "out.jsonl"
    result = server.cli("batch", str(source), "--out", str(out), "--chunk-size", "3", "--poll-interval", "0.05")
    assert result.exit_code == 0, result.stderr
    lines = _lines(out)
    assert sorted(line["index"] for line in lines) == list(range(7))
    assert all(line["metadata"]["n"] == line["index"] for line in lines)
    assert len({line["batch_id"] for line in lines}) == 3


# --- resuming from --out -------------------------------------------------------------------------


def test_read_results_keeps_terminal_lines_and_drops_a_cut_off_one(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(
        '{"index": 2, "status": "succeeded", "cost": 0.1}\n'
        '{"index": 0, "status": "failed"}\n'
        '{"index": 1, "status": "running"}\n'
        '{"index": 3, "stat'
    )
    assert sorted(batch_cli.read_results(out, total=4)) == [0, 2]
    assert out.read_text().endswith('"running"}\n')


def test_read_results_refuses_another_inputs_output(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"index": 9, "status": "succeeded"}\n')
    with pytest.raises(inputs.BadInput, match="another input"):
        batch_cli.read_results(out, total=3)
    out.write_text('{"job_id": "x"}\n')
    with pytest.raises(inputs.BadInput, match="no 'index'"):
        batch_cli.read_results(out, total=3)


def test_a_resumed_run_skips_items_already_in_out(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Question {n}?"}) + "\n" for n in range(4)))
    out = tmp_path / "out.jsonl"
    # An earlier run finished items 1 and 3 (with one line cut off by the interruption), then stopped.
    out.write_text(
        '{"index": 1, "status": "succeeded", "cost": 0.5, "job_id": "old1"}\n'
        '{"index": 3, "status": "failed", "job_id": "old3"}\n{"index": 0, "sta'
    )
    result = server.cli("batch", str(source), "--out", str(out), "--chunk-size", "1", "--poll-interval", "0.05")
    assert result.exit_code == 1  # item 3 failed in the earlier run
    lines = _lines(out)
    assert sorted(line["index"] for line in lines) == [0, 1, 2, 3]
    assert {line["index"]: line["job_id"] for line in lines}[1] == "old1"
    # Only the two unfinished items were submitted: one chunk each.
    assert server.job_count() == 2
    assert "resuming: 2 of 4" in result.stderr and "(2 from an earlier run)" in result.stderr


def test_an_interrupted_run_resumes_from_the_same_batch(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"prompt": f"Question {n}?"}) + "\n" for n in range(3)))
    out = tmp_path / "out.jsonl"
    server.worker.hold = True
    # The first run submits, sees nothing finish and is interrupted.
    polls = 0
    real_poll = batch_cli.Runner._poll

    def interrupt_after_a_poll(self: batch_cli.Runner, chunk: batch_cli.Chunk) -> None:
        nonlocal polls
        polls += 1
        real_poll(self, chunk)
        if polls == 2:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batch_cli.Runner, "_poll", interrupt_after_a_poll)
        stopped = server.cli("batch", str(source), "--out", str(out), "--poll-interval", "0.05")
    assert stopped.exit_code == 130 and "run the same command again to resume" in stopped.stderr
    assert server.job_count() == 3 and _lines(out) == []
    server.worker.release()
    resumed = server.cli("batch", str(source), "--out", str(out), "--poll-interval", "0.05")
    assert resumed.exit_code == 0, resumed.stderr
    assert sorted(line["index"] for line in _lines(out)) == [0, 1, 2]
    assert server.job_count() == 3


def test_a_finished_run_is_not_sent_again(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('"a"\n"b"\n')
    out.write_text('{"index": 1, "status": "succeeded", "cost": 0.25}\n{"index": 0, "status": "succeeded"}\n')

    def no_requests(request: httpx.Request) -> httpx.Response:
        raise AssertionError(f"unexpected {request.method} {request.url}")

    result = _mocked(no_requests, "batch", str(source), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert "2 items, 2 succeeded, 0 failed, cost $0.25" in result.stderr
    assert len(_lines(out)) == 2


def test_a_resumed_run_follows_the_batch_named_in_out(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('"a"\n"b"\n"c"\n')
    out.write_text('{"index": 1, "status": "succeeded", "batch_id": "b1", "batch_index": 1}\n')
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        assert request.method == "GET", "nothing may be submitted again"
        jobs_ = [{"job_id": f"j{i}", "status": "succeeded", "batch_id": "b1", "batch_index": i} for i in range(3)]
        return httpx.Response(200, json={"batch_id": "b1", "status": "completed", "total": 3, "jobs": jobs_})

    result = _mocked(handler, "batch", str(source), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert seen == ["GET /api/batch/b1"]
    assert sorted(line["index"] for line in _lines(out)) == [0, 1, 2]
    assert [line.get("job_id") for line in _lines(out)] == [None, "j0", "j2"]


def test_a_batch_of_another_chunk_size_is_not_taken_for_this_chunk(tmp_path: Path) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    source.write_text('"a"\n"b"\n')
    # Written by a run with --chunk-size 1: batch b0 held item 0 alone.
    out.write_text('{"index": 1, "status": "succeeded", "batch_id": "b1", "batch_index": 0}\n')
    posts: list[Any] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            posts.append(json.loads(request.content))
            return httpx.Response(202, json={"batch_id": "b2", "job_ids": ["x", "y"], "poll_url": "/api/batch/b2"})
        jobs_ = [{"job_id": f"n{i}", "status": "succeeded", "batch_index": i} for i in range(2)]
        return httpx.Response(200, json={"batch_id": "b2", "status": "completed", "total": 2, "jobs": jobs_})

    result = _mocked(handler, "batch", str(source), "--out", str(out))
    assert result.exit_code == 0, result.stderr
    assert posts == [{"prompts": [{"prompt": "a"}, {"prompt": "b"}]}]
    assert sorted(line["index"] for line in _lines(out)) == [0, 1]


def test_failed_items_make_the_batch_exit_1(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('"a"\n"b"\n')
    server.worker.hold = True

    def cancel_soon() -> None:
        batch_id = _wait_for_batch(server)
        httpx.delete(f"{server.url}/api/batch/{batch_id}")

    canceller = threading.Thread(target=cancel_soon)
    canceller.start()
    result = server.cli("batch", str(source), "--poll-interval", "0.05")
    canceller.join()
    assert result.exit_code == 1
    assert "2 failed" in result.stderr
    assert all(json.loads(line)["error"]["code"] == "cancelled" for line in result.stdout.splitlines())


def _wait_for_batch(server: Served) -> str:
    for _ in range(200):
        with make_sessionmaker(server.app.extensions["db_engine"])() as session:
            batch_id = session.scalar(select(RequestLog.batch_id).limit(1))
        if batch_id:
            return batch_id
        time.sleep(0.02)
    raise AssertionError("no batch was created")


def test_a_rejected_chunk_names_the_item_by_input_position(tmp_path: Path, server: Served) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('"a"\n{"prompt": "b", "model": "gpt-9"}\n')
    out = tmp_path / "out.jsonl"
    result = server.cli("batch", str(source), "--out", str(out), "--chunk-size", "1", "--poll-interval", "0.05")
    assert result.exit_code == 2
    assert "item 1" in result.stderr and "prompts[0]" not in result.stderr
    # The chunk that was accepted before was still followed to the end.
    assert [line["index"] for line in _lines(out)] == [0]


def test_a_batch_over_budget_exits_5(tmp_path: Path, server: Served) -> None:
    settings = server.app.extensions["settings"]
    server.app.extensions["settings"] = settings.model_copy(update={"monthly_budget_limit": Decimal("0")})
    source = tmp_path / "in.jsonl"
    source.write_text('"a"\n')
    result = server.cli("batch", str(source))
    assert result.exit_code == 5 and "402 budget_exceeded" in result.stderr
    assert server.job_count() == 0


# --- operations and help -------------------------------------------------------------------------


def _every_command(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    for name, command in group.commands.items():
        yield (*path, name)
        if isinstance(command, click.Group):
            yield from _every_command(command, (*path, name))


def test_every_command_has_help() -> None:
    commands = list(_every_command(main))
    assert {("prompt",), ("batch",), ("web",), ("worker",), ("keys", "create"), ("db", "upgrade")} <= set(commands)
    for path in [(), *commands]:
        result = CliRunner().invoke(main, [*path, "--help"])
        assert result.exit_code == 0, path
        assert "Usage: " in result.stdout


def test_web_execs_gunicorn_with_gevent_and_the_app_factory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # where the run directory goes
    calls: list[list[str]] = []
    monkeypatch.setattr(ops.os, "execvp", lambda file, argv: calls.append(argv))
    result = CliRunner(env={"PORT": "8123", "WEB_CONCURRENCY": "3"}).invoke(main, ["web", "--", "--timeout", "60"])
    assert result.exit_code == 0, result.output
    argv = calls[0]
    assert Path(argv[0]).name == "gunicorn" and argv[-1] == "web.app:create_app()"
    joined = " ".join(argv)
    assert "--worker-class gevent --workers 3 --bind 127.0.0.1:8123" in joined and "--timeout 60" in joined


def test_web_serves_on_the_port_dotenv_names_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("PORT=8456\n")
    calls: list[list[str]] = []
    monkeypatch.setattr(ops.os, "execvp", lambda file, argv: calls.append(argv))
    assert CliRunner(env={"PORT": None}).invoke(main, ["web"]).exit_code == 0
    assert CliRunner(env={"PORT": "8123"}).invoke(main, ["web"]).exit_code == 0
    from_dotenv, from_environment = (" ".join(argv) for argv in calls)
    assert "--bind 127.0.0.1:8456" in from_dotenv and "--bind 127.0.0.1:8123" in from_environment


def test_worker_execs_celery_on_both_queues_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # where the run directory goes
    calls: list[list[str]] = []
    monkeypatch.setattr(ops.os, "execvp", lambda file, argv: calls.append(argv))
    assert CliRunner().invoke(main, ["worker"]).exit_code == 0
    assert CliRunner().invoke(main, ["worker", "--queues", "batch", "--concurrency", "4", "--beat"]).exit_code == 0
    default, batch_only = (" ".join(argv) for argv in calls)
    assert "-A worker.celery_app:celery_app worker --pool gevent --queues prompts,batch" in default
    assert "--hostname prompts-batch@%h" in default
    assert "--queues batch --hostname batch@%h --concurrency 4" in batch_only and "--beat" in batch_only


def test_python_dash_m_shared_cli_runs_the_same_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli", "--help"], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert "model-router" in result.stdout and "batch" in result.stdout
