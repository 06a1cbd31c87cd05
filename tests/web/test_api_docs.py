"""docs/api.md stays true: every example in it is sent to the app and its documented answer is checked.

The example format is described at the top of docs/api.md: a fenced ```http block holding a request, followed
by a fenced ```http block holding the response (status line, headers, body). Each request is sent through the
Flask test client; the status must be the documented one, each documented header must be present, and the
body must have the documented shape (see `shape_errors`). A second test checks that every route the app
serves is named in a heading of docs/api.md, so that a route cannot be added or removed without its page.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from shared.jobs import runs
from shared.ledger import api_keys
from shared.routing.catalog import Catalog
from shared.store import completion_channel
from shared.store import stream_relay
from shared.store.session import make_sessionmaker
from tests.conftest import worker_deps
from tests.support.fakes import FakeLLMClient

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"
# Marks a value (or a part of one) the server chooses: ids, times, texts.
ANY = "…"
# A fenced block: its info string (language and flags) and its text.
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
REQUEST_LINE = re.compile(r"^(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS) (\S+)$")
STATUS_LINE = re.compile(r"^HTTP/1\.1 (\d{3})\b")
ROUTE_HEADING = re.compile(r"(GET|POST|PUT|PATCH|DELETE) /\S*")
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
# Routes served but not part of the HTTP contract: static assets of the documentation pages.
UNDOCUMENTED_ROUTES = {"/static/<path:filename>", "/docs/assets/<path:filename>", "/redoc/assets/redoc.standalone.js"}


@dataclass
class Example:
    """One request of docs/api.md and the answer it documents."""

    line: int
    flags: frozenset[str]
    method: str
    path: str
    headers: dict[str, str]
    body: str
    status: int
    response_headers: dict[str, str]
    response_body: str

    def __str__(self) -> str:
        return f"docs/api.md line {self.line}: {self.method} {self.path}"


@dataclass
class Exchange:
    """What the examples run so far have left behind: values later requests name as {placeholders}."""

    values: dict[str, str] = field(default_factory=dict)

    def fill(self, text: str) -> str:
        def value(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in self.values:
                raise AssertionError(f"{{{name}}} is used before any example answered it")
            return self.values[name]

        return PLACEHOLDER.sub(value, text)

    def remember(self, body: Any) -> None:
        """Keep the top-level text values of a JSON answer (job_id, batch_id, next_cursor, …) for later requests."""
        if isinstance(body, dict):
            self.values.update({name: item for name, item in body.items() if isinstance(item, str)})


def parse_examples(text: str) -> list[Example]:
    """Return every request/response pair of the document, in order."""
    blocks = [
        (text.count("\n", 0, match.start()) + 1, match.group(1).split(), match.group(2))
        for match in FENCE.finditer(text)
    ]
    examples: list[Example] = []
    pending: tuple[int, list[str], str] | None = None
    for line, info, body in blocks:
        if not info or info[0] != "http":
            continue
        first = body.split("\n", 1)[0]
        if REQUEST_LINE.match(first):
            assert pending is None, f"docs/api.md line {pending[0]}: a request without its response"
            pending = (line, info, body)
            continue
        assert STATUS_LINE.match(first), f"docs/api.md line {line}: an http block is a request or a response"
        assert pending is not None, f"docs/api.md line {line}: a response without its request"
        examples.append(_example(*pending, response=body))
        pending = None
    assert pending is None, f"docs/api.md line {pending[0]}: a request without its response"
    return examples


def _split_message(text: str) -> tuple[str, dict[str, str], str]:
    head, _, body = text.partition("\n\n")
    start, *header_lines = head.strip("\n").split("\n")
    headers = {}
    for header in header_lines:
        name, _, value = header.partition(":")
        headers[name.strip()] = value.strip()
    return start, headers, body.strip("\n")


def _example(line: int, info: list[str], request: str, *, response: str) -> Example:
    start, headers, body = _split_message(request)
    method, path = REQUEST_LINE.match(start).groups()  # type: ignore[union-attr]
    status_line, response_headers, response_body = _split_message(response)
    status = int(STATUS_LINE.match(status_line).group(1))  # type: ignore[union-attr]
    return Example(line, frozenset(info[1:]), method, path, headers, body, status, response_headers, response_body)


def shape_errors(documented: Any, actual: Any, where: str = "body") -> list[str]:
    """Say where `actual` departs from the documented value.

    Objects have exactly the documented keys (a key "…" allows others); each element of a list has the shape of
    one of the documented elements ([] allows any list); a string containing "…" matches any string, any other
    string itself; numbers match any number; true, false and null match themselves.
    """
    if isinstance(documented, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {actual!r}"]
        open_ended = ANY in documented
        errors = [f"{where}.{name}: missing" for name in documented if name != ANY and name not in actual]
        if not open_ended:
            errors += [f"{where}.{name}: not documented" for name in actual if name not in documented]
        for name, value in documented.items():
            if name != ANY and name in actual:
                errors += shape_errors(value, actual[name], f"{where}.{name}")
        return errors
    if isinstance(documented, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {actual!r}"]
        if not documented:
            return []
        if not actual:
            return [f"{where}: documented with items, got an empty list"]
        errors = []
        for index, item in enumerate(actual):
            tried = [shape_errors(shape, item, f"{where}[{index}]") for shape in documented]
            if all(tried):
                errors += tried[0]
        return errors
    if isinstance(documented, str):
        if not isinstance(actual, str):
            return [f"{where}: expected a string, got {actual!r}"]
        if ANY in documented or documented == actual:
            return []
        return [f"{where}: expected {documented!r}, got {actual!r}"]
    if isinstance(documented, bool) or documented is None:
        return [] if actual is documented else [f"{where}: expected {json.dumps(documented)}, got {actual!r}"]
    if isinstance(documented, int | float):
        ok = isinstance(actual, int | float) and not isinstance(actual, bool)
        return [] if ok else [f"{where}: expected a number, got {actual!r}"]
    raise AssertionError(f"{where}: cannot document {documented!r}")


def _text_matches(documented: str, actual: str) -> bool:
    """A documented line with "…" stands for any text where the "…" is; other text must match exactly."""
    pattern = ".*".join(re.escape(part) for part in documented.split(ANY))
    return re.fullmatch(pattern, actual, re.DOTALL) is not None


def _events(text: str) -> list[str]:
    return [chunk.strip() for chunk in text.split("\n\n") if chunk.strip()]


def body_errors(example: Example, response: TestResponse) -> list[str]:
    """Compare the answer's body with the documented one, by the documented content type."""
    documented = example.response_body
    if not documented:
        return []
    kind = example.response_headers.get("Content-Type", "application/json").split(";")[0]
    actual = response.get_data(as_text=True)
    if kind == "application/json":
        return shape_errors(json.loads(documented), response.get_json(silent=True))
    if kind == "application/x-ndjson":
        lines = [json.loads(line) for line in documented.splitlines()]
        got = [json.loads(line) for line in actual.splitlines()]
        if len(got) != len(lines):
            return [f"body: {len(lines)} lines documented, {len(got)} answered"]
        pairs = enumerate(zip(lines, got, strict=True))
        return [error for index, (line, answered) in pairs for error in shape_errors(line, answered, f"line {index}")]
    if kind == "text/event-stream":
        return _stream_errors(_events(documented), _events(actual))
    missing = [line for line in documented.splitlines() if ANY not in line and line not in actual.splitlines()]
    return [f"body: no line {line!r}" for line in missing]


