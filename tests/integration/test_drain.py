"""The drain scenario, bounded: a burst of async jobs against an upstream that admits 5 requests per second per
model, through the real stack on PostgreSQL. Admission paces the workers: the jobs succeed, and the upstream is
seldom answered 429, since the workers call at the rate it admits instead of discovering it by failing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.drain import run_drain

pytestmark = pytest.mark.integration

JOBS = 40
RPS = 5.0


def test_a_burst_of_jobs_is_paced_to_the_upstreams_rate_limit_and_succeeds(tmp_path: Path) -> None:
    figures = run_drain(jobs=JOBS, rps=RPS, deadline_s=60, work_dir=tmp_path)
    assert figures["not_terminal"] == 0, figures
    assert figures["succeeded_share"] >= 0.99, figures
    assert figures["share_429"] <= 0.10, figures
    # The burst could not have gone faster than the limit: 40 calls at 5 a second take about 7 s.
    assert figures["drain_rate_per_s"] <= RPS * 1.25, figures
