"""One bounded scenario per guarantee, each measured from outside the service.

A scenario reads only what a client, an operator or the upstream could see: HTTP answers, the rows in the
database, the private Redis, and the simulator's own record of the calls it answered and the tokens it billed.
Each returns a `Result`: the guarantee's figure and PASS or FAIL by its rule. Fields and settings that a
version of the service may not have yet (`truncated`, `unconfirmed`, `usage_over_bound`) are read where they
exist and shown as "n/a" where they do not.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from typing import Any

import redis

from bench.guarantee_stack import Answer
from bench.guarantee_stack import Bench
from shared.store.models import JobStatus
from shared.store.models import RequestAttempt
from shared.store.models import RequestLog
from shared.upstream.circuit_breaker import OPEN
from shared.upstream.circuit_breaker import BreakerPolicy
from shared.upstream.circuit_breaker import CircuitBreaker
from tests.support.chaos import FAULTS
from tests.support.chaos import chaos_prompt
from tests.support.stack import BIN

NA = "n/a"


@dataclass
class Result:
    """One guarantee's line: its figure, PASS/FAIL by its rule (ERROR if the scenario broke), and details."""

    name: str
    status: str
    figure: str
    rule: str
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def money(amount: Decimal) -> str:
    return f"${amount.quantize(Decimal('0.000001'))}"


def _fixed(amount: Decimal) -> str:
    """Money as plain decimal text (never "0E-9")."""
    return f"{amount:f}"


def column_count(rows: list[object], name: str, model: type) -> int | str:
    """Count rows whose `name` is truthy, or "n/a" when the table has no such column."""
    if name not in model.__table__.columns:
        return NA
    return sum(bool(getattr(row, name)) for row in rows)


def metric_total(bench: Bench, fragment: str) -> float | str:
    """Sum the /metrics samples whose name contains `fragment` ("n/a" when there are none)."""
    assert bench.stack is not None
    try:
        connection = http.client.HTTPConnection("127.0.0.1", bench.stack.web_port, timeout=10)
        connection.request("GET", "/metrics")
        text = connection.getresponse().read().decode(errors="replace")
        connection.close()
    except OSError:
        return NA
    values = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if fragment in line and not line.startswith("#") and "_created" not in line
    ]
    return sum(values) if values else NA


def _unconfirmed(attempts: list[RequestAttempt], jobs: list[RequestLog]) -> int | str:
    """Count attempts charged without the upstream's confirmation: a flag column, or an outcome so named."""
    for rows, model in ((attempts, RequestAttempt), (jobs, RequestLog)):
        counted = column_count(rows, "unconfirmed", model)  # type: ignore[arg-type]
        if counted != NA:
            return counted
    named = sum("unconfirmed" in (a.outcome or "", a.error_class or "") for a in attempts)
    return named or NA


def top_model(bench: Bench) -> str:
    """The strongest tier's model: a job forced there has no tier to escalate to, so it makes one call."""
    return bench.catalog.model_for_tier(bench.catalog.tiers[-1]).name


def _refused(answer: Answer) -> bool:
    return answer.status in (400, 413)


# 1. A budget cannot be overspent.


@dataclass
class _Shape:
    """A family of hostile requests whose size shrinks until the API accepts it."""

    name: str
    build: Callable[[int], tuple[str, dict[str, Any]]]
    size: int
    streak_402: int = 0
    dead: bool = False


def _hostile_shapes() -> list[_Shape]:
    def chat(model: str, messages: list[dict[str, Any]], **extra: Any) -> tuple[str, dict[str, Any]]:
        return "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 4096, **extra}

    return [
        # Servers bill a few tokens per message on top of its text.
        _Shape("empty_messages", lambda n: chat("gpt-4", [{"role": "user", "content": ""}] * n
                                                + [{"role": "user", "content": "hi"}]), 10_000),
        _Shape("system_turns", lambda n: chat("router:quality", [{"role": "system", "content": "."},
                                                                 {"role": "user", "content": "?"}] * n), 4_000),
        _Shape("long_names", lambda n: chat("gpt-4", [{"role": "user", "content": "hi", "name": "n" * n}] * 4),
               60_000),
        _Shape("stop_sequences", lambda n: chat("gpt-4-turbo", [{"role": "user", "content": "hi"}],
                                                stop=["\u00e9" * n] * 4), 30_000),
        _Shape("long_user", lambda n: chat("gpt-4", [{"role": "user", "content": "hi"}], user="u" * n), 200_000),
        _Shape("max_prompt", lambda n: ("/api/prompt", {"prompt": "!" * n, "model": "gpt-4-turbo",
                                                        "max_tokens": 4096, "timeout_s": 60}), 32_000),
    ]  # fmt: skip


