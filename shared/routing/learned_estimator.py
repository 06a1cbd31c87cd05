"""A learned difficulty estimator: how likely the weak model falls short where the strong one succeeds.

Two logistic regressions ("heads") share one feature vector: hashed word and character n-grams of the
prompt plus a few hand features that generalise across benchmarks (length, numbers and arithmetic,
reasoning and code markers, multiple-choice options). One head predicts that the weak model fails, the
other that the strong model fails. The raw score is the expected gain of the strong model,
p_weak_fails * (1 - p_strong_fails) - LOSS_WEIGHT * p_strong_fails * (1 - p_weak_fails): on held-out
training folds it ranked prompts better than one head trained on "strong beats weak" directly, whose
positives are rare. The raw score is mapped through the empirical CDF of its values on the training
prompts, so the score is a quantile: a score of 0.8 means 80 % of the training prompts looked
easier. With the routing policy's three-tier thresholds this gives fixed shares of traffic per tier (see
OPERATING_POINTS), which is RouteLLM's calibration of a threshold to a target share of strong calls.

Everything here is pure numpy. Deliberately one module rather than a package: features, training, artifact
I/O and the estimator change together whenever the artifact format does. The artifact is read on first use
(once per process, never at import).
"""

from __future__ import annotations

import functools
import io
import json
import math
import re
import zlib
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path

import numpy as np

from shared.errors import ConfigError
from shared.errors import InvalidInput
from shared.routing import evaluation
from shared.routing.difficulty_estimate import DifficultyEstimate
from shared.routing.difficulty_estimate import choose_level

ARTIFACT_FORMAT = "learned-router/1"
DEFAULT_ARTIFACT_PATH = Path(__file__).with_name("artifacts") / "learned-v1.npz"

# Only Apache-2.0 rows train the shipped artifact; a stratified share of them is held out for validation.
TRAIN_SOURCE = "routellm"
VALIDATION_HOLDOUT = 0.2

# Share of traffic per tier (cheap, mid, high) for each preference with the three-tier catalog: the score is
# a quantile of the training prompts and shared.routing.policy puts the thresholds at 1/3 and 2/3, shifted by +0.15
# ("cost") or -0.15 ("quality"). On other traffic the shares move with how hard it looks next to the training
# prompts; evaluation.calibrate_threshold recomputes a threshold for a target share on any sample.
OPERATING_POINTS = {
    "cost": (0.4833, 0.3333, 0.1833),
    "balanced": (0.3333, 0.3333, 0.3333),
    "quality": (0.1833, 0.3333, 0.4833),
}

# Prompts longer than this feed only their head to the n-gram features; length features see all of it.
MAX_NGRAM_CHARS = 3000
CALIBRATION_POINTS = 201
# Floats are stored rounded (biases to this many decimals, scaling and calibration as float32), so the last-bit
# differences that numpy builds and CPUs leave in sums do not change the artifact's bytes.
STORED_DECIMALS = 9
MIN_HAND_SCALE = 1e-6
HEADS = ("weak_fails", "strong_fails")
# How much a likely strong-model failure (where the weak one succeeds) counts against routing strong.
LOSS_WEIGHT = 0.5

_WORD = re.compile(r"[a-z]+|\d+(?:[.,]\d+)*|[^\sa-z\d]")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")
_OPTION = re.compile(r"^\s*\(?[A-Ea-e][.)]\s", re.MULTILINE)
_ARITHMETIC = re.compile(r"[+\-*/\u00d7\u00f7=%$]")
_SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
_CODE = re.compile(r"```|\bdef \b|\breturn\b|\bfunction\b|[{};]|\bpython\b", re.IGNORECASE)
_REASONING = re.compile(
    r"\b(?:how many|how much|total|each|per|remaining|left|percent|twice|half|times|average|ratio|"
    r"prove|derive|calculate|compute|explain|why|step|suppose|if|then|therefore|which of the following)\b",
    re.IGNORECASE,
)
_NEGATION = re.compile(r"\b(?:not|except|least|false|incorrect|never)\b", re.IGNORECASE)

