"""The catalog's rules: prices rise with the tiers, and a model's deployments are read as written."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.config import DEFAULT_CATALOG_PATH
from shared.errors import ConfigError
from shared.reports.savings import Savings
from shared.reports.savings import baseline_model
from shared.routing.catalog import Deployment
from shared.routing.catalog import load_catalog
from tests.support.catalogs import SEED_CATALOG_PATH

DEFAULT = load_catalog(DEFAULT_CATALOG_PATH)


def _model(name: str, tier: str, price_in: str, price_out: str, extra: str = "") -> str:
    return (
        f'[[models]]\nname = "{name}"\ntier = "{tier}"\ninput_per_1k = "{price_in}"\noutput_per_1k = "{price_out}"\n'
        f"{extra}\n"
    )


def _load(tmp_path: Path, text: str):
    path = tmp_path / "models.toml"
    path.write_text(text, encoding="utf-8")
    return load_catalog(path)


def _refusal(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as caught:
        _load(tmp_path, text)
    return caught.value.message


TWO_TIERS = 'tiers = ["cheap", "high"]\n'


@pytest.mark.parametrize(
    ("cheap", "high", "side"),
    [
        pytest.param(("0.03", "0.06"), ("0.01", "0.06"), "input_per_1k", id="input-cheaper"),
        pytest.param(("0.01", "0.06"), ("0.03", "0.03"), "output_per_1k", id="output-cheaper"),
    ],
)
def test_a_stronger_tier_priced_below_a_weaker_one_is_refused(
    tmp_path: Path, cheap: tuple[str, str], high: tuple[str, str], side: str
) -> None:
    message = _refusal(tmp_path, TWO_TIERS + _model("small", "cheap", *cheap) + _model("large", "high", *high))
    assert "tier 'high' is priced below a weaker tier" in message
    assert f"large costs {high[0] if side == 'input_per_1k' else high[1]} ({side})" in message
    assert "small of tier 'cheap'" in message


def test_the_seeds_inverted_prices_are_refused(tmp_path: Path) -> None:
    """The first catalog's order: its mid tier (gpt-4) dearer than its high tier (gpt-4-turbo)."""
    text = (
        'tiers = ["cheap", "mid", "high"]\n'
        + _model("gpt-3.5-turbo", "cheap", "0.0005", "0.0015")
        + _model("gpt-4", "mid", "0.03", "0.06")
        + _model("gpt-4-turbo", "high", "0.01", "0.03")
    )
    assert "tier 'high' is priced below a weaker tier: gpt-4-turbo" in _refusal(tmp_path, text)


def test_every_model_of_a_weaker_tier_counts_not_only_its_first(tmp_path: Path) -> None:
    text = (
        TWO_TIERS
        + _model("small", "cheap", "0.001", "0.002")
        + _model("small-dear", "cheap", "0.02", "0.002")
        + _model("large", "high", "0.01", "0.02")
    )
    assert "small-dear of tier 'cheap'" in _refusal(tmp_path, text)


def test_a_model_dearer_than_the_baseline_is_refused(tmp_path: Path) -> None:
    text = (
        TWO_TIERS
        + _model("small", "cheap", "0.001", "0.002")
        + _model("large", "high", "0.01", "0.02")
        + _model("larger", "high", "0.01", "0.05")
    )
    assert "larger costs 0.05 (output_per_1k), more than large" in _refusal(tmp_path, text)


def test_equal_prices_across_tiers_are_allowed(tmp_path: Path) -> None:
    catalog = _load(tmp_path, TWO_TIERS + _model("a", "cheap", "0.01", "0.02") + _model("b", "high", "0.01", "0.02"))
    assert catalog.tiers == ("cheap", "high")


def test_the_seed_example_catalog_keeps_its_three_models() -> None:
    seed = load_catalog(SEED_CATALOG_PATH)
    assert [seed.model_for_tier(tier).name for tier in seed.tiers] == ["gpt-3.5-turbo", "gpt-4", "gpt-4-turbo"]


@given(
    prompt_tokens=st.integers(min_value=0, max_value=10**7),
    completion_tokens=st.integers(min_value=0, max_value=10**7),
    attempts=st.lists(st.sampled_from(DEFAULT.model_names), min_size=1, max_size=6),
)
def test_routing_never_costs_more_than_the_baseline_on_the_default_catalog(
    prompt_tokens: int, completion_tokens: int, attempts: list[str]
) -> None:
    """Any mix of calls (retries, fallbacks, an escalation), each priced at its model: savings are never negative."""
    cost = sum((DEFAULT.get_model(name).cost(prompt_tokens, completion_tokens) for name in attempts), Decimal(0))
    tokens = len(attempts) * prompt_tokens, len(attempts) * completion_tokens
    savings = Savings(cost=cost, baseline_cost=baseline_model(DEFAULT).cost(*tokens))
    assert savings.savings >= 0
    assert savings.savings_pct >= 0


