"""The chaos scenario at length: the real stack under upstream faults, a killed worker and a Redis restart.

Starts its own stack on loopback (a private redis-server on a free port, a temporary PostgreSQL database on
the local server, the simulator, gunicorn, 2 Celery workers and beat), sends --requests prompts from
--concurrency client threads while the simulator injects 30% 429s, 10% 500s and 5% timeouts and one model
is down, SIGKILLs a worker and restarts Redis in the middle, then prints the figures and writes them as JSON
(default bench/results/chaos.json). It shares `run_chaos` with tests/integration/test_chaos.py.

The jobs get the product's default deadline, as users' do (--job-limits user); the killed worker's jobs are
then run again only once their lease, long enough to hold that deadline, lapses. `--job-limits bounded` is
the suite's form: a short lease and a deadline of seconds.

Run it from the repository root as a module, so that `tests.support` is importable:

    .venv/bin/python -m bench.chaos --requests 2000 --concurrency 32
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

from tests.support.chaos import BOUNDED_JOB_LIMITS
from tests.support.chaos import FAULTS
from tests.support.chaos import USER_JOB_LIMITS
from tests.support.chaos import run_chaos

JOB_LIMITS = {"user": USER_JOB_LIMITS, "bounded": BOUNDED_JOB_LIMITS}

ROWS = (
    ("requests sent", lambda f: f["requests"]),
    ("accepted (job rows)", lambda f: f["accepted"]),
    ("succeeded", lambda f: f["succeeded"]),
    ("failed", lambda f: f"{f['failed']} {f['failed_by_error']}"),
    ("not terminal", lambda f: f["not_terminal"]),
    ("lost: ids answered without a row / rows never answered",
     lambda f: f"{f['answered_ids_without_row']} / {f['rows_without_answer']}"),
    ("rejected 503 (Redis down)", lambda f: f["rejected"]["503"]),
    ("rejected 402 / other / client errors",
     lambda f: f"{f['rejected']['402']} / {f['rejected']['other_status']} / {f['rejected']['client_errors']}"),
    ("success rate (of accepted)", lambda f: f"{f['success_rate']}%"),
    ("success rate (of sent)", lambda f: f"{f['success_rate_of_requests']}%"),
    ("upstream retries", lambda f: f["retries"]),
    ("fallback attempts", lambda f: f["fallback_attempts"]),
    ("circuit-open skips", lambda f: f["circuit_open_skips"]),
    ("escalations", lambda f: f["escalations"]),
    ("down model", lambda f: f"{f['down_model']['name']}: {f['down_model']['routed_jobs']} jobs routed, "
                             f"answered by {f['down_model']['routed_succeeded_on']}"),
    ("circuits seen in /api/health", lambda f: f["circuits"]["seen_in_health"]),
    ("jobs running at the kill / re-run", lambda f: f"{f['kill']['running_at_kill']} / {f['kill']['rerun_jobs']}"),
    ("queued jobs re-enqueued by the reaper", lambda f: f["kill"]["requeued_while_queued"]),
    ("ledger spent / reserved", lambda f: f"{f['ledger']['total_spent']} / {f['ledger']['reserved']}"),
    ("recorded attempts cost", lambda f: f["attempts_cost"]),
    ("upstream billed cost", lambda f: f["upstream"]["billed_cost"]),
    ("billed but unrecorded (killed worker)",
     lambda f: f"{f['upstream']['billed_but_unrecorded_cost']} "
               f"({f['upstream']['billed_but_unrecorded_calls']} calls)"),
    ("job lease / deadline", lambda f: f"{f['settings']['JOB_LEASE_S']} s / "
                                       f"{f['settings'].get('DEFAULT_DEADLINE_S', 'the product default')}"),
    ("total time", lambda f: f"{f['timings']['total_s']} s"),
)  # fmt: skip


def format_table(figures: dict[str, Any]) -> str:
    """Return the headline figures as an aligned two-column table."""
    width = max(len(label) for label, _ in ROWS)
    return "\n".join(f"{label:<{width}}  {value(figures)}" for label, value in ROWS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--down-model", default="gpt-3.5-turbo")
    parser.add_argument("--faults", default=FAULTS)
    parser.add_argument("--redis-outage-s", type=float, default=3.0)
    parser.add_argument("--job-limits", choices=sorted(JOB_LIMITS), default="user")
    parser.add_argument("--drain-timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=Path("bench/results/chaos.json"))
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here (default: a temp dir)")
    args = parser.parse_args()
    if args.requests < 1 or args.concurrency < 1:
        raise SystemExit("--requests and --concurrency must be at least 1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with tempfile.TemporaryDirectory(prefix="chaos-") as scratch:
        figures = run_chaos(
            requests=args.requests,
            concurrency=args.concurrency,
            work_dir=args.logs or Path(scratch),
            down_model=args.down_model,
            faults=args.faults,
            redis_outage_s=args.redis_outage_s,
            drain_timeout_s=args.drain_timeout_s,
            job_limits=JOB_LIMITS[args.job_limits],
        )
    print(format_table(figures))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"figures written to {args.out}")


if __name__ == "__main__":
    main()
