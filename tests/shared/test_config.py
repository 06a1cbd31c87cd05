"""Settings from arguments, the environment and `.env`; the model catalog and its validation."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from shared.config import DEFAULT_CATALOG_PATH
from shared.config import Settings
from shared.config import load_settings
from shared.errors import ConfigError
from shared.routing.catalog import ModelSpec
from shared.routing.catalog import load_catalog
from tests.conftest import make_test_settings

SECRET = "sk-do-not-print-0123456789"
LOCAL_UPSTREAM = "http://127.0.0.1:9000/v1"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Run each test where no setting comes from the process environment or a stray `.env`."""
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _load(**overrides: object) -> Settings:
    """Load settings with a local upstream, so no key is needed unless a test asks otherwise."""
    return load_settings(**{"openai_base_url": LOCAL_UPSTREAM, **overrides})


def _config_error(**overrides: object) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(**overrides)
    return caught.value.message


# --- Settings: defaults and normalization ---------------------------------------------------------------


def test_monthly_budget_limit_defaults_to_100_as_decimal() -> None:
    limit = _load().monthly_budget_limit
    assert isinstance(limit, Decimal)
    assert limit == Decimal("100.0")


def test_database_url_defaults_to_a_local_sqlite_file() -> None:
    settings = _load()
    assert settings.database_url == "sqlite:///./model_router.db"
    assert settings.is_sqlite


def test_catalog_path_defaults_to_the_shipped_catalog() -> None:
    assert _load().model_catalog_path == DEFAULT_CATALOG_PATH


@pytest.mark.parametrize("scheme", ["postgresql", "postgres"])
def test_postgres_urls_are_given_the_psycopg_driver(scheme: str) -> None:
    settings = _load(database_url=f"{scheme}://app:pw@db.internal:5432/router")
    assert settings.database_url == "postgresql+psycopg://app:pw@db.internal:5432/router"
    assert not settings.is_sqlite


def test_a_postgres_url_with_a_driver_is_kept() -> None:
    url = "postgresql+psycopg://app:pw@db.internal/router"
    assert _load(database_url=url).database_url == url


def test_base_url_loses_its_trailing_slash() -> None:
    assert _load(openai_base_url="http://127.0.0.1:9000/v1/").openai_base_url == LOCAL_UPSTREAM


# --- Settings: malformed values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "name"),
    [
        pytest.param({"monthly_budget_limit": "abc"}, "MONTHLY_BUDGET_LIMIT", id="budget-not-a-number"),
        pytest.param({"monthly_budget_limit": "-1"}, "MONTHLY_BUDGET_LIMIT", id="budget-negative"),
        pytest.param({"monthly_budget_limit": "1.1234567891"}, "MONTHLY_BUDGET_LIMIT", id="budget-sub-nano"),
        pytest.param({"redis_url": "http://x"}, "REDIS_URL", id="redis-not-redis"),
        pytest.param({"database_url": "mysql://x/y"}, "DATABASE_URL", id="database-unsupported"),
        pytest.param({"openai_base_url": "ftp://x"}, "OPENAI_BASE_URL", id="base-url-not-http"),
        pytest.param({"max_prompt_chars": -1}, "MAX_PROMPT_CHARS", id="max-prompt-chars-negative"),
        pytest.param({"max_request_bytes": 10}, "MAX_REQUEST_BYTES", id="max-request-bytes-too-small"),
        pytest.param({"upstream_max_attempts": 0}, "UPSTREAM_MAX_ATTEMPTS", id="max-attempts-zero"),
        pytest.param({"upstream_read_timeout_s": 0}, "UPSTREAM_READ_TIMEOUT_S", id="read-timeout-zero"),
        pytest.param({"job_lease_s": "soon"}, "JOB_LEASE_S", id="lease-not-an-int"),
        pytest.param({"environment": "prod"}, "ENVIRONMENT", id="environment-unknown"),
        pytest.param({"escalation_confidence_threshold": 1.5}, "ESCALATION_CONFIDENCE_THRESHOLD", id="threshold>1"),
        pytest.param({"stream_keepalive_s": 20}, "STREAM_KEEPALIVE_S", id="keepalive-above-15s"),
        pytest.param({"stream_keepalive_s": 0}, "STREAM_KEEPALIVE_S", id="keepalive-zero"),
    ],
)
def test_malformed_value_raises_one_line_naming_the_setting(overrides: dict[str, object], name: str) -> None:
    message = _config_error(**overrides)
    assert message.startswith(f"invalid setting {name}: ")
    assert "\n" not in message
    # Pydantic's "Value error, " prefix is an implementation detail, not something to show an operator.
    assert "Value error" not in message


