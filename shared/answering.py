"""Getting a job an answer: route, call through fallbacks and open circuits, escalate once if unsure.

Everything here happens outside any database transaction. One deadline and the job's reserved dollars
bound the whole of it: retries, fallbacks and the escalation together.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field
from decimal import Decimal
from typing import Any

from shared import budget
from shared import confidence
from shared import difficulty
from shared import routing
from shared.catalog import Catalog
from shared.catalog import ModelSpec
from shared.circuit import CircuitBreaker
from shared.circuit import Permit
from shared.config import Settings
from shared.db.types import utcnow
from shared.errors import LLMError
from shared.errors import TransientLLMError
from shared.llm_client import UPSTREAM_BROKEN
from shared.llm_client import AttemptRecord
from shared.llm_client import Completion
from shared.llm_client import LLMClient
from shared.llm_client import RetryPolicy
from shared.llm_client import StreamInterrupted
from shared.llm_client import complete_with_retries

# An escalation needs at least this much of the deadline left to be worth starting.
MIN_ESCALATION_TIME_S = 0.5


@dataclass(frozen=True)
class Job:
    """What answering needs to know about a claimed job."""

    prompt: str
    max_tokens: int
    preference: str
    model: str | None
    tier: str | None
    max_tier: str | None
    reserved_cost: Decimal
    deadline_s: float
    previous_runs: int = 0
    difficulty_estimator: str = "heuristic"
    # A chat's turns and sampling options, sent upstream as they are (see shared.jobs.JobRequest).
    messages: list[dict[str, str]] | None = None
    options: dict[str, Any] | None = None


@dataclass(frozen=True)
class Answerer:
    """The collaborators answering uses, built once per worker process."""

    catalog: Catalog
    settings: Settings
    client: LLMClient
    breaker: CircuitBreaker | None = None
    sleep: Callable[[float], None] = time.sleep


@dataclass
class Outcome:
    """Everything learned while answering a job; recorded in one transaction afterwards."""

    difficulty: difficulty.DifficultyEstimate
    decision: routing.RoutingDecision
    model: ModelSpec | None = None
    completion: Completion | None = None
    error: LLMError | None = None
    confidence: float | None = None
    escalated: bool = False
    escalation_reason: str | None = None
    downgraded_from: str | None = None
    retry_count: int = 0
    attempts: list[tuple[str, AttemptRecord]] = field(default_factory=list)
    latency_ms: float = 0.0

    @property
    def cost(self) -> Decimal:
        return sum((record.cost for _, record in self.attempts), Decimal(0))


def answer(job: Job, *, using: Answerer, on_delta: Callable[[ModelSpec, str], None] | None = None) -> Outcome:
    """Route the job and get its best answer within its deadline and reservation.

    With `on_delta` the answer is streamed: each text delta goes to it with the model producing it, as it
    arrives. A streamed answer is never escalated (its tokens are already out), and retries and fallbacks
    stop at its first token.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + job.deadline_s
    catalog, settings = using.catalog, using.settings
    estimate = difficulty.estimate_difficulty(job.prompt, estimator=job.difficulty_estimator)
    decision = routing.route(
        catalog=catalog, score=estimate.score, preference=job.preference, model=job.model, tier=job.tier
    )
    outcome = Outcome(difficulty=estimate, decision=decision)
    if job.max_tier is not None:
        capped = routing.cap(catalog=catalog, decision=decision, max_tier=job.max_tier)
        if capped.tier != decision.tier:
            outcome.downgraded_from = decision.tier
        outcome.decision = capped
    for _ in range(job.previous_runs):
        # A run whose worker died left no record of its calls; say so instead of pretending it never ran.
        outcome.attempts.append(("primary", _lost_run(catalog.get_model(outcome.decision.model))))

    _answer_slot(job, outcome, outcome.decision, "primary", deadline=deadline, using=using, on_delta=on_delta)
    if outcome.completion is not None and on_delta is None:
        assessed = _assess(job.prompt, outcome.completion, settings)
        outcome.confidence = assessed.score
        stronger = routing.escalate(catalog=catalog, decision=outcome.decision)
        if (
            settings.escalation_enabled
            and assessed.score < settings.escalation_confidence_threshold
            and stronger is not None
            and deadline - time.monotonic() > MIN_ESCALATION_TIME_S
        ):
            outcome.escalated = True
            outcome.escalation_reason = ",".join(assessed.reasons) or "low_confidence"
            first = (outcome.model, outcome.completion, outcome.confidence)
            _answer_slot(job, outcome, stronger, "escalation", deadline=deadline, using=using)
            if outcome.completion is None:
                # The stronger tier could not answer: the first answer stands.
                outcome.model, outcome.completion, outcome.confidence = first
                outcome.error = None
            else:
                outcome.decision = stronger
                outcome.confidence = _assess(job.prompt, outcome.completion, settings).score
    outcome.latency_ms = round((time.perf_counter() - started) * 1000, 3)
    return outcome


