"""The liveness file workers and beat touch and Kubernetes' exec probe reads (worker.liveness)."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from celery.signals import beat_init

from shared import config
from tests.conftest import make_test_settings
from worker import celery_app
from worker import liveness


def test_a_file_touched_within_three_heartbeats_is_fresh(tmp_path: Path) -> None:
    path = tmp_path / "alive"
    liveness.touch(path)
    now = path.stat().st_mtime
    assert liveness.is_fresh(path, heartbeat_s=10, now=now + 30)
    assert not liveness.is_fresh(path, heartbeat_s=10, now=now + 31)


def test_a_missing_file_is_not_fresh(tmp_path: Path) -> None:
    assert not liveness.is_fresh(tmp_path / "never", heartbeat_s=10)


def test_an_unwritable_file_is_not_fatal(tmp_path: Path) -> None:
    liveness.touch(tmp_path / "no-such-dir" / "alive")
    liveness.touch(None)


@pytest.fixture
def liveness_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Settings naming a liveness file, with Redis unreachable: the file must not depend on it."""
    path = tmp_path / "alive"
    settings = make_test_settings(
        f"sqlite:///{tmp_path}/l.db", redis_url="redis://127.0.0.1:1/0", worker_liveness_file=path
    )
    monkeypatch.setattr(config, "get_settings", lambda: settings)
    monkeypatch.setattr(celery_app, "get_settings", lambda: settings)
    yield path
    if celery_app._liveness is not None:
        celery_app._liveness.stop()
    for thread in threading.enumerate():
        if thread.name == "liveness":
            thread.join()


def test_the_probe_passes_on_a_fresh_file_and_fails_on_a_stale_one(liveness_file: Path) -> None:
    assert liveness.main() == 1
    liveness.touch(liveness_file)
    assert liveness.main() == 0
    long_ago = time.time() - 3600
    os.utime(liveness_file, (long_ago, long_ago))
    assert liveness.main() == 1


def test_beat_touches_the_file_while_redis_is_down(liveness_file: Path) -> None:
    beat_init.send(sender=None)
    for _ in range(500):  # the thread's first touch comes at once; this only bounds a broken run
        if liveness_file.exists():
            break
        time.sleep(0.01)
    assert liveness.main() == 0