HAND_FEATURES = (
    "log_chars",
    "log_words",
    "log_numbers",
    "distinct_numbers",
    "large_numbers",
    "decimals",
    "arithmetic_marks",
    "sentences",
    "questions",
    "options",
    "newlines",
    "code_marks",
    "reasoning_words",
    "negations",
    "mean_word_length",
    "upper_ratio",
)
_OPTIONS_INDEX = HAND_FEATURES.index("options")
# log1p(2): at least two lettered options make a multiple-choice prompt.
_MULTIPLE_CHOICE = math.log1p(2)


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters of the learned router; the seed fixes every random choice."""

    hash_bits: int = 17
    char_ngrams: tuple[int, ...] = (3, 4, 5)
    word_ngrams: tuple[int, ...] = (1, 2)
    l2: float = 3e-4
    # The few dense hand features need far less shrinkage than the sparse n-grams.
    hand_l2: float = 1e-5
    epochs: int = 150
    learning_rate: float = 0.05
    seed: int = 20260115
    # Hand features get one block of weights for multiple-choice prompts and one for the rest: the same
    # signal (say, length) means different things in a quiz question and in a word problem.
    gated_hand: bool = True


@dataclass(frozen=True)
class Artifact:
    """A trained learned router: weights, feature scaling and the calibration curve."""

    config: TrainConfig
    weights: np.ndarray  # one row per head, in HEADS order
    biases: np.ndarray
    hand_mean: np.ndarray
    hand_scale: np.ndarray
    calibration: np.ndarray
    metadata: dict[str, object] = field(default_factory=dict)

    def head_probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        """Return each head's probability per prompt, shape (heads, prompts)."""
        matrix = featurize(prompts, config=self.config, hand_mean=self.hand_mean, hand_scale=self.hand_scale)
        return np.stack(
            [_sigmoid(matrix.dot(weights) + bias) for weights, bias in zip(self.weights, self.biases, strict=True)]
        )

    def raw_scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Return the expected gain of the strong model per prompt (before calibration)."""
        return expected_gain(self.head_probabilities(prompts))

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Return calibrated scores in [0, 1]: the quantile of each raw score among the training prompts."""
        return calibrate(self.raw_scores(prompts), self.calibration)


@dataclass(frozen=True)
class SparseRows:
    """A minimal CSR matrix: enough for X @ w and X.T @ g without scipy."""

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    width: int

    @property
    def rows(self) -> int:
        """Return the number of rows."""
        return len(self.indptr) - 1

    def dot(self, weights: np.ndarray) -> np.ndarray:
        """Return X @ weights."""
        products = self.values * weights[self.indices]
        sums = np.add.reduceat(products, self.indptr[:-1]) if len(products) else np.zeros(self.rows)
        # reduceat returns the next row's first element for an empty row; no row here is empty, but be safe.
        sums[np.diff(self.indptr) == 0] = 0.0
        return sums

    def tdot(self, per_row: np.ndarray) -> np.ndarray:
        """Return X.T @ per_row."""
        repeated = np.repeat(per_row, np.diff(self.indptr))
        return np.bincount(self.indices, weights=self.values * repeated, minlength=self.width)


