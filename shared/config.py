"""The one typed settings object, read from the environment and `.env`."""

from __future__ import annotations

import functools
import json
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated
from typing import Any
from typing import Literal
from typing import NoReturn
from typing import TypeVar

from pydantic import Field
from pydantic import SecretStr
from pydantic import ValidationError
from pydantic import field_validator
from pydantic import model_validator
from pydantic_settings import BaseSettings
from pydantic_settings import NoDecode
from pydantic_settings import SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

from shared.errors import ConfigError
from shared.errors import InvalidInput
from shared.ledger import window_spans
from shared.security import egress
from shared.security import masking
from shared.security import sealing

DEFAULT_CATALOG_PATH = Path(__file__).parent / "routing" / "models.toml"


DEFAULT_REDIS_MAX_CONNECTIONS = 1024

# The time limits' defaults, as shares of JOB_LEASE_S (see TimeLimits).
_GRACE_SHARE_OF_LEASE = 0.05
_FINISH_SHARE_OF_LEASE = 0.1


@dataclass(frozen=True)
class TimeLimits:
    """How long one run of a job may take, each limit counted from the start of its task (at or before its claim).

    In this order, strictly: the job's deadline (at most `max_deadline_s`), then `finish_s` to record its outcome,
    end before Celery's soft limit (`soft_s`: the run is interrupted and records a failure), which comes before
    its hard limit (`hard_s`: the process is killed), which comes before the lease (`lease_s`, counted from the
    claim) lapses and lets another run take the job. So a run always ends before another may start.
    """

    max_deadline_s: float
    finish_s: float
    soft_s: float
    hard_s: float
    lease_s: float


