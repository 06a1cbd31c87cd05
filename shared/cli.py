"""The `model-router` command line: operational commands that act locally."""

from __future__ import annotations

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