def _answer_slot(
    job: Job,
    outcome: Outcome,
    decision: routing.RoutingDecision,
    purpose: str,
    *,
    deadline: float,
    using: Answerer,
    on_delta: Callable[[ModelSpec, str], None] | None = None,
) -> None:
    """Try the decision's model, then its fallbacks, until one answers; leave the result on `outcome`."""
    catalog = using.catalog
    policy = RetryPolicy.from_settings(using.settings)
    allowed = catalog.tiers if job.max_tier is None else catalog.tiers[: catalog.tiers.index(job.max_tier) + 1]
    prompt_bound = budget.estimate_prompt_tokens_bound(job.prompt)
    outcome.completion, outcome.model = None, None
    for position, model in enumerate(catalog.chain(decision.model)):
        label = purpose if position == 0 or purpose == "escalation" else "fallback"
        if model.tier not in allowed:
            continue
        if outcome.cost + model.cost(prompt_bound, job.max_tokens) > job.reserved_cost:
            outcome.attempts.append((label, _skipped(model, "over_reservation")))
            continue
        if time.monotonic() >= deadline:
            outcome.error = TransientLLMError("the job's deadline passed", details={"error_class": "deadline"})
            break
        recorder, permit = None, None
        if using.breaker is not None:
            permit = using.breaker.allow(model.name)
            if permit is None:
                outcome.attempts.append((label, _skipped(model, "circuit_open")))
                outcome.error = outcome.error or TransientLLMError(
                    f"{model.name}: circuit open", details={"error_class": "circuit_open"}
                )
                continue
            recorder = _breaker_recorder(using.breaker, permit)
        result = complete_with_retries(
            using.client,
            model=model,
            prompt=job.prompt,
            max_tokens=job.max_tokens,
            # A half-open circuit's probe is one call: retrying it would call an upstream its failure reopened.
            policy=dataclasses.replace(policy, max_attempts=1) if permit is not None and permit.probe else policy,
            sleep=using.sleep,
            deadline=deadline,
            on_attempt=recorder,
            messages=job.messages,
            options=job.options,
            on_delta=None if on_delta is None else functools.partial(on_delta, model),
        )
        outcome.attempts.extend((label, record) for record in result.attempts)
        outcome.retry_count += result.retry_count
        if result.completion is not None:
            outcome.model, outcome.completion, outcome.error = model, result.completion, None
            return
        outcome.error = result.error
        if isinstance(result.error, StreamInterrupted):
            # Its tokens are out already: another model cannot take over mid-answer.
            outcome.model = model
            return


def _breaker_recorder(breaker: CircuitBreaker, permit: Permit) -> Callable[[AttemptRecord], None]:
    """Report each attempt made under `permit` to the model's circuit: only a broken upstream counts against it."""

    def record(attempt: AttemptRecord) -> None:
        if attempt.outcome == "ok":
            breaker.record_success(permit)
        elif attempt.error_class in UPSTREAM_BROKEN:
            breaker.record_failure(permit)
        else:
            breaker.release(permit)

    return record


def _skipped(model: ModelSpec, reason: str) -> AttemptRecord:
    return AttemptRecord(
        model=model.name, tier=model.tier, outcome="skipped", latency_ms=0.0, started_at=utcnow(), error_class=reason
    )


def _lost_run(model: ModelSpec) -> AttemptRecord:
    return AttemptRecord(
        model=model.name, tier=model.tier, outcome="error", latency_ms=0.0, started_at=utcnow(),
        error_class="worker_lost",
    )  # fmt: skip


def _assess(prompt: str, completion: Completion, settings: Settings) -> confidence.AnswerConfidence:
    return confidence.assess_answer(
        prompt=prompt,
        answer=completion.text,
        finish_reason=completion.finish_reason,
        logprobs=completion.logprobs,
        min_answer_chars=settings.escalation_min_answer_chars,
    )