# --- Deployments -----------------------------------------------------------------------------------------

DEPLOYED = (
    TWO_TIERS
    + _model(
        "small",
        "cheap",
        "0.001",
        "0.002",
        'api_key_env = "SMALL_KEY"\n'
        '[[models.deployments]]\nname = "key-a"\n'
        '[[models.deployments]]\nname = "key-b"\napi_key_env = "SMALL_KEY_B"\nweight = 2\n'
        '[[models.deployments]]\nname = "vllm"\nbase_url = "http://127.0.0.1:8001/v1/"\nupstream_model = "llama"\n',
    )
    + _model("large", "high", "0.01", "0.02")
)


def test_a_models_deployments_are_read_in_order(tmp_path: Path) -> None:
    small = _load(tmp_path, DEPLOYED).get_model("small")
    assert small.deployments == (
        Deployment(name="key-a"),
        Deployment(name="key-b", api_key_env="SMALL_KEY_B", weight=Decimal(2)),
        Deployment(name="vllm", base_url="http://127.0.0.1:8001/v1", upstream_model="llama"),
    )


def test_each_deployment_serves_the_model_with_what_it_omits_taken_from_the_model(tmp_path: Path) -> None:
    small = _load(tmp_path, DEPLOYED).get_model("small")
    served = [
        (spec.name, spec.deployment, spec.base_url, spec.api_key_env, spec.upstream_model, spec.upstream_key)
        for spec in small.served_by()
    ]
    assert served == [
        ("small", "key-a", None, "SMALL_KEY", None, "small@key-a"),
        ("small", "key-b", None, "SMALL_KEY_B", None, "small@key-b"),
        ("small", "vllm", "http://127.0.0.1:8001/v1", "SMALL_KEY", "llama", "small@vllm"),
    ]


def test_a_model_without_deployments_is_its_own_single_deployment(tmp_path: Path) -> None:
    catalog = _load(tmp_path, DEPLOYED)
    large = catalog.get_model("large")
    assert large.served_by() == (large,)
    assert large.upstream_key == "large"
    assert catalog.upstream_keys == ["small@key-a", "small@key-b", "small@vllm", "large"]


@pytest.mark.parametrize(
    ("deployment", "problem"),
    [
        pytest.param('name = "a"\napi_key = "sk-secret"', "api_key", id="a-key-written-in-the-file"),
        pytest.param('name = "a"\napi_key_env = "sk-secret"', "api_key_env", id="key-variable-not-a-name"),
        pytest.param('name = "a"\nweight = 0', "weight", id="zero-weight"),
        pytest.param('name = "a b"', "name", id="name-with-space"),
        pytest.param('name = "a"\nbase_url = "ftp://x"', "must be an http(s) URL", id="not-http"),
    ],
)
def test_an_invalid_deployment_is_refused(tmp_path: Path, deployment: str, problem: str) -> None:
    text = TWO_TIERS + _model("small", "cheap", "0.001", "0.002", f"[[models.deployments]]\n{deployment}\n")
    message = _refusal(tmp_path, text + _model("large", "high", "0.01", "0.02"))
    assert "models.0.deployments.0" in message and problem in message
    assert "sk-secret" not in message or problem == "api_key_env"


def test_deployment_names_are_unique_within_a_model(tmp_path: Path) -> None:
    twice = '[[models.deployments]]\nname = "a"\n[[models.deployments]]\nname = "a"\n'
    text = TWO_TIERS + _model("small", "cheap", "0.001", "0.002", twice) + _model("large", "high", "0.01", "0.02")
    assert "model 'small': deployment names must be unique" in _refusal(tmp_path, text)


def test_a_catalog_of_some_models_drops_the_others_their_tiers_and_the_fallbacks_to_them() -> None:
    seed = load_catalog(SEED_CATALOG_PATH)
    narrowed = seed.only({"gpt-3.5-turbo", "gpt-4-turbo"})
    assert (narrowed.tiers, narrowed.model_names) == (("cheap", "high"), ["gpt-3.5-turbo", "gpt-4-turbo"])
    # The cheap model's default fallback is the mid tier's model: gone with it, not replaced.
    assert seed.get_model("gpt-3.5-turbo").fallbacks == ("gpt-4",)
    assert narrowed.chain("gpt-3.5-turbo") == (narrowed.get_model("gpt-3.5-turbo"),)
    assert narrowed.tier_above("cheap") == "high"
    assert seed.only(set(seed.model_names)) == seed
