"""POST /api/batch, GET /api/batch/<id> (JSON or JSON Lines), DELETE /api/batch/<id>."""

from __future__ import annotations

import uuid
from typing import Any

from flask import Blueprint
from flask import Response
from flask import current_app
from flask import request
from flask import url_for

from shared.errors import InvalidInput
from shared.errors import ModelNotAllowed
from shared.errors import RoutingError
from shared.jobs import batches
from shared.jobs import endings
from shared.jobs import lifecycle
from shared.jobs.views import batch_cancelled
from shared.jobs.views import batch_result
from shared.jobs.views import job_result
from shared.observability import job_events
from shared.store.models import JobStatus
from web import submission
from web.auth import check_owner
from web.db import get_session
from web.requests import read_json_object
from web.requests import validate
from web.responses import BatchAccepted
from web.responses import send
from web.schemas import BatchItem
from web.schemas import BatchRequest

bp = Blueprint("batch", __name__, url_prefix="/api/batch")


@bp.post("")
def create_batch() -> tuple[Response, int]:
    """Accept up to MAX_BATCH_ITEMS prompts at once: all valid, all reserved, or none."""
    settings = current_app.extensions["settings"]
    catalog = current_app.extensions["catalog"]
    raw = read_json_object()
    body = validate(BatchRequest, raw)
    if len(body.prompts) > settings.max_batch_items:
        raise InvalidInput(f"a batch holds at most {settings.max_batch_items} items", details={"field": "prompts"})
    items = [_item(index, item, settings=settings) for index, item in enumerate(body.prompts)]
    for index, item in enumerate(items):
        try:
            lifecycle.bound_for(item, catalog=catalog, settings=settings)
        except RoutingError as exc:  # an unknown model or tier: name the item
            raise _at(index, exc) from None
        try:
            items[index] = submission.check_models(item)
        except ModelNotAllowed as exc:
            raise ModelNotAllowed(f"prompts[{index}]: {exc.message}", details={**exc.details, "index": index}) from None
    callback_url = submission.seal_callback_url(body.callback_url)
    session = get_session()
    batch_id = uuid.uuid4().hex
    existing = submission.claim_idempotency_key(session, body=raw, resource="batch", resource_id=batch_id)
    if existing is None:
        _, rows = batches.create(
            session,
            requests=items,
            catalog=catalog,
            settings=settings,
            requester=submission.requester(),
            callback_url=callback_url,
            batch_id=batch_id,
        )
        job_ids = [row.id for row in rows]
        session.commit()
        for job_id, item in zip(job_ids, items, strict=True):
            job_events.accepted(job_id, request=item, log_prompts=settings.log_prompts, batch_id=batch_id)
        submission.enqueue(job_ids, batch=True, withdraw=lambda s: batches.withdraw(s, batch_id=batch_id))
    else:
        session.rollback()
        batch_id = existing
        job_ids = [job.id for job in batches.get_view(session, batch_id=batch_id).jobs]
    poll_url = url_for("batch.get_batch", batch_id=batch_id)
    response = send(BatchAccepted(batch_id=batch_id, job_ids=job_ids, poll_url=poll_url), 202)
    response.headers["Location"] = poll_url
    return response, 202


def _item(index: int, item: Any, *, settings: Any) -> lifecycle.JobRequest:
    """Validate one item against the limits in force and turn it into a job request."""
    if not isinstance(item, str | dict):
        raise InvalidInput(
            f"prompts[{index}]: must be a string or an object", details={"field": f"prompts[{index}]", "index": index}
        )
    fields = {"prompt": item} if isinstance(item, str) else item
    try:
        checked = validate(
            BatchItem,
            fields,
            max_prompt_chars=settings.max_prompt_chars,
            max_metadata_bytes=settings.max_metadata_bytes,
        )
    except InvalidInput as exc:
        raise _at(index, exc) from None
    return lifecycle.JobRequest(
        prompt=checked.prompt,
        max_tokens=checked.max_tokens,
        preference=checked.preference,
        model=checked.model,
        tier=checked.tier,
        metadata=checked.metadata,
        deadline_s=checked.deadline_s,
        difficulty_estimator=checked.difficulty_estimator,
        on_rate_limit=checked.on_rate_limit,
    )


def _at(index: int, exc: InvalidInput | RoutingError) -> InvalidInput:
    field = exc.details.get("field", "")
    return InvalidInput(
        f"prompts[{index}]: {exc.message}",
        details={**exc.details, "index": index, "field": f"prompts[{index}]" + (f".{field}" if field else "")},
    )


@bp.get("/<batch_id>")
def get_batch(batch_id: str) -> Response:
    """Answer the batch's counts and jobs in submission order; `?format=jsonl` streams one job per line."""
    view = batches.get_view(get_session(), batch_id=batch_id)
    check_owner(view.batch.api_key_id, what=f"batch {batch_id!r}")
    if request.args.get("format") == "jsonl":
        # Encoded now, while the request's session is open (at most MAX_BATCH_ITEMS lines).
        lines = [current_app.json.dumps(job_result(job).model_dump()) + "\n" for job in view.jobs]
        return Response(lines, mimetype="application/x-ndjson")
    return send(batch_result(view))


@bp.delete("/<batch_id>")
def cancel_batch(batch_id: str) -> Response:
    """Cancel the batch's jobs that have not started; started ones finish. Answer the batch."""
    session = get_session()
    view = batches.get_view(session, batch_id=batch_id)
    check_owner(view.batch.api_key_id, what=f"batch {batch_id!r}")
    session.rollback()  # the cancel below writes first
    cancelled = batches.cancel(session, batch_id=batch_id)
    completed = endings.complete_if_done(session, batch_id=batch_id) if cancelled else None
    session.commit()
    for job_id in cancelled:
        job_events.finished(endings.Finished(status=JobStatus.FAILED, job_id=job_id, error_code=lifecycle.CANCELLED))
    if completed is not None and completed.callback_url:
        submission.send_callbacks([("batch", completed.id)])
    return send(batch_cancelled(batches.get_view(session, batch_id=batch_id), cancelled=len(cancelled)))
