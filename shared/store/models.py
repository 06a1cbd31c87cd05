"""The tables: one row per request (job), one per upstream attempt, one per budget month and one per budget hour."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import DDL
from sqlalchemy import JSON
from sqlalchemy import Boolean
from sqlalchemy import Enum
from sqlalchemy import Float
from sqlalchemy import ForeignKey
from sqlalchemy import Index
from sqlalchemy import Integer
from sqlalchemy import String
from sqlalchemy import Text
from sqlalchemy import UniqueConstraint
from sqlalchemy import event
from sqlalchemy import false
from sqlalchemy.orm import Mapped
from sqlalchemy.orm import mapped_column
from sqlalchemy.orm import relationship

from shared.store.base import Base
from shared.store.types import Money
from shared.store.types import UTCDateTime
from shared.store.types import utcnow

# `info` key of a schema item that exists on one dialect only (also created only there, with `ddl_if`); the
# migrations' comparison with the models skips it elsewhere.
ONLY_ON = "only_on"


class JobStatus(enum.StrEnum):
    """A job moves queued → running → succeeded | failed and never back."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"

    @property
    def is_terminal(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED)


class RequestLog(Base):
    """One routed prompt: what was asked, where it went, what it cost, how it ended."""

    __tablename__ = "request_logs"
    __table_args__ = (
        Index("ix_request_logs_created_at", "created_at"),
        Index("ix_request_logs_created_at_id", "created_at", "id"),
        Index("ix_request_logs_status_created_at", "status", "created_at"),
        Index("ix_request_logs_model_used_created_at", "model_used", "created_at"),
        Index("ix_request_logs_tier_created_at", "tier", "created_at"),
        # The request-log search (`prompt ILIKE '%text%'`) reads trigrams from it; PostgreSQL only (pg_trgm).
        Index(
            "ix_request_logs_prompt_trgm",
            "prompt",
            postgresql_using="gin",
            postgresql_ops={"prompt": "gin_trgm_ops"},
            info={ONLY_ON: "postgresql"},
        ).ddl_if(dialect="postgresql"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    status: Mapped[JobStatus] = mapped_column(
        Enum(JobStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=JobStatus.QUEUED,
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    run_count: Mapped[int] = mapped_column(Integer, default=0)
    # The Celery node whose run claimed the job last (its heartbeat key's name): the reaper takes a running job
    # over once that worker's key is gone, without waiting out the lease (shared.jobs.reaper).
    worker: Mapped[str | None] = mapped_column(String(255))

    # The request as accepted.
    prompt: Mapped[str] = mapped_column(Text)
    max_tokens: Mapped[int] = mapped_column(Integer)
    preference: Mapped[str] = mapped_column(String(16))
    requested_model: Mapped[str | None] = mapped_column(String(128))
    requested_tier: Mapped[str | None] = mapped_column(String(32))
    metadata_json: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    # A chat request's turns (POST /v1/chat/completions) and the sampling options it passes through.
    messages: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    upstream_options: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Streamed: the worker relays the answer's deltas to the waiting request as they arrive (shared.store.stream_relay).
    stream: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    # Routing and outcome.
    difficulty_score: Mapped[float | None] = mapped_column(Float)
    difficulty_level: Mapped[str | None] = mapped_column(String(16))
    model_used: Mapped[str | None] = mapped_column(String(128))
    tier: Mapped[str | None] = mapped_column(String(32))
    response: Mapped[str | None] = mapped_column(Text)
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    # The answer was cut at the request's own max_tokens (finish_reason "length"): reported, never escalated.
    truncated: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    confidence: Mapped[float | None] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    tokens_used: Mapped[int] = mapped_column(Integer, default=0)
    latency_ms: Mapped[float | None] = mapped_column(Float)
    retry_count: Mapped[int] = mapped_column(Integer, default=0)
    escalated: Mapped[bool] = mapped_column(Boolean, default=False)
    escalation_reason: Mapped[str | None] = mapped_column(String(128))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)

    # Who asked, and how the budget constrained the routing.
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    # The catalog models its key allowed when the job was accepted, the only ones it may call; None: any
    # (shared.ledger.model_access).
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    max_tier: Mapped[str | None] = mapped_column(String(32))
    downgraded_from: Mapped[str | None] = mapped_column(String(32))
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    deadline_s: Mapped[float | None] = mapped_column(Float)
    difficulty_estimator: Mapped[str | None] = mapped_column(String(32))
    # What the job does when its model is rate limited: "wait" or "fallback" (RATE_LIMIT_POLICY when accepted).
    on_rate_limit: Mapped[str | None] = mapped_column(String(16))
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), index=True)
    batch_index: Mapped[int | None] = mapped_column(Integer)
    # Encrypted (shared.security.sealing): a callback URL's path or query is often the receiver's secret.
    callback_url: Mapped[str | None] = mapped_column(Text)
    # Response cache: `cached` jobs were answered from an earlier identical request at no cost.
    cached: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    cache_key: Mapped[str | None] = mapped_column(String(64))
    # Correlates the job with the web request that created it (X-Request-ID or generated).
    request_id: Mapped[str | None] = mapped_column(String(64))

    # Money: the bound held in the ledger while the job runs, then the true cost.
    budget_year: Mapped[int] = mapped_column(Integer)
    budget_month: Mapped[int] = mapped_column(Integer)
    reserved_cost: Mapped[Decimal] = mapped_column(Money())
    cost: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    settled: Mapped[bool] = mapped_column(Boolean, default=False)
    # The upstream billed the job more than its bound (shared.ledger.call_bound): its cost is what was billed, and its
    # scopes' months are held (MonthlyBudget.held_by_job).
    usage_over_bound: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # The upstream reported usage that cannot be true (shared.upstream.answer_schema) for one of its calls: that call
    # is charged at its bound, not at what was reported.
    usage_invalid: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # Upstream calls whose outcome is not on record (shared.ledger.lost_calls), each at its worst-case cost: the
    # running run's calls, noted before each starts; and those lost with their workers, charged (part of
    # `cost`) though the upstream never confirmed what it billed.
    in_flight_cost: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0), server_default="0")
    unconfirmed_cost: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0), server_default="0")
    # The scopes that had budget windows when the job was accepted: its money also sits in those scopes'
    # bucket of the hour it was accepted in (BudgetBucket). None: in no bucket.
    windowed_scopes: Mapped[list[str] | None] = mapped_column(JSON)

    attempts: Mapped[list[RequestAttempt]] = relationship(
        back_populates="job", order_by="RequestAttempt.seq", cascade="all, delete-orphan"
    )


