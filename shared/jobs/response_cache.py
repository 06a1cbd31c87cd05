"""The response cache: a request identical to an earlier one is answered with that answer, at no cost.

Entries live in Redis under the SHA-256 of the request's canonical JSON, for RESPONSE_CACHE_TTL_S. A cache
that cannot be reached, or an entry that cannot be read, is a miss: the cache never fails a request.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import redis
from sqlalchemy.orm import Session

from shared.config import Settings
from shared.jobs import dispatch
from shared.jobs import endings
from shared.jobs import lifecycle
from shared.ledger import budget
from shared.routing import confidence
from shared.routing.catalog import Catalog
from shared.store.models import JobStatus
from shared.store.types import utcnow
from shared.upstream import token_count

logger = logging.getLogger(__name__)

KEY_PREFIX = "model_router:cache:"
# Part of every key: bump it when what goes into a key or an entry changes, and old entries simply miss.
KEY_VERSION = 3
SHARED_SCOPE = "shared"
ANONYMOUS_SCOPE = "anonymous"
# Upstream options that are numbers the upstream reads as floats: 1 and 1.0 ask for the same answer.
FLOAT_OPTIONS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")


@dataclass(frozen=True)
class Answer:
    """A succeeded job's answer as the cache keeps it: what a job answered from the cache copies."""

    response: str
    model_used: str
    tier: str
    finish_reason: str | None
    difficulty_score: float
    difficulty_level: str
    confidence: float | None
    prompt_tokens: int
    completion_tokens: int


def is_cacheable(request: lifecycle.JobRequest, *, settings: Settings) -> bool:
    """Tell whether the cache may answer this request and keep its answer.

    Streamed requests bypass it: their answers are never escalated, so they are not the answer a whole
    request gets, and a cached answer would have to be replayed as a fake stream. A request that samples
    (temperature > 0) asks for a fresh answer on each call unless RESPONSE_CACHE_SAMPLED says otherwise;
    one that names no temperature gets the deployment's usual answer and is cached.
    """
    if not settings.response_cache_enabled or request.stream:
        return False
    temperature = (request.options or {}).get("temperature")
    return temperature is None or temperature == 0 or settings.response_cache_sampled


def scope_of(api_key_id: int | None, *, shared: bool) -> str:
    """Return whose answers a requester may be given: its own key's, or everyone's when sharing is on."""
    if shared:
        return SHARED_SCOPE
    return ANONYMOUS_SCOPE if api_key_id is None else f"key:{api_key_id}"


def routing_fingerprint(catalog: Catalog, settings: Settings) -> str:
    """Return what, besides the request, decides which model answers it and whether the answer stands.

    The catalog (tiers, models, servers, fallbacks) and the escalation settings: an answer kept under an
    older catalog or escalation policy must not be served after they change.
    """
    routing = (
        repr(catalog),
        settings.escalation_enabled,
        settings.escalation_min_answer_chars,
        settings.escalation_confidence_threshold,
    )
    return hashlib.sha256(repr(routing).encode()).hexdigest()


