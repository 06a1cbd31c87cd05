"""POST /api/prompt: accept a prompt, enqueue its job, and answer the result or a job id."""

from __future__ import annotations

import logging
import threading
import time

import redis
from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify
from flask import url_for
from kombu.exceptions import KombuError

from shared import jobs
from shared.errors import Unavailable
from web import waiter
from web.auth import current_identity
from web.db import get_session
from web.requests import read_json_object
from web.requests import validate
from web.schemas import PromptRequest
from web.serializers import job_body
from worker import tasks

logger = logging.getLogger(__name__)

bp = Blueprint("prompt", __name__, url_prefix="/api")

BROKER_ERRORS = (KombuError, redis.RedisError, OSError)


@bp.post("/prompt")
def create_prompt() -> Response | tuple[Response, int]:
    """Route one prompt."""
    settings = current_app.extensions["settings"]
    body = validate(
        PromptRequest,
        read_json_object(),
        max_prompt_chars=settings.max_prompt_chars,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    session = get_session()
    identity = current_identity()
    job = jobs.create(
        session,
        request=jobs.JobRequest(
            prompt=body.prompt,
            max_tokens=body.max_tokens,
            preference=body.preference,
            model=body.model,
            tier=body.tier,
            metadata=body.metadata,
            on_budget_pressure=body.on_budget_pressure,
            deadline_s=body.deadline_s,
        ),
        catalog=current_app.extensions["catalog"],
        settings=settings,
        requester=None if identity is None else jobs.Requester(identity.api_key_id, identity.monthly_budget),
    )
    session.commit()
    completion_waiter = waiter.get_waiter()
    # Register before enqueueing so that even an instant completion is heard.
    done = completion_waiter.register(job.id) if body.wait else None
    try:
        _enqueue(job.id)
        if done is None:
            return _accepted(job.id, "queued")
        return _wait_for(job.id, done, timeout_s=body.timeout_s)
    finally:
        if done is not None:
            completion_waiter.unregister(job.id, done)


def _enqueue(job_id: str) -> None:
    try:
        tasks.run_job.apply_async(args=[job_id])
    except BROKER_ERRORS:
        logger.warning("could not enqueue job_id=%s; withdrawing it", job_id, exc_info=True)
        session = get_session()
        session.rollback()
        jobs.withdraw(session, job_id=job_id)
        session.commit()
        raise Unavailable("the job queue is unreachable; nothing was reserved or charged") from None


def _wait_for(job_id: str, done: threading.Event, *, timeout_s: float) -> Response | tuple[Response, int]:
    """Sleep until the job's completion is announced or `timeout_s` passes, then answer its state."""
    deadline = time.monotonic() + timeout_s
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not done.wait(remaining):
            break
        done.clear()
        # A wake-up is either our job's announcement or a reconnect that may have lost one: look.
        status, body = _look(job_id)
        if body is not None:
            return jsonify(body)
    status, body = _look(job_id)
    return jsonify(body) if body is not None else _accepted(job_id, status)


def _look(job_id: str) -> tuple[str, dict[str, object] | None]:
    """Return the job's status and, once it has finished, its body; no transaction stays open afterwards."""
    session = get_session()
    session.expire_all()
    try:
        job = jobs.get_or_raise(session, job_id=job_id)
        return job.status.value, job_body(job) if job.status.is_terminal else None
    finally:
        session.rollback()


def _accepted(job_id: str, status: str) -> tuple[Response, int]:
    poll_url = url_for("jobs.get_job", job_id=job_id)
    response = jsonify({"job_id": job_id, "status": status, "poll_url": poll_url})
    response.headers["Location"] = poll_url
    return response, 202
