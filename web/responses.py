"""Response models: every JSON body the API sends is one of these, and /openapi.json describes them.

A view builds its answer by validating the domain's objects into a model (`from_attributes`) or by naming the
fields, and `send` serializes that model: nothing reaches the client that the model does not declare, and the
published schema is the model's own (web.openapi), with `additionalProperties: false`. The job and batch bodies
live in shared.jobs.views, since webhooks send them too.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated
from typing import Any
from typing import Literal

from flask import Response
from flask import jsonify
from pydantic import AfterValidator
from pydantic import AliasPath
from pydantic import Field
from pydantic import PlainSerializer

from shared.jobs.views import Attempt as Attempt
from shared.jobs.views import BatchCancelled as BatchCancelled
from shared.jobs.views import BatchResult as BatchResult
from shared.jobs.views import DifficultyLevel
from shared.jobs.views import ErrorDetail as ErrorDetail
from shared.jobs.views import JobPage as JobPage
from shared.jobs.views import JobResult as JobResult
from shared.jobs.views import JobStatusName
from shared.jobs.views import JobSummary as JobSummary
from shared.jobs.views import Money
from shared.jobs.views import ResponseModel
from shared.jobs.views import Timestamp

CircuitState = Literal["closed", "open", "half_open"]
Day = Annotated[date, PlainSerializer(date.isoformat, return_type=str)]


def send(body: ResponseModel, status: int = 200, *, exclude_unset: bool = False) -> Response:
    """Answer `body` as JSON, serialized by its model (Decimal money leaves as a number, see web.json_provider)."""
    response = jsonify(body.model_dump(exclude_unset=exclude_unset))
    response.status_code = status
    return response


class ErrorBody(ResponseModel):
    """Every error answer."""

    error: ErrorDetail


class OpenAIErrorDetail(ResponseModel):
    message: str
    type: str
    param: str | None = Field(description="The request field at fault, when one is.")
    code: str


class OpenAIErrorBody(ResponseModel):
    """Every error answer under /v1, in OpenAI's shape (its SDKs parse it)."""

    error: OpenAIErrorDetail


class JobAccepted(ResponseModel):
    """A job accepted without its result (202): not waited for, or not finished in time."""

    job_id: str
    status: JobStatusName = Field(
        description="Its status now: finished already when it repeats an earlier request or the response cache "
        "answered it."
    )
    poll_url: str


class BatchAccepted(ResponseModel):
    batch_id: str
    job_ids: list[str]
    poll_url: str


class BudgetWindowView(ResponseModel):
    """One budget window of a scope: what the jobs accepted since `since` spent and hold, against its limit."""

    window: str = Field(description="`day` (UTC), `week` (from Monday, UTC), or rolling `<N>h` / `<N>d`.")
    since: Timestamp = Field(description="The first hour the window counts now (whole UTC hours).")
    limit: Money
    spent: Money
    reserved: Money
    remaining: Money


class BudgetView(ResponseModel):
    scope: str
    year: int
    month: int
    monthly_limit: Money
    total_spent: Money
    reserved: Money
    remaining: Money
    percentage_used: Annotated[float, AfterValidator(lambda value: round(value, 4))]
    request_count: int
    held_by_job: str | None = Field(
        description="The job the upstream billed more than its bound: while set, this scope reserves nothing "
        "(402 `budget_exceeded`, `details.reason`: `usage_over_bound`) until an operator clears the hold "
        "(DELETE /api/budget/hold)."
    )
    windows: list[BudgetWindowView] = Field(
        description="The scope's budget windows beside the month (BUDGET_WINDOWS, or a key's `budget_windows`); "
        "a request must fit in each."
    )


class ModelStats(ResponseModel):
    requests: int
    cost: Money
    unconfirmed_cost: Money = Field(description="Part of cost charged at bounds for calls whose answer was lost.")
    avg_latency_ms: float | None
    tokens: int


class LatencyPercentiles(ResponseModel):
    """Over the most recent finished jobs (at most 2000); null without any."""

    p50: float | None
    p95: float | None
    p99: float | None


class StatsView(ResponseModel):
    total_requests: int
    successful_requests: int
    failed_requests: int
    success_rate: float
    total_cost: Money
    unconfirmed_cost: Money = Field(
        description="Part of total_cost charged at worst-case bounds for upstream calls whose answer was lost."
    )
    avg_latency_ms: float | None
    total_tokens: int
    escalation_rate: float
    total_retries: int
    fallback_attempts: int
    baseline_cost: Money = Field(description="The finished jobs' tokens priced at the strongest tier's model.")
    savings: Money = Field(description="baseline_cost - total_cost.")
    savings_pct: float = Field(description="savings as a percentage of baseline_cost; 0 without a baseline.")
    cache_hits: int = Field(description="Jobs answered from the response cache.")
    latency_ms: LatencyPercentiles
    by_model: dict[str, ModelStats]
    circuits: dict[str, CircuitState]


class HealthChecks(ResponseModel):
    database: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable"]
    workers: int
    circuits: dict[str, CircuitState] = Field(
        default_factory=dict, description="Present when the broker answers: the upstream circuits' states."
    )


class HealthView(ResponseModel):
    status: Literal["ok", "unavailable"]
    checks: HealthChecks