class _LedgerSampler:
    """Reads a ledger (`read`: spent, reserved, limit) every few milliseconds from a thread; keeps the highest
    spent + reserved."""

    def __init__(self, read: Callable[[], tuple[Decimal, Decimal, Decimal]]) -> None:
        self._read = read
        self.peak = Decimal(0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ledger-sampler", daemon=True)

    def __enter__(self) -> _LedgerSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            spent, reserved, _ = self._read()
            self.peak = max(self.peak, spent + reserved)
            self.samples += 1
            self._stop.wait(0.02)


def budget_never_overspent(bench: Bench) -> Result:
    return _never_overspent(bench, "budget_never_overspent", bench.ledger)


def window_never_overspent(bench: Bench) -> Result:
    """The same burst against a service whose budget window, not its month, is the limit."""
    return _never_overspent(bench, "window_never_overspent", bench.window_ledger)


def _never_overspent(bench: Bench, name: str, read: Callable[[], tuple[Decimal, Decimal, Decimal]]) -> Result:
    max_requests, max_s, threads = (60, 60.0, 6) if bench.quick else (400, 240.0, 12)
    shapes = _hostile_shapes()
    lock = threading.Lock()
    answers: Counter[str] = Counter()
    sent = 0
    started = time.monotonic()

    def next_shape() -> _Shape | None:
        nonlocal sent
        with lock:
            live = [s for s in shapes if not s.dead]
            done = all(s.streak_402 >= 2 for s in live)
            if not live or done or sent >= max_requests or time.monotonic() - started > max_s:
                return None
            sent += 1
            return live[sent % len(live)]

    def worker() -> None:
        while (shape := next_shape()) is not None:
            size = shape.size
            path, body = shape.build(size)
            answer = bench.api("POST", path, body, timeout=90)
            with lock:
                answers[f"{shape.name}:{answer.status}"] += 1
                if answer.status == 402:
                    shape.streak_402 += 1
                elif _refused(answer):
                    # The API bounds this field: try the largest size it accepts instead.
                    if shape.size == size:
                        shape.size = size // 4
                        shape.dead = shape.size < 1
                else:
                    shape.streak_402 = 0

    with _LedgerSampler(read) as sampler:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="budget-burst") as pool:
            for _ in range(threads):
                pool.submit(worker)
        left = bench.drain(timeout_s=60)
    spent, reserved, limit = read()
    peak = max(sampler.peak, spent + reserved)
    billed = bench.sim_billed()
    ratio = peak / limit if limit else Decimal(0)
    jobs = list(bench.jobs_where(RequestLog.id.is_not(None)).values())
    over_bound = column_count(jobs, "usage_over_bound", RequestLog)
    if over_bound == NA:
        over_bound = metric_total(bench, "usage_over_bound")
    refused = sum(n for key, n in answers.items() if key.endswith(":402"))
    figure = (
        f"max(spent+reserved)/limit = {ratio:.3f} ({money(peak)} of {money(limit)}); simulator billed "
        f"{money(billed)}, ledger recorded {money(spent)}; {len(jobs)} accepted, {refused} refused 402; "
        f"usage_over_bound {over_bound}"
    )
    return Result(
        name,
        verdict(ratio <= 1 and spent >= billed and not left),
        figure,
        "max(spent+reserved) <= limit, and the ledger records at least what the simulator billed",
        {
            "limit": _fixed(limit), "peak": _fixed(peak), "ratio": _fixed(ratio), "spent": _fixed(spent),
            "reserved": _fixed(reserved), "billed": _fixed(billed), "accepted_jobs": len(jobs), "still_open": left,
            "answers": dict(answers), "sizes_used": {s.name: s.size for s in shapes},
            "dead_shapes": [s.name for s in shapes if s.dead], "ledger_samples": sampler.samples,
            "usage_over_bound": over_bound,
        },
    )  # fmt: skip


# 2. Every accepted job ends exactly once, with every billed dollar on record.