def _stream_errors(documented: list[str], actual: list[str]) -> list[str]:
    """Events before a lone "…" are matched from the start, those after it from the end."""
    head, tail = (documented, []) if ANY not in documented else (
        documented[: documented.index(ANY)], documented[documented.index(ANY) + 1 :]
    )  # fmt: skip
    if len(actual) < len(head) + len(tail):
        return [f"body: {len(head) + len(tail)} events documented, {len(actual)} answered"]
    pairs = list(zip(head, actual[: len(head)], strict=True))
    pairs += zip(tail, actual[len(actual) - len(tail) :], strict=True)
    errors = []
    for index, (doc, got) in enumerate(pairs):
        if doc.startswith("data: {") and got.startswith("data: {"):
            errors += shape_errors(json.loads(doc[6:]), json.loads(got[6:]), f"event {index}")
        elif not _text_matches(doc, got):
            errors.append(f"event {index}: expected {doc!r}, got {got!r}")
    return errors


def check(client: FlaskClient, example: Example, exchange: Exchange) -> list[str]:
    """Send the example's request; return how the answer departs from the documented one."""
    headers = {name: exchange.fill(value) for name, value in example.headers.items()}
    response = client.open(
        exchange.fill(example.path), method=example.method, headers=headers, data=exchange.fill(example.body)
    )
    errors = []
    if response.status_code != example.status:
        errors.append(f"status {response.status_code}, documented {example.status}: {response.get_data(as_text=True)}")
    for name, value in example.response_headers.items():
        got = response.headers.get(name)
        if got is None:
            errors.append(f"header {name}: missing")
        elif not _text_matches(exchange.fill(value), got.split(";")[0] if name == "Content-Type" else got):
            errors.append(f"header {name}: expected {value!r}, got {got!r}")
    if not errors:
        errors = body_errors(example, response)
    if response.is_json:
        exchange.remember(response.get_json(silent=True))
    response.close()
    return [f"{example}: {error}" for error in errors]


