"""Getting a job an answer: route, call through fallbacks and open circuits, escalate once if unsure.

An answer cut at the job's max_tokens is never escalated: the stronger tier gets the same max_tokens
(shared.routing.confidence.cut_at_max_tokens).

Everything here happens outside any database transaction. One deadline and the job's reserved dollars
bound the whole of it: retries, fallbacks and the escalation together.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from typing import Any

from shared.config import Settings
from shared.errors import LLMError
from shared.errors import RateLimited
from shared.errors import TransientLLMError
from shared.ledger import call_bound
from shared.ledger import model_access
from shared.routing import confidence
from shared.routing import difficulty
from shared.routing import policy
from shared.routing.catalog import Catalog
from shared.routing.catalog import ModelSpec
from shared.routing.difficulty_estimate import DifficultyEstimate
from shared.store.types import utcnow
from shared.upstream import token_count
from shared.upstream.admission import SCOUTING
from shared.upstream.admission import Admission
from shared.upstream.admission import Ticket
from shared.upstream.attempts import UNCONFIRMED
from shared.upstream.attempts import AttemptRecord
from shared.upstream.circuit_breaker import CircuitBreaker
from shared.upstream.circuit_breaker import Permit
from shared.upstream.deployments import Balancer
from shared.upstream.llm_client import UPSTREAM_BROKEN
from shared.upstream.llm_client import Completion
from shared.upstream.llm_client import LLMClient
from shared.upstream.llm_client import RetryPolicy
from shared.upstream.llm_client import StreamInterrupted
from shared.upstream.llm_client import complete_with_retries

logger = logging.getLogger(__name__)

# An escalation needs at least this much of the deadline left to be worth starting.
MIN_ESCALATION_TIME_S = 0.5
# The shortest wait a job deferred for open circuits is given.
MIN_DEFERRAL_S = 0.1
# The shortest wait before calling a model again after its 429, when admission did not pace the call.
MIN_REPEAT_WAIT_S = 0.1


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
    # What the calls of those runs may have cost, charged at their bounds (shared.ledger.lost_calls); part of the
    # reservation already spent.
    lost_cost: Decimal = Decimal(0)
    difficulty_estimator: str = "heuristic"
    # A chat's turns and sampling options, sent upstream as they are (see shared.jobs.lifecycle.JobRequest).
    messages: list[dict[str, str]] | None = None
    options: dict[str, Any] | None = None
    # What a rate-limited model's job does: "wait" for its turn, or "fallback" to the next model of its chain.
    on_rate_limit: str = "wait"
    # May the job give its worker back while it waits (shared.jobs.runs re-enqueues it): not once it made a call.
    can_defer: bool = False
    # A model whose turn an earlier run reserved (shared.upstream.admission) and waited for: its first call is admitted.
    admitted: str | None = None
    # The only catalog models it may call (shared.ledger.model_access); None: any.
    allowed_models: frozenset[str] | None = None

    @functools.cached_property
    def call(self) -> call_bound.CallBound:
        """The bound of one upstream call of the job (shared.ledger.call_bound): the same for every call."""
        return call_bound.call_bound(
            prompt=self.prompt, max_tokens=self.max_tokens, messages=self.messages, options=self.options
        )


@dataclass(frozen=True)
class Deferral:
    """The job waits `wait_s` before it can be admitted; `admitted` names the model whose turn is reserved."""

    wait_s: float
    admitted: str | None = None


@dataclass(frozen=True)
class Answerer:
    """The collaborators answering uses, built once per worker process."""

    catalog: Catalog
    settings: Settings
    client: LLMClient
    breaker: CircuitBreaker | None = None
    sleep: Callable[[float], None] = time.sleep
    admission: Admission | None = None
    # Orders a model's deployments and counts their calls in flight; None: tried in the catalog's order.
    balancer: Balancer | None = None


@dataclass
class Outcome:
    """Everything learned while answering a job; recorded in one transaction afterwards."""

    difficulty: DifficultyEstimate
    decision: policy.RoutingDecision
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
    # Set when the job gives its worker back to wait for admission (nothing else is then set).
    deferral: Deferral | None = None
    # Upstream calls started by this run.
    calls: int = 0

    @property
    def cost(self) -> Decimal:
        return sum((record.cost for _, record in self.attempts), Decimal(0))

    @property
    def truncated(self) -> bool:
        """The answer stopped at the job's max_tokens."""
        return self.completion is not None and confidence.cut_at_max_tokens(self.completion.finish_reason)

    @property
    def unconfirmed_cost(self) -> Decimal:
        """The part of the cost charged at bounds for calls whose answer never told what they cost."""
        return sum(
            (record.cost for _, record in self.attempts if record.outcome == UNCONFIRMED or record.usage_invalid),
            Decimal(0),
        )

    @property
    def usage_invalid(self) -> tuple[AttemptRecord, ...]:
        """The attempts whose reported usage could not be true, charged at their bounds instead."""
        return tuple(record for _, record in self.attempts if record.usage_invalid)


