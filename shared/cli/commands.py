"""Client commands: prompt, submit, job, budget, stats and health, as tables or (with --json) raw JSON."""

from __future__ import annotations

import json
import sys
import time
from contextlib import nullcontext
from typing import Any

import click
from rich.console import Console
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from shared.cli.http import EXIT_FAILED
from shared.cli.http import EXIT_UNREACHABLE
from shared.cli.http import ApiClient
from shared.cli.http import ApiError
from shared.cli.http import Endpoint

TERMINAL = ("succeeded", "failed")
# How long the server holds a synchronous request open; after that the CLI polls the job.
SERVER_WAIT_S = 30.0
EXIT_INTERRUPTED = 130

json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer instead of a table.")


def prompt_options(command: Any) -> Any:
    """Add the /api/prompt body options shared by `prompt` and `submit`."""
    options = (
        click.option(
            "--preference",
            type=click.Choice(["cost", "balanced", "quality"]),
            help="Shift the routing thresholds (server default: balanced).",
        ),
        click.option("--model", help="Force a catalog model (no routing; still budgeted)."),
        click.option("--tier", help="Force a tier: cheap, mid or high."),
        click.option("--max-tokens", type=click.IntRange(1, 4096), help="Answer length limit (server default: 1000)."),
        click.option("--metadata", metavar="JSON", help="A JSON object stored with the job and returned as is."),
        click.option(
            "--deadline",
            type=click.FloatRange(0, 600, min_open=True),
            metavar="SECONDS",
            help="Total time for retries, fallbacks and escalation.",
        ),
        click.option(
            "--downgrade", is_flag=True, help="Under budget pressure, use the strongest tier the budget covers."
        ),
        click.option("--idempotency-key", metavar="KEY", help="Send Idempotency-Key: the same key never runs twice."),
    )
    for option in reversed(options):
        command = option(command)
    return command


def client_of(ctx: click.Context) -> ApiClient:
    """Return a client for the group's --url, --key and --timeout."""
    return ApiClient(ctx.find_object(Endpoint) or Endpoint())


@click.command()
@click.argument("text", metavar="PROMPT")
@prompt_options
@click.option(
    "--timeout",
    "wait_timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="Give up waiting for the answer after this long (the job goes on). Default: wait.",
)
@json_option
@click.pass_context
def prompt(ctx: click.Context, text: str, wait_timeout: float | None, as_json: bool, **fields: Any) -> None:
    """Route PROMPT (or '-' for stdin) and print the answer with its model, tier, difficulty, cost and latency.

    Exits 1 if the job failed upstream.
    """
    body, headers = _prompt_body(text, fields)
    server_wait = min(SERVER_WAIT_S, wait_timeout) if wait_timeout else SERVER_WAIT_S
    body.update(wait=True, timeout_s=server_wait)
    started = time.monotonic()
    with client_of(ctx) as client, _status(as_json, "routing…"):
        answer = client.post("/api/prompt", body, headers=headers, timeout_s=server_wait + client.endpoint.timeout_s)
        job = answer.body
        if answer.status == 202:
            remaining = None if wait_timeout is None else max(0.0, wait_timeout - (time.monotonic() - started))
            job = _wait_for(client, job["job_id"], timeout_s=remaining)
    _finish(job, as_json=as_json)


@click.command()
@click.argument("text", metavar="PROMPT")
@prompt_options
@json_option
@click.pass_context
def submit(ctx: click.Context, text: str, as_json: bool, **fields: Any) -> None:
    """Queue PROMPT (or '-' for stdin) without waiting; print its job id.

    Follow it with `model-router job ID --wait`.
    """
    body, headers = _prompt_body(text, fields)
    body["wait"] = False
    with client_of(ctx) as client:
        answer = client.post("/api/prompt", body, headers=headers)
    if as_json:
        echo_json(answer.body)
    else:
        click.echo(answer.body["job_id"])


@click.command()
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Poll until the job has finished.")
@click.option(
    "--timeout",
    "wait_timeout",
    type=click.FloatRange(min=0, min_open=True),
    metavar="SECONDS",
    help="With --wait: give up after this long (exit 1).",
)
@click.option("--cancel", is_flag=True, help="Cancel the job if it has not started (409 once it has).")
@json_option
@click.pass_context
def job(ctx: click.Context, job_id: str, wait: bool, wait_timeout: float | None, cancel: bool, as_json: bool) -> None:
    """Show job JOB_ID: its state, or its result once finished.

    Exits 1 if the job failed (or --wait timed out), 7 if there is no such job.
    """
    with client_of(ctx) as client:
        if cancel:
            body = client.delete(f"/api/jobs/{job_id}").body
        elif wait:
            with _status(as_json, f"waiting for job {job_id}…"):
                body = _wait_for(client, job_id, timeout_s=wait_timeout)
        else:
            body = client.get(f"/api/jobs/{job_id}").body
    if body.get("status") in TERMINAL:
        _finish(body, as_json=as_json)
    elif as_json:
        echo_json(body)
    else:
        click.echo(f"job {body['job_id']} is {body['status']} (created {body.get('created_at', '?')})")


