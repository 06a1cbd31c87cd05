"""GET /api/jobs/<id>: a job as stored."""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify

from shared import jobs
from web.db import get_session
from web.serializers import job_body

bp = Blueprint("jobs", __name__, url_prefix="/api/jobs")


@bp.get("/<job_id>")
def get_job(job_id: str) -> Response:
    """Answer the job, finished or not."""
    return jsonify(job_body(jobs.get_or_raise(get_session(), job_id=job_id)))
