"""Jobs and batches as the API shows them, for HTTP answers and webhook bodies alike.

Each body is a pydantic model read from the stored row (`model_validate(row, from_attributes=True)`): the same
model serializes the answer and, through web.openapi, documents it, so the two cannot drift apart. Money stays
a Decimal inside and leaves as a JSON number; times leave as `isoformat()` text.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import Enum
from typing import Annotated
from typing import Any
from typing import Literal

from pydantic import AliasPath
from pydantic import BaseModel
from pydantic import BeforeValidator
from pydantic import ConfigDict
from pydantic import Field
from pydantic import PlainSerializer
from pydantic import SerializerFunctionWrapHandler
from pydantic import ValidationInfo
from pydantic import field_validator
from pydantic import model_serializer
from pydantic import model_validator
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


def _value(value: object) -> object:
    return value.value if isinstance(value, Enum) else value


# Money stays an exact Decimal in Python (web.json_provider writes it as an exact JSON number); only a JSON dump
# (model_dump_json, mode="json") turns it into a float.
Money = Annotated[Decimal, PlainSerializer(float, return_type=float, when_used="json")]
# `isoformat()`, not pydantic's own form: a UTC time keeps its "+00:00", as the answers always showed it.
Timestamp = Annotated[datetime, PlainSerializer(datetime.isoformat, return_type=str)]
JobStatusName = Annotated[Literal["queued", "running", "succeeded", "failed"], BeforeValidator(_value)]
DifficultyLevel = Literal["easy", "medium", "hard"]
FINISHED = frozenset({"succeeded", "failed"})


class ResponseModel(BaseModel):
    """A body the service sends: read from attributes (or a mapping with more than it needs), and the schema
    says that it carries no field beyond those declared."""

    model_config = ConfigDict(from_attributes=True, extra="ignore", json_schema_extra={"additionalProperties": False})


class ErrorDetail(ResponseModel):
    code: str
    message: str
    details: dict[str, Any] = Field(default_factory=dict)


class Attempt(ResponseModel):
    """One upstream call made for a job."""

    model: str
    tier: str
    purpose: Literal["primary", "fallback", "escalation"]
    outcome: Literal["ok", "error", "skipped", "unconfirmed"] = Field(
        description="`unconfirmed`: the call may have been billed but its answer was lost; charged at its bound."
    )
    error_class: str | None = None
    status_code: int | None = None
    latency_ms: float
    prompt_tokens: int
    completion_tokens: int
    cost: Money
    deployment: str | None = Field(
        default=None, description="Which of the model's deployments served the call; only when it has several."
    )

    @model_serializer(mode="wrap")
    def _deployment_when_several(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        body: dict[str, Any] = handler(self)
        if body.get("deployment") is None:
            body.pop("deployment", None)
        return body


# What a job carries while queued or running; the rest appears once it has finished.
STATE_FIELDS = frozenset(
    {"job_id", "status", "created_at", "prompt", "cached", "request_id", "batch_id", "batch_index", "metadata"}
)


class JobResult(ResponseModel):
    """A job as stored; the result fields are present once it has finished (`error` only if it failed)."""

    # Read to build `error`, never sent as such.
    error_message: str | None = Field(default=None, exclude=True)

    job_id: str = Field(validation_alias="id")
    status: JobStatusName
    created_at: Timestamp
    prompt: str = Field(description="The prompt as stored (a chat request's turns joined).")
    cached: bool = Field(description="Answered from the response cache, at no cost.")
    request_id: str | None = Field(description="The X-Request-ID of the request that made the job.")
    batch_id: str | None = Field(default=None, description="Only on a batch's jobs.")
    batch_index: int | None = Field(default=None, description="The item's position in its batch; only with batch_id.")
    finished_at: Timestamp | None = None
    success: bool | None = Field(default=None, validation_alias="error_code")
    response: str | None = None
    model_used: str | None = None
    tier: str | None = None
    difficulty_score: float | None = None
    difficulty_level: DifficultyLevel | None = None
    tokens_used: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cost: Money | None = None
    unconfirmed_cost: Money | None = Field(
        default=None,
        description="The part of `cost` charged at its worst-case bound for upstream calls whose answer was lost"
        " (with their worker, or to an interruption): the upstream may have billed them, and never said how much.",
    )
    latency_ms: float | None = None
    escalated: bool | None = None
    escalation_reason: str | None = None
    truncated: bool | None = Field(
        default=None,
        description=(
            "The answer stopped at the request's max_tokens (finish_reason `length`); such an answer is never "
            "escalated, since every tier gets the same max_tokens: ask again with a larger one."
        ),
    )
    downgraded: bool | None = Field(default=None, validation_alias="downgraded_from")
    downgraded_from: str | None = None
    confidence: float | None = None
    retry_count: int | None = None
    usage_over_bound: bool | None = Field(
        default=None,
        description="The upstream billed more than the job's bound: `cost` is what it billed, and the job's "
        "budget scopes reserve nothing more this month until an operator clears the hold.",
    )
    usage_invalid: bool | None = Field(
        default=None,
        description="The upstream reported usage that cannot be true for one of the job's calls (negative, not "
        "an integer, a prompt above the model's context window, a completion above the max_tokens sent, or "
        "none at all): that call is charged at its worst-case bound, part of `unconfirmed_cost`.",
    )
    attempts: list[Attempt] | None = None
    metadata: dict[str, Any] = Field(validation_alias="metadata_json", description="As the request gave it.")
    error: ErrorDetail | None = Field(default=None, validation_alias="error_code")

    @field_validator("success", mode="before")
    @classmethod
    def _succeeded(cls, error_code: str | None) -> bool:
        return error_code is None

    @field_validator("downgraded", mode="before")
    @classmethod
    def _was_downgraded(cls, downgraded_from: str | None) -> bool:
        return downgraded_from is not None

    @field_validator("error", mode="before")
    @classmethod
    def _error(cls, error_code: str | None, info: ValidationInfo) -> dict[str, Any] | None:
        if error_code is None:
            return None
        return {"code": error_code, "message": info.data.get("error_message") or ""}

    # Not annotated: a return type would stand for the fields in the published schema.
    @model_serializer(mode="wrap")
    def _as_stored(self, handler: SerializerFunctionWrapHandler):
        body: dict[str, Any] = handler(self)
        if self.batch_id is None:
            del body["batch_id"], body["batch_index"]
        if self.status not in FINISHED:
            return {name: value for name, value in body.items() if name in STATE_FIELDS}
        if self.error is None:
            del body["error"]
        return body


# The job attributes JobResult reads (its attempts aside): a row that carries these is enough to answer with.
BODY_ATTRIBUTES = tuple(
    dict.fromkeys(
        field.validation_alias if isinstance(field.validation_alias, str) else name
        for name, field in JobResult.model_fields.items()
        if name != "attempts"
    )
)
# What a finished job's row must carry, whichever form records it: the body's attributes (the batch among
# them) and the callback to note.
FINISHED_ATTRIBUTES = (*BODY_ATTRIBUTES, "callback_url")


def job_result(job: RequestLog | Row[Any], *, attempts: Sequence[Mapping[str, Any]] | None = None) -> JobResult:
    """Return the job as the API shows it: its state while unfinished, the full result once finished.

    `job` may also be a row whose columns carry the mapped attributes' names; `attempts` (its attempts' column
    values, in order) then stand in for the relationship it does not have.
    """
    view = JobResult.model_validate(job, from_attributes=True)
    if attempts is not None:
        view.attempts = [Attempt.model_validate(attempt) for attempt in attempts]
    return view


def job_body(job: RequestLog | Row[Any], *, attempts: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """Return the body of job_result, for a webhook or an announcement (Decimal-free, times as text)."""
    return job_result(job, attempts=attempts).model_dump()


class BatchResult(ResponseModel):
    """A batch's counts and its jobs in submission order."""

    batch_id: str = Field(validation_alias=AliasPath("batch", "id"))
    status: Literal["running", "completed"] = Field(validation_alias="pending")
    created_at: Timestamp = Field(validation_alias=AliasPath("batch", "created_at"))
    total: int = Field(validation_alias=AliasPath("batch", "total"))
    succeeded: int
    failed: int
    pending: int
    cost: Money
    jobs: list[JobResult]

    @field_validator("status", mode="before")
    @classmethod
    def _running_while_pending(cls, pending: int) -> str:
        return "running" if pending else "completed"


