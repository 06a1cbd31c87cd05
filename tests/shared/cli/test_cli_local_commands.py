"""`db upgrade` and `keys` run with only a database URL: no upstream, queue or webhook settings needed."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from click.testing import Result
from sqlalchemy import Engine
from sqlalchemy import inspect

from shared.cli import main
from shared.config import Settings


@pytest.fixture
def only(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Return a runner of `model-router` whose environment names the given settings and no other."""
    # No setting from this machine's environment or a .env file may help the command along.
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)

    def run(args: list[str], **environment: str) -> Result:
        return CliRunner().invoke(main, args, env=environment)

    return run


def test_db_upgrade_migrates_with_only_a_database_url(only, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/fresh.db"
    result = only(["db", "upgrade"], DATABASE_URL=url)
    assert result.exit_code == 0, result.output
    assert "database migrated to head" in result.output
    from sqlalchemy import create_engine

    engine = create_engine(url)
    try:
        assert {"api_keys", "request_logs"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_keys_create_and_list_with_only_a_database_url(only, database_url: str, engine: Engine) -> None:
    created = only(["keys", "create", "--name", "ci-runner", "--rpm", "30"], DATABASE_URL=database_url)
    assert created.exit_code == 0, created.output
    assert created.stdout.startswith("mr_")
    listed = only(["keys", "list"], DATABASE_URL=database_url)
    assert listed.exit_code == 0, listed.output
    assert "ci-runner" in listed.stdout and "active" in listed.stdout


def test_keys_create_takes_a_tokens_per_minute_limit(only, database_url: str, engine: Engine) -> None:
    assert only(["keys", "create", "--name", "etl", "--tpm", "25000"], DATABASE_URL=database_url).exit_code == 0
    listed = only(["keys", "list"], DATABASE_URL=database_url)
    assert " tpm " in listed.stdout.splitlines()[0] + " "
    assert "25000" in next(line for line in listed.stdout.splitlines() if "etl" in line)


def test_keys_ignore_upstream_settings_they_do_not_use(only, database_url: str, engine: Engine) -> None:
    # The service itself refuses to start with these; a key command has no use for them.
    result = only(["keys", "list"], DATABASE_URL=database_url, OPENAI_BASE_URL="not-a-url", JOB_LEASE_S="1")
    assert result.exit_code == 0, result.output


def test_a_bad_database_url_is_one_line_and_exit_2(only) -> None:
    result = only(["keys", "list"], DATABASE_URL="mysql://somewhere/db")
    assert result.exit_code == 2
    assert "invalid setting DATABASE_URL" in result.output
    assert "Traceback" not in result.output


def test_keys_create_takes_budget_windows(only, database_url: str, engine: Engine) -> None:
    from decimal import Decimal

    from shared.ledger import api_keys
    from shared.ledger.window_spans import validated
    from shared.store.session import make_sessionmaker

    args = ["keys", "create", "--name", "etl", "--budget-window", "day=5", "--budget-window", "6h=1.5"]
    assert only(args, DATABASE_URL=database_url).exit_code == 0
    with make_sessionmaker(engine)() as session:
        (key,) = api_keys.list_(session)
    assert validated(key.budget_windows) == {"day": Decimal(5), "6h": Decimal("1.5")}
    refused = only(["keys", "create", "--name", "x", "--budget-window", "month=5"], DATABASE_URL=database_url)
    assert refused.exit_code == 2
    assert "unknown budget window 'month'" in refused.output