# Before each upstream call, with the most the call can cost: False stops the job (its run lost its claim).
OnCall = Callable[[Decimal], bool]


def answer(
    job: Job,
    *,
    using: Answerer,
    on_delta: Callable[[ModelSpec, str], None] | None = None,
    on_call: OnCall | None = None,
) -> Outcome:
    """Route the job and get its best answer within its deadline and reservation.

    With `on_delta` the answer is streamed: each text delta goes to it with the model producing it, as it
    arrives. A streamed answer is never escalated (its tokens are already out), and retries and fallbacks
    stop at its first token. `on_call` is told each call's bound before the call starts.
    """
    started = time.perf_counter()
    deadline = time.monotonic() + job.deadline_s
    # Routing, fallbacks and escalation see only the models the job may call: no other one is ever tried.
    using = dataclasses.replace(using, catalog=model_access.catalog_for(using.catalog, job.allowed_models))
    catalog, settings = using.catalog, using.settings
    estimate = difficulty.estimate_difficulty(job.prompt, estimator=job.difficulty_estimator)
    decision = policy.route(
        catalog=catalog, score=estimate.score, preference=job.preference, model=job.model, tier=job.tier
    )
    outcome = Outcome(difficulty=estimate, decision=decision)
    if job.max_tier is not None:
        capped = policy.cap(catalog=catalog, decision=decision, max_tier=job.max_tier)
        if capped.tier != decision.tier:
            outcome.downgraded_from = decision.tier
        outcome.decision = capped
    for lost in range(job.previous_runs):
        # A run whose worker died left no record of its calls; say so instead of pretending it never ran. The
        # calls they noted are charged, at their bounds, on the first of these records.
        cost = job.lost_cost if lost == 0 else Decimal(0)
        outcome.attempts.append(("primary", _lost_run(catalog.get_model(outcome.decision.model), cost=cost)))

    slot = functools.partial(_answer_slot, job, outcome, deadline=deadline, using=using, on_call=on_call)
    slot(outcome.decision, "primary", on_delta=on_delta)
    if outcome.deferral is not None:
        return outcome
    if outcome.completion is not None and on_delta is None:
        assessed = _assess(job.prompt, outcome.completion, settings)
        outcome.confidence = assessed.score
        stronger = policy.escalate(catalog=catalog, decision=outcome.decision)
        if (
            settings.escalation_enabled
            and not outcome.truncated
            and assessed.score < settings.escalation_confidence_threshold
            and stronger is not None
            and deadline - time.monotonic() > MIN_ESCALATION_TIME_S
        ):
            outcome.escalated = True
            outcome.escalation_reason = ",".join(assessed.reasons) or "low_confidence"
            first = (outcome.model, outcome.completion, outcome.confidence)
            slot(stronger, "escalation")
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
    decision: policy.RoutingDecision,
    purpose: str,
    *,
    deadline: float,
    using: Answerer,
    on_call: OnCall | None,
    on_delta: Callable[[ModelSpec, str], None] | None = None,
) -> None:
    """Try the decision's model, then its fallbacks, until one answers; leave the result on `outcome`.

    A call interrupted by anything but an upstream failure (the task's time limit, say) may have been billed
    without an answer to tell: it is recorded as unconfirmed, at its bound, and the job ends there.
    """
    catalog = using.catalog
    policy = RetryPolicy.from_settings(using.settings)
    allowed = catalog.tiers_up_to(job.max_tier)
    outcome.completion, outcome.model = None, None
    # Why each model of the chain did not answer, and how long until those refused for now would be let in.
    refusals: list[str] = []
    waits: list[float] = []
    limited = failed = False
    admitted = job.admitted
    patient = job.on_rate_limit == "wait" and purpose != "escalation"
    for position, model, last in _candidates(catalog.chain(decision.model), using):
        label = purpose if position == 0 or purpose == "escalation" else "fallback"
        if model.tier not in allowed:
            continue
        # A job waits for its model only on the model's last deployment: a busy one is left for the next.
        waits_here = patient and last
        bound = attempt_bound(job, model)
        if outcome.cost + bound > job.reserved_cost:
            outcome.attempts.append((label, _skipped(model, "over_reservation")))
            refusals.append(f"{model.name}: over the job's reservation")
            continue
        # The same model again after a 429: its admission now knows better. A job that waits for its model does
        # so for as long as its deadline allows (a 429 is backpressure, not a failure); one that chose to fall
        # back moves on once the policy's attempts are all answered 429.
        for repeat in itertools.count():
            if repeat >= policy.max_attempts and not waits_here:
                refusals.append(f"{model.name}: answered 429 (rate limited) on every attempt")
                limited = True
                break
            if repeat > 0 and time.monotonic() >= deadline:
                refusals.append(f"{model.name}: answered 429 (rate limited) until the job's deadline")
                limited = True
                break
            if time.monotonic() >= deadline:
                refusals.append("the job's deadline passed")
                outcome.error = TransientLLMError("; ".join(refusals), details={"error_class": "deadline"})
                return
            permit = None
            if using.breaker is not None:
                permit = using.breaker.allow(model.upstream_key)
                if permit is None:
                    outcome.attempts.append((label, _skipped(model, "circuit_open")))
                    wait = using.breaker.reopens_in(model.upstream_key)
                    refusals.append(f"{model.upstream_key}: circuit open (a probe is let through in {wait:.1f} s)")
                    waits.append(wait)
                    break
            ticket = None
            if using.admission is not None and admitted != model.upstream_key:
                ticket = _admit(job, model, patient=waits_here, deadline=deadline, using=using, last=last)
                while ticket.limit == SCOUTING and time.monotonic() + ticket.wait_s < deadline:
                    # The first call to this upstream is out: its answer tells the limits everyone keeps to.
                    using.sleep(ticket.wait_s)
                    ticket = _admit(job, model, patient=waits_here, deadline=deadline, using=using, last=last)
                if ticket.wait_s > 0 and not ticket.reserved:
                    if permit is not None:
                        using.breaker.release(permit)  # type: ignore[union-attr]
                    outcome.attempts.append((label, _skipped(model, "rate_limited")))
                    refusals.append(f"{ticket.describe(model.upstream_key)}: next call in {ticket.wait_s:.1f} s")
                    waits.append(ticket.wait_s)
                    limited = True
                    break
                if ticket.wait_s > using.settings.admission_inline_wait_s and job.can_defer and outcome.calls == 0:
                    # Its turn is reserved: the job waits for it without holding its worker.
                    if permit is not None:
                        using.breaker.release(permit)  # type: ignore[union-attr]
                    outcome.deferral = Deferral(ticket.wait_s, admitted=model.upstream_key)
                    return
                pause = ticket.wait_s
                if repeat > 0 and pause == 0:
                    # Admission did not pace this repeat (Redis unreachable, or a 429 that asked for no wait): the
                    # retry policy's backoff does, so that a patient job never calls a throttling upstream in a loop.
                    backoff = min(policy.backoff_initial_s * 2 ** (repeat - 1), policy.backoff_max_s)
                    pause = max(backoff, MIN_REPEAT_WAIT_S)
                    if time.monotonic() + pause >= deadline:
                        if permit is not None:
                            using.breaker.release(permit)  # type: ignore[union-attr]
                        refusals.append(f"{model.name}: answered 429 (rate limited) until the job's deadline")
                        limited = True
                        break
                if pause > 0:
                    using.sleep(pause)
            admitted = None
            # The same model again after a 429 is a retry, as the client's own retries of a 5xx are.
            outcome.retry_count += repeat > 0
            flight = None if using.balancer is None else using.balancer.begin(model)
            try:
                called = _call(job, outcome, model, label, permit, ticket, policy, deadline=deadline, using=using,
                               on_call=on_call, on_delta=on_delta)  # fmt: skip
            finally:
                if using.balancer is not None:
                    using.balancer.end(model, flight)
            if called in (_ANSWERED, _STOP):
                return
            if called == _FAILED:
                refusals.append(outcome.error.message if outcome.error else f"{model.name}: the call failed")
                failed = True
                break
        if limited and waits_here:
            # Waiting was chosen over the next (pricier) model: the job waits for this one or fails rate_limited.
            break
    if outcome.completion is not None or not refusals:
        return
    if waits and not failed and job.can_defer and outcome.calls == 0 and time.monotonic() + min(waits) < deadline:
        # Never at once: a circuit seen open a moment ago is not let through sooner by asking again.
        outcome.deferral = Deferral(max(min(waits), MIN_DEFERRAL_S))
        return
    message = "; ".join(refusals)
    if limited and not failed:
        outcome.error = RateLimited(message, details={"error_class": "rate_limited"})
    elif outcome.error is None or outcome.error.details.get("error_class") == "rate_limited":
        outcome.error = TransientLLMError(message, details={"error_class": "circuit_open" if waits else "refused"})
    elif len(refusals) > 1:
        outcome.error = type(outcome.error)(
            message, status_code=outcome.error.status_code, details=outcome.error.details
        )


