"""The drain scenario: a burst of async jobs against an upstream that admits a few requests per second per model.

Starts the real stack on PostgreSQL (tests/support/drain.py), with the simulator answering like OpenAI past
SIM_RPM (429 with Retry-After and the x-ratelimit-* headers), submits --jobs async prompts at once with a
--deadline-s deadline, and prints the share that succeeded, the share of upstream calls answered 429, and the
busiest model's drain rate against the allowed rate; writes them as JSON (default bench/results/drain.json).

Targets: at least 99 % succeed, at most 10 % of upstream calls answered 429, the busiest model drained at 90 %
or more of its allowed rate. Run it from the repository root as a module, holding the integration lock:

    flock /tmp/mr-integration.lock .venv/bin/python -m bench.drain --jobs 200 --rps 5 --deadline-s 120
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tests.support.drain import run_drain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--rps", type=float, default=5.0, help="requests per second the upstream admits per model")
    parser.add_argument("--deadline-s", type=float, default=120.0)
    parser.add_argument("--slots", type=int, default=16, help="the prompts worker's concurrency")
    parser.add_argument("--out", type=Path, default=Path("bench/results/drain.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="drain-") as scratch:
        figures = run_drain(
            jobs=args.jobs, rps=args.rps, deadline_s=args.deadline_s, work_dir=Path(scratch), slots=args.slots
        )
    print(f"jobs succeeded          {figures['succeeded_share']:.1%}  {figures['statuses']}")
    print(f"upstream calls          {figures['upstream_calls']}, answered 429: {figures['answered_429']} "
          f"({figures['share_429']:.1%})")  # fmt: skip
    print(f"busiest model           {figures['busiest_model']}: drained at {figures['drain_rate_per_s']}/s of "
          f"{figures['allowed_rate_per_s']}/s allowed ({figures['drain_share_of_allowed']:.1%})")  # fmt: skip
    print(f"submitted / drained in  {figures['submitted_s']} s / {figures['drained_s']} s")
    if figures["failed_by_error"]:
        print(f"failed                  {figures['failed_by_error']} {figures['failure_examples']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
