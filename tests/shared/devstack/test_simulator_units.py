"""The simulator's pure parts: settings parsing, the tokenizer and answer generation."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from shared.devstack.simulator import answers
from shared.devstack.simulator import sim_settings
from shared.devstack.simulator.sim_settings import SimSettings
from shared.upstream.token_count import count_prompt_tokens
from shared.upstream.token_count import count_tokens

HARD_PROMPT = "Prove the bound, derive the recurrence and analyze how to optimize it:\n```python\nx = 1\n```"


def test_settings_from_env_reads_every_variable() -> None:
    settings = sim_settings.from_env(
        {
            "SIM_LATENCY_MS": "120",
            "SIM_TTFT_MS": "30.5",
            "SIM_FAULTS": "429=0.3, 500=0.1,timeout=0.05,hedge=0.1",
            "SIM_RETRY_AFTER_S": "none",
            "SIM_DOWN": "gpt-4, gpt-4-turbo,",
            "SIM_SEED": "42",
            "SIM_FAIL_FIRST": "429:2",
            "SIM_TIMEOUT_HANG_S": "0.5",
            "SIM_API_KEY": "secret",
            "UNRELATED": "x",
        }
    )
    assert settings == SimSettings(
        latency_ms=120.0,
        ttft_ms=30.5,
        faults={"429": 0.3, "500": 0.1, "timeout": 0.05, "hedge": 0.1},
        retry_after_s=None,
        down=frozenset({"gpt-4", "gpt-4-turbo"}),
        seed=42,
        fail_first=("429", 2),
        timeout_hang_s=0.5,
        api_key="secret",
    )
    assert sim_settings.from_env({}) == SimSettings()


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("SIM_LATENCY_MS", "soon", "invalid setting SIM_LATENCY_MS: must be a number"),
        ("SIM_TTFT_MS", "-1", "invalid setting SIM_TTFT_MS: must be a finite number >= 0"),
        ("SIM_FAULTS", "429=0.7,500=0.4", "invalid setting SIM_FAULTS: shares must sum to at most 1"),
        ("SIM_FAULTS", "418=0.1", "invalid setting SIM_FAULTS: unknown fault kind '418'"),
        ("SIM_FAULTS", "429=1.5", "invalid setting SIM_FAULTS: share of '429' must be between 0 and 1"),
        ("SIM_FAULTS", "429", "invalid setting SIM_FAULTS: expected kind=share pairs"),
        ("SIM_SEED", "1.5", "invalid setting SIM_SEED: must be an integer"),
        ("SIM_FAIL_FIRST", "429", "invalid setting SIM_FAIL_FIRST: expected kind:count"),
        ("SIM_FAIL_FIRST", "429:-1", "invalid setting SIM_FAIL_FIRST: count must be >= 0"),
    ],
)
def test_settings_from_env_names_the_bad_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(expected)):
        sim_settings.from_env({name: value})


def test_header_overlay_accepts_both_key_spellings_and_keeps_the_rest() -> None:
    base = SimSettings(seed=5, down=frozenset({"gpt-4"}))
    settings = sim_settings.overlay_header(base, " latency_ms=50 ; SIM_Faults=429=1.0,hedge=0; ;fail_first=hedge:1")
    assert settings == SimSettings(
        latency_ms=50.0,
        faults={"429": 1.0, "hedge": 0.0},
        seed=5,
        down=frozenset({"gpt-4"}),
        fail_first=("hedge", 1),
    )
    assert sim_settings.overlay_header(base, "") is base


@pytest.mark.parametrize("header", ["latency_ms", "seed=x", "unknown=1", "api_key=open", "=5"])
def test_header_overlay_rejects_malformed_headers(header: str) -> None:
    with pytest.raises(ValueError, match=r"^invalid X-Sim header: "):
        sim_settings.overlay_header(SimSettings(), header)


def test_config_takes_json_values_and_describe_round_trips() -> None:
    settings = sim_settings.apply_config(
        SimSettings(),
        {
            "faults": {"503": 0.25},
            "down": ["a", "b"],
            "fail_first": ["500", 3],
            "retry_after_s": None,
            "seed": 9,
        },
    )
    assert settings.faults == {"503": 0.25} and settings.down == frozenset({"a", "b"})
    assert settings.fail_first == ("500", 3) and settings.retry_after_s is None
    described = sim_settings.describe(settings)
    assert described["api_key_set"] is False
    del described["api_key_set"]
    assert sim_settings.apply_config(SimSettings(), described) == settings
    with pytest.raises(ValueError, match="latency_ms: must be a number"):
        sim_settings.apply_config(SimSettings(), {"latency_ms": True})


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", 0), (" \n\t", 1), ("a", 1), ("don't stop!", 5), ("日本語 テキスト", 2), ("🎉🎉", 2), ("x=1.5", 5)],
)
def test_count_tokens(text: str, expected: int) -> None:
    assert count_tokens(text) == expected
    assert count_tokens(text) <= len(text.encode())


def test_prompt_tokens_add_message_overhead() -> None:
    assert count_prompt_tokens(["hello world", ""]) == (2 + 4) + (0 + 4) + 3


def _answer(model: str = "m", tier: int = 0, prompt: str = "What is a hash map?", **kwargs: object) -> answers.Answer:
    options: dict[str, object] = {"max_tokens": None, "seed": 0, **kwargs}
    return answers.create_answer(model=model, tier_index=tier, tier_count=3, prompt=prompt, **options)  # type: ignore[arg-type]


def test_answers_are_deterministic_across_processes() -> None:
    code = (
        "from shared.devstack.simulator import answers;"
        "a = answers.create_answer(model='m', tier_index=1, tier_count=3, prompt='What is a hash map?',"
        " max_tokens=None, seed=3, want_logprobs=True);"
        "print(a.text, a.confidence, a.logprobs['content'][0]['logprob'])"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed, "PYTHONPATH": os.getcwd()}
        result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(result.stdout)
    local = _answer(tier=1, seed=3, want_logprobs=True)
    assert outputs == {f"{local.text} {local.confidence} {local.logprobs['content'][0]['logprob']}\n"}  # type: ignore[index]


def test_confidence_rises_with_tier_and_hard_prompts_hurt_weak_tiers_more() -> None:
    for prompt in ("What is a hash map?", HARD_PROMPT):
        levels = [answers.estimate_confidence(tier_index=t, tier_count=3, prompt=prompt, seed=0) for t in range(3)]
        assert levels == sorted(levels) and len(set(levels)) == 3
    weak_drop = _answer(tier=0).confidence - _answer(tier=0, prompt=HARD_PROMPT).confidence
    strong_drop = _answer(tier=2).confidence - _answer(tier=2, prompt=HARD_PROMPT).confidence
    assert weak_drop > strong_drop > 0
    assert answers.estimate_difficulty(HARD_PROMPT) > answers.estimate_difficulty("What is a hash map?")


def test_answers_grow_a_little_with_the_prompt() -> None:
    short = [_answer(prompt=f"Question {i}?").completion_tokens for i in range(20)]
    long = [_answer(prompt=f"Question {i}? " + "Some context here. " * 120).completion_tokens for i in range(20)]
    assert sum(long) > sum(short)
    assert max(long) <= 110


def test_hedges_are_short_unsure_and_have_low_logprobs() -> None:
    for prompt in ("a", "What is a hash map?", HARD_PROMPT):
        hedge = _answer(tier=2, prompt=prompt, hedge=True, want_logprobs=True)
        assert "I'm not sure" in hedge.text or "I don't know" in hedge.text
        assert hedge.completion_tokens < 12 and 0.1 <= hedge.confidence <= 0.3
        sure = _answer(tier=2, prompt=prompt, want_logprobs=True)
        mean = [sum(e["logprob"] for e in a.logprobs["content"]) / a.completion_tokens for a in (hedge, sure)]  # type: ignore[index]
        assert mean[0] < mean[1]


def test_truncation_cuts_at_exactly_max_tokens() -> None:
    full = _answer(tier=2)
    for limit in (1, 7, full.completion_tokens - 1):
        cut = _answer(tier=2, max_tokens=limit, want_logprobs=True)
        assert cut.finish_reason == "length"
        assert cut.completion_tokens == limit == count_tokens(cut.text) == len(cut.logprobs["content"])  # type: ignore[index]
        assert full.text.startswith(cut.text)
    assert _answer(tier=2, max_tokens=full.completion_tokens).finish_reason == "stop"


def test_top_logprobs_are_sorted_and_hold_at_most_all_the_probability() -> None:
    answer = _answer(want_logprobs=True, top_logprobs=20)
    for entry in answer.logprobs["content"]:  # type: ignore[index]
        top = entry["top_logprobs"]
        assert len(top) == 20 and entry["token"] in [alt["token"] for alt in top]
        assert [alt["logprob"] for alt in top] == sorted((alt["logprob"] for alt in top), reverse=True)
        assert sum(2.718281828 ** alt["logprob"] for alt in top) <= 1.0001