def key_for(request: lifecycle.JobRequest, *, scope: str, difficulty_estimator: str, routing: str) -> str:
    """Return the request's key: the SHA-256 of the canonical JSON of everything that decides its answer.

    Text (prompt, messages, stop sequences) is kept exactly as sent: whitespace, case and Unicode form all
    reach the model and can change what it answers. Only what never reaches it is normalized: JSON layout
    and key order, 1 versus 1.0, a lone stop string versus a list of one. Left out because they do not
    change the answer: metadata, callback_url, deadline_s, and how the client waits for it. `routing` is
    routing_fingerprint's value.
    """
    normalized = {
        "version": KEY_VERSION,
        "scope": scope,
        "prompt": request.prompt,
        "messages": request.messages,
        "options": _normalized_options(request.options or {}),
        "max_tokens": request.max_tokens,
        "preference": request.preference,
        "model": request.model,
        "tier": request.tier,
        "difficulty_estimator": difficulty_estimator,
        "on_budget_pressure": request.on_budget_pressure,
        # The models that may answer it: a key narrowed since, or another key, may not be given another's.
        "allowed_models": None if request.allowed_models is None else sorted(request.allowed_models),
        "routing": routing,
    }
    canonical = json.dumps(normalized, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _normalized_options(options: dict[str, Any]) -> dict[str, Any]:
    normalized: dict[str, Any] = {}
    for name, value in options.items():
        if value is None:
            continue
        if name in FLOAT_OPTIONS:
            value = float(value)
        elif name == "stop" and isinstance(value, str):
            value = [value]
        normalized[name] = value
    return normalized


def get(client: redis.Redis, key: str) -> Answer | None:
    """Return the answer kept under `key`, or None; an unreachable cache or unreadable entry is a miss."""
    try:
        raw = client.get(KEY_PREFIX + key)
    except redis.RedisError as exc:
        logger.warning("response cache unreachable, answering without it: %s", type(exc).__name__)
        return None
    if raw is None:
        return None
    try:
        return Answer(**json.loads(raw))
    except (ValueError, TypeError):
        logger.warning("unreadable response cache entry %s; treating it as a miss", key)
        return None


def put(client: redis.Redis, key: str, answer: Answer, *, ttl_s: int) -> None:
    """Keep `answer` under `key` for `ttl_s` seconds; an unreachable cache only loses the entry."""
    try:
        client.set(KEY_PREFIX + key, json.dumps(dataclasses.asdict(answer)), ex=ttl_s)
    except redis.RedisError as exc:
        logger.warning("response cache unreachable, answer not kept: %s", type(exc).__name__)


def answer_of(outcome: dispatch.Outcome, *, capped: bool) -> Answer | None:
    """Return the outcome's answer if identical requests may be given it later, else None.

    Kept: succeeded answers only. Not kept: an answer whose escalation failed (the first, unsure answer
    stood in and a later run may do better), and one whose tiers a budget-pressure cap limited (the
    budget of that moment, not the request, chose its tier).
    """
    completion, model = outcome.completion, outcome.model
    if completion is None or model is None or capped:
        return None
    escalation_answered = any(purpose == "escalation" and run.outcome == "ok" for purpose, run in outcome.attempts)
    if outcome.escalated and not escalation_answered:
        return None
    return Answer(
        response=completion.text,
        model_used=model.name,
        tier=model.tier,
        finish_reason=completion.finish_reason,
        difficulty_score=round(outcome.difficulty.score, 4),
        difficulty_level=outcome.difficulty.level,
        confidence=None if outcome.confidence is None else round(outcome.confidence, 4),
        prompt_tokens=sum(record.prompt_tokens for _, record in outcome.attempts),
        completion_tokens=sum(record.completion_tokens for _, record in outcome.attempts),
    )


def create_job(
    session: Session,
    *,
    request: lifecycle.JobRequest,
    answer: Answer,
    cache_key: str,
    settings: Settings,
    requester: lifecycle.Requester | None,
    job_id: str,
) -> endings.Finished:
    """Record a job answered from the cache: already succeeded, cost 0, nothing reserved, nothing to enqueue.

    It keeps the token counts the answer took when it was made, but no attempts (nothing was called) and
    latency 0 (nothing ran). Every cache hit is recorded here. The caller commits, then sends the
    callbacks the returned Finished lists.
    """
    now = utcnow()
    job = lifecycle.new_job(
        request,
        job_id=job_id,
        bound=Decimal(0),
        period=budget.Period.of(now),
        settings=settings,
        requester=requester,
        now=now,
        cache_key=cache_key,
    )
    job.status = JobStatus.SUCCEEDED
    job.enqueued_at = None
    job.started_at = job.finished_at = now
    job.settled = True
    job.cached = True
    job.response = answer.response
    job.model_used = answer.model_used
    job.tier = answer.tier
    job.finish_reason = answer.finish_reason
    job.truncated = confidence.cut_at_max_tokens(answer.finish_reason)
    job.difficulty_score = answer.difficulty_score
    job.difficulty_level = answer.difficulty_level
    job.confidence = answer.confidence
    job.prompt_tokens = answer.prompt_tokens
    job.completion_tokens = answer.completion_tokens
    job.tokens_used = token_count.total_tokens(answer.prompt_tokens, answer.completion_tokens)
    job.latency_ms = 0.0
    session.add(job)
    session.flush()
    finished = endings.Finished(status=JobStatus.SUCCEEDED, job_id=job_id)
    endings.after_terminal(session, job_id=job_id, finished=finished)
    return finished
