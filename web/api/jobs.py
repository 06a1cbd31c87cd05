"""GET /api/jobs: search the request log; GET and DELETE /api/jobs/<id>: one job as stored."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import request

from shared.jobs import lifecycle
from shared.jobs import search
from shared.jobs.views import job_result
from shared.store.models import JobStatus
from web import submission
from web.auth import check_owner
from web.auth import current_identity
from web.auth import sees_everything
from web.db import get_session
from web.requests import validate
from web.responses import JobPage
from web.responses import send
from web.schemas import JobSearchQuery

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")


@bp.get("")
def list_jobs() -> Response:
    """Answer a page of the caller's jobs (every job for an admin), newest first, and the next page's cursor."""
    query = validate(JobSearchQuery, request.args.to_dict())
    identity = current_identity()
    page = search.list_(
        get_session(),
        where=search.JobFilter(
            status=None if query.status is None else JobStatus(query.status),
            model=query.model,
            tier=query.tier,
            since=query.since,
            until=query.until,
            text=query.q,
            api_key_id=None if sees_everything() or identity is None else identity.api_key_id,
        ),
        limit=query.limit,
        after=None if query.cursor is None else search.decode_cursor(query.cursor),
    )
    cursor = None if page.next_position is None else search.encode_cursor(page.next_position)
    return send(JobPage.model_validate({"jobs": page.jobs, "next_cursor": cursor}, from_attributes=True))


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """Answer the job, finished or not; another key's job is as unknown as a missing one."""
    job = lifecycle.get_or_raise(get_session(), job_id=job_id)
    check_owner(job.api_key_id, what=f"job {job_id!r}")
    return send(job_result(job))


@bp.delete("/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a job that has not started and release its reservation; 409 once it has started."""
    session = get_session()
    check_owner(lifecycle.get_or_raise(session, job_id=job_id).api_key_id, what=f"job {job_id!r}")
    session.rollback()  # the cancel below writes first
    finished = lifecycle.cancel(session, job_id=job_id)
    session.commit()
    submission.announce(finished)
    return send(job_result(lifecycle.get_or_raise(session, job_id=job_id)))
