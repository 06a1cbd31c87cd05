"""Request-log rows written straight to the database, for tests that read the log back."""

from __future__ import annotations

import itertools
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy.orm import Session

from shared.store.models import JobStatus
from shared.store.models import RequestLog

_ids = itertools.count(1)


def add_job(session: Session, *, created_at: datetime, **fields: Any) -> RequestLog:
    """Add a job created at `created_at`: finished and successful unless `fields` (any column) say otherwise."""
    number = next(_ids)
    values: dict[str, Any] = {
        "id": f"job{number:08d}",
        "status": JobStatus.SUCCEEDED,
        "created_at": created_at,
        "finished_at": created_at,
        "prompt": f"Prompt number {number}",
        "max_tokens": 100,
        "preference": "balanced",
        "model_used": "gpt-3.5-turbo",
        "tier": "cheap",
        "difficulty_level": "easy",
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "tokens_used": 30,
        "latency_ms": 100.0,
        "budget_year": created_at.year,
        "budget_month": created_at.month,
        "reserved_cost": Decimal(0),
        "cost": Decimal("0.000035"),
        "settled": True,
    }
    if not fields.get("status", JobStatus.SUCCEEDED).is_terminal:
        values.update(finished_at=None, model_used=None, tier=None, difficulty_level=None, latency_ms=None)
        values.update(prompt_tokens=0, completion_tokens=0, tokens_used=0, cost=Decimal(0), settled=False)
    values.update(fields)
    job = RequestLog(**values)
    session.add(job)
    return job
