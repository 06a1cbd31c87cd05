"""Domain errors: each carries a stable `code`; the web tier maps them to HTTP statuses."""

from __future__ import annotations


class DomainError(Exception):
    """Base of every error the domain raises on purpose."""

    code = "internal_error"

    def __init__(self, message: str, *, details: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or {}


class ConfigError(DomainError):
    """A setting or the model catalog is missing or malformed."""

    code = "config_error"


class InvalidInput(DomainError):
    """The caller sent something the contract does not accept."""

    code = "invalid_request"


class NotFound(DomainError):
    """The named resource does not exist (or is not the caller's)."""

    code = "not_found"


class BudgetExceeded(DomainError):
    """The job's cost bound does not fit in what is left of the budget."""

    code = "budget_exceeded"


class RoutingError(DomainError):
    """A routing policy, threshold, tier or model name is unknown or invalid."""

    code = "invalid_request"


class Unavailable(DomainError):
    """A backing service (database, broker) cannot be reached."""

    code = "unavailable"


class LLMError(DomainError):
    """An upstream call failed."""

    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        # What the answer said of the upstream's rate limits (a shared.upstream.admission.RateLimits), if anything.
        self.rate_limits: object | None = None


class TransientLLMError(LLMError):
    """A failure worth retrying: connection error, timeout, 429 or 5xx."""

    code = "upstream_unavailable"


class RateLimited(TransientLLMError):
    """No model the job may use would admit a call before its deadline (their rate limits, open circuits)."""

    code = "rate_limited"


class PermanentLLMError(LLMError):
    """A failure that a retry cannot fix: any other 4xx, or a malformed answer."""

    code = "upstream_rejected"


class Unauthorized(DomainError):
    """The request carries no valid API key."""

    code = "unauthorized"


class IdempotencyConflict(DomainError):
    """The Idempotency-Key was used before with a different request."""

    code = "idempotency_conflict"


class NotCancellable(DomainError):
    """The job has already started or finished."""

    code = "not_cancellable"


class ModelNotAllowed(DomainError):
    """The request could be answered by a model its API key may not use."""

    code = "model_not_allowed"


class TokenRateExceeded(DomainError):
    """The request's tokens do not fit in what is left of its key's tokens-per-minute window."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int | None, details: dict[str, object] | None = None) -> None:
        super().__init__(message, details=details)
        # None: waiting does not help (the request alone is above the limit).
        self.retry_after_s = retry_after_s