class RequestAttempt(Base):
    """One upstream call made for a job: a retry, the first call, or an escalation."""

    __tablename__ = "request_attempts"
    __table_args__ = (UniqueConstraint("job_id", "seq", name="uq_request_attempts_job_id_seq"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("request_logs.id", ondelete="CASCADE"), index=True)
    seq: Mapped[int] = mapped_column(Integer)
    model: Mapped[str] = mapped_column(String(128))
    tier: Mapped[str] = mapped_column(String(32))
    purpose: Mapped[str] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16))
    error_class: Mapped[str | None] = mapped_column(String(64))
    status_code: Mapped[int | None] = mapped_column(Integer)
    latency_ms: Mapped[float] = mapped_column(Float)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cost: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Which of the model's deployments served it (shared.routing.catalog.Deployment); None: the model has one.
    deployment: Mapped[str | None] = mapped_column(String(48))

    job: Mapped[RequestLog] = relationship(back_populates="attempts")


class MonthlyBudget(Base):
    """The ledger of one budget scope in one UTC calendar month: `total_spent + reserved <= monthly_limit`.

    The scope is "global" for the whole service, or "key:<id>" for one API key.
    """

    __tablename__ = "monthly_budgets"
    __table_args__ = (UniqueConstraint("scope", "year", "month", name="uq_monthly_budgets_scope_year_month"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64), server_default="global")
    year: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    monthly_limit: Mapped[Decimal] = mapped_column(Money())
    total_spent: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    request_count: Mapped[int] = mapped_column(Integer, default=0)
    # The first job of the month billed over its bound: while set, the scope reserves nothing (an operator
    # clears it, shared.ledger.budget.clear_hold).
    held_by_job: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class BudgetBucket(Base):
    """What one budget scope reserved and spent on the jobs accepted in one UTC hour, for budget windows
    (shared.ledger.windows): a window's spending is the sum of its hours' buckets."""

    __tablename__ = "budget_buckets"
    __table_args__ = (UniqueConstraint("scope", "hour", name="uq_budget_buckets_scope_hour"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64))
    hour: Mapped[datetime] = mapped_column(UTCDateTime())
    spent: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))
    reserved: Mapped[Decimal] = mapped_column(Money(), default=Decimal(0))


