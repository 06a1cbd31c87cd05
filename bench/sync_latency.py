"""Latency of sequential synchronous POST /api/prompt requests against a running stack (`make run`).

Bounded: --requests calls (default 100) after --warmup calls, loopback URLs only. Prints the figures and
writes them as JSON (default bench/results/sync_latency.json).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _post(url: str, body: dict[str, object]) -> float:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    start = time.perf_counter()
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
        if response.status != 200:
            raise RuntimeError(f"expected 200, got {response.status}")
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--requests", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/results/sync_latency.json"))
    args = parser.parse_args()
    if urlsplit(args.url).hostname not in LOOPBACK:
        raise SystemExit("only loopback targets are allowed")
    endpoint = args.url.rstrip("/") + "/api/prompt"
    for i in range(args.warmup):
        _post(endpoint, {"prompt": f"warm-up {i}"})
    latencies = sorted(_post(endpoint, {"prompt": f"What is {i} + {i}?"}) for i in range(args.requests))
    figures = {
        "url": args.url,
        "requests": len(latencies),
        "p50_ms": round(statistics.median(latencies), 2),
        "p95_ms": round(latencies[int(len(latencies) * 0.95) - 1], 2),
        "min_ms": round(latencies[0], 2),
        "max_ms": round(latencies[-1], 2),
    }
    print(json.dumps(figures, indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
