"""Operational commands that act locally: the database, API keys, the simulator and the service processes.

`db` and `keys` read only the database settings (DATABASE_URL and its pool): they run wherever the database is
reachable, without the upstream, queue or webhook settings the service itself needs.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from shared.errors import ConfigError
from shared.errors import InvalidInput

if TYPE_CHECKING:
    from sqlalchemy.orm import Session
    from sqlalchemy.orm import sessionmaker

BIN_DIR = Path(sys.executable).parent
CELERY_APP = "worker.celery_app:celery_app"
PASS_THROUGH = {"ignore_unknown_options": True, "allow_extra_args": False}
# What the local-stack commands (simulate, run, demo) import beyond the runtime dependencies: the `demo` extra,
# which production installs leave out.
DEMO_EXTRA_MODULES = ("aiohttp", "fakeredis", "honcho")


def _require_demo_extra() -> None:
    """Stop with one line, instead of a traceback midway, when the `demo` extra is not installed."""
    missing = [name for name in DEMO_EXTRA_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        click.echo(
            f"model-router: the local stack needs the demo extra ({', '.join(missing)} missing): "
            "pip install 'model-router[demo]' (make install has it)",
            err=True,
        )
        sys.exit(2)


@click.group()
def db() -> None:
    """Manage the database schema."""


@db.command("upgrade")
@click.option("--revision", default="head", show_default=True, help="Target revision.")
def db_upgrade(revision: str) -> None:
    """Migrate the database named by DATABASE_URL to REVISION."""
    from shared.store import migrate

    try:
        migrate.upgrade(revision)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"database migrated to {revision}")


@click.group()
def keys() -> None:
    """Create, list and revoke API keys (in the database named by DATABASE_URL)."""


@contextmanager
def _key_sessions() -> Iterator[sessionmaker[Session]]:
    """Yield sessions on DATABASE_URL's database (its connections closed after); exit 2 if the URL is bad."""
    from shared.config import load_database_settings
    from shared.store.session import make_engine
    from shared.store.session import make_sessionmaker

    try:
        engine = make_engine(load_database_settings())
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    try:
        yield make_sessionmaker(engine)
    finally:
        engine.dispose()


@keys.command("create")
@click.option("--name", required=True, help="Who or what the key is for.")
@click.option("--monthly-budget", type=click.FloatRange(min=0), help="This key's own monthly limit in USD.")
@click.option("--rpm", type=click.IntRange(min=1), help="Requests per minute allowed to this key.")
@click.option("--tpm", type=click.IntRange(min=1), help="Tokens per minute allowed to this key.")
@click.option(
    "--budget-window",
    "budget_windows",
    multiple=True,
    metavar="WINDOW=USD",
    help="A limit over a budget window beside the month: day=5, week=20, 6h=2 (day, week, <N>h, <N>d); repeatable.",
)
@click.option("--admin", is_flag=True, help="May manage keys and see the global budget, stats and every job.")
def keys_create(
    name: str, monthly_budget: float | None, rpm: int | None, tpm: int | None, budget_windows: tuple[str, ...],
    admin: bool,
) -> None:  # fmt: skip
    """Create a key and print it once: it is not stored and cannot be shown again.

    Expiry and allowed models are set over HTTP (PATCH /api/keys/<id>), which checks them against the catalog.
    """
    from decimal import Decimal

    from shared.ledger import api_keys

    budget = None if monthly_budget is None else Decimal(str(monthly_budget))
    windows = dict(window.partition("=")[::2] for window in budget_windows) or None
    try:
        with _key_sessions() as sessions, sessions.begin() as session:
            row, key = api_keys.create(
                session, name=name, monthly_budget=budget, rpm=rpm, tpm=tpm, budget_windows=windows, is_admin=admin
            )
            key_id = row.id
    except InvalidInput as exc:
        raise click.BadParameter(str(exc), param_hint="--budget-window") from None
    click.echo(key)
    click.echo(f"created key {key_id} ({name}); store it now, it is shown only once", err=True)


@keys.command("list")
def keys_list() -> None:
    """List keys: id, prefix, name, limits, and whether active, expired or revoked (never the keys themselves)."""
    from shared.ledger import api_keys
    from shared.store.types import utcnow

    with _key_sessions() as sessions, sessions() as session:
        rows = api_keys.list_(session)
    now = utcnow()
    click.echo(f"{'id':>4}  {'prefix':<12} {'name':<24} {'admin':<5} {'budget':>10} {'rpm':>6} {'tpm':>8}  status")
    for row in rows:
        budget = "-" if row.monthly_budget is None else f"{row.monthly_budget:.2f}"
        status = api_keys.status_of(row, now=now)
        when = row.revoked_at if status == "revoked" else row.expires_at
        status += f" {when.date().isoformat()}" if status != "active" and when is not None else ""
        click.echo(
            f"{row.id:>4}  {'mr_' + row.prefix:<12} {row.name[:24]:<24} {'yes' if row.is_admin else 'no':<5} "
            f"{budget:>10} {row.rpm or '-':>6} {row.tpm or '-':>8}  {status}"
        )


@keys.command("revoke")
@click.argument("key_id_or_prefix")
def keys_revoke(key_id_or_prefix: str) -> None:
    """Revoke a key by its id or prefix; requests with it get 401 from then on."""
    from shared.errors import NotFound
    from shared.ledger import api_keys

    try:
        with _key_sessions() as sessions, sessions.begin() as session:
            row = api_keys.revoke(session, key_id_or_prefix=key_id_or_prefix.removeprefix("mr_"))
            click.echo(f"revoked key {row.id} ({row.name})")
    except NotFound as exc:
        click.echo(str(exc), err=True)
        sys.exit(1)


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=9000, show_default=True, type=int)
def simulate(host: str, port: int) -> None:
    """Serve the OpenAI-compatible upstream simulator."""
    _require_demo_extra()
    from shared.devstack.simulator import server

    server.serve(host=host, port=port)


