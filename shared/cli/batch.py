"""`model-router batch`: submit a file of prompts, follow it with a progress bar, and resume an interrupted run.

Items are numbered by their position in the input (0-based). They go out in chunks of at most 1000
(POST /api/batch), each with an Idempotency-Key derived from the chunk's position and content, so a run
that is interrupted and started again gets the same batches back instead of creating new work. Each job
is appended to --out as one line, `{"index": i, ...the job...}`, as soon as it has finished; a re-run
skips the items that already have a line there.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import sys
import time
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any
from typing import TextIO

import click
from rich.console import Console
from rich.progress import BarColumn
from rich.progress import MofNCompleteColumn
from rich.progress import Progress
from rich.progress import TaskID
from rich.progress import TextColumn
from rich.progress import TimeElapsedColumn
from rich.progress import TimeRemainingColumn
from rich.text import Text

from shared.cli import commands
from shared.cli import inputs
from shared.cli.commands import EXIT_INTERRUPTED
from shared.cli.commands import TERMINAL
from shared.cli.http import EXIT_FAILED
from shared.cli.http import EXIT_RATE_LIMITED
from shared.cli.http import EXIT_UNREACHABLE
from shared.cli.http import ApiClient
from shared.cli.http import ApiError
from shared.cli.inputs import PREFERENCES
from shared.cli.inputs import BadInput

MAX_CHUNK = 1000
# Poll errors worth waiting out (a restarting server, a rate limit) before giving up.
TRANSIENT_EXITS = (EXIT_UNREACHABLE, EXIT_RATE_LIMITED)
MAX_POLL_FAILURES = 10


# --- chunks and their Idempotency-Keys -----------------------------------------------------------


def chunk_ranges(total: int, *, size: int) -> list[range]:
    """Split item positions 0..total-1 into consecutive ranges of at most `size`."""
    return [range(start, min(start + size, total)) for start in range(0, total, size)]


def idempotency_key(items: list[dict[str, Any]], *, start: int, salt: str = "") -> str:
    """Return the Idempotency-Key of the chunk of `items` that begins at input position `start`.

    The same chunk of the same input always gets the same key (a re-run gets its batch back, never a
    second one); any change to the chunk's items, its position or the salt gives another key.
    """
    canonical = json.dumps(
        {"start": start, "items": items, "salt": salt}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return "mr-cli-batch-" + hashlib.sha256(canonical.encode()).hexdigest()[:48]


# --- the --out file ------------------------------------------------------------------------------


def read_results(path: Path, *, total: int) -> dict[int, dict[str, Any]]:
    """Return the finished results already in `path` by index, dropping a line cut short by an interruption."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    whole = raw[: raw.rfind(b"\n") + 1]
    if len(whole) != len(raw):
        # The last write was interrupted mid-line: drop the fragment so that appends start on a fresh line.
        with path.open("r+b") as handle:
            handle.truncate(len(whole))
    results: dict[int, dict[str, Any]] = {}
    for number, line in enumerate(whole.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            result = json.loads(line)
        except ValueError:
            raise BadInput(f"{path} line {number}: not JSON; is it the output of `model-router batch`?") from None
        index = result.get("index") if isinstance(result, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise BadInput(f"{path} line {number}: no 'index'; is it the output of `model-router batch`?")
        if not 0 <= index < total:
            raise BadInput(
                f"{path} holds a result for item {index} but the input has {total} items: is it another input's output?"
            )
        if result.get("status") in TERMINAL:
            results[index] = result
    return results


# --- the run -------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What the run has seen finish so far."""

    succeeded: int = 0
    failed: int = 0
    cost: float = 0.0

    def add(self, result: dict[str, Any]) -> None:
        """Count one finished job."""
        if result.get("status") == "succeeded":
            self.succeeded += 1
        else:
            self.failed += 1
        self.cost += float(result.get("cost") or 0)


@dataclass
class Chunk:
    """One POST /api/batch worth of items, and the batch the server made of it."""

    positions: range
    key: str
    batch_id: str | None = None
    waiting: set[int] = field(default_factory=set)


class Runner:
    """Submit the unfinished chunks, poll them, and write each finished job out as soon as it is seen."""

    def __init__(
        self,
        client: ApiClient,
        items: list[dict[str, Any]],
        *,
        done: dict[int, dict[str, Any]],
        sink: TextIO,
        console: Console,
        chunk_size: int,
        poll_interval_s: float,
        salt: str,
    ) -> None:
        self.client = client
        self.items = items
        self.done = done
        self.sink = sink
        self.console = console
        self.poll_interval_s = poll_interval_s
        self.tally = Tally()
        for result in done.values():
            self.tally.add(result)
        self.chunks = []
        for positions in chunk_ranges(len(items), size=chunk_size):
            waiting = {index for index in positions if index not in done}
            if waiting:
                key = idempotency_key(items[positions.start : positions.stop], start=positions.start, salt=salt)
                self.chunks.append(Chunk(positions, key, _known_batch(done, positions), waiting))
        self._progress: Progress | None = None
        self._task: TaskID | None = None

    def run(self) -> ApiError | None:
        """Run to the end; return the error that stopped submission early, if any (its submitted work is kept)."""
        with self._make_progress() as progress:
            self._progress = progress
            self._task = progress.add_task("batch", total=len(self.items), completed=len(self.done), **self._fields())
            stopped = self._submit_all()
            self._poll_until_done()
        return stopped

    def _submit_all(self) -> ApiError | None:
        for position, chunk in enumerate(self.chunks):
            if chunk.batch_id is not None:
                continue
            try:
                chunk.batch_id = self._submit(chunk)
            except ApiError as error:
                # Keep following what was already accepted (it is paid for); stop submitting more.
                del self.chunks[position:]
                return error
        return None

    def _submit(self, chunk: Chunk) -> str:
        body = {"prompts": self.items[chunk.positions.start : chunk.positions.stop]}
        try:
            answer = self.client.post("/api/batch", body, headers={"Idempotency-Key": chunk.key}, accept=(202,))
        except ApiError as error:
            if error.status == 400:
                # The server names items by their place in the chunk: name them by their place in the input.
                start = chunk.positions.start
                message = re.sub(r"prompts\[(\d+)\]", lambda m: f"item {start + int(m.group(1))}", error.message)
                raise ApiError(message, exit_code=error.exit_code, status=400) from None
            raise
        return answer.body["batch_id"]

    def _poll_until_done(self) -> None:
        failures = 0
        active = [chunk for chunk in self.chunks if chunk.waiting]
        while active:
            try:
                for chunk in active:
                    self._poll(chunk)
                failures = 0
            except ApiError as error:
                failures += 1
                if error.exit_code not in TRANSIENT_EXITS or failures >= MAX_POLL_FAILURES:
                    raise
                self.console.print(Text.assemble(("retrying: ", "yellow"), error.format_message()), soft_wrap=True)
                time.sleep(min(2.0**failures, 30.0))
                continue
            active = [chunk for chunk in active if chunk.waiting]
            if active:
                time.sleep(self.poll_interval_s)

    def _poll(self, chunk: Chunk) -> None:
        try:
            view = self.client.get(f"/api/batch/{chunk.batch_id}").body
        except ApiError as error:
            if error.status != 404:
                raise
            # The batch named in --out is gone (another server, or a reset database): submit the chunk anew.
            chunk.batch_id = self._submit(chunk)
            return
        if view.get("total", len(chunk.positions)) != len(chunk.positions):
            # A batch of an earlier run with another --chunk-size: this chunk is not it.
            chunk.batch_id = self._submit(chunk)
            return
        for position, job in enumerate(view.get("jobs") or []):
            index = chunk.positions.start + int(job.get("batch_index", position))
            if index in chunk.waiting and job.get("status") in TERMINAL:
                self._record(index, job)
                chunk.waiting.discard(index)

    def _record(self, index: int, job: dict[str, Any]) -> None:
        result = {"index": index, **job}
        # One line per job, flushed at once: an interrupted run keeps everything that finished.
        self.sink.write(json.dumps(result, ensure_ascii=False) + "\n")
        self.sink.flush()
        self.done[index] = result
        self.tally.add(result)
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, **self._fields())

    def _fields(self) -> dict[str, Any]:
        return {"succeeded": self.tally.succeeded, "failed": self.tally.failed, "cost": commands.money(self.tally.cost)}

    def _make_progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]batch"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("[green]{task.fields[succeeded]} ok[/] [red]{task.fields[failed]} failed[/]"),
            TextColumn("{task.fields[cost]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
            # Results may go to stdout: never let the live display capture them onto stderr.
            redirect_stdout=False,
            redirect_stderr=False,
        )