class LocalStackSettings(BaseSettings):
    """Where a local stack serves (PORT) and where the CLI sends its requests (MODEL_ROUTER_URL).

    Read as the service's settings are, from the environment and then `.env`, so that `make run`, the demo and
    the CLI agree with a PORT set in either. PORT stays text here: shared.devstack.stack_paths checks it where
    it is used, for the environment and `.env` alike.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    port: str | None = None
    model_router_url: str | None = None


class DatabaseSettings(BaseSettings):
    """The settings that name and size the database: all that local commands (`db`, `keys`) need.

    Settings extends it; these commands build it alone, so that they run with only DATABASE_URL set, whatever
    the service's other settings (an upstream, webhooks, time limits) say.
    """

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    database_url: str = "sqlite:///./model_router.db"
    # PostgreSQL connections per process (web worker or Celery worker): keep processes x (pool + overflow)
    # under the server's max_connections. No overflow by default: a connection beyond the pool is opened for
    # one checkout and closed at check-in, and under load that churn costs far more than waiting for a pooled
    # one (transactions here last milliseconds; `python -m bench.cost` at 2 s / 256: 95 against 68 req/s).
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=0, ge=0)

    @field_validator("database_url")
    @classmethod
    def _normalize_database_url(cls, value: str) -> str:
        # The plain `postgresql://` form names no driver; SQLAlchemy would pick psycopg2, which we don't ship.
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if not value.startswith(("sqlite:", "postgresql+")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return value

    @property
    def is_sqlite(self) -> bool:
        """Tell whether the database is the embedded SQLite file."""
        return self.database_url.startswith("sqlite")

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # URLs may carry passwords and tokens (DATABASE_URL, REDIS_URL, webhook URLs): shown masked.
        for name, value in super().__repr_args__():
            yield name, masking.mask_url(value) if isinstance(value, str) and "://" in value else value


class Settings(DatabaseSettings):
    """Every setting of the service; names match the environment variables in upper case."""

    environment: Literal["development", "test", "production"] = "development"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Log lines as JSON or text; unset: text in development, JSON elsewhere (shared.observability.logs).
    log_format: Literal["json", "text"] | None = None
    # Put prompt text in job log lines (off: prompts may hold personal data).
    log_prompts: bool = False
    # Serve /metrics without a key even when API keys are required (else it needs an admin key).
    metrics_public: bool = False

    # Upstream: the default key and base URL; a catalog model may name its own.
    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    model_catalog_path: Path = DEFAULT_CATALOG_PATH

    # The queue (the database settings are DatabaseSettings').
    redis_url: str = "redis://127.0.0.1:6379/0"
    # Redis connections each of a process's pools (broker channel, response cache, circuit breakers, job
    # announcements, stream reads) may open at once. Under gevent every greenlet in a Redis round trip holds
    # one, so this must cover the worker's concurrency and the web tier's requests in flight: at kombu's
    # default of 10 (and redis-py's 100) a wave of late acks or cache reads fails with "Too many connections",
    # and a consumer that fails an ack drops its broker connection, leaving the jobs in flight to wait for
    # redelivery.
    redis_max_connections: int = Field(default=DEFAULT_REDIS_MAX_CONNECTIONS, ge=10)

    # Budget, in US dollars.
    monthly_budget_limit: Decimal = Field(default=Decimal("100.0"), ge=0, max_digits=19, decimal_places=9)
    # The service's budget windows beside the month, as JSON: {"day": "10", "week": "40", "6h": "3"}
    # (shared.ledger.windows); none by default.
    budget_windows: Annotated[dict[str, Decimal], NoDecode] = Field(default_factory=dict)

    # Request limits (the HTTP contract's ranges).
    max_prompt_chars: int = Field(default=32000, ge=1)
    max_request_bytes: int = Field(default=512 * 1024, ge=1024)
    max_metadata_bytes: int = Field(default=4096, ge=0)

    # Upstream calls.
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_read_timeout_s: float = Field(default=60.0, gt=0)
    upstream_max_attempts: int = Field(default=3, ge=1, le=10)
    upstream_backoff_initial_s: float = Field(default=0.5, ge=0)
    upstream_backoff_max_s: float = Field(default=8.0, ge=0)
    upstream_retry_after_cap_s: float = Field(default=10.0, ge=0)

    # One deadline per job for every retry, fallback and escalation (a request may set its own).
    default_deadline_s: float = Field(default=60.0, gt=0, le=600)
    # A streamed answer that has started sends an SSE comment after this long without a token, so that clients
    # and proxies keep a stream open through an upstream that pauses (at most 15 s apart, as proxies expect).
    stream_keepalive_s: float = Field(default=10.0, gt=0, le=15)

    # Circuit breakers per model, shared by every worker through Redis.
    circuit_window_s: int = Field(default=30, ge=1)
    circuit_min_failures: int = Field(default=5, ge=1)
    circuit_failure_rate: float = Field(default=0.5, gt=0, le=1)
    circuit_cooldown_s: float = Field(default=15.0, gt=0)
    circuit_half_open_probes: int = Field(default=1, ge=1)

    # Admission control per model, shared by every worker through Redis (shared.upstream.admission): calls are paced at
    # the rate the upstream's answers (429s, x-ratelimit-* headers) say it admits. What a job does when its model
    # is rate limited: "wait" for its turn (within its deadline) or "fallback" to the next, pricier, model of its
    # chain; a request may choose for itself (`on_rate_limit`).
    rate_limit_policy: Literal["wait", "fallback"] = "wait"
    # A bucket holds this many seconds of the learned rate: the burst a model admits at once.
    admission_burst_s: float = Field(default=1.0, gt=0, le=60)
    # A wait for admission up to this long is slept in the worker; a longer one gives the worker back and the job
    # is run again when its turn comes.
    admission_inline_wait_s: float = Field(default=1.0, ge=0, le=30)

    # Escalation: an answer below the confidence threshold is retried one tier up.
    escalation_enabled: bool = True
    escalation_min_answer_chars: int = Field(default=20, ge=0)
    escalation_confidence_threshold: float = Field(default=0.5, ge=0, le=1)
    # Difficulty estimator that scores prompts for routing: "heuristic" or "learned" (shared.routing.difficulty).
    difficulty_estimator: Literal["heuristic", "learned"] = "heuristic"

    # Jobs: a claimed job whose worker is silent this long may be claimed again.
    job_lease_s: int = Field(default=300, ge=10)
    # The longest deadline a job may have (a longer one asked for is cut to it) and the time a run has after
    # its deadline to record its outcome; unset, they are derived from JOB_LEASE_S (see TimeLimits).
    job_max_deadline_s: float | None = Field(default=None, gt=0)
    job_finish_s: float | None = Field(default=None, gt=0)
    worker_heartbeat_s: int = Field(default=10, ge=1)
    # After SIGTERM a worker lets its jobs finish this long, then hands back those still running: another worker
    # takes them at once instead of after their lease (worker.shutdown). Keep it under the orchestrator's grace
    # (Kubernetes' terminationGracePeriodSeconds) by the few seconds handing back takes.
    worker_shutdown_grace_s: float = Field(default=90.0, ge=0)
    # The port each Celery worker process serves its own /metrics on (worker.metrics_server), for Prometheus to
    # scrape every worker pod; unset or 0: none (locally, PROMETHEUS_MULTIPROC_DIR lets web serve them all).
    worker_metrics_port: int | None = Field(default=None, ge=0, le=65535)
    # A file workers and beat touch on every heartbeat, for an orchestrator's liveness probe (worker.liveness).
    worker_liveness_file: Path | None = None
    # The reaper (a Celery beat task) re-enqueues jobs whose worker died or whose message was lost, and
    # fails those that ran out of runs or age, releasing their reservations.
    reaper_interval_s: int = Field(default=30, ge=1)
    job_max_runs: int = Field(default=3, ge=1)
    job_max_age_s: int = Field(default=3600, ge=60)

    # API keys and rate limits. REQUIRE_API_KEY defaults to true in production and false elsewhere.
    require_api_key: bool | None = None
    # Requests per minute of each API key without an rpm of its own (without keys: of each client address),
    # across every web process; 0 turns the default off (a key's own rpm still applies).
    default_rpm: int = Field(default=600, ge=0)
    # Requests per minute from one client address, whatever key it sends; 0 turns it off.
    address_rpm: int = Field(default=1200, ge=0)
    # Failed authentications (missing, malformed, unknown or revoked key) one client address may make per
    # minute; past them it is answered 429 without a database lookup until the minute ends. 0 turns it off.
    auth_failures_per_minute: int = Field(default=20, ge=0)
    # Reverse proxies in front of the web tier that set X-Forwarded-For: the client address is read that many
    # hops back (0: the connecting peer is the client). Behind a proxy, leave it 0 and every client shares
    # the proxy's address, and so its per-address limits.
    trusted_proxies: int = Field(default=0, ge=0, le=5)

    # Webhooks for finished jobs and batches (`callback_url`): signed with WEBHOOK_SECRET, retried with
    # backoff for up to WEBHOOK_RETRY_FOR_S. Callbacks and alert webhooks go to public addresses only;
    # WEBHOOK_ALLOWED_HOSTS names the hosts, IP addresses and CIDR networks they may reach besides (a
    # receiver on the private network, or on loopback for local testing), and with WEBHOOK_ALLOWED_HOSTS_ONLY
    # they may reach nothing else. Stored callback URLs are encrypted with WEBHOOK_URL_KEYS (Fernet keys, the
    # first encrypts), or with a key derived from WEBHOOK_SECRET when none is set (shared.security.sealing).
    webhook_secret: SecretStr | None = None
    webhook_allowed_hosts: list[str] = Field(default_factory=list)
    webhook_allowed_hosts_only: bool = False
    webhook_url_keys: list[SecretStr] = Field(default_factory=list)
    webhook_retry_for_s: int = Field(default=3600, ge=0)
    webhook_timeout_s: float = Field(default=10.0, gt=0)

    # Batches: the most items one POST /api/batch may carry.
    max_batch_items: int = Field(default=1000, ge=1, le=10000)

    # Response cache: identical requests answered from Redis at no cost (shared.jobs.response_cache). Requests with
    # temperature > 0 are cached only with RESPONSE_CACHE_SAMPLED; answers are scoped per API key unless
    # RESPONSE_CACHE_SHARED lets every key see every other key's answers.
    response_cache_enabled: bool = True
    response_cache_ttl_s: int = Field(default=3600, ge=1)
    response_cache_sampled: bool = False
    response_cache_shared: bool = False

    # Budget alerts: percentages of a scope's monthly budget that fire once per scope and month.
    alert_thresholds: list[int] = Field(default=[50, 80, 100])
    alert_webhook_url: str | None = None
    alert_webhook_secret: SecretStr | None = None
    alert_webhook_timeout_s: float = Field(default=5.0, gt=0)
    alert_webhook_max_retries: int = Field(default=8, ge=0)

    @field_validator("openai_api_key", "alert_webhook_secret", "webhook_secret", mode="before")
    @classmethod
    def _blank_key_is_none(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_allowed_hosts")
    @classmethod
    def _check_allowed_hosts(cls, value: list[str]) -> list[str]:
        egress.HostPolicy.parse(value)
        return value

    @field_validator("webhook_url_keys")
    @classmethod
    def _check_url_keys(cls, value: list[SecretStr]) -> list[SecretStr]:
        for key in value:
            sealing.check_key(key.get_secret_value())
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis:// URL")
        return value

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value.rstrip("/")

    @field_validator("budget_windows", mode="before")
    @classmethod
    def _known_windows(cls, value: object) -> object:
        # Read here rather than by the settings source, so that empty text is no windows (as compose passes an
        # unset variable) and bad JSON is one line naming the setting.
        if isinstance(value, str):
            try:
                value = json.loads(value) if value.strip() else {}
            except json.JSONDecodeError:
                raise ValueError('must be a JSON object such as {"day": "10", "6h": "4"}') from None
        if not isinstance(value, dict):
            raise ValueError('must be a JSON object such as {"day": "10", "6h": "4"}')
        return window_spans.validated(value)

    @field_validator("alert_thresholds")
    @classmethod
    def _check_thresholds(cls, value: list[int]) -> list[int]:
        if any(not 0 < threshold <= 1000 for threshold in value):
            raise ValueError("each threshold must be a percentage in 1..1000")
        return sorted(set(value))

    @field_validator("alert_webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return value

    @model_validator(mode="after")
    def _alert_webhook_is_allowed(self) -> Settings:
        if self.alert_webhook_url is not None:
            try:
                egress.check_url(self.alert_webhook_url, policy=self.webhook_policy, field="ALERT_WEBHOOK_URL")
            except InvalidInput as exc:
                raise ValueError(f"{exc.message} (or name its host in WEBHOOK_ALLOWED_HOSTS)") from None
        return self

    @model_validator(mode="after")
    def _require_key_for_real_upstream(self) -> Settings:
        if self.openai_base_url is None and self.openai_api_key is None:
            raise ValueError(
                "OPENAI_API_KEY is required when OPENAI_BASE_URL is not set (the default is api.openai.com)"
            )
        return self

    @model_validator(mode="after")
    def _check_time_limits(self) -> Settings:
        limits = self.time_limits
        if limits.max_deadline_s + limits.finish_s >= limits.soft_s:
            raise ValueError(
                f"JOB_MAX_DEADLINE_S + JOB_FINISH_S ({limits.max_deadline_s:g} s + {limits.finish_s:g} s) must end "
                f"before Celery's soft time limit ({limits.soft_s:g} s, derived from JOB_LEASE_S={self.job_lease_s}):"
                " lower them or raise JOB_LEASE_S"
            )
        if "default_deadline_s" in self.model_fields_set and self.default_deadline_s > limits.max_deadline_s:
            raise ValueError(
                f"DEFAULT_DEADLINE_S ({self.default_deadline_s:g} s) is longer than the longest deadline a job may "
                f"have ({limits.max_deadline_s:g} s, JOB_MAX_DEADLINE_S or derived from JOB_LEASE_S)"
            )
        return self

    @property
    def time_limits(self) -> TimeLimits:
        """Return a run's time limits: the one place they are computed (Celery's among them)."""
        lease = float(self.job_lease_s)
        grace = lease * _GRACE_SHARE_OF_LEASE
        hard = lease - grace
        soft = hard - grace
        finish = self.job_finish_s if self.job_finish_s is not None else lease * _FINISH_SHARE_OF_LEASE
        max_deadline = self.job_max_deadline_s if self.job_max_deadline_s is not None else soft - finish - grace
        return TimeLimits(max_deadline_s=max_deadline, finish_s=finish, soft_s=soft, hard_s=hard, lease_s=lease)

    def deadline_for(self, requested_s: float | None) -> float:
        """Return the deadline of a job that asked for `requested_s` (None: DEFAULT_DEADLINE_S), within the limits."""
        return min(requested_s or self.default_deadline_s, self.time_limits.max_deadline_s)

    @property
    def api_keys_required(self) -> bool:
        """Tell whether every /api route but health needs a key."""
        return self.environment == "production" if self.require_api_key is None else self.require_api_key

    @property
    def webhook_policy(self) -> egress.HostPolicy:
        """Return where callbacks and alert webhooks may go besides public addresses."""
        return egress.HostPolicy.parse(self.webhook_allowed_hosts, only=self.webhook_allowed_hosts_only)


_S = TypeVar("_S", bound=BaseSettings)


def load_settings(**overrides: object) -> Settings:
    """Build settings, turning a validation failure into one line that names the setting."""
    return _build(Settings, overrides)


def load_database_settings(**overrides: object) -> DatabaseSettings:
    """Build the database settings alone (local commands), a validation failure as one line like load_settings."""
    return _build(DatabaseSettings, overrides)


def load_local_stack_settings() -> LocalStackSettings:
    """Build the local stack's settings, a validation failure as one line like load_settings."""
    return _build(LocalStackSettings, {})


def _build(kind: type[_S], overrides: dict[str, object]) -> _S:
    try:
        return kind(**overrides)  # type: ignore[arg-type]
    except SettingsError as exc:
        # A setting the source could not decode (bad JSON for a list or a map), before any validation.
        found = re.search(r'field "([a-z_]+)"', str(exc))
        name = found.group(1).upper() if found else "settings"
        raise ConfigError(f"invalid setting {name}: not valid JSON") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        message = str(first["msg"]).removeprefix("Value error, ")
        name = "_".join(str(part) for part in first["loc"]).upper()
        raise ConfigError(f"invalid setting {name}: {message}" if name else f"invalid settings: {message}") from None


@functools.cache
def get_settings() -> Settings:
    """Return the process-wide settings, built on first use."""
    return load_settings()


def exit_on_config_error(error: ConfigError) -> NoReturn:
    """Stop a starting process with one line naming the bad setting, instead of a traceback."""
    print(f"model-router: {error.message}", file=sys.stderr)
    raise SystemExit(2)