def test_malformed_value_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UPSTREAM_MAX_ATTEMPTS", "-3")
    assert _config_error().startswith("invalid setting UPSTREAM_MAX_ATTEMPTS: ")


def test_missing_key_without_base_url_names_openai_api_key() -> None:
    message = _config_error(openai_base_url=None)
    assert "OPENAI_API_KEY is required" in message
    assert "OPENAI_BASE_URL" in message
    assert "\n" not in message
    assert "Value error" not in message


def test_blank_api_key_is_treated_as_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert _load().openai_api_key is None


def test_blank_api_key_without_base_url_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    assert "OPENAI_API_KEY is required" in _config_error(openai_base_url=None)


def test_blank_base_url_means_the_default_server() -> None:
    assert _load(openai_base_url="", openai_api_key=SECRET).openai_base_url is None


# --- Settings: sources ----------------------------------------------------------------------------------


def test_values_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("MONTHLY_BUDGET_LIMIT", "42.5")
    monkeypatch.setenv("UPSTREAM_MAX_ATTEMPTS", "5")
    monkeypatch.setenv("ESCALATION_ENABLED", "false")
    settings = load_settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == SECRET
    assert settings.openai_base_url is None
    assert (settings.monthly_budget_limit, settings.upstream_max_attempts) == (Decimal("42.5"), 5)
    assert settings.escalation_enabled is False


def test_values_are_read_from_dotenv_in_the_working_directory(clean_environment: Path) -> None:
    (clean_environment / ".env").write_text(
        f"OPENAI_API_KEY={SECRET}\nMONTHLY_BUDGET_LIMIT=12.25\nDATABASE_URL=postgres://u:p@h/db\n", encoding="utf-8"
    )
    settings = load_settings()
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == SECRET
    assert settings.monthly_budget_limit == Decimal("12.25")
    assert settings.database_url == "postgresql+psycopg://u:p@h/db"


