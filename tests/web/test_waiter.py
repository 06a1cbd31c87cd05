"""The waiting request's loop: an announcement wakes it, a lost one costs it a recheck, not its timeout."""

from __future__ import annotations

import threading
import time

from web import waiter


class Finishes:
    """A job that finishes after `after_s`; counts how often it was read."""

    def __init__(self, after_s: float) -> None:
        self.at = time.monotonic() + after_s
        self.reads = 0

    def look(self) -> str | None:
        self.reads += 1
        return "finished" if time.monotonic() >= self.at else None


def test_a_lost_announcement_costs_one_recheck_not_the_whole_timeout() -> None:
    job = Finishes(after_s=0.2)
    started = time.monotonic()

    found = waiter.wait_for(threading.Event(), timeout_s=30.0, look=job.look, recheck_s=0.3)

    assert found == "finished"
    assert time.monotonic() - started < 2.0
    assert job.reads <= 3


def test_an_announcement_wakes_the_request_at_once() -> None:
    job = Finishes(after_s=0.1)
    done = threading.Event()
    threading.Timer(0.1, done.set).start()
    started = time.monotonic()

    found = waiter.wait_for(done, timeout_s=30.0, look=job.look, recheck_s=10.0)

    assert found == "finished"
    assert time.monotonic() - started < 2.0


def test_a_job_that_never_finishes_is_read_at_the_deadline_and_answers_none() -> None:
    job = Finishes(after_s=3600)
    started = time.monotonic()

    found = waiter.wait_for(threading.Event(), timeout_s=0.5, look=job.look, recheck_s=0.2)

    elapsed = time.monotonic() - started
    assert found is None
    assert 0.5 <= elapsed < 2.0
    # every recheck and the deadline itself: a few reads, not a busy loop
    assert 3 <= job.reads <= 5