@click.command()
def run() -> None:
    """Start the local stack in the foreground: Redis if needed, the simulator, web and worker."""
    _require_demo_extra()
    from shared.config import load_settings
    from shared.devstack import localstack
    from shared.devstack import stack_paths
    from shared.security import masking
    from shared.store import migrate

    environ = os.environ
    simulator = localstack.use_simulator(environ)
    try:
        # Served on PORT from `.env` too, where the app's settings and the CLI look for it.
        environ.update(stack_paths.local_environ(environ))
        settings = load_settings()
        migrate.upgrade("head", database_url=settings.database_url)
        plan = localstack.plan_stack(settings, environ, simulator=simulator)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    for note in plan.notes:
        click.echo(note)
    click.echo(f"Database: {masking.mask_url(settings.database_url)}")
    click.echo(f"Serving {plan.web_url} (Ctrl-C stops everything)")
    sys.exit(localstack.run_stack(plan))


@click.command()
def demo() -> None:
    """Start the stack, send a few prompts, print where they went and what they cost, then stop."""
    _require_demo_extra()
    from shared.devstack import demo as demo_script

    sys.exit(demo_script.run_demo())


@click.command(context_settings=PASS_THROUGH)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 in a container).")
@click.option("--port", envvar="PORT", type=click.IntRange(1, 65535), help="[env: PORT, else PORT in .env, else 8000]")
@click.option(
    "--workers",
    envvar="WEB_CONCURRENCY",
    default=2,
    show_default=True,
    type=click.IntRange(min=1),
    help="gunicorn worker processes. [env: WEB_CONCURRENCY]",
)
@click.argument("gunicorn_args", nargs=-1, type=click.UNPROCESSED)
def web(host: str, port: int | None, workers: int, gunicorn_args: tuple[str, ...]) -> None:
    """Serve the HTTP API with gunicorn (gevent workers), as `make run` does.

    Arguments after `--` go to gunicorn unchanged, e.g. `model-router web -- --timeout 60`.
    Migrate first with `model-router db upgrade`.
    """
    from shared.devstack import stack_paths

    if port is None:
        # Where the CLI's other commands look for it: PORT in `.env` too.
        try:
            port = stack_paths.web_port(stack_paths.local_environ(os.environ))
        except ConfigError as exc:
            raise click.BadParameter(exc.message, param_hint="--port") from None

    # The control socket goes to the run directory of the stack on this port, not gunicorn's one per user.
    paths = stack_paths.StackPaths.of({**os.environ, "PORT": str(port)}).create()
    _exec(
        [
            _tool("gunicorn"), "--worker-class", "gevent", "--workers", str(workers), "--bind", f"{host}:{port}",
            "--graceful-timeout", "10", "--control-socket", str(paths.control_socket),
            "--config", "python:web.gunicorn_conf", *gunicorn_args, "web.app:create_app()",
        ]
    )  # fmt: skip


@click.command(context_settings=PASS_THROUGH)
@click.option(
    "--queues",
    default="prompts,batch",
    show_default=True,
    help="Comma-separated queues to consume: prompts (single prompts), batch (batch items).",
)
@click.option(
    "--concurrency",
    envvar="WORKER_CONCURRENCY",
    default=256,
    show_default=True,
    type=click.IntRange(min=1),
    help="Jobs run at once (gevent greenlets). [env: WORKER_CONCURRENCY]",
)
@click.option(
    "--pool",
    envvar="WORKER_POOL",
    default="gevent",
    show_default=True,
    type=click.Choice(["gevent", "threads"]),
    help="gevent with PostgreSQL; threads with SQLite, whose calls block a gevent worker. [env: WORKER_POOL]",
)
@click.option("--hostname", help="Celery node name (default: <queues>@%h).")
@click.option("--loglevel", default="INFO", show_default=True, type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option("--beat", is_flag=True, help="Also run the beat scheduler (the reaper) in this process; run it once.")
@click.argument("celery_args", nargs=-1, type=click.UNPROCESSED)
def worker(
    queues: str,
    concurrency: int,
    pool: str,
    hostname: str | None,
    loglevel: str,
    beat: bool,
    celery_args: tuple[str, ...],
) -> None:
    """Run a Celery worker for the job queues, as `make run` does.

    Arguments after `--` go to `celery worker` unchanged.
    """
    names = [name.strip() for name in queues.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name at least one queue", param_hint="--queues")
    argv = [
        _tool("celery"), "-A", CELERY_APP, "worker", "--pool", pool, "--queues", ",".join(names),
        "--hostname", hostname or f"{'-'.join(names)}@%h", "--concurrency", str(concurrency),
        "--loglevel", loglevel, "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    if beat:
        from shared.devstack import stack_paths

        paths = stack_paths.StackPaths.of(os.environ).create()
        argv += ["--beat", "--schedule", str(paths.beat_schedule)]
    _exec([*argv, *celery_args])


def _tool(name: str) -> str:
    # The console scripts of the interpreter we run under (the project's virtualenv), else the PATH's.
    local = BIN_DIR / name
    return str(local) if local.exists() else name


def _exec(argv: list[str]) -> None:
    """Replace this process with `argv`, so that signals and the exit code are the tool's own."""
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        click.echo(f"cannot start {argv[0]}: {exc.strerror or exc}", err=True)
        sys.exit(2)