def every_job_ends_once(bench: Bench) -> Result:
    assert bench.stack is not None
    requests, threads, drain_s = (40, 8, 90.0) if bench.quick else (300, 16, 180.0)
    bench.configure_sim(faults=FAULTS, latency_ms=600)
    spent_before = bench.ledger()[0]
    marker = uuid.uuid4().hex[:8]
    ids: list[str] = []
    statuses: Counter[str] = Counter()
    lock = threading.Lock()

    def send(number: int) -> None:
        body = {"prompt": f"{chaos_prompt(number)} [{marker}]", "wait": False}
        answer = bench.api("POST", "/api/prompt", body, timeout=30)
        with lock:
            statuses[str(answer.status)] += 1
            if answer.status == 202 and answer.get("job_id"):
                ids.append(answer.get("job_id"))

    running_at_kill: set[str] = set()
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ends-once") as pool:
        futures = [pool.submit(send, number) for number in range(requests)]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with lock:
                known = list(ids)
            running = {i for i, row in bench.jobs(known).items() if row.status is JobStatus.RUNNING}
            if len(known) >= requests // 3 and len(running) >= 2:
                break
            time.sleep(0.1)
        bench.stack.kill("worker1")
        with lock:
            known = list(ids)
        running_at_kill = {i for i, row in bench.jobs(known).items() if row.status is JobStatus.RUNNING}
        bench.stack.start_worker("worker3", queues="prompts", concurrency=8)
        for future in futures:
            future.result()
    rows = bench.wait_terminal(ids, timeout_s=drain_s)
    billed = bench.sim_billed()
    spent = bench.ledger()[0] - spent_before
    attempts = [a for row in rows.values() for a in row.attempts]
    attempts_cost = sum((a.cost for a in attempts), Decimal(0))
    not_terminal = sum(not row.status.is_terminal for row in rows.values())
    runs = Counter(row.run_count for row in rows.values())
    reruns = {i for i, row in rows.items() if row.run_count > 1}
    unconfirmed = _unconfirmed(attempts, list(rows.values()))
    ok = not_terminal == 0 and len(rows) == len(ids) and spent >= billed and reruns <= running_at_kill
    figure = (
        f"{not_terminal} of {len(ids)} jobs not terminal; ledger spent {money(spent)} vs simulator billed "
        f"{money(billed)}; runs per job max {max(runs, default=0)} ({len(reruns)} re-run, "
        f"{len(running_at_kill)} running at the SIGKILL); unconfirmed attempts {unconfirmed}"
    )
    return Result(
        "every_job_ends_once",
        verdict(ok),
        figure,
        "every job terminal, ledger >= billed, only jobs running at the kill run again",
        {
            "requests": requests, "answers": dict(statuses), "accepted": len(ids), "rows": len(rows),
            "not_terminal": not_terminal, "by_status": dict(Counter(r.status.value for r in rows.values())),
            "failed_by_error": dict(Counter(r.error_code for r in rows.values() if r.status is JobStatus.FAILED)),
            "ledger_spent": _fixed(spent), "attempts_cost": _fixed(attempts_cost), "billed": _fixed(billed),
            "billed_minus_recorded": _fixed(billed - spent), "runs_per_job": dict(runs),
            "running_at_kill": len(running_at_kill), "rerun_jobs": len(reruns),
            "rerun_not_running_at_kill": len(reruns - running_at_kill), "unconfirmed": unconfirmed,
            "unsettled": sum(not r.settled for r in rows.values()),
        },
    )  # fmt: skip


# 3. Idempotency keys on PostgreSQL, and the CLI's batches that rely on them.


def idempotency_on_postgres(bench: Bench) -> Result:
    assert bench.stack is not None
    marker = uuid.uuid4().hex[:8]
    prompt_key, batch_key = f"bench-prompt-{marker}", f"bench-batch-{marker}"
    prompt_body = {"prompt": f"Idempotent prompt {marker}", "wait": False, "model": "gpt-3.5-turbo", "max_tokens": 32}
    first = bench.api("POST", "/api/prompt", prompt_body, headers={"Idempotency-Key": prompt_key})
    second = bench.api("POST", "/api/prompt", prompt_body, headers={"Idempotency-Key": prompt_key})
    prompt_same = first.get("job_id") is not None and first.get("job_id") == second.get("job_id")
    batch_body = {"prompts": [f"Idempotent batch item {marker} {n}" for n in range(2)]}
    first_batch = bench.api("POST", "/api/batch", batch_body, headers={"Idempotency-Key": batch_key})
    second_batch = bench.api("POST", "/api/batch", batch_body, headers={"Idempotency-Key": batch_key})
    batch_same = first_batch.get("batch_id") is not None and first_batch.get("batch_id") == second_batch.get("batch_id")
    made = bench.jobs_where(RequestLog.prompt.like(f"Idempotent % {marker}%"))

    source = bench.work_dir / f"cli-batch-{marker}.jsonl"
    out = bench.work_dir / f"cli-batch-{marker}.out.jsonl"
    items = [{"prompt": f"CLI batch item {n} {marker}", "max_tokens": 32} for n in range(3)]
    source.write_text("".join(json.dumps(item) + "\n" for item in items))
    command = [str(BIN / "model-router"), "--url", bench.stack.web, "batch", str(source), "--out", str(out),
               "--poll-interval", "0.2"]  # fmt: skip
    try:
        cli = subprocess.run(command, capture_output=True, text=True, timeout=90, env=bench.stack.env)
        cli_code: int | str = cli.returncode
        cli_err = cli.stderr[-400:]
    except subprocess.TimeoutExpired:
        cli_code, cli_err = "timeout", ""
    lines = out.read_text().splitlines() if out.exists() else []
    cli_ok = cli_code == 0 and len(lines) == len(items)
    figure = (
        f"/api/prompt same job: {'yes' if prompt_same else 'no'} ({first.status}, {second.status}); "
        f"/api/batch same batch: {'yes' if batch_same else 'no'} ({first_batch.status}, {second_batch.status}); "
        f"jobs made {len(made)} of 3; `model-router batch` exit {cli_code}, {len(lines)} of {len(items)} results"
    )
    return Result(
        "idempotency_on_postgres",
        verdict(prompt_same and batch_same and len(made) == 3 and cli_ok),
        figure,
        "the same key gives the same job and batch (one job each), and the CLI batch succeeds",
        {
            "prompt": [first.status, first.body, second.status, second.body],
            "batch": [first_batch.status, first_batch.body, second_batch.status, second_batch.body],
            "jobs_made": len(made), "cli_exit": cli_code, "cli_results": len(lines), "cli_stderr": cli_err,
        },
    )  # fmt: skip


