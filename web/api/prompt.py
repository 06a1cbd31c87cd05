"""POST /api/prompt: accept a prompt, enqueue its job, and answer the result or a job id."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import jsonify
from flask import url_for

from shared.jobs import lifecycle
from shared.jobs.views import job_body
from web import submission
from web import waiter
from web.db import look_at_job
from web.requests import read_json_object
from web.requests import validate
from web.responses import JobAccepted
from web.responses import send
from web.schemas import PromptRequest

bp = Blueprint("prompt", __name__, url_prefix="/api")


@bp.post("/prompt")
def create_prompt() -> Response | tuple[Response, int]:
    """Route one prompt."""
    settings = current_app.extensions["settings"]
    raw = read_json_object()
    body = validate(
        PromptRequest,
        raw,
        max_prompt_chars=settings.max_prompt_chars,
        max_metadata_bytes=settings.max_metadata_bytes,
    )
    job_id, queued = submission.accept_job(
        raw,
        lifecycle.JobRequest(
            prompt=body.prompt,
            max_tokens=body.max_tokens,
            preference=body.preference,
            model=body.model,
            tier=body.tier,
            metadata=body.metadata,
            on_budget_pressure=body.on_budget_pressure,
            deadline_s=body.deadline_s,
            difficulty_estimator=body.difficulty_estimator,
            on_rate_limit=body.on_rate_limit,
            callback_url=submission.seal_callback_url(body.callback_url),
        ),
        use_cache=body.cache,
    )
    completion_waiter = waiter.get_waiter()
    # Register before enqueueing so that even an instant completion is heard.
    done = completion_waiter.register(job_id) if body.wait else None
    try:
        if queued:
            submission.enqueue_job(job_id)
            if done is None:
                return _accepted(job_id, "queued")
        else:
            # A repeated request answers its job as it stands, and a cached answer is finished already;
            # the announcement of its end may be long gone, or never come. Without waiting, the answer
            # is always the 202 the contract promises, with the job's current status.
            status, finished = _look(job_id)
            if done is None:
                return _accepted(job_id, status)
            if finished is not None:
                return jsonify(finished)
        # The announcement leaves the finished job for its waiters; it is read back only when it did not.
        finished = waiter.wait_for(
            done,
            timeout_s=body.timeout_s,
            look=lambda: completion_waiter.take_body(job_id, done) or _look(job_id)[1],
            recheck_s=completion_waiter.recheck_s,
        )
        # Either way the body is JobResult's (shared.jobs.views.job_body), built here or by the announcer.
        return jsonify(finished) if finished is not None else _accepted(job_id, _look(job_id)[0])
    finally:
        if done is not None:
            completion_waiter.unregister(job_id, done)


def _look(job_id: str) -> tuple[str, dict[str, object] | None]:
    """Return the job's status and, once it has finished, its body."""
    return look_at_job(job_id, lambda job: (job.status.value, job_body(job) if job.status.is_terminal else None))


def _accepted(job_id: str, status: str) -> tuple[Response, int]:
    poll_url = url_for("jobs.get_job", job_id=job_id)
    response = send(JobAccepted(job_id=job_id, status=status, poll_url=poll_url))
    response.headers["Location"] = poll_url
    return response, 202