def _known_batch(done: dict[int, dict[str, Any]], positions: range) -> str | None:
    """Return the batch a previous run made of these positions, as its results in --out name it.

    Only a batch that starts where this chunk starts counts (an earlier run may have used another
    --chunk-size); `_poll` checks that it also ends where the chunk ends.
    """
    for index in positions:
        result = done.get(index, {})
        batch_id, batch_index = result.get("batch_id"), result.get("batch_index")
        if batch_id and isinstance(batch_index, int) and index - batch_index == positions.start:
            return str(batch_id)
    return None


@click.command()
@click.argument("source", metavar="FILE", type=click.File("r", encoding="utf-8-sig", lazy=True))
@click.option(
    "--out",
    type=click.Path(dir_okay=False, writable=True, path_type=Path),
    help="Append each finished job here as a JSON line; an existing file is resumed. Default: stdout.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", "jsonl", "csv"]),
    default="auto",
    show_default=True,
    help="Input format; auto: a .csv name or a first line that is not JSON means CSV.",
)
@click.option("--preference", type=click.Choice(PREFERENCES), help="Default for items that name none.")
@click.option("--model", help="Default model for items that name none.")
@click.option("--tier", help="Default tier for items that name none.")
@click.option("--max-tokens", type=click.IntRange(1, 4096), help="Default for items that name none.")
@click.option(
    "--chunk-size",
    type=click.IntRange(1, MAX_CHUNK),
    default=MAX_CHUNK,
    show_default=True,
    help="Items per POST /api/batch.",
)
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.05),
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="Time between polls of each batch.",
)
@click.option(
    "--fresh",
    is_flag=True,
    help="Start over: truncate --out and submit everything as new work (a plain re-run reuses earlier batches).",
)
@click.pass_context
def batch(
    ctx: click.Context,
    source: TextIO,
    out: Path | None,
    fmt: str,
    preference: str | None,
    model: str | None,
    tier: str | None,
    max_tokens: int | None,
    chunk_size: int,
    poll_interval: float,
    fresh: bool,
) -> None:
    """Run every prompt in FILE (JSON Lines with a 'prompt' field, CSV with a 'prompt' column, or '-' for stdin).

    Shows a progress bar (done, failed, cost, ETA) while it polls and writes one line per finished job,
    {"index": N, ...the job...}, to --out (in the order jobs finish). Run the same command again to resume
    an interrupted run: items already in --out are skipped and unfinished ones are picked up from the batches
    already submitted, never submitted twice. Exits 0 when every item succeeded, 1 if any failed.
    """
    name = getattr(source, "name", "-")
    if fmt == "auto" and str(name).lower().endswith(".csv"):
        fmt = "csv"
    items = inputs.read_items(source.read(), fmt=fmt, source="stdin" if name in ("-", "<stdin>") else str(name))
    defaults = {"preference": preference, "model": model, "tier": tier, "max_tokens": max_tokens}
    items = [_with_defaults(item, defaults) for item in items]

    console = Console(stderr=True, highlight=False)
    if fresh and out is not None and out.exists():
        out.write_text("")
    done = read_results(out, total=len(items)) if out is not None else {}
    resumed = len(done)
    if done:
        console.print(f"resuming: {len(done)} of {len(items)} items already in {out}", soft_wrap=True, markup=False)
    started = time.monotonic()
    sink = out.open("a", encoding="utf-8") if out is not None else sys.stdout
    try:
        with commands.client_of(ctx) as client:
            runner = Runner(
                client,
                items,
                done=done,
                sink=sink,
                console=console,
                chunk_size=chunk_size,
                poll_interval_s=poll_interval,
                salt=secrets.token_hex(8) if fresh else "",
            )
            stopped = runner.run()
    except KeyboardInterrupt:
        where = f"in {out}; run the same command again to resume" if out is not None else "printed"
        console.print(f"\ninterrupted: {len(done)} of {len(items)} results {where}", soft_wrap=True, markup=False)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if out is not None:
            sink.close()
    _summarize(console, runner, total=len(items), seconds=time.monotonic() - started, resumed=resumed)
    if stopped is not None:
        raise stopped
    if runner.tally.failed:
        sys.exit(EXIT_FAILED)


def _with_defaults(item: dict[str, Any], defaults: dict[str, Any]) -> dict[str, Any]:
    return {**{name: value for name, value in defaults.items() if value is not None}, **item}


def _summarize(console: Console, runner: Runner, *, total: int, seconds: float, resumed: int) -> None:
    tally = runner.tally
    missing = total - len(runner.done)
    parts = [
        f"{total} items",
        f"[green]{tally.succeeded} succeeded[/]",
        f"[red]{tally.failed} failed[/]" if tally.failed else "0 failed",
    ]
    if missing:
        parts.append(f"[yellow]{missing} not run[/]")
    parts += [f"cost {commands.money(tally.cost)}", f"{seconds:.1f} s"]
    console.print(", ".join(parts) + (f" ({resumed} from an earlier run)" if resumed else ""), soft_wrap=True)
