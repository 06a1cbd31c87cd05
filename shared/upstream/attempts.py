"""The record of one upstream call, as a job keeps it, and the outcomes it can have.

A value type of its own: the bound (shared.ledger.call_bound), the metrics (shared.observability.metrics) and the
client that makes the calls (shared.upstream.llm_client) all read it, and none of them has to import another.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # Only a type here: the metrics read this module in gunicorn's master, which must not load redis before
    # gevent patches the standard library in the workers.
    from shared.upstream.admission import RateLimits

# The outcome of an attempt that may have been billed though no answer says what: charged at its bound.
UNCONFIRMED = "unconfirmed"


@dataclass(frozen=True)
class AttemptRecord:
    """One upstream call as the job records it."""

    model: str
    tier: str
    outcome: str
    latency_ms: float
    started_at: datetime
    error_class: str | None = None
    status_code: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    # The server's usage could not be true: the tokens and cost above are the call's bound.
    usage_invalid: bool = False
    rate_limits: RateLimits | None = None
    # Which of the model's deployments served the call (None: the model has just one).
    deployment: str | None = None
