"""Median per-prompt latency of each difficulty estimator, one prompt at a time (as the worker calls it).

Prompts come from a routing-eval file (--data) or, without one, from a small built-in synthetic mix. The
first call of each estimator (which loads the learned artifact) is timed apart as its cold start. Prints
the figures and writes them as JSON (default bench/results/router_latency.json).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

from shared.routing import difficulty
from shared.routing import evaluation

SYNTHETIC = (
    "What is the capital of France?",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many "
    "clips did Natalia sell altogether in April and May?",
    "Write a python function to find the longest palindromic substring of a string.",
    "Which of the following is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:",
    "Compose an engaging travel blog post about a recent trip to Hawaii, highlighting cultural experiences.",
)


def _prompts(data: Path | None, count: int, seed: int) -> list[str]:
    pool = list(SYNTHETIC) if data is None else [str(row["prompt"]) for row in evaluation.read_rows(data)]
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(count)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", type=Path, help="routing-eval JSON Lines (.jsonl or .jsonl.gz)")
    parser.add_argument("--prompts", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/router_latency.json"))
    args = parser.parse_args()
    prompts = _prompts(args.data, args.prompts, args.seed)
    results = {}
    for name in difficulty.ESTIMATORS:
        estimator = difficulty.get_estimator(name)
        start = time.perf_counter()
        estimator.estimate(prompts[0])
        cold_ms = (time.perf_counter() - start) * 1000
        timings = []
        for prompt in prompts:
            start = time.perf_counter()
            estimator.estimate(prompt)
            timings.append((time.perf_counter() - start) * 1000)
        timings.sort()
        results[name] = {
            "prompts": len(timings),
            "cold_start_ms": round(cold_ms, 2),
            "median_ms": round(statistics.median(timings), 4),
            "p95_ms": round(timings[int(0.95 * (len(timings) - 1))], 4),
            "max_ms": round(timings[-1], 4),
        }
        print(
            f"{name:10s} median {results[name]['median_ms']:.3f} ms  p95 {results[name]['p95_ms']:.3f} ms  "
            f"cold start {cold_ms:.1f} ms  ({len(timings)} prompts)"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