class LearnedEstimator:
    """The learned router as a difficulty estimator; loads the shipped artifact on first use."""

    name = "learned"

    def __init__(self, artifact_path: Path | None = None) -> None:
        self._path = artifact_path or DEFAULT_ARTIFACT_PATH

    def estimate(self, prompt: str) -> DifficultyEstimate:
        """Estimate the difficulty of a prompt."""
        if not isinstance(prompt, str):
            raise InvalidInput("prompt must be a string", details={"field": "prompt"})
        artifact = load_artifact(self._path)
        weak_fails, strong_fails = (float(value) for value in artifact.head_probabilities([prompt])[:, 0])
        gain = float(expected_gain(np.array([[weak_fails], [strong_fails]]))[0])
        score = float(calibrate(np.array([gain]), artifact.calibration)[0])
        components = {"weak_fails": weak_fails, "strong_fails": strong_fails, "gain": gain, "quantile": score}
        return DifficultyEstimate(score=score, level=choose_level(score), components=components)

    def scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Score many prompts at once (the evaluation's fast path)."""
        return load_artifact(self._path).scores(prompts)


# --- features ----------------------------------------------------------------------------------------


def hand_features(prompt: str) -> list[float]:
    """Return the unscaled hand features of one prompt, in HAND_FEATURES order."""
    words = prompt.split()
    numbers = _NUMBER.findall(prompt)
    letters = sum(1 for char in prompt if char.isalpha())
    return [
        math.log1p(len(prompt)),
        math.log1p(len(words)),
        math.log1p(len(numbers)),
        math.log1p(len(set(numbers))),
        math.log1p(sum(1 for number in numbers if len(number.replace(",", "").split(".")[0]) >= 3)),
        math.log1p(sum(1 for number in numbers if "." in number)),
        math.log1p(len(_ARITHMETIC.findall(prompt))),
        math.log1p(len(_SENTENCE_END.findall(prompt))),
        math.log1p(prompt.count("?")),
        math.log1p(len(_OPTION.findall(prompt))),
        math.log1p(prompt.count("\n")),
        math.log1p(len(_CODE.findall(prompt))),
        math.log1p(len(_REASONING.findall(prompt))),
        math.log1p(len(_NEGATION.findall(prompt))),
        sum(len(word) for word in words) / len(words) if words else 0.0,
        sum(1 for char in prompt if char.isupper()) / letters if letters else 0.0,
    ]


def hashed_ngrams(prompt: str, *, config: TrainConfig) -> dict[int, float]:
    """Return the hashed word and character n-gram counts of one prompt, log-scaled and L2-normalised."""
    keys, values = _hashed_arrays(prompt, config=config)
    return dict(zip(keys.tolist(), values.tolist(), strict=True))


def _hashed_arrays(prompt: str, *, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    text = prompt[:MAX_NGRAM_CHARS].lower()
    tokens = _WORD.findall(text)
    grams: list[str] = []
    for n in config.word_ngrams:
        grams.extend(["w" + " ".join(tokens[i : i + n]) for i in range(len(tokens) - n + 1)])
    squashed = " " + " ".join(text.split()) + " "
    for n in config.char_ngrams:
        grams.extend(["c" + squashed[i : i + n] for i in range(len(squashed) - n + 1)])
    if not grams:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    # crc32 is stable across processes, unlike hash(), so a saved artifact means the same thing later.
    hashes = np.fromiter(map(zlib.crc32, map(str.encode, grams)), dtype=np.int64, count=len(grams))
    keys, counts = np.unique(hashes & ((1 << config.hash_bits) - 1), return_counts=True)
    scaled = 1.0 + np.log(counts)
    return keys, scaled / np.sqrt(np.dot(scaled, scaled))


def featurize(
    prompts: Sequence[str], *, config: TrainConfig, hand_mean: np.ndarray, hand_scale: np.ndarray
) -> SparseRows:
    """Return the feature matrix: hashed n-grams, then the standardised hand features (gated by format)."""
    blocks = 2 if config.gated_hand else 1
    width = (1 << config.hash_bits) + blocks * len(HAND_FEATURES)
    hand_columns = np.arange(1 << config.hash_bits, (1 << config.hash_bits) + len(HAND_FEATURES))
    indptr = [0]
    indices: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for prompt in prompts:
        keys, gram_values = _hashed_arrays(prompt, config=config)
        raw_hand = hand_features(prompt)
        hand = (np.asarray(raw_hand) - hand_mean) / hand_scale
        gate = 1 if config.gated_hand and raw_hand[_OPTIONS_INDEX] >= _MULTIPLE_CHOICE else 0
        indices.append(keys)
        indices.append(hand_columns + gate * len(HAND_FEATURES))
        values.append(gram_values)
        values.append(hand)
        indptr.append(indptr[-1] + len(keys) + len(hand_columns))
    return SparseRows(
        indptr=np.asarray(indptr, dtype=np.int64),
        indices=np.concatenate(indices) if indices else np.zeros(0, dtype=np.int64),
        values=np.concatenate(values) if values else np.zeros(0),
        width=width,
    )


# --- training ----------------------------------------------------------------------------------------


def train(
    prompts: Sequence[str],
    labels: Sequence[Sequence[float]],
    *,
    config: TrainConfig | None = None,
    metadata: dict[str, object] | None = None,
) -> Artifact:
    """Fit one logistic regression per head on (prompt, labels in [0, 1] per head); deterministic.

    Full-batch Adam on the L2-regularised log loss: no shuffling, so the result depends only on the data
    and the config (the seed fixes the data split, and is kept for the record).
    """
    config = config or TrainConfig()
    target = np.asarray(labels, dtype=np.float64)
    if not prompts or target.shape != (len(prompts), len(HEADS)):
        raise InvalidInput(
            f"train needs one row of {len(HEADS)} labels ({', '.join(HEADS)}) per prompt, and at least one prompt",
            details={"field": "labels"},
        )
    hand = np.asarray([hand_features(prompt) for prompt in prompts])
    hand_mean = hand.mean(axis=0)
    hand_scale = hand.std(axis=0)
    # A feature constant on the training prompts (its std is 0 up to rounding) is left unscaled.
    hand_scale[hand_scale < MIN_HAND_SCALE] = 1.0
    matrix = featurize(prompts, config=config, hand_mean=hand_mean, hand_scale=hand_scale)
    fitted = [_fit_head(matrix, target[:, head], config=config) for head in range(len(HEADS))]
    weights = np.stack([head_weights for head_weights, _ in fitted])
    biases = np.asarray([bias for _, bias in fitted])
    probabilities = np.stack([_sigmoid(matrix.dot(row) + bias) for row, bias in fitted])
    calibration = np.quantile(expected_gain(probabilities), np.linspace(0.0, 1.0, CALIBRATION_POINTS))
    return Artifact(
        config=config,
        weights=weights,
        biases=biases,
        hand_mean=hand_mean,
        hand_scale=hand_scale,
        calibration=calibration,
        metadata=dict(metadata or {}),
    )


def _fit_head(matrix: SparseRows, target: np.ndarray, *, config: TrainConfig) -> tuple[np.ndarray, float]:
    weights = np.zeros(matrix.width)
    penalty = np.full(matrix.width, config.l2)
    penalty[1 << config.hash_bits :] = config.hand_l2
    prior = float(np.clip(target.mean(), 1e-6, 1 - 1e-6))
    bias = math.log(prior / (1 - prior))
    first = np.zeros(matrix.width + 1)
    second = np.zeros(matrix.width + 1)
    beta1, beta2, epsilon = 0.9, 0.999, 1e-8
    for step in range(1, config.epochs + 1):
        error = (_sigmoid(matrix.dot(weights) + bias) - target) / len(target)
        gradient = np.append(matrix.tdot(error) + penalty * weights, error.sum())
        first = beta1 * first + (1 - beta1) * gradient
        second = beta2 * second + (1 - beta2) * gradient * gradient
        update = config.learning_rate * (first / (1 - beta1**step)) / (np.sqrt(second / (1 - beta2**step)) + epsilon)
        weights -= update[:-1]
        bias -= float(update[-1])
    return weights, bias


def expected_gain(probabilities: np.ndarray) -> np.ndarray:
    """Return the strong model's expected gain from head probabilities (weak_fails, strong_fails)."""
    weak_fails, strong_fails = probabilities[0], probabilities[1]
    return weak_fails * (1 - strong_fails) - LOSS_WEIGHT * strong_fails * (1 - weak_fails)


def calibrate(raw: np.ndarray, calibration: np.ndarray) -> np.ndarray:
    """Map raw probabilities to their quantile among the training predictions, in [0, 1]."""
    grid = np.linspace(0.0, 1.0, len(calibration))
    # Ties in the calibration curve (many equal raw scores) would make np.interp jump; keep it increasing.
    knots = calibration + np.arange(len(calibration)) * 1e-12
    return np.clip(np.interp(raw, knots, grid), 0.0, 1.0)


def outcome_labels(row: dict[str, object]) -> tuple[float, float]:
    """Return the training labels (weak_fails, strong_fails) of an outcome row.

    On 0/1 benchmarks a model fails when it scored 0. On judge scores (1 to 10) a model "fails" by the
    margin the other one beat it, clipped to [0, 1] over 2 points.
    """
    strong = float(row["strong_score"])  # type: ignore[arg-type]
    weak = float(row["weak_score"])  # type: ignore[arg-type]
    if row.get("metric") == "correct_0_1":
        return 1.0 - weak, 1.0 - strong
    return min(1.0, max(0.0, (strong - weak) / 2.0)), min(1.0, max(0.0, (weak - strong) / 2.0))


# --- artifact I/O ------------------------------------------------------------------------------------


def save_artifact(artifact: Artifact, path: Path) -> None:
    """Write the artifact as a compressed .npz with sparse float16 weights and a JSON header."""
    nonzero = np.flatnonzero(np.abs(artifact.weights).max(axis=0) > 1e-6)
    header = {
        "format": ARTIFACT_FORMAT,
        "config": {
            **artifact.config.__dict__,
            "char_ngrams": list(artifact.config.char_ngrams),
            "word_ngrams": list(artifact.config.word_ngrams),
        },
        "heads": list(HEADS),
        "biases": [round(float(bias), STORED_DECIMALS) for bias in artifact.biases],
        "width": artifact.weights.shape[1],
        "hand_features": list(HAND_FEATURES),
        "metadata": artifact.metadata,
    }
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        header=np.frombuffer(json.dumps(header, sort_keys=True).encode(), dtype=np.uint8),
        indices=nonzero.astype(np.int32),
        values=artifact.weights[:, nonzero].astype(np.float16),
        hand_mean=artifact.hand_mean.astype(np.float32),
        hand_scale=artifact.hand_scale.astype(np.float32),
        calibration=artifact.calibration.astype(np.float32),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())


def read_artifact(path: Path) -> Artifact:
    """Read an artifact written by save_artifact; raise ConfigError if it is missing or not one."""
    try:
        with np.load(path, allow_pickle=False) as data:
            header = json.loads(bytes(data["header"]).decode())
            if header.get("format") != ARTIFACT_FORMAT:
                raise ConfigError(f"{path} is not a {ARTIFACT_FORMAT} artifact", details={"path": str(path)})
            if header.get("heads") != list(HEADS):
                raise ConfigError(
                    f"{path} has heads {header.get('heads')}, not {list(HEADS)}", details={"path": str(path)}
                )
            weights = np.zeros((len(HEADS), int(header["width"])))
            weights[:, data["indices"]] = data["values"].astype(np.float64)
            raw_config = dict(header["config"])
            config = TrainConfig(
                **{
                    **raw_config,
                    "char_ngrams": tuple(raw_config["char_ngrams"]),
                    "word_ngrams": tuple(raw_config["word_ngrams"]),
                }
            )
            return Artifact(
                config=config,
                weights=weights,
                biases=np.asarray(header["biases"], dtype=np.float64),
                hand_mean=np.asarray(data["hand_mean"], dtype=np.float64),
                hand_scale=np.asarray(data["hand_scale"], dtype=np.float64),
                calibration=np.asarray(data["calibration"], dtype=np.float64),
                metadata=dict(header.get("metadata") or {}),
            )
    except (OSError, KeyError, ValueError) as exc:
        raise ConfigError(
            f"cannot read the learned router artifact {path}: {exc}", details={"path": str(path)}
        ) from exc


@functools.cache
def load_artifact(path: Path) -> Artifact:
    """Read the artifact at `path` once per process."""
    return read_artifact(path)


def _sigmoid(values: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(values, -35.0, 35.0)))


def iter_labels(rows: Iterable[dict[str, object]]) -> list[tuple[float, float]]:
    """Return the training labels of each outcome row."""
    return [outcome_labels(row) for row in rows]


def split_for_training(
    rows: Sequence[dict[str, object]], *, holdout: float, seed: int
) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """Return (train, validation): train is TRAIN_SOURCE rows minus a stratified held-out share.

    Validation is that held-out share plus every row of any other source, which is never trained on.
    """
    trainable = [row for row in rows if row.get("source") == TRAIN_SOURCE]
    others = [row for row in rows if row.get("source") != TRAIN_SOURCE]
    if holdout <= 0:
        return trainable, others
    train_rows, held = evaluation.split_rows(trainable, holdout=holdout, seed=seed)
    return train_rows, held + others