# 4. Callbacks reach only public addresses.


def hostile_callback_urls(redis_port: int) -> list[str]:
    """Addresses a callback must never reach, in the spellings that slip past naive checks."""
    return [
        f"http://127.0.0.1:{redis_port}/", "http://localhost/hook", "http://LOCALHOST./hook", "http://[::1]/",
        "http://[::]/", "http://0/", "http://0.0.0.0/", "http://2130706433/", "http://0x7f000001/",
        "http://0177.0.0.1/", "http://127.1/", "http://169.254.169.254/latest/meta-data/",
        "http://[::ffff:169.254.169.254]/", "http://[::ffff:127.0.0.1]/", "http://metadata.google.internal/",
        "http://10.0.0.5/", "http://172.16.0.1/", "http://192.168.1.1/", "http://100.64.0.1/",
        "http://[fe80::1]/", "http://[fc00::1]/", "http://224.0.0.1/", "http://240.0.0.1/",
        "http://255.255.255.255/", "http://198.18.0.1/", "https://user:pw@127.0.0.1/hook",
    ]  # fmt: skip


# A literal public address: it needs no DNS, and the budget refuses its job (402) before anything runs.
PUBLIC_CONTROL_URL = "https://93.184.215.14/hook"


def _unaffordable(bench: Bench) -> dict[str, Any]:
    """A prompt whose bound is above the whole limit: accepted past validation, it gets 402 and never runs."""
    return {"prompt": "!" * 32_000, "model": "gpt-4", "max_tokens": 4096}


def callbacks_public_only(bench: Bench) -> Result:
    assert bench.private_redis is not None
    urls = hostile_callback_urls(bench.private_redis.port)
    item = _unaffordable(bench)
    outcomes: dict[str, list[int | str]] = {}
    for url in urls:
        single = bench.api("POST", "/api/prompt", {**item, "wait": False, "callback_url": url})
        batch = bench.api("POST", "/api/batch", {"prompts": [item], "callback_url": url})
        outcomes[url] = [single.status, batch.status]
    control = bench.api("POST", "/api/prompt", {**item, "wait": False, "callback_url": PUBLIC_CONTROL_URL})
    total = 2 * len(urls)
    refused = sum(status == 400 for pair in outcomes.values() for status in pair)
    passed = [url for url, pair in outcomes.items() if any(status != 400 for status in pair)]
    control_ok = control.status != 400
    figure = (
        f"{refused}/{total} hostile callback URLs refused with 400 ({len(urls)} URLs x /api/prompt, /api/batch); "
        f"public control passed the check: {'yes' if control_ok else 'no'} ({control.status})"
        + (f"; let through: {', '.join(passed[:4])}{' ...' if len(passed) > 4 else ''}" if passed else "")
    )
    return Result(
        "callbacks_public_only",
        verdict(refused == total and control_ok),
        figure,
        "every hostile URL refused with 400 at submission; a public address is not",
        {"outcomes": outcomes, "control": [PUBLIC_CONTROL_URL, control.status, control.body]},
    )


# 5. A backlog drains without re-sends.