class ApiKey(Base):
    """A client's key: only its SHA-256 and a short public prefix are stored, never the key itself."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128))
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    monthly_budget: Mapped[Decimal | None] = mapped_column(Money())
    rpm: Mapped[int | None] = mapped_column(Integer)
    # Tokens per minute, counted from each request's bound at accept and corrected at settle (shared.ledger.token_rate).
    tpm: Mapped[int | None] = mapped_column(Integer)
    # The catalog models a request with this key may be answered by; None: any (shared.ledger.model_access).
    allowed_models: Mapped[list[str] | None] = mapped_column(JSON)
    # Spending limits over budget windows beside the monthly budget, by window ("day", "week", "24h", "7d"):
    # {"day": "5.00"}; None: none (shared.ledger.windows).
    budget_windows: Mapped[dict[str, str] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # From then on the key is refused like a revoked one; None: it does not expire.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class BudgetAlert(Base):
    """A budget threshold that fired for a scope and month; the unique key makes each fire once."""

    __tablename__ = "budget_alerts"
    __table_args__ = (
        UniqueConstraint("scope", "year", "month", "threshold", name="uq_budget_alerts_scope_year_month_threshold"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    scope: Mapped[str] = mapped_column(String(64))
    year: Mapped[int] = mapped_column(Integer)
    month: Mapped[int] = mapped_column(Integer)
    threshold: Mapped[int] = mapped_column(Integer)
    spent: Mapped[Decimal] = mapped_column(Money())
    monthly_limit: Mapped[Decimal] = mapped_column(Money())
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Batch(Base):
    """A set of jobs submitted together; it is complete when every job is terminal."""

    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    total: Mapped[int] = mapped_column(Integer)
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id"), index=True)
    # Encrypted, as a job's (shared.security.sealing).
    callback_url: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    """A client's Idempotency-Key: the request it came with and the job or batch it made."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_keys_owner_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    request_hash: Mapped[str] = mapped_column(String(64))
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, index=True)


class WebhookDelivery(Base):
    """One attempt to POST a finished job or batch to its callback URL."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    resource: Mapped[str] = mapped_column(String(16))
    resource_id: Mapped[str] = mapped_column(String(32), index=True)
    # Masked (shared.security.masking): where the attempt went, without the URL's secrets.
    url: Mapped[str] = mapped_column(Text)
    attempt: Mapped[int] = mapped_column(Integer)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    delivered: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


# pg_trgm provides the operator class of ix_request_logs_prompt_trgm; the migrations create it the same way.
event.listen(
    Base.metadata,
    "before_create",
    DDL("CREATE EXTENSION IF NOT EXISTS pg_trgm").execute_if(dialect="postgresql"),
)

# Each mapped attribute of a job row with its column, for Core statements that read or write whole rows: the
# names differ where the column's would clash with the declarative base (`metadata_json` is column "metadata").
REQUEST_LOG_COLUMNS = {prop.key: prop.columns[0] for prop in RequestLog.__mapper__.column_attrs}
