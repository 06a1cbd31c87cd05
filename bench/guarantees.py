"""The product's guarantees, each tried on the real stack on PostgreSQL and shown as one line with its figure.

A budget cannot be overspent; every accepted job ends exactly once with every dollar it cost on record; nobody
reaches what is not theirs. Each guarantee gets one bounded scenario (bench/guarantee_scenarios.py), measured
from outside: HTTP answers, the database rows, the stack's Redis and the simulator's own record of what it
billed. The scenarios share two stacks (bench/guarantee_stack.py): the service as configured there, and the
same with a $1 global limit; the breaker's needs only a Redis. Everything runs on loopback: a private
redis-server on a free port, a temporary PostgreSQL database, the simulator, gunicorn, one Celery worker per
queue (prompts: 8 slots, batch: 2) and beat.

Prints one line per guarantee (PASS or FAIL by its rule, the name, the figure), writes the figures as JSON
(default bench/results/guarantees.json), and exits 0 when every guarantee held, 1 when one did not, 2 when a
scenario could not run. Run it from the repository root as a module, so that `tests.support` is importable:

    .venv/bin/python -m bench.guarantees               # the long form (about 6 minutes)
    .venv/bin/python -m bench.guarantees --quick       # the short form (about 3 minutes)
    .venv/bin/python -m bench.guarantees --only callbacks_public_only --only breaker_probes_exact
    .venv/bin/python -m bench.guarantees --set DEFAULT_RPM=100000   # a setting for both stacks
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC
from datetime import datetime
from pathlib import Path
from typing import Any

from bench.guarantee_scenarios import SCENARIOS
from bench.guarantee_scenarios import Result
from bench.guarantee_scenarios import Scenario
from bench.guarantee_stack import SETTINGS
from bench.guarantee_stack import running_bench

logger = logging.getLogger("bench.guarantees")

# How long a stack may take to finish the previous scenario's jobs before the next one starts.
DRAIN_BETWEEN_S = 60.0


def run(scenarios: Sequence[Scenario], *, quick: bool, work_dir: Path, overrides: dict[str, str]) -> list[Result]:
    """Run the scenarios, one stack per profile they need, in the order given; a scenario that raises is ERROR."""
    results: list[Result] = []
    profiles = list(dict.fromkeys(scenario.profile for scenario in scenarios))
    for profile in profiles:
        chosen = [scenario for scenario in scenarios if scenario.profile == profile]
        stack_dir = work_dir / (profile or "redis")
        try:
            with running_bench(profile, work_dir=stack_dir, quick=quick, overrides=overrides) as bench:
                for scenario in chosen:
                    left = bench.drain(timeout_s=DRAIN_BETWEEN_S)
                    if left:
                        logger.warning("%d jobs still open before %s", left, scenario.name)
                    if bench.stack is not None:
                        bench.forget_circuits()
                        bench.configure_sim()
                    results.append(_run_one(scenario, bench))
                    if bench.throttled:
                        results[-1].details["throttled_429"] = bench.throttled
                        bench.throttled = 0
                    logger.info("%s", format_line(results[-1]))
        except Exception as exc:  # a stack that cannot start fails its scenarios, not the bench
            logger.error("the %s stack failed: %s", profile, traceback.format_exc())
            done = {result.name for result in results}
            reason = _stack_failure(exc)
            for scenario in chosen:
                if scenario.name not in done:
                    results.append(Result(scenario.name, "ERROR", f"stack {profile}: {reason}", ""))
                    logger.info("%s", format_line(results[-1]))
    return results


def _stack_failure(exc: Exception) -> str:
    """Return the line that says why a stack did not start: a refused setting if a process named one."""
    text = str(exc)
    refused = [line.strip() for line in text.splitlines() if "invalid setting" in line]
    return refused[0] if refused else f"{exc!r}"[:300]


def _run_one(scenario: Scenario, bench: Any) -> Result:
    started = time.monotonic()
    logger.info("running %s", scenario.name)
    try:
        result = scenario.run(bench)
    except Exception as exc:  # one broken scenario must not hide the others' figures
        logger.error("%s broke: %s", scenario.name, traceback.format_exc())
        result = Result(scenario.name, "ERROR", repr(exc)[:300], "", {"traceback": traceback.format_exc()})
    result.seconds = round(time.monotonic() - started, 1)
    return result


def format_line(result: Result) -> str:
    return f"{result.status:<5}  {result.name:<28}  {result.figure}"


def _selected(only: Sequence[str]) -> list[Scenario]:
    if not only:
        return list(SCENARIOS)
    names = {name.strip() for entry in only for name in entry.split(",") if name.strip()}
    known = {scenario.name for scenario in SCENARIOS}
    unknown = names - known
    if unknown:
        raise SystemExit(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(known))}")
    return [scenario for scenario in SCENARIOS if scenario.name in names]


def _overrides(pairs: Sequence[str]) -> dict[str, str]:
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set wants KEY=VALUE, got {pair!r}")
        overrides[key.strip().upper()] = value
    return overrides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the short form: fewer requests and rounds")
    parser.add_argument("--only", action="append", default=[], metavar="NAME",
                        help="run only this scenario (repeatable, or comma-separated)")  # fmt: skip
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for the stacks' processes, over the bench's own")  # fmt: skip
    parser.add_argument("--out", type=Path, default=Path("bench/results/guarantees.json"))
    parser.add_argument("--logs", type=Path, default=None, help="keep the processes' logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    scenarios = _selected(args.only)
    overrides = _overrides(args.settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # The breaker scenario opens hundreds of circuits on purpose.
    logging.getLogger("shared.upstream.circuit_breaker").setLevel(logging.ERROR)
    started_at = datetime.now(UTC)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="guarantees-") as scratch:
        results = run(scenarios, quick=args.quick, work_dir=args.logs or Path(scratch), overrides=overrides)
    total_s = round(time.monotonic() - started, 1)
    print("\n".join(format_line(result) for result in results))
    report = {
        "started_at": started_at.isoformat(),
        "mode": "quick" if args.quick else "full",
        "total_s": total_s,
        "settings": {**SETTINGS, **overrides},
        "results": [asdict(result) for result in results],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")
    print(f"{sum(r.status == 'PASS' for r in results)}/{len(results)} guarantees held in {total_s} s; "
          f"figures written to {args.out}")  # fmt: skip
    if any(result.status == "ERROR" for result in results):
        return 2
    return 0 if all(result.status == "PASS" for result in results) else 1


if __name__ == "__main__":
    sys.exit(main())
