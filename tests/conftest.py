"""Fixtures from cheap to expensive: settings, catalog, database, sessions, app, client.

Every test that uses the database fixtures (`database`, `database_url`, `settings`, `engine`, `sessions`,
`app`, `keyed_app`, `client`, and any fixture built on them) runs twice: on SQLite, the embedded default,
and on PostgreSQL, the production database, each time on an empty schema. A test that is genuinely about
one of them says so: `@pytest.mark.sqlite_only("why")` runs it on SQLite alone; a test that needs PostgreSQL
features asks for `postgres_engine` or `postgres_url` instead.
"""

from __future__ import annotations

import io
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.config import Settings
from shared.config import load_settings
from shared.jobs import runs
from shared.observability import logs
from shared.routing.catalog import Catalog
from shared.routing.catalog import load_catalog
from shared.store import completion_channel
from shared.store import stream_relay
from shared.store.base import Base
from shared.store.session import make_engine
from shared.store.session import make_sessionmaker
from shared.upstream.llm_client import LLMClient
from tests.support.catalogs import SEED_CATALOG_PATH
from tests.support.databases import ReusableSchema
from tests.support.databases import temporary_postgres_database
from tests.support.fakes import Clock
from tests.support.fakes import FakeLLMClient

DATABASES = ("sqlite", "postgresql")

# Unit suites that touch Redis use their own logical database (MODEL_ROUTER_TEST_REDIS_DB picks another,
# so that two test runs on one machine do not flush each other's keys; MODEL_ROUTER_TEST_REDIS_URL names
# another server, for more runs than a server's 16 databases).
UNIT_REDIS_URL = (
    os.environ.get("MODEL_ROUTER_TEST_REDIS_URL")
    or f"redis://127.0.0.1:6379/{os.environ.get('MODEL_ROUTER_TEST_REDIS_DB', '11')}"
)


def make_test_settings(database_url: str, **overrides: object) -> Settings:
    """Return settings for tests: no real upstream, no backoff waits unless a test asks for them."""
    values: dict[str, object] = {
        "database_url": database_url,
        "redis_url": UNIT_REDIS_URL,
        "openai_base_url": "http://127.0.0.1:9/v1",
        "openai_api_key": "test-key",
        "upstream_backoff_initial_s": 0,
        "upstream_backoff_max_s": 0,
        "environment": "test",
        "model_catalog_path": SEED_CATALOG_PATH,
        # Suites send many requests from one address within a minute; those that test the limits set them.
        "default_rpm": 0,
        "address_rpm": 0,
        "auth_failures_per_minute": 0,
    }
    values.update(overrides)
    return load_settings(**values)


def worker_deps(app: Flask, catalog: Catalog, client: LLMClient, **hooks: Any) -> runs.RunDeps:
    """What a worker builds to run jobs on `app`'s database and settings, calling `client`; `hooks` as RunDeps."""
    return runs.RunDeps(
        sessions=make_sessionmaker(app.extensions["db_engine"]),
        catalog=catalog,
        settings=app.extensions["settings"],
        client=client,
        **hooks,
    )


def run_jobs_soon(
    monkeypatch: pytest.MonkeyPatch, deps: runs.RunDeps, *, delay_s: float = 0.05
) -> tuple[list[threading.Timer], list[str]]:
    """Stand in for the worker: run each enqueued job in another thread `delay_s` after it was enqueued.

    Returns the threads (join them before the test ends) and the ids of the jobs enqueued, as they come.
    """
    from worker import tasks

    threads: list[threading.Timer] = []
    job_ids: list[str] = []

    def run_soon(args, **_):
        job_ids.append(args[0])
        threads.append(threading.Timer(delay_s, runs.run, args=(args[0],), kwargs={"deps": deps}))
        threads[-1].start()

    monkeypatch.setattr(tasks.run_job, "apply_async", run_soon)
    return threads, job_ids


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sqlite_only(reason): run a test on the database fixtures on SQLite alone, for the reason given"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Run each test that uses the `database` fixture, directly or through another fixture, on both databases."""
    if "database" not in metafunc.fixturenames:
        return
    sqlite_only = metafunc.definition.get_closest_marker("sqlite_only") is not None
    metafunc.parametrize("database", ["sqlite"] if sqlite_only else DATABASES, indirect=True)


@pytest.fixture
def database(request: pytest.FixtureRequest) -> str:
    """The database this run of the test is on: "sqlite" or "postgresql"."""
    return request.param


