"""A job's body reads only the attributes it declares: a finished row carrying those is enough to answer."""

from __future__ import annotations

from datetime import UTC
from datetime import datetime
from typing import Any

import pytest

from shared.jobs import views
from shared.store.models import JobStatus


class Recorder:
    """A job whose every attribute read is noted, with values that take job_body down its longest path."""

    VALUES: dict[str, Any] = {
        "id": "job-1",
        "status": JobStatus.FAILED,
        "prompt": "Hi",
        "cached": False,
        "metadata_json": {},
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 1, tzinfo=UTC),
        "batch_id": "batch-1",
        "error_code": "upstream_error",
        "downgraded_from": "high",
    }

    def __init__(self) -> None:
        self.read: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        self.read.add(name)
        return self.VALUES.get(name)


@pytest.mark.parametrize("status", [JobStatus.FAILED, JobStatus.SUCCEEDED, JobStatus.QUEUED])
def test_the_body_reads_no_attribute_beyond_those_it_declares(status: JobStatus) -> None:
    job = Recorder()
    job.VALUES = {**Recorder.VALUES, "status": status}
    views.job_body(job, attempts=[])  # type: ignore[arg-type]
    # `attempts` is read too (a row without the relationship has none); the given list stands in for it.
    assert job.read <= {*views.BODY_ATTRIBUTES, "attempts"}
    assert job.read  # it did read the job
