"""Client commands over the request log: `jobs` (search) and `report costs`."""

from __future__ import annotations

from typing import Any

import click
from rich.table import Table
from rich.text import Text

from shared.cli import commands

PREVIEW_CHARS = 40


@click.command()
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed"]), help="Only this status.")
@click.option("--model", help="Only jobs answered by this model.")
@click.option("--tier", help="Only jobs answered on this tier.")
@click.option("--since", metavar="WHEN", help="Only jobs created at or after this ISO date or time (UTC if no zone).")
@click.option("--until", metavar="WHEN", help="Only jobs created before this ISO date or time (UTC if no zone).")
@click.option(
    "-q",
    "--query",
    "q",
    metavar="TEXT",
    help=(
        "A piece of the prompt (any case), or a job id. Where no index serves it (SQLite, or text without three "
        "letters or digits in a row) it covers at most the 31 days before --until."
    ),
)
@click.option("--limit", type=click.IntRange(1, 200), default=50, show_default=True, help="Jobs per page.")
@click.option("--all", "every_page", is_flag=True, help="Follow the pages to the last matching job.")
@commands.json_option
@click.pass_context
def jobs(ctx: click.Context, every_page: bool, as_json: bool, **filters: Any) -> None:
    """List jobs newest first: yours, or everyone's with an admin key."""
    params = {name: str(value) for name, value in filters.items() if value is not None}
    found: list[dict[str, Any]] = []
    with commands.client_of(ctx) as client:
        page = client.get("/api/jobs", params=params).body
        found += page["jobs"]
        while every_page and page["next_cursor"] is not None:
            page = client.get("/api/jobs", params={**params, "cursor": page["next_cursor"]}).body
            found += page["jobs"]
    if as_json:
        commands.echo_json({"jobs": found, "next_cursor": page["next_cursor"]})
        return
    console = commands.make_console()
    console.print(_jobs_table(found))
    if page["next_cursor"] is not None:
        commands.make_console(stderr=True).print(f"more jobs match: --all lists them all ({len(found)} shown)")


def _jobs_table(found: list[dict[str, Any]]) -> Table:
    table = Table(title=f"{len(found)} job{'s' if len(found) != 1 else ''}")
    table.add_column("created (UTC)", no_wrap=True)
    table.add_column("job", no_wrap=True)
    table.add_column("status")
    table.add_column("model")
    table.add_column("tier")
    table.add_column("cost", justify="right")
    table.add_column("latency", justify="right")
    table.add_column("prompt")
    for job in found:
        status = job["status"] + (" (cached)" if job.get("cached") else "")
        style = {"succeeded": "green", "failed": "red"}.get(job["status"], "yellow")
        table.add_row(
            job["created_at"][:19].replace("T", " "),
            job["job_id"],
            Text(status, style=style),
            job["model_used"] or "-",
            job["tier"] or "-",
            commands.money(job["cost"]),
            commands.format_ms(job["latency_ms"]),
            Text(_shorten(" ".join(job["prompt_preview"].split()))),
        )
    return table


def _shorten(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


@click.group()
def report() -> None:
    """Reports over the request log."""


@report.command()
@click.option(
    "--period",
    type=click.Choice(["week", "month"]),
    default="month",
    show_default=True,
    help="week: the last 7 days including today; month: the current calendar month (UTC).",
)
@commands.json_option
@click.pass_context
def costs(ctx: click.Context, period: str, as_json: bool) -> None:
    """Show the period's cost and savings, per day, model, tier and API key (yours, or all with an admin key)."""
    with commands.client_of(ctx) as client:
        view = client.get("/api/reports/costs", params={"period": period}).body
    if as_json:
        commands.echo_json(view)
        return
    console = commands.make_console()
    totals = Table(
        title=f"Costs this {period} ({view['since'][:10]} to {view['by_day'][-1]['date']})", show_header=False
    )
    totals.add_column("metric")
    totals.add_column("value", justify="right")
    totals.add_row("requests", str(view["requests"]))
    totals.add_row("cost", commands.money(view["total_cost"]))
    totals.add_row("on the strongest tier", commands.money(view["baseline_cost"]))
    totals.add_row("savings", f"{commands.money(view['savings'])} ({view['savings_pct']:.1f}%)")
    console.print(totals)
    money = commands.money
    days = [
        [day["date"], f"{day['requests']:,}", money(day["cost"]), money(day["baseline_cost"])] for day in view["by_day"]
    ]
    console.print(_breakdown("By day", ["date", "requests", "cost", "strongest tier"], days))
    models = [
        [
            row["model"],
            f"{row['requests']:,}",
            money(row["cost"]),
            f"{row['prompt_tokens']:,}",
            f"{row['completion_tokens']:,}",
        ]
        for row in view["by_model"]
    ]
    console.print(_breakdown("By model", ["model", "requests", "cost", "tokens in", "tokens out"], models))
    tiers = [[row["tier"], f"{row['requests']:,}", money(row["cost"])] for row in view["by_tier"]]
    console.print(_breakdown("By tier", ["tier", "requests", "cost"], tiers))
    keys = [[_key_label(row), f"{row['requests']:,}", money(row["cost"])] for row in view["by_key"]]
    console.print(_breakdown("By API key", ["key", "requests", "cost"], keys))


def _breakdown(title: str, columns: list[str], rows: list[list[Any]]) -> Table:
    """A table whose first column names the row (null as '-') and whose other columns are right-aligned."""
    table = Table(title=title)
    table.add_column(columns[0])
    for column in columns[1:]:
        table.add_column(column, justify="right")
    for name, *cells in rows:
        table.add_row("-" if name is None else str(name), *cells)
    return table


def _key_label(row: dict[str, Any]) -> str:
    if row["api_key_id"] is None:
        return "(no key)"
    return f"{row['name']} (#{row['api_key_id']})"