def run_examples(
    client: FlaskClient,
    examples: list[Example],
    exchange: Exchange,
    *,
    before: Callable[[Example], Example] = lambda example: example,
) -> None:
    """Run the examples in order, sharing what they answer; fail once, listing every departure."""
    assert examples, "no examples selected from docs/api.md"
    errors = [error for example in examples for error in check(client, before(example), exchange)]
    assert not errors, "docs/api.md no longer matches the app:\n" + "\n".join(errors)


@pytest.fixture(scope="module")
def examples() -> list[Example]:
    return parse_examples(API_DOC.read_text(encoding="utf-8"))


@pytest.fixture
def stand_in_worker(
    app: Flask, catalog: Catalog, monkeypatch: pytest.MonkeyPatch, real_redis: redis.Redis
) -> Iterator[dict[str, bool]]:
    """Run each enqueued job a moment later, as a worker would, unless the running example is marked no-worker.

    Yields a switch: {"on": False} leaves the jobs enqueued from then on queued.
    """
    from worker import tasks

    switch = {"on": True}
    threads: list[threading.Timer] = []
    deps = worker_deps(
        app,
        catalog,
        FakeLLMClient(),
        on_finished=lambda job_id: completion_channel.publish_job_done(real_redis, job_id),
        relay=lambda job_id, entry: stream_relay.append(real_redis, job_id, entry),
    )

    def enqueue(args, **_):
        if switch["on"]:
            threads.append(threading.Timer(0.02, runs.run, args=(args[0],), kwargs={"deps": deps}))
            threads[-1].start()

    monkeypatch.setattr(tasks.run_job, "apply_async", enqueue)
    yield switch
    for thread in threads:
        thread.join()


def test_the_examples_without_api_keys_hold(
    app: Flask, stand_in_worker: dict[str, bool], examples: list[Example]
) -> None:
    def switched(example: Example) -> Example:
        stand_in_worker["on"] = "no-worker" not in example.flags
        return example

    chosen = [example for example in examples if "keys" not in example.flags]
    run_examples(app.test_client(), chosen, Exchange(), before=switched)


def test_the_examples_with_api_keys_hold(keyed_app: Flask, examples: list[Example]) -> None:
    keys = {}
    with make_sessionmaker(keyed_app.extensions["db_engine"]).begin() as session:
        keys["key"] = api_keys.create(session, name="analytics")[1]
        keys["admin_key"] = api_keys.create(session, name="ops", is_admin=True)[1]
        small, keys["small_key"] = api_keys.create(session, name="tiny", monthly_budget=Decimal("0.01"))
        keys["small_key_id"] = str(small.id)
    run_examples(keyed_app.test_client(), [e for e in examples if "keys" in e.flags], Exchange(values=keys))


def test_every_route_the_app_serves_is_documented(app: Flask) -> None:
    headings = {
        " ".join(line.split()[1:]) for line in API_DOC.read_text(encoding="utf-8").splitlines() if line.startswith("#")
    }
    served = {
        (method, re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule))
        for rule in app.url_map.iter_rules()
        if rule.rule not in UNDOCUMENTED_ROUTES
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    named = {f"{method} {path}" for method, path in served}
    missing = sorted(named - headings)
    assert not missing, f"routes served but without a heading in docs/api.md: {missing}"
    gone = sorted(heading for heading in headings if ROUTE_HEADING.fullmatch(heading) and heading not in named)
    assert not gone, f"headings of docs/api.md naming routes the app does not serve: {gone}"
