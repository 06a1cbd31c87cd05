"""Time to first token of streamed chat completions: through the router's /v1 versus straight to the simulator.

Starts its own stack on loopback (the simulator, gunicorn with gevent, one Celery worker, SQLite, Redis
database 8), sets the simulator's time to first token and total latency, then sends --requests streamed
requests with the official `openai` SDK, one at a time, to each base URL in turn. Prints p50/p95 of the
time to first token and to the last chunk, and writes them as JSON (default bench/results/stream_ttft.json).

Run it from the repository root as a module, so that `tests.support` is importable:

    .venv/bin/python -m bench.stream_ttft --requests 50
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import openai
import redis

from shared.store import migrate
from tests.support.stack import Stack
from tests.support.stack import http

REDIS_URL = "redis://127.0.0.1:6379/8"
QUESTION = [{"role": "user", "content": "Explain why the sky is blue in a few sentences."}]


def _one(client: openai.OpenAI, model: str) -> tuple[float, float]:
    """Send one streamed request; return the seconds to the first content chunk and to the last chunk."""
    started = time.perf_counter()
    first = None
    stream = client.chat.completions.create(model=model, messages=QUESTION, stream=True, max_tokens=200)  # type: ignore[arg-type]
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - started
    return (first if first is not None else float("nan")), time.perf_counter() - started


def _figures(samples: list[tuple[float, float]]) -> dict[str, float]:
    ttft = sorted(s[0] * 1000 for s in samples)
    total = sorted(s[1] * 1000 for s in samples)

    def p(values: list[float], q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    return {
        "ttft_p50_ms": round(statistics.median(ttft), 1),
        "ttft_p95_ms": p(ttft, 0.95),
        "total_p50_ms": round(statistics.median(total), 1),
        "total_p95_ms": p(total, 0.95),
    }


def run(requests: int, warmup: int, ttft_ms: float, latency_ms: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/router.db"
        redis.Redis.from_url(REDIS_URL).flushdb()
        migrate.upgrade("head", database_url=database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIM_", "DATABASE_"))}
        env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, MONTHLY_BUDGET_LIMIT="1000", WORKER_HEARTBEAT_S="2")
        stack = Stack(env=env, log_dir=Path(tmp))
        try:
            stack.start()
            http("POST", f"{stack.sim}/sim/config", {"ttft_ms": ttft_ms, "latency_ms": latency_ms})
            results: dict[str, Any] = {
                "requests": requests,
                "simulator": {"ttft_ms": ttft_ms, "latency_ms": latency_ms},
            }
            targets = {
                "router": (f"{stack.web}/v1", "router"),
                "direct": (f"{stack.sim}/v1", "gpt-3.5-turbo"),
            }
            for name, (base_url, model) in targets.items():
                with openai.OpenAI(api_key="unused", base_url=base_url, max_retries=0, timeout=60) as client:
                    for _ in range(warmup):
                        _one(client, model)
                    results[name] = _figures([_one(client, model) for _ in range(requests)])
            results["router_overhead_ttft_p50_ms"] = round(
                results["router"]["ttft_p50_ms"] - results["direct"]["ttft_p50_ms"], 1
            )
            return results
        finally:
            stack.stop()
            redis.Redis.from_url(REDIS_URL).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="the simulator's time to first token")
    parser.add_argument("--latency-ms", type=float, default=1000.0, help="the simulator's total answer time")
    parser.add_argument("--out", type=Path, default=Path("bench/results/stream_ttft.json"))
    args = parser.parse_args()
    results = run(args.requests, args.warmup, args.ttft_ms, args.latency_ms)
    for name in ("direct", "router"):
        figures = results[name]
        print(
            f"{name:>7}: TTFT p50 {figures['ttft_p50_ms']} ms, p95 {figures['ttft_p95_ms']} ms; "
            f"last chunk p50 {figures['total_p50_ms']} ms, p95 {figures['total_p95_ms']} ms"
        )
    print(f"router overhead on TTFT (p50): {results['router_overhead_ttft_p50_ms']} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