_ANSWERED, _FAILED, _STOP, _THROTTLED = "answered", "failed", "stop", "throttled"


def _candidates(chain: tuple[ModelSpec, ...], using: Answerer) -> Iterator[tuple[int, ModelSpec, bool]]:
    """Yield each model of the chain as each of its deployments, in balanced order: (model's position, spec, last).

    A model's deployments are ordered when its turn comes, so that the order reflects the calls then in flight.
    """
    for position, model in enumerate(chain):
        specs = (
            model.served_by()
            if using.balancer is None
            else using.balancer.order(model, breaker=using.breaker, admission=using.admission)
        )
        for index, spec in enumerate(specs):
            yield position, spec, index == len(specs) - 1


def _call(
    job: Job,
    outcome: Outcome,
    model: ModelSpec,
    label: str,
    permit: Permit | None,
    ticket: Ticket | None,
    policy: RetryPolicy,
    *,
    deadline: float,
    using: Answerer,
    on_call: OnCall | None,
    on_delta: Callable[[ModelSpec, str], None] | None,
) -> str:
    """Call `model` (with retries) and leave what it answered on `outcome`; return how it ended."""
    bound = attempt_bound(job, model)
    if on_call is not None and not on_call(bound):
        if permit is not None:
            using.breaker.release(permit)  # type: ignore[union-attr]
        outcome.error = TransientLLMError(
            "the job was taken over by another run", details={"error_class": "lost_claim"}
        )
        return _STOP
    outcome.calls += 1
    started_at = utcnow()
    if permit is not None and permit.probe:
        # A half-open circuit's probe is one call: retrying it would call an upstream its failure reopened.
        policy = dataclasses.replace(policy, max_attempts=1)
    try:
        result = complete_with_retries(
            using.client,
            model=model,
            prompt=job.prompt,
            max_tokens=job.max_tokens,
            policy=policy,
            sleep=using.sleep,
            deadline=deadline,
            on_attempt=_recorder(using, model, permit, ticket),
            messages=job.messages,
            options=job.options,
            on_delta=None if on_delta is None else functools.partial(on_delta, model),
            # A 429 goes back to admission, which learned from it when the next call may go.
            retry_throttled=using.admission is None,
        )
    except Exception as exc:
        logger.exception("upstream call interrupted model=%s", model.name)
        outcome.attempts.append((label, _interrupted(model, cost=bound, started_at=started_at)))
        outcome.error = TransientLLMError(
            f"{model.name}: the call was interrupted ({type(exc).__name__})",
            details={"error_class": "interrupted"},
        )
        return _STOP
    outcome.attempts.extend((label, record) for record in result.attempts)
    outcome.retry_count += result.retry_count
    if result.completion is not None:
        outcome.model, outcome.completion, outcome.error = model, result.completion, None
        if model.deployment is not None:
            logger.info("answered model=%s deployment=%s", model.name, model.deployment)
        return _ANSWERED
    outcome.error = result.error
    if isinstance(result.error, StreamInterrupted):
        # Its tokens are out already: another model cannot take over mid-answer.
        outcome.model = model
        return _STOP
    if (
        using.admission is not None
        and result.error is not None
        and (result.error.details.get("error_class") == "rate_limited")
    ):
        return _THROTTLED
    return _FAILED


