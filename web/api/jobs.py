"""GET /api/jobs/<id>: a job as stored."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from shared import jobs
from shared.representations import job_body
from web import submission
from web.auth import check_owner
from web.db import get_session

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """Answer the job, finished or not; another key's job is as unknown as a missing one."""
    job = jobs.get_or_raise(get_session(), job_id=job_id)
    check_owner(job.api_key_id, what=f"job {job_id!r}")
    return jsonify(job_body(job))


@bp.delete("/<job_id>")
def cancel_job(job_id: str) -> Response:
    """Cancel a job that has not started and release its reservation; 409 once it has started."""
    session = get_session()
    check_owner(jobs.get_or_raise(session, job_id=job_id).api_key_id, what=f"job {job_id!r}")
    session.rollback()  # the cancel below writes first
    finished = jobs.cancel(session, job_id=job_id)
    session.commit()
    submission.announce(finished)
    return jsonify(job_body(jobs.get_or_raise(session, job_id=job_id)))
