from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from shared.errors import ConfigError
from shared.errors import InvalidInput
from shared.routing import difficulty
from shared.routing import difficulty_estimate
from shared.routing import learned_estimator

SMALL = learned_estimator.TrainConfig(hash_bits=12, epochs=60, learning_rate=0.1)


def _synthetic() -> tuple[list[str], list[tuple[float, float]]]:
    rng = np.random.default_rng(0)
    prompts = []
    labels = []
    for i in range(120):
        hard = i % 3 == 0
        numbers = " ".join(str(value) for value in rng.integers(10, 999, size=6 if hard else 1))
        topic = "integral of the series" if hard else "capital city"
        prompts.append(f"Question {i}: what about the {topic} with {numbers}?")
        # The weak model fails the hard prompts; the strong one fails every fifth prompt.
        labels.append((1.0 if hard else 0.0, 1.0 if i % 5 == 1 else 0.0))
    return prompts, labels


@pytest.fixture(scope="module")
def artifact() -> learned_estimator.Artifact:
    prompts, labels = _synthetic()
    return learned_estimator.train(prompts, labels, config=SMALL, metadata={"note": "synthetic"})


def test_training_is_deterministic(artifact):
    prompts, labels = _synthetic()
    again = learned_estimator.train(prompts, labels, config=SMALL, metadata={"note": "synthetic"})
    assert np.array_equal(again.weights, artifact.weights)
    assert np.array_equal(again.biases, artifact.biases)


def test_scores_are_quantiles_in_unit_interval(artifact):
    prompts, _ = _synthetic()
    scores = artifact.scores(prompts)
    assert scores.min() >= 0.0
    assert scores.max() <= 1.0
    # Calibrated on its own training prompts, the scores spread over the whole range.
    assert scores.max() - scores.min() > 0.5


def test_learns_the_synthetic_signal(artifact):
    prompts, labels = _synthetic()
    scores = artifact.scores(prompts)
    weak_fails = np.asarray([label[0] for label in labels]) == 1.0
    assert scores[weak_fails].min() > scores[~weak_fails].max()


def test_artifact_round_trip(artifact, tmp_path):
    path = tmp_path / "router.npz"
    learned_estimator.save_artifact(artifact, path)
    loaded = learned_estimator.read_artifact(path)
    prompts, _ = _synthetic()
    assert loaded.config == artifact.config
    assert loaded.metadata == {"note": "synthetic"}
    # Weights are stored as float16: scores agree to a few decimals.
    assert np.allclose(loaded.scores(prompts), artifact.scores(prompts), atol=1e-2)


def test_saved_bytes_ignore_last_bit_float_noise(artifact, tmp_path):
    # Another numpy build or CPU may sum in another order and change the last bits of the fitted floats.
    nudged = dataclasses.replace(
        artifact,
        biases=np.nextafter(artifact.biases, np.inf),
        calibration=np.nextafter(artifact.calibration, np.inf),
        hand_mean=np.nextafter(artifact.hand_mean, np.inf),
    )
    learned_estimator.save_artifact(artifact, tmp_path / "a.npz")
    learned_estimator.save_artifact(nudged, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()


def test_artifact_is_loaded_once_per_path(artifact, tmp_path, monkeypatch):
    path = tmp_path / "router.npz"
    learned_estimator.save_artifact(artifact, path)
    reads = []
    real_read = learned_estimator.read_artifact
    monkeypatch.setattr(learned_estimator, "read_artifact", lambda p: reads.append(p) or real_read(p))
    estimator = learned_estimator.LearnedEstimator(path)
    estimator.estimate("What is 2 + 2?")
    estimator.estimate("Prove the theorem.")
    assert reads == [path]


def test_estimate_has_level_and_components(artifact, tmp_path):
    path = tmp_path / "router.npz"
    learned_estimator.save_artifact(artifact, path)
    estimate = learned_estimator.LearnedEstimator(path).estimate("what about the integral of the series 12 345 678")
    assert 0.0 <= estimate.score <= 1.0
    assert estimate.level == difficulty_estimate.choose_level(estimate.score)
    assert set(estimate.components) == {"weak_fails", "strong_fails", "gain", "quantile"}


def test_estimate_rejects_non_strings(artifact, tmp_path):
    with pytest.raises(InvalidInput):
        learned_estimator.LearnedEstimator(tmp_path / "unused.npz").estimate(None)  # type: ignore[arg-type]


def test_missing_artifact_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError):
        learned_estimator.read_artifact(tmp_path / "missing.npz")


def test_training_needs_matching_labels():
    with pytest.raises(InvalidInput):
        learned_estimator.train(["a", "b"], [(1.0, 0.0)], config=SMALL)


def test_hashed_features_are_normalised_and_stable():
    first = learned_estimator.hashed_ngrams("Solve 12 + 7 step by step.", config=SMALL)
    second = learned_estimator.hashed_ngrams("Solve 12 + 7 step by step.", config=SMALL)
    assert first == second
    assert abs(sum(value * value for value in first.values()) - 1.0) < 1e-9


def test_labels_are_which_model_fails():
    labels = learned_estimator.outcome_labels
    assert labels({"metric": "correct_0_1", "strong_score": 1.0, "weak_score": 0.0}) == (1.0, 0.0)
    assert labels({"metric": "correct_0_1", "strong_score": 0.0, "weak_score": 1.0}) == (0.0, 1.0)
    assert labels({"metric": "judge_score_1_10", "strong_score": 9.0, "weak_score": 8.0}) == (0.5, 0.0)


def test_expected_gain_rewards_weak_failures_and_penalises_strong_ones():
    gain = learned_estimator.expected_gain(np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert list(gain) == [1.0, -learned_estimator.LOSS_WEIGHT, 0.0]


def test_split_trains_only_on_the_training_source():
    rows = [
        {"id": f"{source}-{i}", "source": source, "benchmark": "b", "prompt": str(i)}
        for source in ("routellm", "routerbench")
        for i in range(20)
    ]
    train, validation = learned_estimator.split_for_training(rows, holdout=0.25, seed=1)
    assert {row["source"] for row in train} == {"routellm"}
    assert len(train) == 15
    assert sum(1 for row in validation if row["source"] == "routerbench") == 20


def test_shipped_artifact_is_registered_and_small():
    assert learned_estimator.DEFAULT_ARTIFACT_PATH.stat().st_size < 2 * 1024 * 1024
    estimate = difficulty.estimate_difficulty("What is the capital of France?", estimator="learned")
    assert 0.0 <= estimate.score <= 1.0
    shipped = learned_estimator.load_artifact(learned_estimator.DEFAULT_ARTIFACT_PATH)
    assert shipped.metadata["train_source"] == "routellm"
