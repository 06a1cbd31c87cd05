"""Reading batch input: JSON Lines or CSV, one item per line, each checked before anything is submitted."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

import click

from shared.cli.http import EXIT_USAGE

# The /api/prompt fields a batch item may carry (no wait, timeout_s, callback_url or on_budget_pressure).
ITEM_FIELDS = ("prompt", "max_tokens", "preference", "model", "tier", "metadata", "deadline_s")
PREFERENCES = ("cost", "balanced", "quality")


class BadInput(click.ClickException):
    """The input (or the --out file to resume from) cannot be used; exit 2."""

    exit_code = EXIT_USAGE


def read_items(text: str, *, fmt: str, source: str) -> list[dict[str, Any]]:
    """Return the batch items in `text`, as JSON Lines or CSV; BadInput names the line of any bad one."""
    text = text.removeprefix("\ufeff")
    if fmt == "auto":
        fmt = "jsonl" if text.lstrip().startswith(("{", '"')) else "csv"
    items = read_jsonl(text, source=source) if fmt == "jsonl" else read_csv(text, source=source)
    if not items:
        raise BadInput(f"{source}: no prompts in the input")
    return items


def read_jsonl(text: str, *, source: str) -> list[dict[str, Any]]:
    """Read one item per non-blank line: an object with a `prompt` (and optional fields), or a string."""
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            raise BadInput(f"{source} line {number}: not JSON ({exc})") from None
        if isinstance(value, str):
            value = {"prompt": value}
        if not isinstance(value, dict):
            raise BadInput(f"{source} line {number}: expected an object with a 'prompt' field")
        items.append(_checked(value, where=f"{source} line {number}"))
    return items


def read_csv(text: str, *, source: str) -> list[dict[str, Any]]:
    """Read one item per row of a CSV with a `prompt` column (other known fields may be columns too)."""
    reader = csv.DictReader(io.StringIO(text, newline=""))
    columns = [name.strip() for name in reader.fieldnames or []]
    if "prompt" not in columns:
        raise BadInput(f"{source}: a CSV needs a header row with a 'prompt' column (found: {', '.join(columns)})")
    unknown = [name for name in columns if name not in ITEM_FIELDS]
    if unknown:
        raise BadInput(f"{source}: unknown column(s) {', '.join(unknown)}; allowed: {', '.join(ITEM_FIELDS)}")
    items = []
    for row in reader:
        where = f"{source} line {reader.line_num}"
        cells = {(name or "").strip(): value for name, value in row.items() if value not in (None, "")}
        if not cells:
            continue
        try:
            for name, convert in (("max_tokens", int), ("deadline_s", float), ("metadata", json.loads)):
                if name in cells:
                    cells[name] = convert(cells[name])
        except ValueError as exc:
            raise BadInput(f"{where}: {exc}") from None
        items.append(_checked(cells, where=where))
    return items


def _checked(item: dict[str, Any], *, where: str) -> dict[str, Any]:
    """Check what can be checked here, so that a bad item stops the run before anything is submitted."""
    unknown = sorted(set(item) - set(ITEM_FIELDS))
    if unknown:
        raise BadInput(
            f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(ITEM_FIELDS)} "
            "(keep your own fields under 'metadata')"
        )
    prompt = item.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise BadInput(f"{where}: 'prompt' must be a non-empty string")
    if "max_tokens" in item and (type(item["max_tokens"]) is not int or not 1 <= item["max_tokens"] <= 4096):
        raise BadInput(f"{where}: 'max_tokens' must be an integer in 1..4096")
    if "preference" in item and item["preference"] not in PREFERENCES:
        raise BadInput(f"{where}: 'preference' must be one of {', '.join(PREFERENCES)}")
    if "metadata" in item and not isinstance(item["metadata"], dict):
        raise BadInput(f"{where}: 'metadata' must be a JSON object")
    for name in ("model", "tier"):
        if name in item and item[name] is not None and not isinstance(item[name], str):
            raise BadInput(f"{where}: {name!r} must be a string")
    deadline = item.get("deadline_s")
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, int | float)):
        raise BadInput(f"{where}: 'deadline_s' must be a number")
    return item
