"""What accepting work shares: Idempotency-Key claims, enqueueing with rollback, and callbacks."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections.abc import Callable
from collections.abc import Sequence
from typing import Any

import redis
from flask import current_app
from flask import request
from kombu.exceptions import KombuError
from sqlalchemy.orm import Session

from shared.errors import Unavailable
from shared.jobs import endings
from shared.jobs import idempotency
from shared.jobs import lifecycle
from shared.jobs import response_cache
from shared.jobs import webhooks
from shared.ledger import model_access
from shared.observability import job_events
from shared.store import completion_channel
from shared.store import redis_clients
from shared.store.types import utcnow
from web import caching
from web import ratelimit
from web.auth import current_identity
from web.db import get_session
from worker import tasks

logger = logging.getLogger(__name__)

BROKER_ERRORS = (KombuError, redis.RedisError, OSError)


def requester() -> lifecycle.Requester | None:
    """Return the API key the work is charged to, if keys are on."""
    identity = current_identity()
    if identity is None:
        return None
    return lifecycle.Requester(identity.api_key_id, identity.monthly_budget, identity.budget_windows)


def accept_job(body: dict[str, Any], request: lifecycle.JobRequest, *, use_cache: bool) -> tuple[str, bool]:
    """Create the request's job, or find the one its Idempotency-Key already made; return (job id, queued).

    A cacheable request (`use_cache` is its `cache` field) with a cached answer gets a job finished at
    once, at no cost; without one its job carries the cache key, so that the worker keeps the answer.
    `queued` is False when there is nothing to enqueue: the job existed already or came from the cache.
    """
    request = check_models(request)
    cache_key = caching.key_for(request, wanted=use_cache)
    # Looked up before the first write: no transaction stays open across the Redis call.
    cached = None if cache_key is None else caching.lookup(cache_key)
    session = get_session()
    job_id = uuid.uuid4().hex
    existing = claim_idempotency_key(session, body=body, resource="job", resource_id=job_id)
    if existing is not None:
        # The same request came before: answer its job, never a second one.
        session.rollback()
        return existing, False
    settings = current_app.extensions["settings"]
    if cache_key is not None and cached is not None:
        finished = response_cache.create_job(
            session,
            request=request,
            answer=cached,
            cache_key=cache_key,
            settings=settings,
            requester=requester(),
            job_id=job_id,
        )
        session.commit()
        job_events.served_from_cache(job_id, model=cached.model_used, tier=cached.tier)
        send_callbacks(finished.callbacks)
        return job_id, False
    # Counted only for work that reaches the upstream: a replay or a cached answer uses no tokens.
    ratelimit.take_tokens(job_id, request)
    try:
        # Without an Idempotency-Key nothing else goes in the job's transaction: it can be one statement.
        lifecycle.create_and_commit(
            session,
            alone=idempotency_key() is None,
            request=request,
            catalog=current_app.extensions["catalog"],
            settings=settings,
            requester=requester(),
            job_id=job_id,
            cache_key=cache_key,
        )
    except Exception:
        ratelimit.give_back_tokens(job_id)
        raise
    job_events.accepted(job_id, request=request, log_prompts=settings.log_prompts)
    return job_id, True


def check_models(request: lifecycle.JobRequest) -> lifecycle.JobRequest:
    """Refuse (403) a request forcing a model or tier the caller's key may not use; return the request bound to
    the key's models, the only ones its job may call (shared.ledger.model_access)."""
    identity = current_identity()
    if identity is None or identity.allowed_models is None:
        return request
    model_access.check(
        current_app.extensions["catalog"], allowed=identity.allowed_models, model=request.model, tier=request.tier
    )
    return dataclasses.replace(request, allowed_models=identity.allowed_models)


def enqueue_job(job_id: str) -> None:
    """Send a single prompt's job to its queue, or withdraw it and answer 503."""
    enqueue([job_id], batch=False, withdraw=lambda session: lifecycle.withdraw(session, job_id=job_id))


def idempotency_key() -> str | None:
    """Return the request's Idempotency-Key header, if it has one."""
    return request.headers.get("Idempotency-Key")


def claim_idempotency_key(session: Session, *, body: dict[str, Any], resource: str, resource_id: str) -> str | None:
    """Claim the request's Idempotency-Key, if any; return the id it already stands for, or None.

    Must be the first write of the request's transaction.
    """
    key = idempotency_key()
    if key is None:
        return None
    return idempotency.claim(
        session,
        owner=_idempotency_owner(),
        key=idempotency.check_key(key),
        request_hash=idempotency.fingerprint(body),
        resource=resource,
        resource_id=resource_id,
        now=utcnow(),
    )


def forget_idempotency_key(session: Session) -> None:
    """Drop the request's key again (its work was withdrawn), so that a retry may create it anew."""
    key = idempotency_key()
    if key is not None:
        idempotency.forget(session, owner=_idempotency_owner(), key=key)


def _idempotency_owner() -> str:
    identity = current_identity()
    return idempotency.owner_of(None if identity is None else identity.api_key_id)


def seal_callback_url(url: str | None) -> str | None:
    """Return the callback URL sealed for storage (shared.jobs.webhooks.accept_url), or raise 400."""
    if url is None:
        return None
    return webhooks.accept_url(url, settings=current_app.extensions["settings"])


def enqueue(job_ids: Sequence[str], *, batch: bool, withdraw: Callable[[Session], None]) -> None:
    """Send the jobs to their queue; if not even the first can be sent, withdraw the work and answer 503.

    Jobs left unsent after the first was sent stay queued with their reservation: the reaper enqueues them.
    """
    sent = 0
    try:
        with tasks.run_job.app.producer_or_acquire() as producer:
            for job_id in job_ids:
                tasks.enqueue_job(job_id, batch=batch, producer=producer)
                sent += 1
    except BROKER_ERRORS:
        if sent:
            logger.warning("enqueued %d of %d jobs; the reaper will send the rest", sent, len(job_ids))
            return
        logger.warning("could not enqueue; withdrawing %d jobs", len(job_ids), exc_info=True)
        session = current_app.extensions["db_sessions"]()
        try:
            withdraw(session)
            forget_idempotency_key(session)
            session.commit()
        finally:
            session.close()
        raise Unavailable("the job queue is unreachable; nothing was reserved or charged") from None


def announce(finished: endings.Finished) -> None:
    """After commit: log and count a job the web tier ended (a cancel), wake its waiters, send its callbacks."""
    job_events.finished(finished)
    try:
        with redis_clients.connect(current_app.extensions["settings"].redis_url, socket_timeout=2) as client:
            completion_channel.publish_job_done(client, finished.job_id)
    except redis.RedisError:
        logger.warning("could not announce job_id=%s", finished.job_id)
    send_callbacks(finished.callbacks)


def send_callbacks(callbacks: Sequence[tuple[str, str]]) -> None:
    """Queue the webhook deliveries of finished jobs or batches; a broker outage loses only the callback."""
    for resource, resource_id in callbacks:
        try:
            tasks.deliver_callback.apply_async(args=[resource, resource_id])
        except BROKER_ERRORS:
            logger.warning("could not queue the %s callback for %s", resource, resource_id)