def test_environment_wins_over_dotenv(clean_environment: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (clean_environment / ".env").write_text("MONTHLY_BUDGET_LIMIT=12.25\n", encoding="utf-8")
    monkeypatch.setenv("MONTHLY_BUDGET_LIMIT", "7")
    assert _load().monthly_budget_limit == Decimal(7)


def test_arguments_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MONTHLY_BUDGET_LIMIT", "7")
    assert _load(monthly_budget_limit="3").monthly_budget_limit == Decimal(3)


def test_secret_is_not_shown_in_repr() -> None:
    settings = _load(openai_api_key=SECRET)
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == SECRET


def test_secret_is_not_shown_in_a_config_error() -> None:
    assert SECRET not in _config_error(openai_api_key=SECRET, redis_url=f"http://{SECRET}@x")


# --- Catalog ---------------------------------------------------------------------------------------------

SEED_TIERS = ("cheap", "mid", "high")
VALID_MODELS = """
[[models]]
name = "small"
tier = "cheap"
input_per_1k = "0.001"
output_per_1k = "0.002"

[[models]]
name = "large"
tier = "high"
input_per_1k = "0.01"
output_per_1k = "0.02"
"""


def _catalog_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return path


def _catalog_error(path: Path) -> str:
    with pytest.raises(ConfigError) as caught:
        load_catalog(path)
    message = caught.value.message
    assert "\n" not in message
    return message


def test_default_catalog_has_three_tiers_of_current_openai_models() -> None:
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    assert catalog.tiers == SEED_TIERS
    assert [catalog.model_for_tier(tier).name for tier in SEED_TIERS] == ["gpt-4o-mini", "gpt-4.1-mini", "gpt-4.1"]


def test_default_catalog_prices_are_exact() -> None:
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    prices = {m.name: (m.tier, m.input_per_1k, m.output_per_1k) for m in catalog.models}
    assert prices == {
        "gpt-4o-mini": ("cheap", Decimal("0.00015"), Decimal("0.0006")),
        "gpt-4.1-mini": ("mid", Decimal("0.0004"), Decimal("0.0016")),
        "gpt-4.1": ("high", Decimal("0.002"), Decimal("0.008")),
    }
    assert all(isinstance(m.input_per_1k, Decimal) and isinstance(m.output_per_1k, Decimal) for m in catalog.models)


def test_default_catalog_says_when_its_prices_were_read() -> None:
    assert "as read on 2025-06-01" in DEFAULT_CATALOG_PATH.read_text(encoding="utf-8")


def test_default_catalog_models_use_the_default_server_and_support_logprobs() -> None:
    catalog = load_catalog(DEFAULT_CATALOG_PATH)
    assert [(m.base_url, m.api_key_env, m.supports_logprobs, m.deployments) for m in catalog.models] == [
        (None, None, True, ())
    ] * 3


def test_model_cost_is_exact_decimal() -> None:
    model = ModelSpec(name="m", tier="mid", input_per_1k=Decimal("0.03"), output_per_1k=Decimal("0.06"))
    cost = model.cost(1234, 567)
    assert isinstance(cost, Decimal)
    # 1234 * 0.03 + 567 * 0.06 = 37.02 + 34.02 = 71.04 per thousand.
    assert cost == Decimal("0.07104")


def test_model_cost_keeps_sub_cent_precision() -> None:
    model = ModelSpec(name="m", tier="cheap", input_per_1k=Decimal("0.0005"), output_per_1k=Decimal("0.0015"))
    assert model.cost(1, 1) == Decimal("0.000002")
    assert sum((model.cost(1, 0) for _ in range(1000)), Decimal(0)) == Decimal("0.0005")


def test_catalog_model_may_name_its_own_server_and_key_variable(tmp_path: Path) -> None:
    own_server = """
[[models]]
name = "local"
tier = "cheap"
input_per_1k = "0"
output_per_1k = "0"
base_url = "http://127.0.0.1:8001/v1/"
api_key_env = "VLLM_API_KEY"
supports_logprobs = false
"""
    path = _catalog_file(tmp_path, 'tiers = ["cheap", "high"]\n' + VALID_MODELS + own_server)
    local = load_catalog(path).get_model("local")
    assert (local.base_url, local.api_key_env, local.supports_logprobs) == (
        "http://127.0.0.1:8001/v1",
        "VLLM_API_KEY",
        False,
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        pytest.param(
            'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('tier = "high"', 'tier = "ultra"'),
            "unknown tier 'ultra'",
            id="unknown-tier",
        ),
        pytest.param(
            'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('name = "large"', 'name = "small"'),
            "model names must be unique",
            id="duplicate-model",
        ),
        pytest.param(
            'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('"0.01"', '"0.0000001"'),
            "at most 6 decimal places",
            id="price-7-decimals",
        ),
        pytest.param(
            'tiers = ["cheap", "mid", "high"]\n' + VALID_MODELS,
            "tier 'mid' has no model",
            id="tier-without-model",
        ),
        pytest.param(
            'tiers = ["cheap", "high", "cheap"]\n' + VALID_MODELS,
            "tiers must be unique",
            id="duplicate-tier",
        ),
        pytest.param(
            'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('"0.002"', '"-0.002"'),
            "greater than or equal to 0",
            id="negative-price",
        ),
        pytest.param(
            'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('name = "large"', 'name = "large"\ncolour = "red"'),
            "colour",
            id="unknown-field",
        ),
    ],
)
def test_invalid_catalog_raises_config_error_naming_the_problem(tmp_path: Path, text: str, problem: str) -> None:
    path = _catalog_file(tmp_path, text)
    message = _catalog_error(path)
    assert message.startswith(f"invalid model catalog {path}: ")
    assert problem in message


def test_price_error_names_the_model_entry_and_field(tmp_path: Path) -> None:
    path = _catalog_file(tmp_path, 'tiers = ["cheap", "high"]\n' + VALID_MODELS.replace('"0.01"', '"0.0000001"'))
    assert "models.1.input_per_1k" in _catalog_error(path)