@click.command()
@click.option(
    "--clear-hold",
    is_flag=True,
    help="Let a scope held by a job billed over its bound reserve again (admin key, or keys off).",
)
@click.option("--scope", metavar="SCOPE", help="With --clear-hold: the scope (global, key:<id>); else your own.")
@json_option
@click.pass_context
def budget(ctx: click.Context, clear_hold: bool, scope: str | None, as_json: bool) -> None:
    """Show this month's budget: limit, spent, reserved, remaining (yours, or global with an admin key)."""
    with client_of(ctx) as client:
        if clear_hold:
            view = client.request("DELETE", "/api/budget/hold", params={"scope": scope} if scope else None).body
        else:
            view = client.get("/api/budget").body
    if as_json:
        echo_json(view)
        return
    if view.get("held_by_job"):
        click.echo(
            f"held: job {view['held_by_job']} was billed more than its bound; nothing more is reserved until "
            "`model-router budget --clear-hold` (admin)",
            err=True,
        )
    table = Table(title=f"Budget {view['year']}-{view['month']:02d} ({view.get('scope', 'global')})")
    for column in ("limit", "spent", "reserved", "remaining", "used", "requests"):
        table.add_column(column, justify="right")
    table.add_row(
        money(view["monthly_limit"]),
        money(view["total_spent"]),
        money(view["reserved"]),
        money(view["remaining"]),
        f"{view['percentage_used']:.2f}%",
        str(view["request_count"]),
    )
    make_console().print(table)


@click.command()
@click.option("--since", metavar="DATE", help="Count only requests since this ISO date or time.")
@json_option
@click.pass_context
def stats(ctx: click.Context, since: str | None, as_json: bool) -> None:
    """Show request counts, success and escalation rates, cost, latency and tokens, in total and per model."""
    with client_of(ctx) as client:
        view = client.get("/api/stats", params={"since": since} if since else None).body
    if as_json:
        echo_json(view)
        return
    totals = Table(title="Requests" + (f" since {since}" if since else ""), show_header=False)
    totals.add_column("metric")
    totals.add_column("value", justify="right")
    for label, value in (
        ("requests", str(view["total_requests"])),
        ("succeeded", str(view["successful_requests"])),
        ("failed", str(view["failed_requests"])),
        ("success rate", f"{view['success_rate']:.1f}%"),
        ("escalation rate", f"{view['escalation_rate']:.1f}%"),
        ("retries", str(view.get("total_retries", "-"))),
        ("fallback attempts", str(view.get("fallback_attempts", "-"))),
        ("cost", money(view["total_cost"])),
        ("baseline cost", money(view.get("baseline_cost"))),
        ("savings", _savings(view)),
        ("cache hits", str(view.get("cache_hits", "-"))),
        ("avg latency", format_ms(view["avg_latency_ms"])),
        ("latency p50 / p95 / p99", _percentiles(view.get("latency_ms") or {})),
        ("tokens", f"{view['total_tokens']:,}"),
    ):
        totals.add_row(label, value)
    console = make_console()
    console.print(totals)
    by_model = view.get("by_model") or {}
    if by_model:
        models = Table(title="By model")
        models.add_column("model")
        for column in ("requests", "cost", "avg latency", "tokens"):
            models.add_column(column, justify="right")
        circuits = view.get("circuits") or {}
        if circuits:
            models.add_column("circuit")
        for name, row in sorted(by_model.items()):
            cells = [
                name,
                str(row["requests"]),
                money(row["cost"]),
                format_ms(row["avg_latency_ms"]),
                f"{row['tokens']:,}",
            ]
            models.add_row(*cells, *([circuits.get(name, "closed")] if circuits else []))
        console.print(models)


@click.command()
@json_option
@click.pass_context
def health(ctx: click.Context, as_json: bool) -> None:
    """Check the server: database, broker, live workers and circuit breakers.

    Exits 3 when the server is unreachable or reports itself unavailable.
    """
    with client_of(ctx) as client:
        answer = client.get("/api/health", accept=(200, 503))
    view = answer.body
    if as_json:
        echo_json(view)
    else:
        checks = view.get("checks", {})
        table = Table(title=f"{client.endpoint.url}: {view.get('status')}", show_header=False)
        table.add_column("check")
        table.add_column("state")
        for name in ("database", "broker", "workers"):
            state = str(checks.get(name, "-"))
            healthy = state == "ok" or (state.isdigit() and state != "0")
            table.add_row(name, Text(state, style="green" if healthy else "red"))
        for model, state in sorted((checks.get("circuits") or {}).items()):
            table.add_row(f"circuit {model}", Text(state, style="green" if state == "closed" else "yellow"))
        console = make_console()
        console.print(table)
        if answer.status == 200 and checks.get("workers") == 0:
            make_console(stderr=True).print("[yellow]warning:[/] no worker is alive: jobs will wait in the queue")
    if answer.status != 200:
        sys.exit(EXIT_UNREACHABLE)


