from __future__ import annotations

import gzip
import importlib.util
import json

import numpy as np
import pytest
from click.testing import CliRunner

from shared.cli import main


def _write_rows(path, *, count: int = 60, priced: bool = False, other_source_every: int = 0) -> None:
    rng = np.random.default_rng(4)
    rows = []
    for i in range(count):
        benchmark = "quiz" if i % 2 else "sums"
        weak = float(rng.random() < 0.6)
        rows.append(
            {
                "id": f"row-{i}",
                "source": "routerbench" if other_source_every and i % other_source_every == 0 else "routellm",
                "benchmark": benchmark,
                "metric": "correct_0_1",
                "prompt": f"{benchmark} question {i}: add {i} and {i * 7}?",
                "strong_score": 1.0,
                "weak_score": weak,
            }
        )
        if priced:
            rows[-1]["scores"] = {"small": weak, "large": 1.0}
            rows[-1]["costs_usd"] = {"small": 0.001, "large": 0.1}
    rows.append(
        {
            "id": "judge-1",
            "source": "routellm",
            "benchmark": "judged",
            "metric": "judge_score_1_10",
            "prompt": "Write a poem.",
            "strong_score": 9.0,
            "weak_score": 8.0,
        }
    )
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)


def test_eval_writes_the_documented_json(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    out = tmp_path / "out.json"
    _write_rows(data)
    result = CliRunner().invoke(main, ["eval", "--data", str(data), "--router", "heuristic", "--json", str(out)])
    assert result.exit_code == 0, result.output
    document = json.loads(out.read_text())
    assert document["router"] == "heuristic"
    assert document["n"] == 61
    assert set(document["pooled"]) >= {"apgr", "cpt50", "cpt80"}
    assert set(document["benchmarks"]) == {"quiz", "sums", "judged"}
    assert 0.0 <= document["benchmarks"]["quiz"]["cpt50"] <= 1.0
    assert "APGR" in result.output


def test_eval_compares_several_routers(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    out = tmp_path / "out.json"
    _write_rows(data)
    args = ["eval", "--data", str(data), "--router", "random", "--router", "learned", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert [item["router"] for item in json.loads(out.read_text())] == ["random", "learned"]


def test_eval_replays_the_tier_policy_on_priced_rows(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    out = tmp_path / "out.json"
    _write_rows(data, priced=True)
    args = ["eval", "--data", str(data), "--router", "learned", "--tiers", "small,large", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    policy = json.loads(out.read_text())["tier_policy"]
    assert policy["models"] == ["small", "large"]
    assert policy["n"] == 60
    assert set(policy["preferences"]) == {"cost", "balanced", "quality"}
    for point in policy["preferences"].values():
        assert sum(point["tier_shares"]) == pytest.approx(1.0)
        assert 0.001 <= point["cost_usd_per_prompt"] <= 0.1
    assert policy["single_models"]["large"]["cost_usd_per_prompt"] == pytest.approx(0.1)


def test_eval_refuses_tiers_no_row_prices(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    _write_rows(data)
    result = CliRunner().invoke(main, ["eval", "--data", str(data), "--router", "learned", "--tiers", "small,large"])
    assert result.exit_code == 2
    assert "small, large" in result.output


def test_eval_keeps_only_the_chosen_source(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    out = tmp_path / "out.json"
    _write_rows(data, other_source_every=3)
    args = ["eval", "--data", str(data), "--router", "learned", "--source", "routerbench", "--json", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["n"] == 20


def test_eval_rejects_an_unknown_router(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    _write_rows(data)
    result = CliRunner().invoke(main, ["eval", "--data", str(data), "--router", "nope"])
    assert result.exit_code == 2


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is not None, reason="matplotlib is installed")
def test_plot_without_matplotlib_says_so_in_one_line(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    _write_rows(data)
    result = CliRunner().invoke(
        main, ["eval", "--data", str(data), "--router", "random", "--plot", str(tmp_path / "p.png")]
    )
    assert result.exit_code == 0
    assert "matplotlib" in result.output
    assert not (tmp_path / "p.png").exists()


def test_train_router_is_reproducible(tmp_path):
    data = tmp_path / "rows.jsonl.gz"
    _write_rows(data)
    first = tmp_path / "a.npz"
    second = tmp_path / "b.npz"
    for out in (first, second):
        result = CliRunner().invoke(main, ["train-router", "--data", str(data), "--out", str(out), "--seed", "3"])
        assert result.exit_code == 0, result.output
    assert first.read_bytes() == second.read_bytes()
