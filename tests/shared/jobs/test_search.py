"""The request-log text search: served by the trigram index on PostgreSQL, bounded in time where none serves it."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from datetime import timedelta

import pytest
from sqlalchemy import Engine
from sqlalchemy import event
from sqlalchemy import text

from shared.errors import InvalidInput
from shared.jobs import search
from shared.store.session import make_sessionmaker
from tests.support import request_logs

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
WORDS = "explain the capital of france write a poem about summer rain python function sort list what is gravity"
# Jobs with prompts of forty words drawn from WORDS, made by the server itself (fast), newest first.
FILL = text(
    """
    INSERT INTO request_logs (id, status, created_at, updated_at, run_count, prompt, metadata, max_tokens, preference,
        prompt_tokens, completion_tokens, tokens_used, retry_count, escalated, truncated, cached, stream,
        budget_year, budget_month, reserved_cost, cost, settled)
    SELECT 'fill' || n, 'succeeded', now() - n * interval '1 second', now(), 1,
        (SELECT string_agg((string_to_array(:words, ' '))[1 + floor(random() * 20)::int], ' ')
         FROM generate_series(1, 40 + n % 3)),
        '{}', 100, 'balanced', 0, 0, 0, 0, false, false, false, false, 2026, 12, 0, 0, true
    FROM generate_series(1, :count) AS n
    """
)


def _plan(engine: Engine, search_text: str) -> tuple[list[str], str]:
    """Run the search; return the prompts it found and PostgreSQL's plan for the very statement it sent.

    The plan is asked for with the scans that read every row (a sequential scan, or a walk of the created_at
    index) priced out, so it shows whether any index can serve the statement as written: whether the planner
    then prefers it depends on the table's size (measured: from about 20,000 jobs on, for a rare word).
    """
    sent: list[tuple[str, object]] = []

    def keep(conn, cursor, statement, parameters, context, executemany) -> None:
        sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", keep)
    try:
        with make_sessionmaker(engine)() as session:
            page = search.list_(session, where=search.JobFilter(text=search_text))
            found = [job.prompt for job in page.jobs]
    finally:
        event.remove(engine, "before_cursor_execute", keep)
    statement, parameters = sent[-1]
    with engine.connect() as connection:
        cursor = connection.connection.dbapi_connection.cursor()
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("EXPLAIN " + statement, parameters)
        return found, "\n".join(row[0] for row in cursor.fetchall())


def test_a_text_search_is_served_by_the_trigram_index_on_postgresql(postgres_engine: Engine) -> None:
    with postgres_engine.begin() as connection:
        connection.execute(FILL, {"words": WORDS, "count": 2000})
    with make_sessionmaker(postgres_engine).begin() as session:
        request_logs.add_job(session, created_at=NOW - timedelta(days=400), prompt="What is the capital of Zanzibar?")
    with postgres_engine.begin() as connection:
        connection.execute(text("ANALYZE request_logs"))

    found, plan = _plan(postgres_engine, "zanzIBAR")

    assert len(found) == 1 and "Zanzibar" in found[0]
    assert "ix_request_logs_prompt_trgm" in plan, plan
    assert "Seq Scan" not in plan, plan


@pytest.mark.parametrize(
    ("search_text", "dialect", "indexed"),
    [
        ("gravity", "postgresql", True),
        ("a b c", "postgresql", False),  # no three letters in a row: no trigram to look up
        ("%%%", "postgresql", False),
        ("été", "postgresql", True),
        ("gravity", "sqlite", False),
    ],
)
def test_which_searches_an_index_serves(search_text: str, dialect: str, indexed: bool) -> None:
    assert search.text_search_is_indexed(search_text, dialect=dialect) is indexed


def test_a_search_without_an_index_reads_at_most_the_window_before_until() -> None:
    bounded = search.bounded_in_time(search.JobFilter(text="x"), now=NOW)
    assert (bounded.since, bounded.until) == (NOW - search.TEXT_SEARCH_WINDOW, None)
    until = NOW - timedelta(days=100)
    bounded = search.bounded_in_time(search.JobFilter(text="x", until=until), now=NOW)
    assert bounded.since == until - search.TEXT_SEARCH_WINDOW
    narrow = search.JobFilter(text="x", since=NOW - timedelta(days=3))
    assert search.bounded_in_time(narrow, now=NOW) == narrow


def test_a_wider_window_without_an_index_is_refused_naming_since() -> None:
    wide = search.JobFilter(text="x", since=NOW - search.TEXT_SEARCH_WINDOW - timedelta(seconds=1))
    with pytest.raises(InvalidInput) as caught:
        search.bounded_in_time(wide, now=NOW)
    assert caught.value.details["field"] == "since"