def _prompt_body(text: str, fields: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return the /api/prompt body and headers for PROMPT and the options given."""
    if text == "-":
        text = sys.stdin.read()
    body: dict[str, Any] = {"prompt": text}
    for name in ("preference", "model", "tier", "max_tokens"):
        if fields.get(name) is not None:
            body[name] = fields[name]
    if fields.get("deadline") is not None:
        body["deadline_s"] = fields["deadline"]
    if fields.get("metadata") is not None:
        try:
            metadata = json.loads(fields["metadata"])
        except ValueError as exc:
            raise click.BadParameter(f"not JSON: {exc}", param_hint="--metadata") from None
        if not isinstance(metadata, dict):
            raise click.BadParameter("must be a JSON object", param_hint="--metadata")
        body["metadata"] = metadata
    if fields.get("downgrade"):
        body["on_budget_pressure"] = "downgrade"
    key = fields.get("idempotency_key")
    return body, ({"Idempotency-Key": key} if key else {})


def _wait_for(client: ApiClient, job_id: str, *, timeout_s: float | None) -> dict[str, Any]:
    """Poll the job until it has finished; ApiError if `timeout_s` passes first."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    interval = 0.25
    try:
        while True:
            body = client.get(f"/api/jobs/{job_id}").body
            if body.get("status") in TERMINAL:
                return body
            if deadline is not None and time.monotonic() + interval > deadline:
                raise ApiError(
                    f"job {job_id} is still {body.get('status')}; follow it with `model-router job {job_id} --wait`",
                    exit_code=EXIT_FAILED,
                )
            time.sleep(interval)
            interval = min(interval * 1.5, 2.0)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; job {job_id} goes on: `model-router job {job_id} --wait`", err=True)
        sys.exit(EXIT_INTERRUPTED)


def _finish(job: dict[str, Any], *, as_json: bool) -> None:
    """Print a finished job; exit 1 if it failed."""
    if as_json:
        echo_json(job)
    else:
        show_job(make_console(), job)
    if job.get("status") != "succeeded":
        sys.exit(EXIT_FAILED)


def show_job(console: Console, job: dict[str, Any]) -> None:
    """Print a finished job: the answer (or error) in a panel, then where it went and what it cost."""
    if job.get("status") == "succeeded":
        console.print(Panel(Text(job.get("response") or ""), title="answer", title_align="left", border_style="green"))
    else:
        error = job.get("error") or {}
        message = Text(f"{error.get('code', 'failed')}: {error.get('message', '')}")
        console.print(Panel(message, title="failed", title_align="left", border_style="red"))
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    difficulty = job.get("difficulty_score")
    rows = [
        ("model", f"{job.get('model_used') or '-'} ({job.get('tier') or '-'} tier)"),
        ("difficulty", "-" if difficulty is None else f"{difficulty:.2f} ({job.get('difficulty_level')})"),
        ("cost", money(job.get("cost"))),
        ("latency", format_ms(job.get("latency_ms"))),
        (
            "tokens",
            f"{job.get('tokens_used') or 0:,} ({job.get('prompt_tokens') or 0:,} in, "
            f"{job.get('completion_tokens') or 0:,} out)",
        ),
    ]
    if job.get("escalated"):
        rows.append(("escalated", str(job.get("escalation_reason") or "yes")))
    if job.get("downgraded"):
        rows.append(("downgraded from", str(job.get("downgraded_from"))))
    if job.get("retry_count"):
        rows.append(("retries", str(job["retry_count"])))
    rows.append(("job", str(job.get("job_id"))))
    for label, value in rows:
        grid.add_row(label, Text(value))
    console.print(grid)


def money(value: Any) -> str:
    """Format US dollars: cents for large amounts, up to six decimals for the small ones LLM calls cost."""
    if value is None:
        return "-"
    amount = float(value)
    if abs(amount) >= 100:
        return f"${amount:,.2f}"
    text = f"{amount:,.6f}".rstrip("0")
    whole, _, fraction = text.partition(".")
    return f"${whole}.{fraction.ljust(2, '0')}"


def _savings(view: dict[str, Any]) -> str:
    if view.get("savings") is None:
        return "-"
    return f"{money(view['savings'])} ({view.get('savings_pct', 0):.1f}%)"


def _percentiles(latency: dict[str, Any]) -> str:
    return " / ".join(format_ms(latency.get(name)) for name in ("p50", "p95", "p99"))


def format_ms(value: Any) -> str:
    """Format milliseconds, or '-' for none."""
    return "-" if value is None else f"{float(value):,.0f} ms"


def echo_json(body: Any) -> None:
    """Print `body` as indented JSON."""
    click.echo(json.dumps(body, indent=2, ensure_ascii=False))


def make_console(*, stderr: bool = False) -> Console:
    """Return a console for stdout (or stderr) without syntax highlighting."""
    # Built per call, so that it writes to whatever sys.stdout is now (click's test runner swaps it).
    return Console(stderr=stderr, highlight=False)


def _status(quiet: bool, message: str) -> Any:
    """A spinner on stderr while we wait (only on a terminal; nothing when printing JSON)."""
    console = make_console(stderr=True)
    if quiet or not console.is_terminal:
        return nullcontext()
    return console.status(message)