@pytest.fixture
def database_url(database: str, request: pytest.FixtureRequest, tmp_path) -> str:
    """The URL of an empty database with every table: a new SQLite file, or the session's PostgreSQL database."""
    if database == "sqlite":
        return f"sqlite:///{tmp_path}/router.db"
    schema: ReusableSchema = request.getfixturevalue("postgres_schema")
    schema.empty()
    return schema.url


@pytest.fixture
def publisher(app: Flask) -> Iterator[redis.Redis]:
    """A client of the app's Redis, for a stand-in worker to announce jobs and relay streams on."""
    client = redis.Redis.from_url(app.extensions["settings"].redis_url)
    yield client
    client.close()


@pytest.fixture
def real_redis() -> Iterator[redis.Redis]:
    """A client of the unit suites' Redis database, emptied before and after the test."""
    client = redis.Redis.from_url(UNIT_REDIS_URL)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


@pytest.fixture
def clock() -> Clock:
    """A clock that moves only when the test moves it."""
    return Clock()


@pytest.fixture
def llm() -> FakeLLMClient:
    """A scripted upstream for a stand-in worker (tests.support.fakes)."""
    return FakeLLMClient()


@pytest.fixture
def worker(
    app: Flask, catalog: Catalog, llm: FakeLLMClient, monkeypatch: pytest.MonkeyPatch, publisher: redis.Redis
) -> Iterator[list[str]]:
    """Run each enqueued job in another thread a moment later, as a worker would, announcing it and relaying
    its stream on the app's Redis; yield the job ids."""
    deps = worker_deps(
        app,
        catalog,
        llm,
        on_finished=lambda job_id: completion_channel.publish_job_done(publisher, job_id),
        relay=lambda job_id, entry: stream_relay.append(publisher, job_id, entry),
    )
    threads, job_ids = run_jobs_soon(monkeypatch, deps, delay_s=0.02)
    yield job_ids
    for thread in threads:
        thread.join()


@pytest.fixture
def settings(database_url: str) -> Settings:
    return make_test_settings(database_url)


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(SEED_CATALOG_PATH)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = make_engine(settings)
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def sessions(engine: Engine) -> sessionmaker[Session]:
    return make_sessionmaker(engine)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with temporary_postgres_database() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_schema(postgres_url: str) -> Iterator[ReusableSchema]:
    """Every table in the session's PostgreSQL database, to be emptied before each test that uses it."""
    schema = ReusableSchema(postgres_url, Base.metadata)
    yield schema
    schema.close()


@pytest.fixture
def postgres_engine(postgres_schema: ReusableSchema) -> Iterator[Engine]:
    """An engine on the session's PostgreSQL database, every table empty: for tests of PostgreSQL's own paths."""
    postgres_schema.empty()
    engine = make_engine(make_test_settings(postgres_schema.url))
    yield engine
    engine.dispose()


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    from web.app import create_app

    app = create_app(settings)
    app.config["TESTING"] = True
    Base.metadata.create_all(app.extensions["db_engine"])
    yield app
    app.extensions["db_engine"].dispose()


@pytest.fixture
def keyed_app(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Flask]:
    """An app that requires API keys, on the test database, with the unit Redis emptied and nothing enqueued."""
    from web.app import create_app
    from worker import tasks

    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()
    app = create_app(make_test_settings(str(settings.database_url), require_api_key=True))
    Base.metadata.create_all(app.extensions["db_engine"])
    # After create_app: the task proxy resolves to the Celery app that create_app made current.
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: None)
    yield app
    app.extensions["db_engine"].dispose()
    redis.Redis.from_url(UNIT_REDIS_URL).flushdb()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def enqueued(app: Flask, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Record the job ids the web tier enqueues instead of sending them to a broker."""
    # After `app`: the task proxy resolves to the Celery app that create_app made current.
    from worker import tasks

    sent: list[str] = []
    monkeypatch.setattr(tasks.run_job, "apply_async", lambda args, **_: sent.append(args[0]))
    return sent


@pytest.fixture
def log_lines(settings: Settings) -> Iterator[io.StringIO]:
    """Capture every line logged through the root logger, formatted as JSON."""
    stream = io.StringIO()
    handler = logs.make_handler(make_test_settings(settings.database_url, log_format="json"), stream=stream)
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    yield stream
    root.removeHandler(handler)
    root.setLevel(level)
