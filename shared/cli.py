"""The `model-router` command line: operational commands that act locally."""

from __future__ import annotations

import os
import sys

import click

from shared.errors import ConfigError


@click.group()
def main() -> None:
    """Route prompts to the cheapest model tier likely to answer them well."""


@main.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database named by DATABASE_URL to REVISION."""
    from shared.db import migrate

    try:
        migrate.upgrade(revision)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
def simulate(host: str, port: int) -> None:
    """Serve the OpenAI-compatible upstream simulator."""
    from shared.simulator import server

    server.serve(host=host, port=port)


@main.command()
def run() -> None:
    """Start the local stack in the foreground: Redis if needed, the simulator, web and worker."""
    from shared import localstack
    from shared.config import load_settings
    from shared.db import migrate

    environ = os.environ
    simulator = localstack.use_simulator(environ)
    try:
        settings = load_settings()
        migrate.upgrade("head", database_url=settings.database_url)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    plan = localstack.plan_stack(settings, environ, simulator=simulator)
    for note in plan.notes:
        click.echo(note)
    click.echo(f"Database: {settings.database_url}")
    click.echo(f"Serving {plan.web_url} (Ctrl-C stops everything)")
    sys.exit(localstack.run_stack(plan))


@main.command()
def demo() -> None:
    """Start the stack, send a few prompts, print where they went and what they cost, then stop."""
    from shared import demo as demo_script

    sys.exit(demo_script.run_demo())


if __name__ == "__main__":
    main()