class LivenessView(ResponseModel):
    """GET /livez: the process serves; nothing else is checked."""

    status: Literal["ok"]


class ReadinessChecks(ResponseModel):
    database: Literal["ok", "unreachable"]
    broker: Literal["ok", "unreachable"]


class ReadinessView(ResponseModel):
    """GET /readyz: whether this process can do its work (the database and the broker answer)."""

    status: Literal["ok", "unavailable"]
    checks: ReadinessChecks


class CostRange(ResponseModel):
    expected: Money
    worst_case: Money


class EstimateView(ResponseModel):
    """Where a prompt would be routed and what it may cost (POST /api/estimate)."""

    tier: str
    model: str
    difficulty_score: Annotated[float, AfterValidator(lambda score: round(score, 4))]
    difficulty_level: DifficultyLevel
    escalation_tier: str | None
    prompt_tokens_estimate: int
    completion_tokens_estimate: int
    cost: CostRange


class DayCost(ResponseModel):
    date: Day = Field(validation_alias="day", description="A UTC day, YYYY-MM-DD.")
    cost: Money
    baseline_cost: Money
    requests: int


class ModelCost(ResponseModel):
    model: str | None = Field(description="null for jobs that never reached a model.")
    cost: Money
    unconfirmed_cost: Money = Field(description="Part of cost charged at bounds for calls whose answer was lost.")
    requests: int
    prompt_tokens: int
    completion_tokens: int


class TierCost(ResponseModel):
    tier: str | None
    cost: Money
    requests: int


class KeyCost(ResponseModel):
    api_key_id: int | None = Field(description="null for jobs made without a key.")
    name: str | None
    cost: Money
    requests: int


class CostReportView(ResponseModel):
    """The jobs created in [since, until); every breakdown sums to the totals."""

    period: Literal["week", "month"]
    since: Timestamp = Field(validation_alias=AliasPath("window", "since"))
    until: Timestamp = Field(validation_alias=AliasPath("window", "until"))
    total_cost: Money = Field(validation_alias=AliasPath("totals", "cost"))
    unconfirmed_cost: Money = Field(
        description="Part of total_cost charged at worst-case bounds for upstream calls whose answer was lost."
    )
    baseline_cost: Money = Field(validation_alias=AliasPath("totals", "baseline_cost"))
    savings: Money = Field(validation_alias=AliasPath("totals", "savings"))
    savings_pct: float = Field(validation_alias=AliasPath("totals", "savings_pct"))
    requests: int
    by_day: list[DayCost] = Field(description="Every day of the period, oldest first, days without jobs included.")
    by_model: list[ModelCost]
    by_tier: list[TierCost]
    by_key: list[KeyCost]


class ChatCompletionMessage(ResponseModel):
    role: Literal["assistant"]
    content: str
    refusal: str | None


class ChatCompletionChoice(ResponseModel):
    index: int
    message: ChatCompletionMessage
    logprobs: dict[str, Any] | None
    finish_reason: str = Field(
        description=(
            "As the upstream said: `stop`, or `length` when the answer was cut at max_tokens (never escalated: "
            "every tier gets the same max_tokens)."
        )
    )


class ChatCompletionUsage(ResponseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(ResponseModel):
    """OpenAI's `chat.completion`; the router's details are in the `x-router-*` headers."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatCompletionChoice]
    usage: ChatCompletionUsage


class ChatCompletionDelta(ResponseModel):
    """What a chunk adds: the role on the first, text on each, nothing on the last."""

    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatCompletionChunkChoice(ResponseModel):
    index: int
    delta: ChatCompletionDelta
    logprobs: dict[str, Any] | None
    finish_reason: str | None


class ChatCompletionChunk(ResponseModel):
    """One `data:` event of a streamed answer (OpenAI's `chat.completion.chunk`); `usage` only when asked for
    (`stream_options.include_usage`): null on every chunk but the last, which carries no choices."""

    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    system_fingerprint: str | None
    choices: list[ChatCompletionChunkChoice]
    usage: ChatCompletionUsage | None = None


class ModelObject(ResponseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(ResponseModel):
    """GET /v1/models: the router's aliases, then every catalog model."""

    object: Literal["list"]
    data: list[ModelObject]


class KeyView(ResponseModel):
    """An API key as the admin API shows it: never the key itself, which only its creation's answer carries."""

    id: int
    name: str
    prefix: str = Field(description="The key's first characters, enough to tell keys apart.")
    is_admin: bool
    status: Literal["active", "expired", "revoked"]
    monthly_budget: Money | None = Field(description="The key's own monthly limit; null: the global one only.")
    rpm: int | None
    tpm: int | None
    allowed_models: list[str] | None = Field(description="The only models its jobs may call; null: any.")
    budget_windows: dict[str, Money] | None = Field(
        description="Its limits over budget windows beside the month (`day`, `week`, rolling `<N>h`/`<N>d`); "
        "null: none."
    )
    created_at: Timestamp
    expires_at: Timestamp | None
    revoked_at: Timestamp | None


class CreatedKey(KeyView):
    """POST /api/keys: the new key's settings, and the key itself, shown this once."""

    key: str = Field(description="The bearer key; the database keeps only its hash.")


class KeyList(ResponseModel):
    keys: list[KeyView] = Field(description="Every key, oldest first.")