def _admit(job: Job, model: ModelSpec, *, patient: bool, deadline: float, using: Answerer, last: bool) -> Ticket:
    """Ask admission for a call of `model`: a job that waits for its model accepts any wait its deadline allows.

    A deployment that is not its model's `last` to try is not waited for at all: the next one may answer now.
    """
    left = deadline - time.monotonic()
    max_wait = left if patient else min(using.settings.admission_inline_wait_s, left) if last else 0.0
    tokens = token_count.total_tokens(job.call.prompt_tokens, job.call.completion_tokens)
    return using.admission.take(model.upstream_key, tokens=tokens, max_wait_s=max_wait)  # type: ignore[union-attr]


def _recorder(
    using: Answerer, model: ModelSpec, permit: Permit | None, ticket: Ticket | None
) -> Callable[[AttemptRecord], None]:
    """Report each attempt to the model's circuit, its admission (which learns the upstream's limits) and its pace."""
    breaker = None if permit is None else _breaker_recorder(using.breaker, permit)  # type: ignore[arg-type]

    def record(attempt: AttemptRecord) -> None:
        if breaker is not None:
            breaker(attempt)
        if using.admission is not None:
            using.admission.learn(
                model.upstream_key, attempt.rate_limits, throttled=attempt.error_class == "rate_limited", known=ticket
            )
        if using.balancer is not None:
            using.balancer.learn(model, attempt)

    return record


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
        model=model.name, tier=model.tier, outcome="skipped", latency_ms=0.0, started_at=utcnow(), error_class=reason,
        deployment=model.deployment,
    )  # fmt: skip


def attempt_bound(job: Job, model: ModelSpec) -> Decimal:
    """Return the most one call of `model` for the job can cost: the pre-call guard's and the in-flight note's."""
    return job.call.cost(model)


def _lost_run(model: ModelSpec, *, cost: Decimal) -> AttemptRecord:
    return AttemptRecord(
        model=model.name, tier=model.tier, outcome=UNCONFIRMED if cost > 0 else "error", latency_ms=0.0,
        started_at=utcnow(), error_class="worker_lost", cost=cost,
    )  # fmt: skip


def _interrupted(model: ModelSpec, *, cost: Decimal, started_at: datetime) -> AttemptRecord:
    return AttemptRecord(
        model=model.name, tier=model.tier, outcome=UNCONFIRMED, latency_ms=0.0, started_at=started_at,
        error_class="interrupted", cost=cost,
    )  # fmt: skip


def _assess(prompt: str, completion: Completion, settings: Settings) -> confidence.AnswerConfidence:
    return confidence.assess_answer(
        prompt=prompt,
        answer=completion.text,
        finish_reason=completion.finish_reason,
        logprobs=completion.logprobs,
        min_answer_chars=settings.escalation_min_answer_chars,
    )