def backlog_without_resends(bench: Bench) -> Result:
    items = 40 if bench.quick else 60
    latency_s = 1.5
    bench.configure_sim(latency_ms=latency_s * 1000)
    model = top_model(bench)
    prompts = [{"prompt": f"Backlog item {n}: name a prime above {n}.", "model": model, "max_tokens": 32}
               for n in range(items)]  # fmt: skip
    requeued_before = metric_total(bench, "model_router_jobs_requeued_total")
    started = time.monotonic()
    answer = bench.api("POST", "/api/batch", {"prompts": prompts}, timeout=60)
    ids = answer.get("job_ids") or []
    # Two slots drain it in items * latency / 2; twice that and a lease of slack before calling it stuck.
    rows = bench.wait_terminal(ids, timeout_s=items * latency_s + int(bench.settings["JOB_LEASE_S"]) + 30)
    took = time.monotonic() - started
    calls = bench.sim_calls()
    succeeded = sum(row.status is JobStatus.SUCCEEDED for row in rows.values())
    # The reaper counts every message it sends again (model_router_jobs_requeued_total).
    requeued_after = metric_total(bench, "model_router_jobs_requeued_total")
    resent: int | str = (
        round(requeued_after - requeued_before)
        if isinstance(requeued_after, float) and isinstance(requeued_before, float)
        else NA
    )
    reruns = sum(row.run_count > 1 for row in rows.values())
    figure = (
        f"{items} items on 2 batch slots, {latency_s} s upstream, JOB_LEASE_S={bench.settings['JOB_LEASE_S']}: "
        f"upstream calls {calls}, succeeded {succeeded}, re-sent by the reaper {resent}, re-run {reruns}, "
        f"in {took:.0f} s"
    )
    return Result(
        "backlog_without_resends",
        verdict(answer.status == 202 and calls == items and succeeded == items and resent == 0),
        figure,
        "upstream calls == items, all succeeded, no message re-sent",
        {
            "batch_status": answer.status, "items": items, "upstream_calls": calls, "succeeded": succeeded,
            "failed_by_error": dict(Counter(r.error_code for r in rows.values() if r.status is JobStatus.FAILED)),
            "not_terminal": sum(not r.status.is_terminal for r in rows.values()), "resent": resent,
            "rerun": reruns, "seconds": round(took, 1),
        },
    )  # fmt: skip


# 6. A hanging upstream at the longest allowed deadline.

DEADLINE_TRIES = (600, 300, 120, 60, 30, 20, 16, 12, 8)


def hanging_upstream_once(bench: Bench) -> Result:
    # The simulator bills each call when it decides the answer, then never sends it in time.
    bench.configure_sim(latency_ms=600_000)
    spent_before = bench.ledger()[0]
    tried: list[tuple[float, int | str]] = []
    job_id = None
    for deadline in DEADLINE_TRIES:
        body = {"prompt": f"Hanging upstream {uuid.uuid4().hex[:8]}", "wait": False, "model": "gpt-3.5-turbo",
                "max_tokens": 32, "deadline_s": deadline}  # fmt: skip
        answer = bench.api("POST", "/api/prompt", body)
        tried.append((deadline, answer.status))
        if answer.status == 202:
            job_id = answer.get("job_id")
            break
    if job_id is None:
        return Result("hanging_upstream_once", "FAIL", f"no deadline accepted: {tried}", "", {"tried": tried})
    lease = int(bench.settings["JOB_LEASE_S"])
    started = time.monotonic()
    wait_s = lease * 1.5 + 10 if bench.quick else lease * 3 + 30
    row = bench.wait_terminal([job_id], timeout_s=wait_s)[job_id]
    took = time.monotonic() - started
    billed, calls = bench.sim_billed(), bench.sim_calls()
    spent = bench.ledger()[0] - spent_before
    charged_once = row.settled and spent == row.cost
    # A call that timed out is charged nothing: whether the upstream billed it is not known (the simulator
    # does). The figure shows both; the README names this as not guaranteed.
    ok = row.status is JobStatus.FAILED and row.run_count == 1 and charged_once
    figure = (
        f"deadline_s {tried[-1][0]} asked, {row.deadline_s} held: {row.status.value}"
        f"{' (' + str(row.error_code) + ')' if row.error_code else ''} after {took:.0f} s, runs {row.run_count}, "
        f"charged once: {'yes' if charged_once else 'no'}; simulator billed {money(billed)} for {calls} calls, "
        f"ledger recorded {money(spent)} (timed-out calls are not charged)"
    )
    bench.configure_sim()
    return Result(
        "hanging_upstream_once",
        verdict(ok),
        figure,
        "failed, one run, settled once",
        {
            "tried": tried, "job_id": job_id, "deadline_s": row.deadline_s, "status": row.status.value,
            "error_code": row.error_code, "runs": row.run_count, "seconds": round(took, 1),
            "billed": _fixed(billed), "upstream_calls": calls, "ledger_spent": _fixed(spent),
            "job_cost": _fixed(row.cost), "settled": row.settled,
            "attempts": [(a.model, a.outcome, a.error_class, _fixed(a.cost)) for a in row.attempts],
        },
    )  # fmt: skip


