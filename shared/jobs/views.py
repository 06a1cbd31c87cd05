"""Jobs and batches as the API shows them, for HTTP answers and webhook bodies alike."""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Row

from shared.jobs import states
from shared.store.models import Batch
from shared.store.models import JobStatus
from shared.store.models import RequestLog


@dataclass(frozen=True)
class BatchView:
    """A batch's counts and its jobs in submission order."""

    batch: Batch
    jobs: list[RequestLog]

    @property
    def succeeded(self) -> int:
        return sum(job.status is JobStatus.SUCCEEDED for job in self.jobs)

    @property
    def failed(self) -> int:
        return sum(job.status is JobStatus.FAILED for job in self.jobs)

    @property
    def pending(self) -> int:
        return sum(job.status in states.PENDING for job in self.jobs)

    @property
    def cost(self) -> Decimal:
        return sum((job.cost for job in self.jobs), Decimal(0))


ATTEMPT_FIELDS = (
    "model", "tier", "purpose", "outcome", "error_class", "status_code", "latency_ms", "prompt_tokens",
    "completion_tokens", "cost",
)  # fmt: skip


# The job attributes job_body reads (its attempts aside): a row that carries these is enough to answer with.
BODY_ATTRIBUTES = (
    "id", "status", "created_at", "prompt", "cached", "request_id", "batch_id", "batch_index", "metadata_json",
    "error_code", "error_message", "finished_at", "response", "model_used", "tier", "difficulty_score",
    "difficulty_level", "tokens_used", "prompt_tokens", "completion_tokens", "cost", "latency_ms", "escalated",
    "escalation_reason", "downgraded_from", "confidence", "retry_count", "usage_over_bound", "truncated",
    "unconfirmed_cost", "usage_invalid",
)  # fmt: skip
# What a finished job's row must carry, whichever form records it: the body's attributes (the batch among
# them) and the callback to note.
FINISHED_ATTRIBUTES = (*BODY_ATTRIBUTES, "callback_url")


def job_body(job: RequestLog | Row[Any], *, attempts: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Return the job: its state while unfinished, the full result once finished.

    `job` may also be a row whose columns carry the mapped attributes' names; `attempts` (its attempts' column
    values, in order) then stand in for the relationship it does not have.
    """
    body: dict[str, Any] = {
        "job_id": job.id,
        "status": job.status.value,
        "created_at": job.created_at.isoformat(),
        "prompt": job.prompt,
        "cached": job.cached,
        "request_id": job.request_id,
    }
    if job.batch_id is not None:
        body.update(batch_id=job.batch_id, batch_index=job.batch_index)
    if not job.status.is_terminal:
        body["metadata"] = job.metadata_json
        return body
    succeeded = job.error_code is None
    body.update(
        finished_at=job.finished_at.isoformat() if job.finished_at else None,
        success=succeeded,
        response=job.response,
        model_used=job.model_used,
        tier=job.tier,
        difficulty_score=job.difficulty_score,
        difficulty_level=job.difficulty_level,
        tokens_used=job.tokens_used,
        prompt_tokens=job.prompt_tokens,
        completion_tokens=job.completion_tokens,
        cost=job.cost,
        unconfirmed_cost=job.unconfirmed_cost,
        latency_ms=job.latency_ms,
        escalated=job.escalated,
        escalation_reason=job.escalation_reason,
        truncated=job.truncated,
        downgraded=job.downgraded_from is not None,
        downgraded_from=job.downgraded_from,
        confidence=job.confidence,
        retry_count=job.retry_count,
        usage_over_bound=job.usage_over_bound,
        usage_invalid=job.usage_invalid,
        attempts=(
            [{name: getattr(attempt, name) for name in ATTEMPT_FIELDS} for attempt in job.attempts]
            if attempts is None
            else [{name: attempt[name] for name in ATTEMPT_FIELDS} for attempt in attempts]
        ),
        metadata=job.metadata_json,
    )
    if not succeeded:
        body["error"] = {"code": job.error_code, "message": job.error_message or "", "details": {}}
    return body


def batch_body(view: BatchView, *, with_jobs: bool = True) -> dict[str, Any]:
    """Return the batch's counts and, unless asked not to, its jobs in submission order."""
    body: dict[str, Any] = {
        "batch_id": view.batch.id,
        "status": "running" if view.pending else "completed",
        "created_at": view.batch.created_at.isoformat(),
        "total": view.batch.total,
        "succeeded": view.succeeded,
        "failed": view.failed,
        "pending": view.pending,
        "cost": view.cost,
    }
    if with_jobs:
        body["jobs"] = [job_body(job) for job in view.jobs]
    return body


PROMPT_PREVIEW_CHARS = 120


def job_summary(job: RequestLog) -> dict[str, Any]:
    """Return one row of a job search: where it went and how it ended (null while unfinished)."""
    finished = job.status.is_terminal
    return {
        "job_id": job.id,
        "status": job.status.value,
        "created_at": job.created_at.isoformat(),
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
        "model_used": job.model_used,
        "tier": job.tier,
        "difficulty_level": job.difficulty_level,
        "cost": job.cost if finished else None,
        "latency_ms": job.latency_ms,
        "escalated": job.escalated if finished else None,
        "cached": job.cached,
        "success": job.error_code is None if finished else None,
        "error_code": job.error_code,
        "prompt_preview": job.prompt[:PROMPT_PREVIEW_CHARS],
    }