class BatchCancelled(BatchResult):
    """A batch after DELETE: its body, and how many of its jobs this request cancelled."""

    cancelled: int = Field(description="The jobs this request cancelled (those that had not started).")


def batch_result(view: BatchView) -> BatchResult:
    """Return the batch's counts and its jobs in submission order."""
    return BatchResult.model_validate(view, from_attributes=True)


@dataclass(frozen=True)
class _Cancel:
    """A batch view with the count of jobs a cancel ended, for BatchCancelled to read both from."""

    view: BatchView
    cancelled: int

    def __getattr__(self, name: str) -> Any:
        return getattr(self.view, name)


def batch_cancelled(view: BatchView, *, cancelled: int) -> BatchCancelled:
    """Return the batch after a cancel, with how many of its jobs that cancel ended."""
    return BatchCancelled.model_validate(_Cancel(view, cancelled), from_attributes=True)


def batch_body(view: BatchView) -> dict[str, Any]:
    """Return the body of batch_result, for a webhook."""
    return batch_result(view).model_dump()


PROMPT_PREVIEW_CHARS = 120


class JobSummary(ResponseModel):
    """One job in a search: where it went and how it ended; the outcome fields are null while unfinished."""

    job_id: str = Field(validation_alias="id")
    status: JobStatusName
    created_at: Timestamp
    finished_at: Timestamp | None
    model_used: str | None
    tier: str | None
    difficulty_level: DifficultyLevel | None
    cost: Money | None
    latency_ms: float | None
    escalated: bool | None
    cached: bool
    success: bool | None = Field(validation_alias="error_code")
    error_code: str | None
    prompt_preview: str = Field(
        validation_alias="prompt", description=f"The first {PROMPT_PREVIEW_CHARS} characters of the prompt."
    )

    @field_validator("success", mode="before")
    @classmethod
    def _succeeded(cls, error_code: str | None) -> bool:
        return error_code is None

    @field_validator("prompt_preview", mode="before")
    @classmethod
    def _preview(cls, prompt: str) -> str:
        return prompt[:PROMPT_PREVIEW_CHARS]

    @model_validator(mode="after")
    def _outcome_once_finished(self) -> JobSummary:
        if self.status not in FINISHED:
            self.cost = self.escalated = self.success = None
        return self


class JobPage(ResponseModel):
    """A page of GET /api/jobs, newest first."""

    jobs: list[JobSummary]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page; null on the last page.")