# 7. Half-open probes are exact under concurrency.


def _allowed(result: object) -> bool:
    return bool(getattr(result, "allowed", result))


def breaker_probes_exact(bench: Bench) -> Result:
    rounds, callers = (20, 16) if bench.quick else (100, 32)
    client = redis.Redis.from_url(bench.redis_url, max_connections=callers * 2)
    over: Counter[int] = Counter()
    seen: Counter[int] = Counter()
    stale_moved = 0
    try:
        for probes in (1, 3):
            policy = BreakerPolicy(window_s=30, min_failures=1, failure_rate=0.01, cooldown_s=0.2,
                                   half_open_probes=probes)  # fmt: skip
            breaker = CircuitBreaker(client, policy)
            for number in range(rounds):
                model = f"bench-model-{probes}-{number}-{uuid.uuid4().hex[:6]}"
                stale = breaker.allow(model)  # a call that starts while the circuit is closed
                for _ in range(50):
                    permit = breaker.allow(model)
                    if permit is None or breaker.state(model) == OPEN:
                        break
                    breaker.record_failure(permit)
                time.sleep(policy.cooldown_s + 0.05)
                if stale is not None:
                    # Its success comes after the circuit opened: it must not close it.
                    breaker.record_success(stale)
                    if breaker.state(model) == "closed":
                        stale_moved += 1
                barrier = threading.Barrier(callers)

                def probe(breaker: CircuitBreaker = breaker, model: str = model, barrier: threading.Barrier = barrier):
                    barrier.wait(timeout=10)
                    return _allowed(breaker.allow(model))

                with ThreadPoolExecutor(max_workers=callers) as pool:
                    allowed = sum(pool.map(lambda _: probe(), range(callers)))
                seen[allowed] += 1
                if allowed != probes:
                    over[probes] += 1
    finally:
        client.close()
    total = 2 * rounds
    figure = (
        f"{sum(over.values())}/{total} rounds let a number of probes other than the limit through "
        f"({callers} concurrent callers; limit 1: {over[1]} wrong, limit 3: {over[3]} wrong; "
        f"most let through at once {max(seen, default=0)}); "
        f"{stale_moved}/{total} successes of calls started before the circuit opened closed it"
    )
    return Result(
        "breaker_probes_exact",
        verdict(not over and not stale_moved),
        figure,
        "exactly half_open_probes calls pass a half-open circuit, however many race",
        {
            "rounds": total,
            "callers": callers,
            "wrong_rounds": dict(over),
            "allowed_histogram": dict(seen),
            "stale_results_that_moved_the_state": stale_moved,
        },
    )


# 8. No prompt or answer text on shared channels.


