"""The local stack's worker pool follows the database."""

from __future__ import annotations

from shared import localstack
from tests.conftest import make_test_settings


def test_workers_wait_on_greenlets_with_postgresql() -> None:
    assert localstack.worker_pool(make_test_settings("postgresql://router@127.0.0.1/router")) == "gevent"


def test_workers_keep_threads_on_sqlite_whose_calls_would_block_a_gevent_loop(tmp_path) -> None:
    assert localstack.worker_pool(make_test_settings(f"sqlite:///{tmp_path}/router.db")) == "threads"
