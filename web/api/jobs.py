"""GET /api/jobs/<id>: a job as stored."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from shared import jobs
from shared.representations import job_body
from web.auth import check_owner
from web.db import get_session

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """Answer the job, finished or not; another key's job is as unknown as a missing one."""
    job = jobs.get_or_raise(get_session(), job_id=job_id)
    check_owner(job.api_key_id, what=f"job {job_id!r}")
    return jsonify(job_body(job))