class _ChannelListener:
    """PSUBSCRIBE '*' on the stack's Redis from a thread; keeps every message."""

    def __init__(self, redis_url: str) -> None:
        self._client = redis.Redis.from_url(redis_url)
        self._pubsub = self._client.pubsub(ignore_subscribe_messages=True)
        self.messages: list[tuple[str, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="channel-listener", daemon=True)

    def __enter__(self) -> _ChannelListener:
        self._pubsub.psubscribe("*")
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._pubsub.close()
        self._client.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._pubsub.get_message(timeout=0.2)
            if message is not None and message["type"] == "pmessage":
                channel = message["channel"]
                self.messages.append((channel.decode(errors="replace"), message["data"]))


def _stream_whole(bench: Bench, body: dict[str, Any]) -> int:
    """POST a streamed chat and read it to the end; return the status."""
    assert bench.stack is not None
    connection = http.client.HTTPConnection("127.0.0.1", bench.stack.web_port, timeout=60)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def no_text_on_shared_channels(bench: Bench) -> Result:
    marker = f"PRIVATE-{uuid.uuid4().hex}"
    small = {"model": "gpt-3.5-turbo", "max_tokens": 64}
    with _ChannelListener(bench.redis_url) as listener:
        statuses = []
        for n in range(3):
            statuses.append(bench.api("POST", "/api/prompt", {"prompt": f"Tell me about {marker} {n}", **small}))
        queued = [bench.api("POST", "/api/prompt", {"prompt": f"Queue {marker} {n}", "wait": False, **small})
                  for n in range(2)]  # fmt: skip
        chat = {"messages": [{"role": "user", "content": f"Chat about {marker}"}], **small}
        statuses.append(bench.api("POST", "/v1/chat/completions", chat))
        stream_status = _stream_whole(bench, {**chat, "stream": True})
        batch = bench.api("POST", "/api/batch", {"prompts": [f"Batch {marker} {n}" for n in range(2)]})
        ids = [a.get("job_id") for a in queued if a.get("job_id")] + list(batch.get("job_ids") or [])
        bench.wait_terminal(ids, timeout_s=60)
        bench.drain(timeout_s=30)
        time.sleep(1.0)
    rows = bench.jobs_where(RequestLog.prompt.like(f"%{marker}%"))
    answers = [row.response[:40] for row in rows.values() if row.response and len(row.response) >= 20]
    marked = [m for m in listener.messages if marker.encode() in m[1] or marker in m[0]]
    with_answer = [m for m in listener.messages if any(a.encode() in m[1] for a in answers)]
    channels = Counter(channel for channel, _ in listener.messages)
    figure = (
        f"{len(marked)} of {len(listener.messages)} pub/sub messages carried prompt text, {len(with_answer)} "
        f"answer text ({len(rows)} jobs; channels: {', '.join(sorted(channels)) or 'none'})"
    )
    return Result(
        "no_text_on_shared_channels",
        verdict(not marked and not with_answer and len(rows) >= 8),
        figure,
        "no pub/sub message carries a prompt's or an answer's text",
        {
            "messages": len(listener.messages), "with_prompt": len(marked), "with_answer": len(with_answer),
            "channels": dict(channels), "jobs": len(rows),
            "statuses": [a.status for a in statuses] + [a.status for a in queued] + [stream_status, batch.status],
        },
    )  # fmt: skip


# 9. Inputs are bounded, and a truncated answer is not escalated.


def _oversize_cases(bench: Bench) -> dict[str, tuple[str, str, Any, dict[str, str]]]:
    """Requests one field too large each; the rest priced above the limit, so that an accepted one gets 402."""
    big = _unaffordable(bench)
    heavy = "!" * 21_000

    def chat(**extra: Any) -> dict[str, Any]:
        return {"model": "gpt-4", "max_tokens": 4096, "messages": [{"role": "user", "content": heavy}], **extra}

    return {
        "10000 messages": ("POST", "/v1/chat/completions", chat(messages=[{"role": "user", "content": ""}] * 10_000
                                                                + [{"role": "user", "content": heavy}]), {}),
        "stop entries of 50000 chars": ("POST", "/v1/chat/completions", chat(stop=["s" * 50_000] * 4), {}),
        "5 stop entries": ("POST", "/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), {}),
        "user of 200000 chars": ("POST", "/v1/chat/completions", chat(user="u" * 200_000), {}),
        "message name of 200000 chars": ("POST", "/v1/chat/completions", chat(messages=[
            {"role": "user", "content": heavy, "name": "n" * 200_000}]), {}),
        "callback_url of 100000 chars": ("POST", "/api/prompt", {**big, "wait": False, "callback_url":
                                         "https://93.184.215.14/" + "a" * 100_000}, {}),
        "prompt over MAX_PROMPT_CHARS": ("POST", "/api/prompt", {**big, "prompt": "!" * 40_000}, {}),
        "metadata of 8 KiB": ("POST", "/api/prompt", {**big, "metadata": {"k": "v" * 8192}}, {}),
        "Idempotency-Key of 1000 chars": ("POST", "/api/prompt", big, {"Idempotency-Key": "k" * 1000}),
        "batch of 1001 items": ("POST", "/api/batch", {"prompts": ["hi"] * 1001}, {}),
        "search q of 2000 chars": ("GET", "/api/jobs?q=" + "q" * 2000, None, {}),
    }  # fmt: skip


def inputs_bounded(bench: Bench) -> Result:
    outcomes = {
        name: bench.api(method, path, body, headers=headers).status
        for name, (method, path, body, headers) in _oversize_cases(bench).items()
    }
    refused = sum(status in (400, 413) for status in outcomes.values())
    passed = [name for name, status in outcomes.items() if status not in (400, 413)]
    figure = f"{refused}/{len(outcomes)} oversize requests refused (400/413)" + (
        f"; let through: {', '.join(passed)}" if passed else ""
    )
    return Result(
        "inputs_bounded",
        verdict(not passed),
        figure,
        "every field too large is refused before anything is reserved",
        {"outcomes": outcomes},
    )


def truncation_not_escalated(bench: Bench) -> Result:
    count = 10 if bench.quick else 40
    bench.configure_sim()
    bodies = [{"prompt": f"Say hello in five words. ({n})", "max_tokens": 16, "timeout_s": 60} for n in range(count)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        answers = list(pool.map(lambda body: bench.api("POST", "/api/prompt", body, timeout=90), bodies))
    ids = [a.get("job_id") for a in answers if a.get("job_id")]
    rows = bench.wait_terminal(ids, timeout_s=60)
    cut = [row for row in rows.values() if row.finish_reason == "length"]
    escalated = sum(row.escalated for row in cut)
    flags = [a.get("truncated") for a in answers if isinstance(a.body, dict) and "truncated" in a.body]
    truncated: int | str = sum(bool(flag) for flag in flags) if flags else NA
    share = escalated / len(cut) if cut else 0.0
    figure = (
        f"{len(cut)} of {len(rows)} answers cut at the caller's max_tokens; share escalated {share:.0%}; "
        f"truncated: true on {truncated}"
    )
    return Result(
        "truncation_not_escalated",
        verdict(bool(cut) and escalated == 0),
        figure,
        "an answer cut at the caller's own max_tokens is not escalated",
        {
            "jobs": len(rows), "cut": len(cut), "escalated": escalated, "truncated_flags": truncated,
            "models": dict(Counter(row.model_used for row in rows.values())),
        },
    )  # fmt: skip


# 10. A client that disconnects from a stream stops its job, and its cost is on record.


def stream_disconnect_cancels(bench: Bench) -> Result:
    assert bench.stack is not None
    # The whole answer takes 6 s (inside DEFAULT_DEADLINE_S): a job that runs on ends as succeeded.
    stream_s = 6.0
    bench.configure_sim(latency_ms=stream_s * 1000, ttft_ms=300)
    spent_before = bench.ledger()[0]
    prompt = f"Write a long essay on rivers ({uuid.uuid4().hex[:8]})."
    body = {"model": "gpt-3.5-turbo", "max_tokens": 1000, "stream": True,
            "messages": [{"role": "user", "content": prompt}]}  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", bench.stack.web_port, timeout=30)
    connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = connection.getresponse()
    job_id = response.getheader("x-router-job-id")
    first = b""
    for _ in range(1000):  # chunk-size lines and comments come before the first event
        if response.status != 200 or first.startswith(b"data:"):
            break
        first = response.fp.readline()
        if not first:
            break
    disconnected = time.time()
    # Hang up without reading on: the socket is closed under the web tier's next write.
    response.close()
    connection.close()
    if job_id is None:
        return Result("stream_disconnect_cancels", "FAIL", f"no stream (status {response.status})", "", {})
    row = bench.wait_terminal([job_id], timeout_s=stream_s * 3 + 10)[job_id]
    ended_after = (row.finished_at.timestamp() if row.finished_at else time.time()) - disconnected
    spent = bench.ledger()[0] - spent_before
    billed = bench.sim_billed()
    stopped = row.status.is_terminal and row.status is not JobStatus.SUCCEEDED and ended_after < stream_s / 2
    on_record = row.cost > 0 and spent >= row.cost and spent >= billed
    figure = (
        f"job {row.status.value}{' (' + str(row.error_code) + ')' if row.error_code else ''} "
        f"{ended_after:.1f} s after the disconnect (the whole answer took {stream_s:.0f} s); job cost "
        f"{money(row.cost)}, ledger +{money(spent)}, simulator billed {money(billed)}"
    )
    bench.configure_sim()
    return Result(
        "stream_disconnect_cancels",
        verdict(stopped and on_record),
        figure,
        "the job ends (not succeeded) within half the remaining stream; its cost is in the ledger, not below the bill",
        {
            "job_id": job_id, "status": row.status.value, "error_code": row.error_code,
            "ended_after_disconnect_s": round(ended_after, 2), "job_cost": _fixed(row.cost),
            "ledger_delta": _fixed(spent), "billed": _fixed(billed),
            "first_event": first[:120].decode(errors="replace"),
        },
    )  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    name: str
    profile: str | None
    run: Callable[[Bench], Result]


# In run order: a scenario that kills a worker or leaves an upstream hanging runs last on its stack.
SCENARIOS = (
    Scenario("breaker_probes_exact", None, breaker_probes_exact),
    Scenario("budget_never_overspent", "small_budget", budget_never_overspent),
    Scenario("window_never_overspent", "small_window", window_never_overspent),
    Scenario("callbacks_public_only", "small_budget", callbacks_public_only),
    Scenario("inputs_bounded", "small_budget", inputs_bounded),
    Scenario("idempotency_on_postgres", "main", idempotency_on_postgres),
    Scenario("no_text_on_shared_channels", "main", no_text_on_shared_channels),
    Scenario("truncation_not_escalated", "main", truncation_not_escalated),
    Scenario("stream_disconnect_cancels", "main", stream_disconnect_cancels),
    Scenario("backlog_without_resends", "main", backlog_without_resends),
    Scenario("every_job_ends_once", "main", every_job_ends_once),
    Scenario("hanging_upstream_once", "main", hanging_upstream_once),
)
