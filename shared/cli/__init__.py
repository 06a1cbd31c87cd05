"""The `model-router` command line: a client of the HTTP API, and the operational commands that act locally.

Exit codes: 0 success; 1 a job failed (or another error); 2 bad usage, input or configuration; 3 the server
is unreachable or unavailable; 4 unauthorized (401); 5 budget exceeded (402); 6 rate limited (429);
7 not found (404).
"""

from __future__ import annotations

import click

from shared.cli import batch
from shared.cli import commands
from shared.cli import evaluation
from shared.cli import ops
from shared.cli import request_log
from shared.cli.http import Endpoint
from shared.cli.http import default_url

EPILOG = (
    "Exit codes: 0 ok, 1 job failed or other error, 2 usage/input/config, 3 server unreachable or "
    "unavailable, 4 unauthorized (401), 5 budget exceeded (402), 6 rate limited (429), 7 not found (404)."
)


class _Group(click.Group):
    """A group that lists its commands in the order they were added: client commands first."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)


@click.group(cls=_Group, epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--url",
    envvar="MODEL_ROUTER_URL",
    default=default_url,
    show_default="http://127.0.0.1:${PORT:-8000}",
    show_envvar=True,
    metavar="URL",
    help="Base URL of the model-router HTTP API.",
)
@click.option(
    "--key",
    envvar="MODEL_ROUTER_API_KEY",
    show_envvar=True,
    metavar="KEY",
    help="API key sent as 'Authorization: Bearer KEY' (when the server requires keys).",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long one HTTP request may take to answer.",
)
@click.version_option(package_name="model-router", prog_name="model-router")
@click.pass_context
def main(ctx: click.Context, url: str, key: str | None, request_timeout: float) -> None:
    """Route prompts to the cheapest model tier likely to answer them well.

    Client commands talk to the HTTP API at --url; operational commands (web, worker, simulate, run,
    demo, db, keys) act on this machine with the settings in the environment or .env.
    """
    # A caller may hand in an httpx transport (tests do, through `obj`); real runs use sockets.
    transport = ctx.obj.get("transport") if isinstance(ctx.obj, dict) else None
    ctx.obj = Endpoint(url=url, key=key or None, timeout_s=request_timeout, transport=transport)


for command in (
    commands.prompt,
    commands.submit,
    commands.job,
    request_log.jobs,
    batch.batch,
    commands.budget,
    commands.stats,
    commands.health,
    request_log.report,
    ops.web,
    ops.worker,
    ops.simulate,
    ops.run,
    ops.demo,
    ops.db,
    ops.keys,
    evaluation.eval_command,
    evaluation.train_router,
):
    main.add_command(command)

__all__ = ["main"]
