"""Slow streams through /v1 on the real stack: a first token that takes --silence-s, and a pause as long after it.

Starts its own stack on loopback (the simulator, gunicorn with gevent, one Celery worker, SQLite, Redis
database 8) with the default settings, then sends each scenario once through the official `openai` SDK and
once as raw SSE (to see the keep-alive comments and the longest gap between two events). Prints one line per
scenario and form, and writes them as JSON (default bench/results/slow_streams.json).

Run it from the repository root as a module, so that `tests.support` is importable:

    .venv/bin/python -m bench.slow_streams --silence-s 30
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import redis

from shared.store import migrate
from tests.support.stack import Stack
from tests.support.stack import http

REDIS_URL = "redis://127.0.0.1:6379/8"
QUESTION = [{"role": "user", "content": "Explain why the sky is blue in a few sentences."}]
BODY = {"model": "router", "messages": QUESTION, "stream": True, "max_tokens": 200}


def _by_sdk(stack: Stack) -> dict[str, Any]:
    started = time.monotonic()
    with openai.OpenAI(api_key="unused", base_url=f"{stack.web}/v1", max_retries=0) as client:
        raw = client.chat.completions.with_raw_response.create(**BODY)  # type: ignore[call-overload]
        chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    job = http("GET", f"{stack.web}/api/jobs/{raw.headers['x-router-job-id']}")[2]
    return {
        "seconds": round(time.monotonic() - started, 1),
        "whole": bool(text) and job["status"] == "succeeded" and job["response"] == text,
        "finish_reason": chunks[-1].choices[0].finish_reason,
    }


def _by_raw_sse(stack: Stack) -> dict[str, Any]:
    started = time.monotonic()
    arrivals: list[tuple[float, str]] = []
    with httpx.stream("POST", f"{stack.web}/v1/chat/completions", json=BODY, timeout=120) as response:
        status = response.status_code
        for line in response.iter_lines():
            if line:
                arrivals.append((time.monotonic() - started, line))
    first = next(i for i, (_, line) in enumerate(arrivals) if line.startswith("data: {"))
    gaps = [later[0] - earlier[0] for earlier, later in zip(arrivals[first:], arrivals[first + 1 :], strict=False)]
    return {
        "status": status,
        "seconds": round(time.monotonic() - started, 1),
        "first_event_s": round(arrivals[first][0], 1),
        "keepalives": sum(1 for _, line in arrivals if line == ": keep-alive"),
        "longest_gap_after_first_token_s": round(max(gaps, default=0.0), 1),
        "whole": arrivals[-1][1] == "data: [DONE]",
    }


def run(silence_s: float) -> dict[str, Any]:
    scenarios = {
        "first_token_after": {"ttft_ms": silence_s * 1000},
        "pause_after_first_token": {"pause_ms": silence_s * 1000},
    }
    with tempfile.TemporaryDirectory() as tmp:
        database_url = f"sqlite:///{tmp}/router.db"
        redis.Redis.from_url(REDIS_URL).flushdb()
        migrate.upgrade("head", database_url=database_url)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SIM_", "DATABASE_", "STREAM_"))}
        env.update(DATABASE_URL=database_url, REDIS_URL=REDIS_URL, MONTHLY_BUDGET_LIMIT="1000", WORKER_HEARTBEAT_S="2")
        stack = Stack(env=env, log_dir=Path(tmp))
        results: dict[str, Any] = {"silence_s": silence_s}
        try:
            stack.start()
            for name, sim in scenarios.items():
                http("POST", f"{stack.sim}/sim/config", {"reset": True})
                http("POST", f"{stack.sim}/sim/config", sim)
                results[name] = {"sdk": _by_sdk(stack), "raw_sse": _by_raw_sse(stack)}
            return results
        finally:
            stack.stop()
            redis.Redis.from_url(REDIS_URL).flushdb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--silence-s", type=float, default=30.0, help="the simulator's silence, in seconds")
    parser.add_argument("--out", type=Path, default=Path("bench/results/slow_streams.json"))
    args = parser.parse_args()
    results = run(args.silence_s)
    for name in ("first_token_after", "pause_after_first_token"):
        sdk, raw = results[name]["sdk"], results[name]["raw_sse"]
        print(
            f"{name.replace('_', ' ')} {args.silence_s:g} s: SDK whole={sdk['whole']} in {sdk['seconds']} s; "
            f"raw SSE {raw['status']} whole={raw['whole']}, first event at {raw['first_event_s']} s, "
            f"{raw['keepalives']} keep-alives, longest gap after the first token "
            f"{raw['longest_gap_after_first_token_s']} s"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
