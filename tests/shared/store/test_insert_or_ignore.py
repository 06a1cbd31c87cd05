"""insert_or_ignore: tells the one caller that inserted a row from those that found it there, on both databases."""

from __future__ import annotations

import threading
from datetime import UTC
from datetime import datetime

from sqlalchemy import func
from sqlalchemy import select
from sqlalchemy.orm import Session
from sqlalchemy.orm import sessionmaker

from shared.store.insert_or_ignore import insert_or_ignore
from shared.store.models import IdempotencyKey

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def _claim(session: Session, key: str, resource_id: str) -> bool:
    values = {"owner": "anonymous", "key": key, "request_hash": "h", "resource": "job", "resource_id": resource_id,
              "created_at": NOW}  # fmt: skip
    return insert_or_ignore(session, IdempotencyKey, values, conflict_on=("owner", "key"))


def _rows(sessions: sessionmaker[Session]) -> list[tuple[str, str]]:
    with sessions() as session:
        rows = session.scalars(select(IdempotencyKey).order_by(IdempotencyKey.id))
        return [(row.key, row.resource_id) for row in rows]


def test_a_new_row_is_inserted_and_a_conflicting_one_is_not(sessions: sessionmaker[Session]) -> None:
    with sessions.begin() as session:
        assert _claim(session, "a", "first") is True
        assert _claim(session, "a", "second") is False
        assert _claim(session, "b", "third") is True
    assert _rows(sessions) == [("a", "first"), ("b", "third")]


def test_of_concurrent_inserts_of_one_row_exactly_one_is_told_it_inserted(sessions: sessionmaker[Session]) -> None:
    racers = 6
    start = threading.Barrier(racers)
    told: list[bool] = []

    def race(number: int) -> None:
        start.wait()
        with sessions.begin() as session:
            told.append(_claim(session, "raced", f"racer-{number}"))

    threads = [threading.Thread(target=race, args=(number,)) for number in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(told) == [False] * (racers - 1) + [True]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(IdempotencyKey)) == 1