def test_catalog_that_is_not_toml_names_the_setting_and_file(tmp_path: Path) -> None:
    path = _catalog_file(tmp_path, "tiers = [\n")
    message = _catalog_error(path)
    assert message.startswith("invalid setting MODEL_CATALOG_PATH: ")
    assert f"{path} is not valid TOML" in message


def test_missing_catalog_file_names_the_setting_and_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"
    message = _catalog_error(path)
    assert message.startswith("invalid setting MODEL_CATALOG_PATH: ")
    assert f"cannot read {path}" in message


def test_the_postgres_pool_follows_the_settings() -> None:
    from shared.store.session import make_engine

    engine = make_engine(
        load_settings(database_url="postgresql://u@127.0.0.1:5432/x", db_pool_size=3, db_max_overflow=1,
                      openai_base_url="http://127.0.0.1:9/v1")
    )  # fmt: skip
    try:
        assert (engine.pool.size(), engine.pool._max_overflow) == (3, 1)
    finally:
        engine.dispose()


def test_webhook_url_keys_must_be_fernet_keys() -> None:
    from cryptography.fernet import Fernet

    key = Fernet.generate_key().decode()
    assert make_test_settings("sqlite://", webhook_url_keys=[key]).webhook_url_keys[0].get_secret_value() == key
    with pytest.raises(ConfigError, match="WEBHOOK_URL_KEYS: must be Fernet keys"):
        make_test_settings("sqlite://", webhook_url_keys=["not-a-key"])


@pytest.mark.parametrize("lease", [10, 20, 300, 3600])
def test_time_limits_are_ordered_for_any_lease(lease: int) -> None:
    limits = _load(job_lease_s=lease).time_limits
    assert limits.max_deadline_s + limits.finish_s < limits.soft_s < limits.hard_s < limits.lease_s == lease


def test_the_celery_limits_are_the_settings_limits() -> None:
    from worker.celery_app import create_celery

    settings = _load(job_lease_s=120)
    conf = create_celery(settings).conf
    assert (conf.task_soft_time_limit, conf.task_time_limit) == (
        settings.time_limits.soft_s,
        settings.time_limits.hard_s,
    )


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"job_lease_s": 60, "job_max_deadline_s": 50}, id="deadline-past-soft-limit"),
        pytest.param({"job_lease_s": 60, "job_max_deadline_s": 40, "job_finish_s": 20}, id="finish-past-soft-limit"),
        pytest.param({"job_lease_s": 60, "default_deadline_s": 59}, id="default-deadline-past-the-longest"),
    ],
)
def test_settings_that_break_the_order_of_time_limits_are_refused(overrides: dict[str, object]) -> None:
    message = _config_error(**overrides)
    assert message.startswith("invalid settings: ")
    assert "JOB_LEASE_S" in message or "JOB_MAX_DEADLINE_S" in message


def test_a_requested_deadline_is_cut_to_the_longest_allowed() -> None:
    settings = _load(job_lease_s=60, job_max_deadline_s=30, job_finish_s=10)
    assert settings.deadline_for(600) == 30
    assert settings.deadline_for(None) == 30  # DEFAULT_DEADLINE_S left at its default (60) is cut too
    assert settings.deadline_for(5) == 5


@pytest.mark.parametrize(
    ("text", "windows"),
    [("", {}), ("  ", {}), ('{"day": "5", "6h": 1.5}', {"day": Decimal(5), "6h": Decimal("1.5")})],
)
def test_budget_windows_are_read_from_json_and_empty_is_none(
    monkeypatch: pytest.MonkeyPatch, text: str, windows: dict[str, Decimal]
) -> None:
    monkeypatch.setenv("BUDGET_WINDOWS", text)
    assert _load().budget_windows == windows


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("BUDGET_WINDOWS", "{day: 5}", "must be a JSON object"),
        ("BUDGET_WINDOWS", "[1]", "must be a JSON object"),
        ("BUDGET_WINDOWS", '{"month": 5}', "unknown budget window 'month'"),
        ("WEBHOOK_ALLOWED_HOSTS", "not json", "not valid JSON"),
    ],
)
def test_unreadable_json_settings_are_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, text: str, message: str
) -> None:
    monkeypatch.setenv(name, text)
    with pytest.raises(ConfigError, match=f"invalid setting {name}: .*{message}"):
        _load()
